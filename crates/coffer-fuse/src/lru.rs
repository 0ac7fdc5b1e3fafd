//! A least-recently-used map bounded by the total cost of its values (their
//! size in bytes), for decrypted chunks and decoded trees.

use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;

pub struct Lru<K, V> {
    capacity: u64,
    used: u64,
    clock: u64,
    items: HashMap<K, Item<V>>,
    /// Keys by last use, oldest first.
    order: BTreeMap<u64, K>,
}

struct Item<V> {
    value: V,
    cost: u64,
    used_at: u64,
}

impl<K: Hash + Eq + Clone, V: Clone> Lru<K, V> {
    pub fn new(capacity: u64) -> Self {
        Lru { capacity, used: 0, clock: 0, items: HashMap::new(), order: BTreeMap::new() }
    }

    pub fn get(&mut self, key: &K) -> Option<V> {
        self.clock += 1;
        let item = self.items.get_mut(key)?;
        self.order.remove(&item.used_at);
        item.used_at = self.clock;
        self.order.insert(self.clock, key.clone());
        Some(item.value.clone())
    }

    /// Adds a value, evicting the least recently used ones to make room. A
    /// value costing more than the whole capacity is not kept.
    pub fn insert(&mut self, key: K, value: V, cost: u64) {
        self.remove(&key);
        if cost > self.capacity {
            return;
        }
        while self.used + cost > self.capacity {
            let Some((_, oldest)) = self.order.pop_first() else { break };
            if let Some(item) = self.items.remove(&oldest) {
                self.used -= item.cost;
            }
        }
        self.clock += 1;
        self.order.insert(self.clock, key.clone());
        self.items.insert(key, Item { value, cost, used_at: self.clock });
        self.used += cost;
    }

    pub fn remove(&mut self, key: &K) {
        if let Some(item) = self.items.remove(key) {
            self.order.remove(&item.used_at);
            self.used -= item.cost;
        }
    }

    /// The total cost of the values held.
    pub fn used(&self) -> u64 {
        self.used
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evicts_least_recently_used_within_capacity() {
        let mut lru = Lru::new(10);
        lru.insert(1, "a", 4);
        lru.insert(2, "b", 4);
        assert_eq!(lru.get(&1), Some("a"));
        lru.insert(3, "c", 4);
        assert_eq!(lru.get(&2), None, "2 was the least recently used");
        assert_eq!(lru.get(&1), Some("a"));
        assert_eq!(lru.get(&3), Some("c"));
        assert_eq!(lru.used(), 8);
        lru.insert(4, "too big", 11);
        assert_eq!(lru.get(&4), None);
        assert_eq!(lru.used(), 8);
        lru.insert(1, "a2", 10);
        assert_eq!((lru.get(&1), lru.get(&3), lru.used()), (Some("a2"), None, 10));
    }
}
