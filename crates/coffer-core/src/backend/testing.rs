//! Wrappers around any backend that make it slow or make it fail, so that a
//! reliability test (requests in flight, retries, a failed upload leaving no
//! snapshot) runs unchanged on a local folder and on S3.
//!
//! They are public and always compiled, not `cfg(test)`: the end-to-end tests
//! in `tests/` and the benchmarks build against the library as a user does.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;

use super::{Backend, BackendError, BackendResult, Bytes, Entry};

/// Adds a fixed delay to every request, as a link with that round-trip time
/// would, and records how many requests were in flight at most. A pipeline
/// that keeps many requests in flight is barely slowed down by it; one that
/// waits for each request in turn is slowed down by the delay per request.
pub struct LatencyBackend {
    inner: Arc<dyn Backend>,
    delay: Duration,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
}

/// Counts a request in flight for as long as it lives.
struct InFlightGuard<'a>(&'a AtomicUsize);

impl Drop for InFlightGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl LatencyBackend {
    pub fn new(inner: Arc<dyn Backend>, delay: Duration) -> LatencyBackend {
        LatencyBackend { inner, delay, in_flight: AtomicUsize::new(0), max_in_flight: AtomicUsize::new(0) }
    }

    /// The most requests that were in flight at the same time so far.
    pub fn max_in_flight(&self) -> usize {
        self.max_in_flight.load(Ordering::SeqCst)
    }

    /// Forgets the maximum, to measure the next phase on its own.
    pub fn reset_max_in_flight(&self) {
        self.max_in_flight.store(0, Ordering::SeqCst);
    }

    /// Enters a request: counts it and waits the delay.
    async fn enter(&self) -> InFlightGuard<'_> {
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_in_flight.fetch_max(now, Ordering::SeqCst);
        let guard = InFlightGuard(&self.in_flight);
        tokio::time::sleep(self.delay).await;
        guard
    }
}

#[async_trait]
impl Backend for LatencyBackend {
    forward!(location, concurrency, wire_stats, storage_classes, retention, adopt);

    async fn put(&self, key: &str, data: Bytes) -> BackendResult<()> {
        let _g = self.enter().await;
        self.inner.put(key, data).await
    }

    async fn get(&self, key: &str, max_len: u64) -> BackendResult<Vec<u8>> {
        let _g = self.enter().await;
        self.inner.get(key, max_len).await
    }

    async fn get_range(&self, key: &str, offset: u64, len: u64) -> BackendResult<Vec<u8>> {
        let _g = self.enter().await;
        self.inner.get_range(key, offset, len).await
    }

    async fn list(&self, prefix: &str) -> BackendResult<Vec<Entry>> {
        let _g = self.enter().await;
        self.inner.list(prefix).await
    }

    async fn delete(&self, key: &str) -> BackendResult<()> {
        let _g = self.enter().await;
        self.inner.delete(key).await
    }

    async fn sync(&self) -> BackendResult<()> {
        self.inner.sync().await
    }

    async fn create(&self) -> BackendResult<()> {
        self.inner.create().await
    }
}

pub use super::rule::Op;
use super::rule::{KeyMatch, Selector, Turn};

/// How an injected failure looks to the caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultKind {
    /// A failure that may pass on its own (a dropped connection, a 503):
    /// reported as the store being unavailable.
    Transient,
    /// A failure that will not pass (a full disk, a refused permission):
    /// reported as an I/O error on the object.
    Permanent,
    /// A read whose body comes back cut short, without an error (a broken
    /// connection a store did not notice). Other requests fail as
    /// [`FaultKind::Transient`].
    Truncated,
    /// A read whose body comes back with one bit flipped (damage on the
    /// way, not at rest). Other requests fail as [`FaultKind::Transient`].
    BitFlip,
    /// A request that gets no answer: it sleeps for the wrapper's hang time
    /// (an hour unless set), far past any timeout, then fails as
    /// [`FaultKind::Transient`].
    Hang,
}

impl FaultKind {
    /// Every kind, for [`RandomFaults`].
    pub const ALL: [FaultKind; 5] =
        [FaultKind::Transient, FaultKind::Permanent, FaultKind::Truncated, FaultKind::BitFlip, FaultKind::Hang];

    /// The kinds a retrying client must get through without failing.
    pub const PASSING: [FaultKind; 4] =
        [FaultKind::Transient, FaultKind::Truncated, FaultKind::BitFlip, FaultKind::Hang];

    fn index(self) -> usize {
        match self {
            FaultKind::Transient => 0,
            FaultKind::Permanent => 1,
            FaultKind::Truncated => 2,
            FaultKind::BitFlip => 3,
            FaultKind::Hang => 4,
        }
    }
}

/// Faults at random, from a seed: each request of one of `ops` (on a key
/// starting with one of `prefixes`, or any key if that is empty) fails with
/// probability `rate`, with a kind drawn from `kinds`. Which requests fail
/// depends on the seed and on the order the requests arrive in.
#[derive(Clone, Debug)]
pub struct RandomFaults {
    pub seed: u64,
    /// The share of requests that fail, from 0 to 1.
    pub rate: f64,
    pub ops: Vec<Op>,
    pub prefixes: Vec<String>,
    pub kinds: Vec<FaultKind>,
}

impl RandomFaults {
    /// `rate` of every put, get, list and delete fails, with any of `kinds`.
    pub fn new(seed: u64, rate: f64, kinds: &[FaultKind]) -> RandomFaults {
        RandomFaults {
            seed,
            rate,
            ops: vec![Op::Put, Op::Get, Op::List, Op::Delete],
            prefixes: Vec::new(),
            kinds: kinds.to_vec(),
        }
    }

    fn picks(&self, op: Op, key: &str) -> bool {
        self.ops.contains(&op) && (self.prefixes.is_empty() || self.prefixes.iter().any(|p| key.starts_with(p)))
    }
}

/// The random part of a [`FaultBackend`]: the faults and the generator.
struct Random {
    faults: RandomFaults,
    state: u64,
}

impl Random {
    /// SplitMix64: good enough to spread faults, and seedable.
    fn next(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Decides one request: `None` passes; else the fault and a random
    /// number for where it strikes.
    fn decide(&mut self, op: Op, key: &str) -> Option<(FaultKind, u64)> {
        if !self.faults.picks(op, key) || self.faults.kinds.is_empty() {
            return None;
        }
        let roll = (self.next() >> 11) as f64 / (1u64 << 53) as f64;
        if roll >= self.faults.rate {
            return None;
        }
        let pick = (self.next() % self.faults.kinds.len() as u64) as usize;
        let kind = self.faults.kinds[pick];
        Some((kind, self.next()))
    }
}

/// One rule: requests of `op` whose key (or listed prefix) contains
/// `pattern` fail, after `skip` matching requests have passed, `times` times
/// (`None`: for ever).
#[derive(Clone, Debug)]
pub struct Fault {
    pub op: Op,
    pub pattern: String,
    pub skip: usize,
    pub times: Option<usize>,
    pub kind: FaultKind,
}

impl Fault {
    /// Every request of `op` on a key containing `pattern` fails, for ever.
    pub fn always(op: Op, pattern: impl Into<String>, kind: FaultKind) -> Fault {
        Fault { op, pattern: pattern.into(), skip: 0, times: None, kind }
    }

    /// The first `times` such requests fail, the later ones pass.
    pub fn first(op: Op, pattern: impl Into<String>, times: usize, kind: FaultKind) -> Fault {
        Fault { op, pattern: pattern.into(), skip: 0, times: Some(times), kind }
    }

    /// The requests after the first `skip` matching ones fail, for ever.
    pub fn after(op: Op, pattern: impl Into<String>, skip: usize, kind: FaultKind) -> Fault {
        Fault { op, pattern: pattern.into(), skip, times: None, kind }
    }
}

struct Rule {
    selector: Selector,
    kind: FaultKind,
}

/// Fails chosen requests of the backend it wraps, by key pattern and count
/// (rules, [`FaultBackend::add`]) or at random ([`FaultBackend::set_random`]);
/// every other request passes through unchanged.
pub struct FaultBackend {
    inner: Arc<dyn Backend>,
    rules: Mutex<Vec<Rule>>,
    random: Mutex<Option<Random>>,
    /// Random faults injected so far, by kind ([`FaultKind::index`]).
    random_injected: Mutex<[usize; 5]>,
    hang: Duration,
}

/// What happens to one request.
enum Strike {
    Pass,
    /// Fail before the store sees it.
    Fail(BackendError),
    /// Let the store carry it out, then fail (a PUT or DELETE that was done
    /// but whose answer was lost).
    FailAfter(BackendError),
    /// Damage what a read returns: cut it to `n % len` bytes, or flip bit
    /// `n % (8 * len)`.
    Truncate(u64),
    Flip(u64),
    Hang,
}

impl FaultBackend {
    pub fn new(inner: Arc<dyn Backend>) -> FaultBackend {
        FaultBackend {
            inner,
            rules: Mutex::new(Vec::new()),
            random: Mutex::new(None),
            random_injected: Mutex::new([0; 5]),
            hang: Duration::from_secs(3600),
        }
    }

    /// How long a [`FaultKind::Hang`] sleeps (an hour by default).
    pub fn with_hang(mut self, hang: Duration) -> FaultBackend {
        self.hang = hang;
        self
    }

    /// Turns random faults on (replacing earlier ones); rules still apply
    /// first.
    pub fn set_random(&self, faults: RandomFaults) {
        if let Ok(mut random) = self.random.lock() {
            let state = faults.seed;
            *random = Some(Random { faults, state });
        }
    }

    /// How many random faults of `kind` have been injected so far.
    pub fn injected_kind(&self, kind: FaultKind) -> usize {
        self.random_injected.lock().map(|c| c[kind.index()]).unwrap_or(0)
    }

    /// Adds a rule; rules are checked in the order they were added, and the
    /// first that matches decides.
    pub fn add(&self, fault: Fault) {
        if let Ok(mut rules) = self.rules.lock() {
            let selector = Selector::new(fault.op, fault.pattern, KeyMatch::Contains, fault.skip, fault.times);
            rules.push(Rule { selector, kind: fault.kind });
        }
    }

    /// Removes every rule and the random faults: the backend behaves as the
    /// one it wraps.
    pub fn clear(&self) {
        if let Ok(mut rules) = self.rules.lock() {
            rules.clear();
        }
        if let Ok(mut random) = self.random.lock() {
            *random = None;
        }
    }

    /// How many failures have been injected so far, by rules and at random.
    pub fn injected(&self) -> usize {
        let by_rules = self.rules.lock().map(|r| r.iter().map(|r| r.selector.applied()).sum()).unwrap_or(0);
        by_rules + self.random_injected.lock().map(|c| c.iter().sum()).unwrap_or(0)
    }

    /// The error an injected failure of `kind` is reported as.
    fn error(&self, op: Op, key: &str, kind: FaultKind) -> BackendError {
        let message = format!("{} {key}: injected failure", op.name());
        match kind {
            FaultKind::Permanent => BackendError::Io { key: key.to_string(), error: std::io::Error::other(message) },
            _ => BackendError::Transient { location: self.inner.location(), message },
        }
    }

    /// What a fault of `kind` does to a request of `op`; `n` is a random
    /// number (or 0 for a rule).
    fn strike(&self, op: Op, key: &str, kind: FaultKind, n: u64) -> Strike {
        match (kind, op) {
            (FaultKind::Hang, _) => Strike::Hang,
            (FaultKind::Truncated, Op::Get) => Strike::Truncate(n),
            (FaultKind::BitFlip, Op::Get) => Strike::Flip(n),
            // Half the random transient failures of a write strike after
            // the store carried it out.
            (FaultKind::Transient, Op::Put | Op::Delete) if n % 2 == 1 => Strike::FailAfter(self.error(op, key, kind)),
            _ => Strike::Fail(self.error(op, key, kind)),
        }
    }

    fn decide(&self, op: Op, key: &str) -> Strike {
        if let Ok(mut rules) = self.rules.lock() {
            for rule in rules.iter_mut() {
                match rule.selector.turn(op, key) {
                    Turn::Other | Turn::Spent => continue,
                    // The first rule that matches decides: a skipped request passes.
                    Turn::Skipped => return Strike::Pass,
                    Turn::Applies => return self.strike(op, key, rule.kind, 0),
                }
            }
        }
        let decided = self.random.lock().ok().and_then(|mut r| r.as_mut().and_then(|r| r.decide(op, key)));
        let Some((kind, n)) = decided else { return Strike::Pass };
        if let Ok(mut counts) = self.random_injected.lock() {
            counts[kind.index()] += 1;
        }
        self.strike(op, key, kind, n)
    }

    /// Runs a request through the faults; `damage` applies a read's.
    async fn run<T>(
        &self,
        op: Op,
        key: &str,
        call: impl std::future::Future<Output = BackendResult<T>>,
        damage: impl FnOnce(T, &Strike) -> T,
    ) -> BackendResult<T> {
        let strike = self.decide(op, key);
        match strike {
            Strike::Pass => call.await,
            Strike::Fail(e) => Err(e),
            Strike::FailAfter(e) => {
                call.await?;
                Err(e)
            }
            Strike::Hang => {
                tokio::time::sleep(self.hang).await;
                Err(self.error(op, key, FaultKind::Hang))
            }
            Strike::Truncate(_) | Strike::Flip(_) => call.await.map(|v| damage(v, &strike)),
        }
    }

    async fn read(
        &self,
        key: &str,
        call: impl std::future::Future<Output = BackendResult<Vec<u8>>>,
    ) -> BackendResult<Vec<u8>> {
        self.run(Op::Get, key, call, damage).await
    }
}

/// Damages a read's bytes as `strike` says.
fn damage(mut data: Vec<u8>, strike: &Strike) -> Vec<u8> {
    let len = data.len() as u64;
    match *strike {
        Strike::Truncate(n) if len > 0 => data.truncate((n % len) as usize),
        Strike::Flip(n) if len > 0 => {
            let bit = n % (8 * len);
            data[(bit / 8) as usize] ^= 1 << (bit % 8);
        }
        _ => {}
    }
    data
}

#[async_trait]
impl Backend for FaultBackend {
    forward!(location, concurrency, wire_stats, storage_classes, retention, adopt);

    async fn put(&self, key: &str, data: Bytes) -> BackendResult<()> {
        self.run(Op::Put, key, self.inner.put(key, data), |v, _| v).await
    }

    async fn get(&self, key: &str, max_len: u64) -> BackendResult<Vec<u8>> {
        self.read(key, self.inner.get(key, max_len)).await
    }

    async fn get_range(&self, key: &str, offset: u64, len: u64) -> BackendResult<Vec<u8>> {
        self.read(key, self.inner.get_range(key, offset, len)).await
    }

    async fn list(&self, prefix: &str) -> BackendResult<Vec<Entry>> {
        self.run(Op::List, prefix, self.inner.list(prefix), |v, _| v).await
    }

    async fn delete(&self, key: &str) -> BackendResult<()> {
        self.run(Op::Delete, key, self.inner.delete(key), |v, _| v).await
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

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_time().build().unwrap()
    }

    #[test]
    fn faults_match_by_op_pattern_and_count() {
        let dir = tempfile::tempdir().unwrap();
        let local: Arc<dyn Backend> = Arc::new(LocalBackend::new(dir.path()));
        let b = FaultBackend::new(local);
        b.add(Fault::first(Op::Put, "data/", 2, FaultKind::Transient));
        b.add(Fault::after(Op::Get, "tree/", 1, FaultKind::Permanent));
        rt().block_on(async {
            b.create().await.unwrap();
            let e = b.put("data/aa/aa1", Bytes::from_static(b"x")).await.unwrap_err();
            assert!(e.is_transient(), "{e}");
            assert!(e.to_string().contains("PUT data/aa/aa1"), "{e}");
            assert!(b.put("data/aa/aa1", Bytes::from_static(b"x")).await.is_err());
            b.put("data/aa/aa1", Bytes::from_static(b"x")).await.unwrap();
            // Other keys and other operations pass.
            b.put("tree/bb/bb1", Bytes::from_static(b"t")).await.unwrap();
            assert_eq!(b.get("data/aa/aa1", u64::MAX).await.unwrap(), b"x");
            assert_eq!(b.get("tree/bb/bb1", u64::MAX).await.unwrap(), b"t");
            let e = b.get("tree/bb/bb1", u64::MAX).await.unwrap_err();
            assert!(matches!(e, BackendError::Io { .. }), "{e}");
            assert!(b.get("tree/bb/bb1", u64::MAX).await.is_err());
            assert_eq!(b.injected(), 4);
            b.clear();
            assert_eq!(b.get("tree/bb/bb1", u64::MAX).await.unwrap(), b"t");
        });
    }

    /// Runs 400 reads and writes of one object through random faults of
    /// every kind at 25 %, and tallies what came back.
    fn tally(seed: u64) -> (Vec<usize>, [usize; 5]) {
        let dir = tempfile::tempdir().unwrap();
        let local: Arc<dyn Backend> = Arc::new(LocalBackend::new(dir.path()));
        let b = FaultBackend::new(local).with_hang(Duration::from_millis(1));
        let body: Vec<u8> = (0..64u8).collect();
        rt().block_on(async {
            b.create().await.unwrap();
            b.put("data/aa/aa1", Bytes::from(body.clone())).await.unwrap();
            b.set_random(RandomFaults::new(seed, 0.25, &FaultKind::ALL));
            // ok, transient error, permanent error, short, flipped.
            let mut outcomes = [0usize; 5];
            for i in 0..400 {
                let got = if i % 2 == 0 {
                    b.get("data/aa/aa1", u64::MAX).await
                } else {
                    b.put("data/aa/aa1", Bytes::from(body.clone())).await.map(|()| body.clone())
                };
                let slot = match got {
                    Ok(v) if v == body => 0,
                    Err(e) if e.is_transient() => 1,
                    Err(BackendError::Io { .. }) => 2,
                    Ok(v) if v.len() < body.len() => {
                        assert_eq!(v[..], body[..v.len()], "a truncated read is a prefix");
                        3
                    }
                    Ok(v) => {
                        let flipped: u32 = v.iter().zip(&body).map(|(a, b)| (a ^ b).count_ones()).sum();
                        assert_eq!(flipped, 1, "one bit flipped");
                        4
                    }
                    Err(e) => panic!("unexpected {e}"),
                };
                outcomes[slot] += 1;
            }
            let kinds = FaultKind::ALL.map(|k| b.injected_kind(k));
            // Whatever was injected, the stored object is intact.
            b.clear();
            assert_eq!(b.get("data/aa/aa1", u64::MAX).await.unwrap(), body);
            (outcomes.to_vec(), kinds)
        })
    }

    #[test]
    fn random_faults_follow_the_rate_and_the_seed() {
        let (outcomes, kinds) = tally(7);
        let injected: usize = kinds.iter().sum();
        assert!((60..140).contains(&injected), "25 % of 400 requests: {injected} ({kinds:?})");
        assert!(kinds.iter().all(|&k| k > 0), "every kind was drawn: {kinds:?}");
        assert_eq!(outcomes[0] + injected, 400, "a request is damaged or passes: {outcomes:?}");
        assert!(outcomes[3] > 0 && outcomes[4] > 0, "reads came back short and flipped: {outcomes:?}");
        // The same seed, the same faults (one request at a time).
        assert_eq!(tally(7), (outcomes, kinds));
        assert_ne!(tally(8).1, kinds, "another seed, other faults");
    }

    #[test]
    fn random_faults_pick_ops_and_prefixes() {
        let dir = tempfile::tempdir().unwrap();
        let local: Arc<dyn Backend> = Arc::new(LocalBackend::new(dir.path()));
        let b = FaultBackend::new(local);
        let mut faults = RandomFaults::new(1, 1.0, &[FaultKind::Permanent]);
        faults.ops = vec![Op::Put];
        faults.prefixes = vec!["data/".into()];
        b.set_random(faults);
        rt().block_on(async {
            b.create().await.unwrap();
            assert!(b.put("data/aa/aa1", Bytes::from_static(b"x")).await.is_err());
            b.put("tree/aa/aa1", Bytes::from_static(b"x")).await.unwrap();
            assert_eq!(b.get("tree/aa/aa1", u64::MAX).await.unwrap(), b"x");
            assert_eq!((b.injected(), b.injected_kind(FaultKind::Permanent)), (1, 1));
        });
    }

    #[test]
    fn latency_counts_requests_in_flight() {
        let dir = tempfile::tempdir().unwrap();
        let local: Arc<dyn Backend> = Arc::new(LocalBackend::new(dir.path()));
        let b = Arc::new(LatencyBackend::new(local, Duration::from_millis(20)));
        rt().block_on(async {
            b.create().await.unwrap();
            b.put("config", Bytes::from_static(b"c")).await.unwrap();
            assert_eq!(b.max_in_flight(), 1, "one request at a time so far");
            let gets: Vec<_> = (0..6)
                .map(|_| {
                    let b = b.clone();
                    tokio::spawn(async move { b.get("config", u64::MAX).await })
                })
                .collect();
            for g in gets {
                assert_eq!(g.await.unwrap().unwrap(), b"c");
            }
            // Each request is held for 20 ms, far longer than it takes to
            // start six tasks; at least two overlapped.
            assert!(b.max_in_flight() >= 2, "{}", b.max_in_flight());
            assert!(b.max_in_flight() <= 6);
        });
    }
}
