//! A backend wrapper that stops chosen operations at chosen moments, for
//! tests that must drive a race into its worst interleaving every time
//! instead of hoping a sleep lands there.
//!
//! A rule names an operation and a key prefix (`List` of `chunks/`, `Put` to
//! `locks/`, …) and what to do when a matching call happens: hold it before
//! or after it reaches the inner backend until the test releases the
//! [`Gate`], fail it, or run a hook (the binary's test hook stops its own
//! process there with SIGSTOP). Every matching call is counted, so a test can
//! also just wait until an operation has happened.

use std::sync::{Arc, Condvar, Mutex};

use async_trait::async_trait;

use super::{Backend, BackendError, BackendResult, Bytes, Entry};

pub use super::rule::Op;
use super::rule::{KeyMatch, Selector, Turn};

/// A point where matching calls are held until the test says go.
pub struct Gate {
    state: Mutex<GateState>,
    changed: Condvar,
    release: tokio::sync::watch::Sender<bool>,
}

#[derive(Default)]
struct GateState {
    /// Calls that have arrived at the gate.
    reached: usize,
}

impl Gate {
    fn new() -> Arc<Gate> {
        Arc::new(Gate {
            state: Mutex::new(GateState::default()),
            changed: Condvar::new(),
            release: tokio::sync::watch::Sender::new(false),
        })
    }

    /// Blocks until a call is held at the gate.
    pub fn wait_reached(&self) {
        let Ok(mut s) = self.state.lock() else { return };
        while s.reached == 0 {
            s = match self.changed.wait(s) {
                Ok(s) => s,
                Err(_) => return,
            };
        }
    }

    /// Whether a call has arrived at the gate.
    pub fn is_reached(&self) -> bool {
        self.state.lock().map(|s| s.reached > 0).unwrap_or(false)
    }

    /// Lets every held call, and every later one, through.
    pub fn release(&self) {
        self.release.send_replace(true);
    }

    async fn pass(&self) {
        if let Ok(mut s) = self.state.lock() {
            s.reached += 1;
        }
        self.changed.notify_all();
        let mut rx = self.release.subscribe();
        let _ = rx.wait_for(|open| *open).await;
    }
}

/// Counts matching calls and lets a test wait for the n-th.
#[derive(Default)]
pub struct Counter {
    count: Mutex<usize>,
    changed: Condvar,
}

impl Counter {
    pub fn get(&self) -> usize {
        self.count.lock().map(|c| *c).unwrap_or(0)
    }

    /// Blocks until at least `n` calls have completed.
    pub fn wait_for(&self, n: usize) {
        let Ok(mut c) = self.count.lock() else { return };
        while *c < n {
            c = match self.changed.wait(c) {
                Ok(c) => c,
                Err(_) => return,
            };
        }
    }

    fn bump(&self) {
        if let Ok(mut c) = self.count.lock() {
            *c += 1;
        }
        self.changed.notify_all();
    }
}

/// What a rule does to a matching call.
#[derive(Clone)]
pub enum Action {
    /// Hold the call before it reaches the inner backend.
    PauseBefore(Arc<Gate>),
    /// Let the call complete, then hold its result.
    PauseAfter(Arc<Gate>),
    /// Fail the call (without reaching the inner backend).
    Fail,
    /// Run a function after the call completed.
    Hook(Arc<dyn Fn() + Send + Sync>),
    /// Only count completed calls.
    Count(Arc<Counter>),
}

struct Rule {
    selector: Selector,
    action: Action,
}

/// The wrapper. Rules are tried in the order they were added; every rule
/// that matches a call applies to it.
pub struct PausingBackend {
    inner: Arc<dyn Backend>,
    rules: Mutex<Vec<Rule>>,
}

impl PausingBackend {
    pub fn new(inner: Arc<dyn Backend>) -> Arc<PausingBackend> {
        Arc::new(PausingBackend { inner, rules: Mutex::new(Vec::new()) })
    }

    /// Adds a rule for calls of `op` on keys starting with `prefix`: the first
    /// `skip` are let through, the next `times` get `action`.
    pub fn add_rule(&self, op: Op, prefix: &str, skip: usize, times: usize, action: Action) {
        if let Ok(mut rules) = self.rules.lock() {
            let times = (times != usize::MAX).then_some(times);
            rules.push(Rule { selector: Selector::new(op, prefix, KeyMatch::Prefix, skip, times), action });
        }
    }

    /// Holds the first matching call after it completed; returns its gate.
    pub fn pause_after(&self, op: Op, prefix: &str) -> Arc<Gate> {
        let gate = Gate::new();
        self.add_rule(op, prefix, 0, 1, Action::PauseAfter(gate.clone()));
        gate
    }

    /// Holds the first matching call before it reaches the store.
    pub fn pause_before(&self, op: Op, prefix: &str) -> Arc<Gate> {
        let gate = Gate::new();
        self.add_rule(op, prefix, 0, 1, Action::PauseBefore(gate.clone()));
        gate
    }

    /// Fails every matching call after the first `after`.
    pub fn fail_after(&self, op: Op, prefix: &str, after: usize) {
        self.add_rule(op, prefix, after, usize::MAX, Action::Fail);
    }

    /// Counts matching calls.
    pub fn counter(&self, op: Op, prefix: &str) -> Arc<Counter> {
        let counter = Arc::new(Counter::default());
        self.add_rule(op, prefix, 0, usize::MAX, Action::Count(counter.clone()));
        counter
    }

    /// The actions that apply to this call, consuming their budget.
    fn actions(&self, op: Op, key: &str) -> Vec<Action> {
        let Ok(mut rules) = self.rules.lock() else { return Vec::new() };
        let mut out = Vec::new();
        for rule in rules.iter_mut() {
            if rule.selector.turn(op, key) == Turn::Applies {
                out.push(rule.action.clone());
            }
        }
        out
    }

    async fn run<T>(
        &self,
        op: Op,
        key: &str,
        call: impl std::future::Future<Output = BackendResult<T>>,
    ) -> BackendResult<T> {
        let actions = self.actions(op, key);
        for a in &actions {
            match a {
                Action::PauseBefore(gate) => gate.pass().await,
                Action::Fail => {
                    return Err(BackendError::Unavailable {
                        location: self.inner.location(),
                        message: format!("{} {key}: failure injected by a test", op.name()),
                    });
                }
                _ => {}
            }
        }
        let result = call.await;
        for a in &actions {
            match a {
                Action::PauseAfter(gate) => gate.pass().await,
                Action::Hook(f) => f(),
                Action::Count(c) => c.bump(),
                _ => {}
            }
        }
        result
    }
}

#[async_trait]
impl Backend for PausingBackend {
    forward!(location, concurrency, wire_stats, storage_classes, retention, adopt);

    async fn put(&self, key: &str, data: Bytes) -> BackendResult<()> {
        self.run(Op::Put, key, self.inner.put(key, data)).await
    }

    async fn get(&self, key: &str, max_len: u64) -> BackendResult<Vec<u8>> {
        self.run(Op::Get, key, self.inner.get(key, max_len)).await
    }

    async fn get_range(&self, key: &str, offset: u64, len: u64) -> BackendResult<Vec<u8>> {
        self.run(Op::Get, key, self.inner.get_range(key, offset, len)).await
    }

    async fn list(&self, prefix: &str) -> BackendResult<Vec<Entry>> {
        self.run(Op::List, prefix, self.inner.list(prefix)).await
    }

    async fn delete(&self, key: &str) -> BackendResult<()> {
        self.run(Op::Delete, key, self.inner.delete(key)).await
    }

    async fn sync(&self) -> BackendResult<()> {
        self.inner.sync().await
    }

    async fn create(&self) -> BackendResult<()> {
        self.inner.create().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::local::LocalBackend;

    #[test]
    fn holds_a_call_until_released_and_fails_after_the_first() {
        let dir = tempfile::tempdir().unwrap();
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let b = PausingBackend::new(Arc::new(LocalBackend::new(dir.path())));
        rt.block_on(b.create()).unwrap();
        let gate = b.pause_after(Op::List, "chunks/");
        b.fail_after(Op::Put, "locks/", 1);
        let listed = rt.spawn({
            let b = b.clone();
            async move { b.list("chunks/").await }
        });
        gate.wait_reached();
        assert!(!listed.is_finished(), "the list is held at the gate");
        gate.release();
        assert!(rt.block_on(listed).unwrap().unwrap().is_empty());
        // A later list passes: the rule applied once.
        rt.block_on(b.list("chunks/")).unwrap();
        rt.block_on(b.put("locks/a", Bytes::from_static(b"1"))).unwrap();
        assert!(rt.block_on(b.put("locks/a", Bytes::from_static(b"2"))).is_err());
        assert_eq!(rt.block_on(b.get("locks/a", u64::MAX)).unwrap(), b"1");
        rt.block_on(b.put("snapshots/a", Bytes::from_static(b"1"))).unwrap();
    }
}
