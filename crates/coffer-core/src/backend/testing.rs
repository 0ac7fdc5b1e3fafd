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

use super::{Backend, BackendError, BackendResult, Bytes, Entry, WireStats};

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
    fn location(&self) -> String {
        self.inner.location()
    }

    fn concurrency(&self) -> usize {
        self.inner.concurrency()
    }

    fn wire_stats(&self) -> WireStats {
        self.inner.wire_stats()
    }

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

    fn adopt(&self, keys: &[String]) {
        self.inner.adopt(keys)
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

/// Fails chosen requests of the backend it wraps, by key pattern and count;
/// every other request passes through unchanged.
pub struct FaultBackend {
    inner: Arc<dyn Backend>,
    rules: Mutex<Vec<Rule>>,
}

impl FaultBackend {
    pub fn new(inner: Arc<dyn Backend>) -> FaultBackend {
        FaultBackend { inner, rules: Mutex::new(Vec::new()) }
    }

    /// Adds a rule; rules are checked in the order they were added, and the
    /// first that matches decides.
    pub fn add(&self, fault: Fault) {
        if let Ok(mut rules) = self.rules.lock() {
            let selector = Selector::new(fault.op, fault.pattern, KeyMatch::Contains, fault.skip, fault.times);
            rules.push(Rule { selector, kind: fault.kind });
        }
    }

    /// Removes every rule: the backend behaves as the one it wraps.
    pub fn clear(&self) {
        if let Ok(mut rules) = self.rules.lock() {
            rules.clear();
        }
    }

    /// How many failures have been injected so far.
    pub fn injected(&self) -> usize {
        self.rules.lock().map(|r| r.iter().map(|r| r.selector.applied()).sum()).unwrap_or(0)
    }

    fn check(&self, op: Op, key: &str) -> BackendResult<()> {
        let Ok(mut rules) = self.rules.lock() else { return Ok(()) };
        for rule in rules.iter_mut() {
            match rule.selector.turn(op, key) {
                Turn::Other | Turn::Spent => continue,
                // The first rule that matches decides: a skipped request passes.
                Turn::Skipped => return Ok(()),
                Turn::Applies => {}
            }
            let message = format!("{} {key}: injected failure", op.name());
            return Err(match rule.kind {
                FaultKind::Transient => BackendError::Unavailable { location: self.inner.location(), message },
                FaultKind::Permanent => {
                    BackendError::Io { key: key.to_string(), error: std::io::Error::other(message) }
                }
            });
        }
        Ok(())
    }
}

#[async_trait]
impl Backend for FaultBackend {
    fn location(&self) -> String {
        self.inner.location()
    }

    fn concurrency(&self) -> usize {
        self.inner.concurrency()
    }

    fn wire_stats(&self) -> WireStats {
        self.inner.wire_stats()
    }

    async fn put(&self, key: &str, data: Bytes) -> BackendResult<()> {
        self.check(Op::Put, key)?;
        self.inner.put(key, data).await
    }

    async fn get(&self, key: &str, max_len: u64) -> BackendResult<Vec<u8>> {
        self.check(Op::Get, key)?;
        self.inner.get(key, max_len).await
    }

    async fn get_range(&self, key: &str, offset: u64, len: u64) -> BackendResult<Vec<u8>> {
        self.check(Op::Get, key)?;
        self.inner.get_range(key, offset, len).await
    }

    async fn list(&self, prefix: &str) -> BackendResult<Vec<Entry>> {
        self.check(Op::List, prefix)?;
        self.inner.list(prefix).await
    }

    async fn delete(&self, key: &str) -> BackendResult<()> {
        self.check(Op::Delete, key)?;
        self.inner.delete(key).await
    }

    async fn sync(&self) -> BackendResult<()> {
        self.inner.sync().await
    }

    fn adopt(&self, keys: &[String]) {
        self.inner.adopt(keys)
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
            assert!(matches!(e, BackendError::Unavailable { .. }), "{e}");
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
