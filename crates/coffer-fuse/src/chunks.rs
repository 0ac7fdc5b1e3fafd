//! Decrypted chunks for reads: a bounded cache, one fetch per chunk however
//! many readers want it at once, and background prefetch for sequential
//! readers.
//!
//! Memory is bounded by the cache's capacity plus the chunks being fetched
//! (at most [`ChunkStore::max_in_flight`] prefetches, and one chunk per
//! FUSE worker thread), never by the size of the files read.

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex, mpsc};

use coffer_core::backend::Backend;
use coffer_core::blob::max_stored_len;
use coffer_core::crypto::{Keys, ObjectKind};
use coffer_core::index::BlobSet;
use coffer_core::packer::{READ_GAP, READ_MAX, plan_reads};
use coffer_core::repo::{Repository, decode_chunk_ref, fetch_blob, fetch_blob_blocking, locate_blob};
use coffer_core::tree::ChunkRef;
use coffer_core::{Error, Id};

use crate::lru::Lru;

pub type Chunk = Arc<coffer_core::blob::Decoded>;
/// A fetch's outcome, shared by every reader waiting for it.
pub type Fetched = Result<Chunk, Arc<Error>>;

pub struct ChunkStore {
    repo: Arc<Repository>,
    shared: Arc<Shared>,
    max_in_flight: usize,
    loader: Loader,
    /// The queue of the prefetch workers (see [`ChunkStore::new`]).
    jobs: mpsc::Sender<Job>,
}

/// A prefetch for a worker: its [`Pending`] holds what is left to do.
struct Job {
    chunk: ChunkRef,
    pending: Arc<Pending>,
}

/// What reading and decoding a chunk need; no reference to the repository (see [`Shared`]).
#[derive(Clone)]
struct Loader {
    keys: Arc<Keys>,
    repo_id: [u8; 32],
    max_len: usize,
    /// The store, for the workers' own reads where its reads block (a local
    /// folder); S3 reads go through the repository's runtime instead.
    backend: Arc<dyn Backend>,
    /// Where each chunk is; replaced when the mount sees new snapshots.
    blobs: Arc<std::sync::RwLock<Arc<BlobSet>>>,
}

impl Loader {
    fn blobs(&self) -> Arc<BlobSet> {
        self.blobs.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn decode(&self, chunk: &ChunkRef, stored: Vec<u8>) -> Fetched {
        decode_chunk_ref(&self.keys, &self.repo_id, self.max_len, chunk, stored).map(Arc::new).map_err(Arc::new)
    }

    /// Reads and decodes a chunk on this thread, from a store whose reads
    /// block; `None` for the other stores.
    fn read_and_decode(&self, chunk: &ChunkRef) -> Option<Fetched> {
        let reads = self.backend.blocking_reads()?;
        let blobs = self.blobs();
        Some(match fetch_blob_blocking(reads, &blobs, ObjectKind::Chunk, &chunk.0, max_stored_len(self.max_len)) {
            Ok(stored) => self.decode(chunk, stored),
            Err(e) => Err(Arc::new(e)),
        })
    }

    /// Does what is left of a prefetch: its read as well where the store's
    /// reads block, else only the decoding of bytes the runtime fetched.
    fn finish_prefetch(&self, shared: &Shared, chunk: &ChunkRef, pending: &Pending) -> Option<Fetched> {
        let result = match pending.take_work()? {
            // Queued only for a store whose reads block, which does not change.
            Work::Queued => self.read_and_decode(chunk).unwrap_or_else(|| {
                Err(Arc::new(Error::InvalidInput("this store cannot read on the calling thread".into())))
            }),
            Work::Fetched(stored) => self.decode(chunk, stored),
        };
        shared.finish(chunk, pending, result.clone());
        Some(result)
    }
}

/// What background fetches need. They hold no reference to the repository:
/// the last one would drop its runtime from inside that runtime.
struct Shared {
    cache: Mutex<Lru<Id, Chunk>>,
    in_flight: Mutex<HashMap<Id, Arc<Pending>>>,
}

/// A fetch under way; readers of the same chunk wait for it.
#[derive(Default)]
struct Pending {
    result: Mutex<Option<Fetched>>,
    done: Condvar,
    /// A prefetch's work that nobody has started: whoever takes it does it,
    /// a worker or a reader that needs the chunk now and would otherwise
    /// wait behind the queue.
    work: Mutex<Option<Work>>,
}

enum Work {
    /// Not read yet (a store whose reads block: the worker reads it).
    Queued,
    /// Read by the runtime; waiting to be decoded.
    Fetched(Vec<u8>),
}

impl Pending {
    fn take_work(&self) -> Option<Work> {
        self.work.lock().unwrap_or_else(|e| e.into_inner()).take()
    }

    fn set_work(&self, work: Work) {
        *self.work.lock().unwrap_or_else(|e| e.into_inner()) = Some(work);
    }

    fn wait(&self) -> Fetched {
        let mut guard = self.result.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(r) = guard.as_ref() {
                return r.clone();
            }
            guard = self.done.wait(guard).unwrap_or_else(|e| e.into_inner());
        }
    }
}

impl Shared {
    fn cached(&self, id: &Id) -> Option<Chunk> {
        self.cache.lock().unwrap_or_else(|e| e.into_inner()).get(id)
    }

    /// Registers a fetch of `chunk` unless it is cached or already coming.
    /// Returns the fetch to wait for, and whether the caller must do it.
    fn claim(&self, id: &Id) -> Result<Chunk, (Arc<Pending>, bool)> {
        let mut in_flight = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
        // Checked under the in-flight lock: a fetch puts its chunk in the
        // cache before it leaves the in-flight map, so a chunk is always in
        // one or the other until it is evicted.
        if let Some(c) = self.cached(id) {
            return Ok(c);
        }
        if let Some(p) = in_flight.get(id) {
            return Err((p.clone(), false));
        }
        let p = Arc::new(Pending::default());
        in_flight.insert(*id, p.clone());
        Err((p, true))
    }

    fn finish(&self, chunk: &ChunkRef, pending: &Pending, result: Fetched) {
        if let Ok(data) = &result {
            self.cache.lock().unwrap_or_else(|e| e.into_inner()).insert(chunk.0, data.clone(), data.footprint() as u64);
        }
        *pending.result.lock().unwrap_or_else(|e| e.into_inner()) = Some(result);
        pending.done.notify_all();
        self.in_flight.lock().unwrap_or_else(|e| e.into_inner()).remove(&chunk.0);
    }
}

/// How much less CPU the prefetch workers get than the threads that answer
/// readers (a `nice` value, Linux only): when a reader such as `cp` and the
/// workers want the same core, the reader runs. The workers are normally
/// chunks ahead and lose nothing by waiting; a reader that gets to a chunk
/// they have not started reads it itself, at normal priority.
const WORKER_NICE: i32 = 10;

fn lower_priority() {
    #[cfg(target_os = "linux")]
    // SAFETY: gettid and setpriority take no pointers; on Linux a thread id
    // names that thread alone, so only this thread's priority changes.
    unsafe {
        let tid = libc::gettid();
        if libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, WORKER_NICE) != 0 {
            tracing::debug!("cannot lower the priority of a prefetch thread: {}", std::io::Error::last_os_error());
        }
    }
}

impl ChunkStore {
    /// A store keeping `cache_bytes` of decrypted chunks, with at most
    /// `max_in_flight` prefetches under way, done by `workers` threads of
    /// their own.
    ///
    /// A worker reads a chunk (where the store's reads block: a local
    /// folder) and decodes it, on one thread: no hand-off to the runtime
    /// and back per chunk, and the bytes are decoded while still in that
    /// core's cache. From S3 the runtime fetches, many chunks at once, and
    /// the workers decode.
    ///
    /// Prefetches are done in the order they were asked for, a few at a
    /// time: the chunk a sequential reader needs next is decoded first, at
    /// full speed, instead of sharing the cores with every chunk behind it
    /// (as with a thread per prefetch, up to 16 at once), and the reader
    /// (`cp`, which also writes every byte it reads) is not crowded off the
    /// cores by a dozen decoding threads; the workers also run at a lower
    /// priority ([`WORKER_NICE`]).
    pub fn new(
        repo: Arc<Repository>,
        blobs: Arc<BlobSet>,
        cache_bytes: u64,
        max_in_flight: usize,
        workers: usize,
    ) -> ChunkStore {
        let shared =
            Arc::new(Shared { cache: Mutex::new(Lru::new(cache_bytes)), in_flight: Mutex::new(HashMap::new()) });
        let loader = Loader {
            keys: repo.keys().clone(),
            repo_id: *repo.repo_id(),
            max_len: repo.max_chunk_len(),
            backend: repo.backend().clone(),
            blobs: Arc::new(std::sync::RwLock::new(blobs)),
        };
        let (jobs, queue) = mpsc::channel::<Job>();
        let queue = Arc::new(Mutex::new(queue));
        for i in 0..workers.max(1) {
            let (queue, shared, loader) = (queue.clone(), shared.clone(), loader.clone());
            let spawned = std::thread::Builder::new().name(format!("coffer-prefetch-{i}")).spawn(move || {
                lower_priority();
                // Ends when the store and every prefetch task are gone.
                loop {
                    let job = queue.lock().unwrap_or_else(|e| e.into_inner()).recv();
                    let Ok(Job { chunk, pending }) = job else { return };
                    loader.finish_prefetch(&shared, &chunk, &pending);
                }
            });
            if let Err(e) = spawned {
                tracing::warn!("cannot start a chunk prefetch thread: {e}");
            }
        }
        ChunkStore { repo, shared, max_in_flight: max_in_flight.max(1), loader, jobs }
    }

    /// Bytes of chunks held in the cache.
    pub fn cached_bytes(&self) -> u64 {
        self.shared.cache.lock().unwrap_or_else(|e| e.into_inner()).used()
    }

    /// Prefetches started at most at once.
    pub fn max_in_flight(&self) -> usize {
        self.max_in_flight
    }

    /// The plaintext of a chunk: from the cache, from a fetch already under
    /// way, or fetched and decrypted now on the calling thread. A chunk that
    /// fails to authenticate is fetched once more, alone, as restore and
    /// dump do: a bit flipped on the way is not damage at rest.
    pub fn get(&self, chunk: &ChunkRef) -> Fetched {
        match self.get_once(chunk) {
            Err(e) if matches!(&*e, Error::Corrupt { .. }) => {
                tracing::warn!("{e}; reading it again");
                self.get_once(chunk)
            }
            other => other,
        }
    }

    fn get_once(&self, chunk: &ChunkRef) -> Fetched {
        match self.shared.claim(&chunk.0) {
            Ok(c) => Ok(c),
            Err((pending, false)) => {
                // Prefetched, but nobody has started on it: do it here
                // rather than wait for a worker.
                if let Some(result) = self.loader.finish_prefetch(&self.shared, chunk, &pending) {
                    return result;
                }
                pending.wait()
            }
            Err((pending, true)) => {
                let result = self.loader.read_and_decode(chunk).unwrap_or_else(|| {
                    let repo = &self.repo;
                    let limit = repo.stored_limit(ObjectKind::Chunk);
                    let blobs = self.loader.blobs();
                    let read = fetch_blob(&**repo.backend(), &blobs, ObjectKind::Chunk, &chunk.0, limit);
                    match repo.runtime().block_on(read) {
                        Ok(stored) => self.loader.decode(chunk, stored),
                        Err(e) => Err(Arc::new(e)),
                    }
                });
                self.shared.finish(chunk, &pending, result.clone());
                result
            }
        }
    }

    /// Reads chunks through `blobs` from now on (the mount loaded the index
    /// again after seeing new snapshots).
    pub fn set_blobs(&self, blobs: Arc<BlobSet>) {
        *self.loader.blobs.write().unwrap_or_else(|e| e.into_inner()) = blobs;
    }

    /// Starts fetching `chunk` in the background if it is neither cached
    /// nor coming, and fewer than [`ChunkStore::max_in_flight`] fetches are
    /// under way. Errors are left for the read that needs the chunk.
    pub fn prefetch(&self, chunk: ChunkRef) {
        self.prefetch_all([chunk]);
    }

    /// [`ChunkStore::prefetch`] for several chunks, in order. From a store
    /// that is not a local folder, chunks that lie next to each other in a
    /// pack are fetched in one ranged read: one round trip instead of one
    /// per chunk. (A local folder's reads are a `pread` each, which the
    /// page cache's read-ahead already serves in larger pieces.)
    ///
    /// A sequential reader asks again at every read, for a window that has
    /// moved by a chunk or so; from such a store the missing chunks are
    /// fetched once half the window lacks them (or the next one is missing),
    /// so that they come in a few ranged reads rather than one by one.
    pub fn prefetch_all(&self, chunks: impl IntoIterator<Item = ChunkRef>) {
        let blocking = self.loader.backend.blocking_reads().is_some();
        let chunks: Vec<ChunkRef> = chunks.into_iter().take(self.max_in_flight).collect();
        if !blocking && chunks.len() > 1 {
            let present = |c: &ChunkRef| {
                self.shared.cached(&c.0).is_some()
                    || self.shared.in_flight.lock().unwrap_or_else(|e| e.into_inner()).contains_key(&c.0)
            };
            let missing = chunks.iter().filter(|c| !present(c)).count();
            if present(&chunks[0]) && missing * 2 < chunks.len() {
                return;
            }
        }
        let mut claimed = Vec::new();
        for chunk in chunks {
            if self.shared.in_flight.lock().unwrap_or_else(|e| e.into_inner()).len() >= self.max_in_flight {
                break;
            }
            let Err((pending, true)) = self.shared.claim(&chunk.0) else { continue };
            if blocking {
                pending.set_work(Work::Queued);
                send(&self.jobs, &self.shared, chunk, pending);
            } else {
                claimed.push((chunk, pending));
            }
        }
        if claimed.is_empty() {
            return;
        }
        let blobs = self.loader.blobs();
        let limit = self.repo.stored_limit(ObjectKind::Chunk);
        let mut wanted = Vec::with_capacity(claimed.len());
        let mut located = Vec::with_capacity(claimed.len());
        for (chunk, pending) in claimed {
            match locate_blob(&blobs, ObjectKind::Chunk, &chunk.0, limit) {
                Ok(loc) => {
                    wanted.push(loc);
                    located.push(Some((chunk, pending)));
                }
                Err(e) => self.shared.finish(&chunk, &pending, Err(Arc::new(e))),
            }
        }
        for read in plan_reads(&wanted, READ_GAP, READ_MAX) {
            let parts: Vec<_> = read
                .parts
                .iter()
                .filter_map(|(i, range)| located[*i].take().map(|(chunk, pending)| (chunk, pending, range.clone())))
                .collect();
            let (shared, jobs, blobs) = (self.shared.clone(), self.jobs.clone(), blobs.clone());
            let backend = self.repo.backend().clone();
            self.repo.runtime().spawn(async move {
                let mut bytes = read.fetch(&*backend).await.ok().filter(|b| b.len() as u64 == read.length);
                let alone = parts.len() == 1;
                for (chunk, pending, range) in parts {
                    let stored = match bytes.as_mut() {
                        Some(b) if alone => Ok(std::mem::take(b)),
                        Some(b) => Ok(b[range].to_vec()),
                        // Read alone, so that a failure is this chunk's own.
                        None => fetch_blob(&*backend, &blobs, ObjectKind::Chunk, &chunk.0, limit).await,
                    };
                    match stored {
                        Ok(stored) => {
                            pending.set_work(Work::Fetched(stored));
                            send(&jobs, &shared, chunk, pending);
                        }
                        Err(e) => {
                            tracing::debug!("prefetch of chunk {} failed: {e}", chunk.0.to_hex());
                            shared.finish(&chunk, &pending, Err(Arc::new(e)));
                        }
                    }
                }
            });
        }
    }
}

/// Hands a prefetch to the workers; if none could be started, the chunk's
/// readers are told rather than left waiting.
fn send(jobs: &mpsc::Sender<Job>, shared: &Shared, chunk: ChunkRef, pending: Arc<Pending>) {
    if let Err(mpsc::SendError(Job { chunk, pending })) = jobs.send(Job { chunk, pending })
        && pending.take_work().is_some()
    {
        shared.finish(&chunk, &pending, Err(Arc::new(Error::InvalidInput("no thread to prefetch chunks".into()))));
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;
    use coffer_core::backend::local::LocalBackend;
    use coffer_core::backend::testing::{Fault, FaultBackend, FaultKind, Op};
    use coffer_core::blob::{self, Compression};
    use coffer_core::key::KdfParams;
    use coffer_core::repo::InitOptions;

    /// A read through the mount whose chunk comes back with a bit flipped
    /// once gets the chunk's real bytes; one flipped on every read fails
    /// as damaged, after a second read.
    #[test]
    fn a_chunk_damaged_on_the_way_is_read_again() {
        let dir = tempfile::tempdir().unwrap();
        let faulty = Arc::new(FaultBackend::new(Arc::new(LocalBackend::new(dir.path().join("repo")))));
        let options =
            InitOptions { kdf: KdfParams { memory_kib: 64, iterations: 1, parallelism: 1 }, ..InitOptions::default() };
        let repo = Arc::new(Repository::init(faulty.clone(), b"pw", &options).unwrap());
        let plain: Vec<u8> = (0..100_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
        let id = repo.keys().id(&plain);
        let stored =
            blob::encode(repo.keys(), repo.repo_id(), ObjectKind::Chunk, &id, &plain, Compression { level: 0 });
        let packer = repo.packer();
        repo.runtime().block_on(async {
            packer.add(ObjectKind::Chunk, id, &stored, plain.len() as u32).await.unwrap();
            packer.flush().await.unwrap();
        });
        let blobs = repo.reload_blob_set().unwrap();
        let chunk = ChunkRef(id, plain.len() as u32);

        let store = ChunkStore::new(repo.clone(), blobs.clone(), 1 << 20, 4, 1);
        faulty.add(Fault::first(Op::Get, "data/", 1, FaultKind::BitFlip));
        let got = store.get(&chunk).expect("read again after one flipped read");
        assert_eq!(faulty.injected(), 1);
        assert!(got[..] == plain[..], "other bytes were returned");

        let store = ChunkStore::new(repo.clone(), blobs, 1 << 20, 4, 1);
        faulty.clear();
        faulty.add(Fault::always(Op::Get, "data/", FaultKind::BitFlip));
        let e = store.get(&chunk).expect_err("damaged on every read");
        assert!(matches!(&*e, Error::Corrupt { .. }), "{e}");
        assert_eq!(faulty.injected(), 2, "read twice, then reported");
    }
}
