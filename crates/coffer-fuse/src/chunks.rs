//! Decrypted chunks for reads: a bounded cache, one fetch per chunk however
//! many readers want it at once, and background prefetch for sequential
//! readers.
//!
//! Memory is bounded by the cache's capacity plus the chunks being fetched
//! (at most [`ChunkStore::max_in_flight`] prefetches, and one chunk per
//! FUSE worker thread), never by the size of the files read.

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex, mpsc};

use coffer_core::crypto::{Keys, ObjectKind};
use coffer_core::repo::{Repository, decode_chunk_ref, fetch};
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
    decoder: Decoder,
    /// The queue of the decoder threads (see [`ChunkStore::new`]).
    decode: mpsc::Sender<DecodeJob>,
}

/// A prefetched chunk whose stored bytes are in its [`Pending`].
struct DecodeJob {
    chunk: ChunkRef,
    pending: Arc<Pending>,
}

/// What decoding a chunk needs; no reference to the repository (see [`Shared`]).
#[derive(Clone)]
struct Decoder {
    keys: Arc<Keys>,
    repo_id: [u8; 32],
    max_len: usize,
}

impl Decoder {
    fn decode(&self, chunk: &ChunkRef, stored: Vec<u8>) -> Fetched {
        decode_chunk_ref(&self.keys, &self.repo_id, self.max_len, chunk, stored).map(Arc::new).map_err(Arc::new)
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
    /// A prefetched chunk's stored bytes, fetched and waiting for a decoder.
    /// Whoever takes them decodes the chunk: a decoder thread, or a reader
    /// that needs the chunk now and would otherwise wait behind the queue.
    fetched: Mutex<Option<Vec<u8>>>,
}

impl Pending {
    fn take_fetched(&self) -> Option<Vec<u8>> {
        self.fetched.lock().unwrap_or_else(|e| e.into_inner()).take()
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

impl ChunkStore {
    /// A store keeping `cache_bytes` of decrypted chunks, with at most
    /// `max_in_flight` prefetches under way, decoded by `decoders` threads
    /// of their own.
    ///
    /// Prefetched chunks are decoded in the order they were asked for, a
    /// few at a time: the chunk a sequential reader needs next is decoded
    /// first, at full speed, instead of sharing the cores with every chunk
    /// behind it (as with a thread per prefetch, up to 16 at once), and the
    /// reader (`cp`, which also writes every byte it reads) is not crowded
    /// off the cores by a dozen decoding threads.
    /// A reader that needs a chunk still waiting for a decoder decodes it
    /// itself rather than wait behind the queue.
    pub fn new(repo: Arc<Repository>, cache_bytes: u64, max_in_flight: usize, decoders: usize) -> ChunkStore {
        let shared =
            Arc::new(Shared { cache: Mutex::new(Lru::new(cache_bytes)), in_flight: Mutex::new(HashMap::new()) });
        let decoder = Decoder { keys: repo.keys().clone(), repo_id: *repo.repo_id(), max_len: repo.max_chunk_len() };
        let (decode, jobs) = mpsc::channel::<DecodeJob>();
        let jobs = Arc::new(Mutex::new(jobs));
        for i in 0..decoders.max(1) {
            let (jobs, shared, decoder) = (jobs.clone(), shared.clone(), decoder.clone());
            let spawned = std::thread::Builder::new().name(format!("coffer-decode-{i}")).spawn(move || {
                // Ends when the store and every prefetch task are gone.
                loop {
                    let job = jobs.lock().unwrap_or_else(|e| e.into_inner()).recv();
                    let Ok(DecodeJob { chunk, pending }) = job else { return };
                    if let Some(stored) = pending.take_fetched() {
                        shared.finish(&chunk, &pending, decoder.decode(&chunk, stored));
                    }
                }
            });
            if let Err(e) = spawned {
                tracing::warn!("cannot start a chunk decoder thread: {e}");
            }
        }
        ChunkStore { repo, shared, max_in_flight: max_in_flight.max(1), decoder, decode }
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
    /// way, or fetched and decrypted now on the calling thread.
    pub fn get(&self, chunk: &ChunkRef) -> Fetched {
        match self.shared.claim(&chunk.0) {
            Ok(c) => Ok(c),
            Err((pending, false)) => {
                // Fetched ahead but not decoded yet: decode it here rather
                // than wait for a decoder thread.
                if let Some(stored) = pending.take_fetched() {
                    let result = self.decoder.decode(chunk, stored);
                    self.shared.finish(chunk, &pending, result.clone());
                    return result;
                }
                pending.wait()
            }
            Err((pending, true)) => {
                let repo = &self.repo;
                let result = match repo.runtime().block_on(fetch(&**repo.backend(), ObjectKind::Chunk, &chunk.0)) {
                    Ok(stored) => self.decoder.decode(chunk, stored),
                    Err(e) => Err(Arc::new(e)),
                };
                self.shared.finish(chunk, &pending, result.clone());
                result
            }
        }
    }

    /// Starts fetching `chunk` in the background if it is neither cached
    /// nor coming, and fewer than [`ChunkStore::max_in_flight`] fetches are
    /// under way. Errors are left for the read that needs the chunk.
    pub fn prefetch(&self, chunk: ChunkRef) {
        if self.shared.in_flight.lock().unwrap_or_else(|e| e.into_inner()).len() >= self.max_in_flight {
            return;
        }
        let Err((pending, true)) = self.shared.claim(&chunk.0) else { return };
        let shared = self.shared.clone();
        let backend = self.repo.backend().clone();
        let decode = self.decode.clone();
        self.repo.runtime().spawn(async move {
            let error = match fetch(&*backend, ObjectKind::Chunk, &chunk.0).await {
                Ok(stored) => {
                    *pending.fetched.lock().unwrap_or_else(|e| e.into_inner()) = Some(stored);
                    match decode.send(DecodeJob { chunk, pending: pending.clone() }) {
                        Ok(()) => return,
                        // No decoder thread could be started.
                        Err(_) if pending.take_fetched().is_some() => {
                            Arc::new(Error::InvalidInput("no thread to decode chunks".into()))
                        }
                        Err(_) => return,
                    }
                }
                Err(e) => Arc::new(e),
            };
            tracing::debug!("prefetch of chunk {} failed: {error}", chunk.0.to_hex());
            shared.finish(&chunk, &pending, Err(error));
        });
    }
}
