//! The retry policy, the same for every store: a layer around a backend
//! that makes a failed request again when the failure may pass, and
//! abandons a request that gets no answer in time.
//!
//! - A request that fails with [`BackendError::Transient`], that gets no
//!   answer within [`RetryPolicy::timeout`], or a ranged read that comes
//!   back shorter than asked, is made again, up to [`RetryPolicy::attempts`]
//!   attempts in all, with exponential backoff (from
//!   [`RetryPolicy::initial_backoff`], doubling, at most
//!   [`RetryPolicy::max_backoff`], each delay between half and all of that).
//! - Every other error (a missing object, a refused permission, a full
//!   disk, an answer from S3 after its SDK's own retries) is returned at once:
//!   the command fails with it, naming the object.
//! - What comes back is not authenticated here (the layer does not know the
//!   kinds of objects); the readers re-read an object once when it fails
//!   authentication ([`crate::repo::read_twice`]), so that a bit flipped on
//!   the way is not taken for damage at rest.
//!
//! Every request is safe to repeat: a PUT writes the same bytes under the
//! same name (or a name of its own), a DELETE of a missing object succeeds,
//! reads and listings change nothing.
//!
//! [`crate::Repository`] wraps every backend it opens in this layer (unless
//! the backend says it [`Backend::retries`] already).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use super::{Backend, BackendError, BackendResult, BlockingRead, Bytes, Entry};

/// The environment variable that sets [`RetryPolicy::timeout`], in seconds
/// (fractions allowed): for tests, and for links where a 32 MiB upload
/// takes longer than the default.
pub const TIMEOUT_VAR: &str = "COFFER_REQUEST_TIMEOUT";

/// How requests are retried and how long one may take.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts per request, the first one included (at least 1).
    pub attempts: u32,
    /// The delay before the first retry; it doubles for each further one.
    pub initial_backoff: Duration,
    /// The longest delay between two attempts.
    pub max_backoff: Duration,
    /// How long one attempt may take before it is abandoned (and, if
    /// attempts are left, made again).
    pub timeout: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: 5,
            initial_backoff: Duration::from_millis(250),
            max_backoff: Duration::from_secs(10),
            // Far more than a 32 MiB pack takes on a slow link, and more
            // than the S3 SDK's own timeouts for its attempts (300 s).
            timeout: Duration::from_secs(30 * 60),
        }
    }
}

impl RetryPolicy {
    /// The default policy, with the timeout from [`TIMEOUT_VAR`] if it is set
    /// to a positive number of seconds.
    pub fn from_env() -> RetryPolicy {
        let mut policy = RetryPolicy::default();
        if let Ok(value) = std::env::var(TIMEOUT_VAR) {
            match value.trim().parse::<f64>() {
                Ok(secs) if secs > 0.0 && secs.is_finite() => policy.timeout = Duration::from_secs_f64(secs),
                _ => tracing::warn!("ignoring {TIMEOUT_VAR}={value:?}: expected a positive number of seconds"),
            }
        }
        policy
    }

    /// The delay before attempt `attempt` (2 for the first retry), with
    /// jitter: between half and all of the exponential backoff.
    fn backoff(&self, attempt: u32) -> Duration {
        let doublings = attempt.saturating_sub(2).min(20);
        let full = self.initial_backoff.saturating_mul(1 << doublings).min(self.max_backoff);
        let mut byte = [0u8; 1];
        crate::crypto::fill_random(&mut byte);
        full / 2 + full.mul_f64(f64::from(byte[0]) / 512.0)
    }
}

/// The layer: a backend that retries the requests of the one it wraps.
pub struct RetryBackend {
    inner: Arc<dyn Backend>,
    policy: RetryPolicy,
}

impl RetryBackend {
    pub fn new(inner: Arc<dyn Backend>, policy: RetryPolicy) -> RetryBackend {
        let policy = RetryPolicy { attempts: policy.attempts.max(1), ..policy };
        RetryBackend { inner, policy }
    }

    /// `inner` in the layer, with the policy from the environment, unless it
    /// retries already.
    pub fn wrap(inner: Arc<dyn Backend>) -> Arc<dyn Backend> {
        if inner.retries() { inner } else { Arc::new(RetryBackend::new(inner, RetryPolicy::from_env())) }
    }

    pub fn policy(&self) -> RetryPolicy {
        self.policy
    }

    fn timed_out(&self, op: &str, key: &str) -> BackendError {
        BackendError::Transient {
            location: self.inner.location(),
            message: format!("{op} {key}: no answer within {:?}", self.policy.timeout),
        }
    }

    /// Runs `call` until it succeeds, fails for good, or the attempts are
    /// spent; `check` turns a wrong answer (a short read) into a transient
    /// error.
    async fn run<T, F, Fut>(
        &self,
        op: &str,
        key: &str,
        call: F,
        check: impl Fn(T) -> BackendResult<T>,
    ) -> BackendResult<T>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = BackendResult<T>>,
    {
        let mut attempt = 1;
        loop {
            let result = match tokio::time::timeout(self.policy.timeout, call()).await {
                Ok(result) => result.and_then(&check),
                Err(_) => Err(self.timed_out(op, key)),
            };
            match result {
                Err(e) if e.is_transient() && attempt < self.policy.attempts => {
                    attempt += 1;
                    tracing::debug!("{e}; attempt {attempt} of {}", self.policy.attempts);
                    tokio::time::sleep(self.policy.backoff(attempt)).await;
                }
                Err(e) if e.is_transient() => return Err(gave_up(e, attempt)),
                other => return other,
            }
        }
    }
}

/// The last transient error, saying how many attempts were made.
fn gave_up(e: BackendError, attempts: u32) -> BackendError {
    match e {
        BackendError::Transient { location, message } if attempts > 1 => {
            BackendError::Transient { location, message: format!("{message} (gave up after {attempts} attempts)") }
        }
        e => e,
    }
}

/// A ranged read that came back shorter than asked: worth another try
/// (the store answers a range past the object's end with an error, not a
/// shorter body).
fn full_range(location: &str, key: &str, len: u64, data: Vec<u8>) -> BackendResult<Vec<u8>> {
    if data.len() as u64 == len {
        return Ok(data);
    }
    Err(BackendError::Transient {
        location: location.to_string(),
        message: format!("GET {key}: {} bytes came back of the {len} asked for", data.len()),
    })
}

#[async_trait]
impl Backend for RetryBackend {
    forward!(location, concurrency, wire_stats, storage_classes, retention, adopt);

    async fn put(&self, key: &str, data: Bytes) -> BackendResult<()> {
        self.run("PUT", key, || self.inner.put(key, data.clone()), Ok).await
    }

    async fn get(&self, key: &str, max_len: u64) -> BackendResult<Vec<u8>> {
        self.run("GET", key, || self.inner.get(key, max_len), Ok).await
    }

    async fn get_into(&self, key: &str, max_len: u64, buf: Vec<u8>) -> BackendResult<Vec<u8>> {
        // The buffer goes to the first attempt; a retry reads into a new one.
        let spare = std::sync::Mutex::new(Some(buf));
        let call = || {
            let buf = spare.lock().ok().and_then(|mut b| b.take()).unwrap_or_default();
            self.inner.get_into(key, max_len, buf)
        };
        self.run("GET", key, call, Ok).await
    }

    async fn get_range(&self, key: &str, offset: u64, len: u64) -> BackendResult<Vec<u8>> {
        let location = self.inner.location();
        let check = |data| full_range(&location, key, len, data);
        self.run("GET", key, || self.inner.get_range(key, offset, len), check).await
    }

    fn blocking_reads(&self) -> Option<&dyn BlockingRead> {
        self.inner.blocking_reads().map(|_| self as &dyn BlockingRead)
    }

    async fn list(&self, prefix: &str) -> BackendResult<Vec<Entry>> {
        self.run("LIST", prefix, || self.inner.list(prefix), Ok).await
    }

    async fn delete(&self, key: &str) -> BackendResult<()> {
        self.run("DELETE", key, || self.inner.delete(key), Ok).await
    }

    async fn sync(&self) -> BackendResult<()> {
        self.run("SYNC", "", || self.inner.sync(), Ok).await
    }

    async fn create(&self) -> BackendResult<()> {
        self.run("CREATE", "", || self.inner.create(), Ok).await
    }

    fn retries(&self) -> bool {
        true
    }
}

/// The blocking reads of a store whose reads are file reads: retried the
/// same way, without a timeout (a blocking read cannot be abandoned).
impl BlockingRead for RetryBackend {
    fn get_blocking(&self, key: &str, max_len: u64) -> BackendResult<Vec<u8>> {
        self.run_blocking(|reads| reads.get_blocking(key, max_len), Ok)
    }

    fn get_range_blocking(&self, key: &str, offset: u64, len: u64) -> BackendResult<Vec<u8>> {
        let location = self.inner.location();
        let check = |data| full_range(&location, key, len, data);
        self.run_blocking(|reads| reads.get_range_blocking(key, offset, len), check)
    }
}

impl RetryBackend {
    fn run_blocking<T>(
        &self,
        call: impl Fn(&dyn BlockingRead) -> BackendResult<T>,
        check: impl Fn(T) -> BackendResult<T>,
    ) -> BackendResult<T> {
        let Some(reads) = self.inner.blocking_reads() else {
            return Err(BackendError::Unavailable {
                location: self.inner.location(),
                message: "this store has no blocking reads".into(),
            });
        };
        let mut attempt = 1;
        loop {
            match call(reads).and_then(&check) {
                Err(e) if e.is_transient() && attempt < self.policy.attempts => {
                    attempt += 1;
                    std::thread::sleep(self.policy.backoff(attempt));
                }
                Err(e) => return Err(gave_up(e, attempt)),
                ok => return ok,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::local::LocalBackend;
    use crate::backend::testing::{Fault, FaultBackend, FaultKind, Op};

    fn quick() -> RetryPolicy {
        RetryPolicy {
            attempts: 3,
            initial_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(4),
            timeout: Duration::from_millis(200),
        }
    }

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
    }

    fn layered(dir: &std::path::Path) -> (Arc<FaultBackend>, RetryBackend) {
        let faulty = Arc::new(FaultBackend::new(Arc::new(LocalBackend::new(dir))));
        let layer = RetryBackend::new(faulty.clone(), quick());
        (faulty, layer)
    }

    #[test]
    fn transient_failures_and_hangs_are_retried_permanent_ones_are_not() {
        let dir = tempfile::tempdir().unwrap();
        let (faulty, b) = layered(dir.path());
        rt().block_on(async {
            b.create().await.unwrap();
            faulty.add(Fault::first(Op::Put, "data/", 2, FaultKind::Transient));
            b.put("data/aa/aa1", Bytes::from_static(b"xyz")).await.unwrap();
            assert_eq!(faulty.injected(), 2);
            // A hang is abandoned after the timeout and the request made again.
            faulty.add(Fault::first(Op::Get, "data/", 1, FaultKind::Hang));
            let started = std::time::Instant::now();
            assert_eq!(b.get("data/aa/aa1", u64::MAX).await.unwrap(), b"xyz");
            assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
            // A short ranged read is read again.
            faulty.add(Fault::first(Op::Get, "data/", 1, FaultKind::Truncated));
            assert_eq!(b.get_range("data/aa/aa1", 1, 2).await.unwrap(), b"yz");
            // Three transient failures in a row exhaust the attempts.
            faulty.add(Fault::first(Op::List, "data/", 3, FaultKind::Transient));
            let e = b.list("data/").await.unwrap_err().to_string();
            assert!(e.contains("LIST data/") && e.contains("3 attempts"), "{e}");
            // A permanent failure is not retried.
            let before = faulty.injected();
            faulty.add(Fault::first(Op::Delete, "data/", 1, FaultKind::Permanent));
            assert!(b.delete("data/aa/aa1").await.is_err());
            assert_eq!(faulty.injected(), before + 1);
            b.delete("data/aa/aa1").await.unwrap();
            // A missing object is not retried either.
            assert!(b.get("data/aa/aa1", u64::MAX).await.unwrap_err().is_not_found());
        });
    }

    #[test]
    fn blocking_reads_are_retried_too() {
        let dir = tempfile::tempdir().unwrap();
        let local: Arc<dyn Backend> = Arc::new(LocalBackend::new(dir.path()));
        let b = RetryBackend::new(local.clone(), quick());
        rt().block_on(async {
            b.create().await.unwrap();
            b.put("data/aa/aa1", Bytes::from_static(b"xyz")).await.unwrap();
        });
        let reads = b.blocking_reads().expect("a local folder reads blocking");
        assert_eq!(reads.get_range_blocking("data/aa/aa1", 0, 3).unwrap(), b"xyz");
        // Past the end is an error of the store, not a transient one.
        assert!(reads.get_range_blocking("data/aa/aa1", 2, 3).is_err());
        assert!(b.retries() && !local.retries());
    }

    #[test]
    fn backoff_doubles_with_jitter_up_to_the_maximum() {
        assert_eq!(RetryPolicy::default().attempts, 5);
        let p = RetryPolicy { initial_backoff: Duration::from_millis(100), ..RetryPolicy::default() };
        for attempt in 2..6 {
            let full = Duration::from_millis(100 << (attempt - 2));
            let d = p.backoff(attempt);
            assert!(d >= full / 2 && d <= full, "attempt {attempt}: {d:?}");
        }
        assert!(p.backoff(40) <= p.max_backoff);
    }
}
