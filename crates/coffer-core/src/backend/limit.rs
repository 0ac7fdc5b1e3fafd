//! `--limit-upload` and `--limit-download`: a backend that paces the bytes
//! of object bodies to a rate, so that a nightly backup leaves the rest of
//! a home connection usable.
//!
//! Pacing, not a bucket of tokens: each transfer reserves the slot of time
//! its bytes take at the rate, after the slots reserved before it; it
//! starts no earlier than its slot does and is answered no earlier than
//! its slot ends. Over any stretch the bytes moved are at most the rate's,
//! however many requests are in flight. A whole-object download learns its
//! length only when its bytes arrive: its slot is reserved then.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;

use super::{Backend, BackendResult, Bytes, Entry};

/// One direction's pace.
#[derive(Debug)]
struct Pace {
    bytes_per_sec: u64,
    /// When the bytes reserved so far are paid for.
    free_at: Mutex<Option<Instant>>,
}

impl Pace {
    fn new(bytes_per_sec: u64) -> Pace {
        Pace { bytes_per_sec: bytes_per_sec.max(1), free_at: Mutex::new(None) }
    }

    /// Reserves the slot of `bytes` at `now`: when it starts and ends.
    fn reserve(&self, now: Instant, bytes: u64) -> (Instant, Instant) {
        let takes = Duration::from_secs_f64(bytes as f64 / self.bytes_per_sec as f64);
        let Ok(mut free_at) = self.free_at.lock() else { return (now, now) };
        let start = free_at.filter(|t| *t > now).unwrap_or(now);
        *free_at = Some(start + takes);
        (start, start + takes)
    }
}

async fn until(t: Instant) {
    tokio::time::sleep_until(tokio::time::Instant::from_std(t)).await;
}

/// A backend whose uploads and downloads are paced to at most the given
/// bytes per second (`None`: not limited).
pub struct LimitBackend {
    inner: std::sync::Arc<dyn Backend>,
    up: Option<Pace>,
    down: Option<Pace>,
}

impl LimitBackend {
    pub fn new(inner: std::sync::Arc<dyn Backend>, upload: Option<u64>, download: Option<u64>) -> LimitBackend {
        LimitBackend { inner, up: upload.map(Pace::new), down: download.map(Pace::new) }
    }

    /// Runs a transfer of `bytes` in its slot of `pace`.
    async fn paced<T>(pace: Option<&Pace>, bytes: u64, transfer: impl std::future::Future<Output = T>) -> T {
        let Some(pace) = pace else { return transfer.await };
        let (start, end) = pace.reserve(Instant::now(), bytes);
        until(start).await;
        let out = transfer.await;
        until(end).await;
        out
    }
}

#[async_trait]
impl Backend for LimitBackend {
    forward!(location, concurrency, wire_stats, storage_classes, retention, adopt);

    async fn put(&self, key: &str, data: Bytes) -> BackendResult<()> {
        let len = data.len() as u64;
        LimitBackend::paced(self.up.as_ref(), len, self.inner.put(key, data)).await
    }

    async fn get(&self, key: &str, max_len: u64) -> BackendResult<Vec<u8>> {
        let data = self.inner.get(key, max_len).await?;
        if let Some(pace) = &self.down {
            until(pace.reserve(Instant::now(), data.len() as u64).1).await;
        }
        Ok(data)
    }

    async fn get_range(&self, key: &str, offset: u64, len: u64) -> BackendResult<Vec<u8>> {
        LimitBackend::paced(self.down.as_ref(), len, self.inner.get_range(key, offset, len)).await
    }

    async fn list(&self, prefix: &str) -> BackendResult<Vec<Entry>> {
        self.inner.list(prefix).await
    }

    async fn delete(&self, key: &str) -> BackendResult<()> {
        self.inner.delete(key).await
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

    #[test]
    fn transfers_queue_behind_what_is_reserved() {
        let pace = Pace::new(1000);
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        assert_eq!(pace.reserve(t0, 500), (t0, ms(500)), "the first starts at once, ends after its 0.5 s");
        assert_eq!(pace.reserve(t0, 1000), (ms(500), ms(1500)), "the next waits for it");
        assert_eq!(pace.reserve(ms(100), 10), (ms(1500), ms(1510)));
        // After an idle spell nothing is owed.
        assert_eq!(pace.reserve(ms(10_000), 1000), (ms(10_000), ms(11_000)));
        // 10 MB at 1 MB/s: ten seconds, whatever the pieces.
        let pace = Pace::new(1_000_000);
        let mut last = (t0, t0);
        for _ in 0..10 {
            last = pace.reserve(t0, 1_000_000);
        }
        assert_eq!(last, (ms(9_000), ms(10_000)), "the tenth megabyte starts after nine seconds");
    }
}
