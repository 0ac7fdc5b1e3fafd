//! The local copy of which chunks the repository holds, so that a nightly
//! backup of a large repository does not LIST every chunk every night.
//!
//! Trust (invariant 5): the copy is used only while the prune generation it
//! was taken under is still the repository's (see [`crate::generation`]).
//! Coffer deletes chunks only in prune, so under an unchanged generation
//! every id in the copy should still be stored; chunks added since by other
//! clients are merely missing from it, which costs an upload, never data.
//! The set is exact — a sorted array of 32-byte ids, never a probabilistic
//! filter, since a false positive would make a backup reference a chunk
//! nobody stored.
//!
//! What else can lose a chunk (the store, a person deleting by hand, a
//! rollback to an older copy of the repository, which rolls the generation
//! back with it) is not seen by the generation, so the copy is also
//! dropped, and the repository listed afresh:
//! - after [`ChunkSetPolicy::max_backups`] backups (default 20) or
//!   [`ChunkSetPolicy::max_age`] (default 7 days) since the listing it
//!   started from, or when the clock reads earlier than that listing;
//! - when this host sees a snapshot it knew vanish without a forget from
//!   here (a rollback, or a loss; see [`crate::state`]);
//! - when `check` finds a chunk missing.
//!
//! The file is `<repository cache folder>/chunks`:
//!
//! ```text
//! magic "coffercs" (8) ‖ version u32 LE = 2 ‖ generation (16) ‖ listed_at i64 LE ‖ backups u32 LE ‖ count u64 LE ‖ MAC (32) ‖ count × id (32), strictly ascending
//! ```
//!
//! `listed_at` is when (Unix seconds, this host's clock) the LIST the set
//! started from was taken; `backups` how many backups recorded it since.
//!
//! The MAC is keyed BLAKE3 under a key derived from the master key
//! ([`MAC_CONTEXT`]) over the repository id, the header before the MAC and
//! the ids. Whoever can write the cache folder but does not hold the
//! repository's password cannot add an id (which would make the next backup
//! skip uploading that chunk); a damaged or forged file is ignored with a
//! warning and the repository is listed instead. The file is replaced
//! atomically (temporary name, fsync, rename).

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::crypto::{ObjectKind, derive};
use crate::error::Result;
use crate::generation::Generation;
use crate::id::Id;
use crate::repo::Repository;

/// The file's name in the repository's cache folder.
pub const FILE_NAME: &str = "chunks";

/// BLAKE3 derive-key context of the file's MAC key.
pub const MAC_CONTEXT: &str = "coffer 2026-11-27 local chunk set mac key v1";

const MAGIC: &[u8; 8] = b"coffercs";
const VERSION: u32 = 2;
/// magic, version, generation, listed_at, backups, count, MAC.
const HEADER_LEN: usize = 8 + 4 + 16 + 8 + 4 + 8 + 32;
const MAC_AT: usize = HEADER_LEN - 32;

/// When the cached set is dropped for a fresh listing although the prune
/// generation is unchanged (see the module's doc).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkSetPolicy {
    /// Backups that may trust one listing.
    pub max_backups: u32,
    /// How long one listing may be trusted.
    pub max_age: std::time::Duration,
}

impl Default for ChunkSetPolicy {
    fn default() -> Self {
        ChunkSetPolicy { max_backups: 20, max_age: std::time::Duration::from_secs(7 * 24 * 3600) }
    }
}

/// A decoded set file.
#[derive(Debug, PartialEq, Eq)]
struct Cached {
    generation: Generation,
    listed_at: i64,
    backups: u32,
    ids: Vec<Id>,
}

/// The chunks a backup may take as stored.
pub struct KnownChunks {
    /// Sorted, without duplicates.
    pub ids: Vec<Id>,
    /// The generation read before the set was taken; `None` when the cache
    /// is off or the generation could not be read (then nothing is saved).
    pub generation: Option<Generation>,
    /// Whether the set came from the cache rather than a LIST.
    pub from_cache: bool,
    /// When the LIST the set started from was taken (Unix seconds).
    pub listed_at: i64,
    /// Backups recorded on top of that LIST.
    pub backups: u32,
}

/// This host's clock, as Unix seconds, moved by the offset the lock
/// settings give (tests of a clock that jumps).
fn now(repo: &Repository) -> i64 {
    crate::lock::wall_clock(repo.lock_settings().wall_clock_offset).as_second()
}

fn path(repo: &Repository) -> Option<PathBuf> {
    repo.cache_dir().map(|d| d.join(FILE_NAME))
}

fn mac(repo: &Repository, header: &[u8], ids: &[u8]) -> [u8; 32] {
    let mut key = zeroize::Zeroizing::new([0u8; 32]);
    derive(repo.keys().master(), MAC_CONTEXT, &mut *key);
    let mut h = blake3::Hasher::new_keyed(&key);
    h.update(repo.repo_id());
    h.update(header);
    h.update(ids);
    *h.finalize().as_bytes()
}

/// Encodes a set; `ids` must be sorted without duplicates.
fn encode(repo: &Repository, generation: Generation, listed_at: i64, backups: u32, ids: &[Id]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + ids.len() * 32);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&generation.0);
    out.extend_from_slice(&listed_at.to_le_bytes());
    out.extend_from_slice(&backups.to_le_bytes());
    out.extend_from_slice(&(ids.len() as u64).to_le_bytes());
    out.extend_from_slice(&[0; 32]);
    for id in ids {
        out.extend_from_slice(&id.0);
    }
    let tag = mac(repo, &out[..MAC_AT], &out[HEADER_LEN..]);
    out[MAC_AT..HEADER_LEN].copy_from_slice(&tag);
    out
}

/// Decodes and authenticates a set; the reason it is unusable otherwise.
fn decode(repo: &Repository, data: &[u8]) -> std::result::Result<Cached, String> {
    if data.len() < HEADER_LEN || &data[..8] != MAGIC {
        return Err("it is not a chunk set file".into());
    }
    let field = |at: usize, len: usize| &data[at..at + len];
    let version = u32::from_le_bytes(field(8, 4).try_into().map_err(|_| "short header")?);
    if version != VERSION {
        return Err(format!("unknown version {version}"));
    }
    let mut generation = [0u8; 16];
    generation.copy_from_slice(field(12, 16));
    let listed_at = i64::from_le_bytes(field(28, 8).try_into().map_err(|_| "short header")?);
    let backups = u32::from_le_bytes(field(36, 4).try_into().map_err(|_| "short header")?);
    let count = u64::from_le_bytes(field(40, 8).try_into().map_err(|_| "short header")?);
    let body = &data[HEADER_LEN..];
    if Some(body.len() as u64) != count.checked_mul(32) {
        return Err(format!("it should hold {count} ids but has {} bytes of them", body.len()));
    }
    // blake3::Hash compares in constant time.
    let expected = blake3::Hash::from(mac(repo, &data[..MAC_AT], body));
    let stored: [u8; 32] = field(MAC_AT, 32).try_into().map_err(|_| "short header")?;
    if expected != blake3::Hash::from(stored) {
        return Err("its authentication code does not match (damaged, or written for another key)".into());
    }
    let ids: Vec<Id> = body
        .chunks_exact(32)
        .map(|c| {
            let mut id = [0u8; 32];
            id.copy_from_slice(c);
            Id(id)
        })
        .collect();
    if ids.windows(2).any(|w| w[0] >= w[1]) {
        return Err("its ids are not in order".into());
    }
    Ok(Cached { generation: Generation(generation), listed_at, backups, ids })
}

/// Reads the cached set, if there is a valid one.
fn load(repo: &Repository, path: &Path) -> Option<Cached> {
    let data = match std::fs::read(path) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => {
            tracing::warn!("cannot read the chunk set cache {}: {e}; listing the repository instead", path.display());
            return None;
        }
    };
    match decode(repo, &data) {
        Ok(set) => Some(set),
        Err(why) => {
            tracing::warn!("ignoring the chunk set cache {}: {why}; listing the repository instead", path.display());
            None
        }
    }
}

/// Writes `data` to `path` atomically and durably.
fn write_atomic(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().ok_or_else(|| std::io::Error::other("cache file has no folder"))?;
    std::fs::create_dir_all(dir)?;
    let mut rnd = [0u8; 8];
    crate::crypto::fill_random(&mut rnd);
    let tmp = dir.join(format!("{FILE_NAME}.tmp-{}", hex::encode(rnd)));
    let result = (|| {
        let mut f = std::fs::OpenOptions::new().write(true).create_new(true).open(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Drops the cached set, so that the next backup lists the repository:
/// `why` something may have lost chunks that the set still names.
pub fn invalidate(repo: &Repository, why: &str) {
    let Some(path) = path(repo) else { return };
    match std::fs::remove_file(&path) {
        Ok(()) => tracing::info!("dropped the chunk set cache ({why}); the next backup lists the repository"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!("cannot remove the chunk set cache {} ({why}): {e}", path.display()),
    }
}

/// Why a cached set may not be used although its generation is current.
fn too_old(cached: &Cached, now: i64, policy: ChunkSetPolicy) -> Option<String> {
    if cached.backups >= policy.max_backups {
        return Some(format!("{} backups trusted the listing it started from", cached.backups));
    }
    if now < cached.listed_at {
        return Some("the clock reads earlier than the listing it started from".into());
    }
    let age = (now - cached.listed_at) as u64;
    if age >= policy.max_age.as_secs() {
        return Some(format!("the listing it started from is {}h old", age / 3600));
    }
    None
}

/// The chunks the repository holds: from the cache while the prune
/// generation is the one it was taken under and the [`ChunkSetPolicy`]
/// allows, else from a LIST.
pub fn known_chunks(repo: &Repository) -> Result<KnownChunks> {
    let listed = |generation| -> Result<KnownChunks> {
        let listed_at = now(repo);
        let ids = repo.list_ids(ObjectKind::Chunk)?;
        Ok(KnownChunks { ids, generation, from_cache: false, listed_at, backups: 0 })
    };
    let Some(path) = path(repo) else { return listed(None) };
    // The generation is read before the listing: a prune that deletes after
    // it must bump it, so a set recorded under it can only be distrusted
    // later, never trusted wrongly.
    let generation = match repo.runtime().block_on(repo.generation()) {
        Ok(g) => Some(g),
        Err(e @ crate::Error::Corrupt { .. }) => {
            tracing::warn!("cannot read the prune generation ({e}); not using the chunk set cache");
            None
        }
        Err(e) => return Err(e),
    };
    if let Some(current) = generation
        && let Some(cached) = load(repo, &path)
    {
        if cached.generation != current {
            tracing::info!("the repository was pruned since the chunk set was cached; listing it");
        } else if let Some(why) = too_old(&cached, now(repo), repo.chunk_set_policy()) {
            tracing::info!("not trusting the chunk set cache: {why}; listing the repository");
        } else {
            tracing::debug!("{} chunks known from the cache", cached.ids.len());
            let Cached { ids, listed_at, backups, .. } = cached;
            return Ok(KnownChunks { ids, generation, from_cache: true, listed_at, backups });
        }
    }
    listed(generation)
}

/// Records `known` plus the chunks a successful backup `added` (stored and
/// synced) as the cached set, under the generation `known` was taken under.
/// A failure to write is only a warning: the next backup lists instead.
pub fn record(repo: &Repository, known: &KnownChunks, added: &[Id]) {
    let (Some(path), Some(generation)) = (path(repo), known.generation) else { return };
    // Written even when nothing was added: the count of backups must grow.
    let ids = merge(&known.ids, added);
    let backups = known.backups.saturating_add(1);
    if let Err(e) = write_atomic(&path, &encode(repo, generation, known.listed_at, backups, &ids)) {
        tracing::warn!("cannot write the chunk set cache {}: {e}", path.display());
    }
}

/// The sorted union of a sorted set and some more ids.
fn merge(sorted: &[Id], more: &[Id]) -> Vec<Id> {
    let mut more = more.to_vec();
    more.sort_unstable();
    more.dedup();
    let mut out = Vec::with_capacity(sorted.len() + more.len());
    let (mut a, mut b) = (sorted.iter().peekable(), more.iter().peekable());
    loop {
        let next = match (a.peek(), b.peek()) {
            (Some(x), Some(y)) if x < y => a.next(),
            (Some(x), Some(y)) if x > y => b.next(),
            (Some(_), Some(_)) => {
                b.next();
                a.next()
            }
            (Some(_), None) => a.next(),
            (None, Some(_)) => b.next(),
            (None, None) => break,
        };
        if let Some(id) = next {
            out.push(*id);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::backend::local::LocalBackend;
    use crate::key::KdfParams;
    use crate::repo::InitOptions;

    fn repo(dir: &Path) -> Repository {
        let options =
            InitOptions { kdf: KdfParams { memory_kib: 64, iterations: 1, parallelism: 1 }, ..InitOptions::default() };
        Repository::init(Arc::new(LocalBackend::new(dir.join("repo"))), b"pw", &options).unwrap()
    }

    fn id(b: u8) -> Id {
        Id([b; 32])
    }

    #[test]
    fn merge_keeps_order_and_drops_duplicates() {
        assert_eq!(
            merge(&[id(1), id(3), id(5)], &[id(4), id(1), id(9), id(4)]),
            vec![id(1), id(3), id(4), id(5), id(9)]
        );
        assert_eq!(merge(&[], &[id(2)]), vec![id(2)]);
        assert_eq!(merge(&[id(2)], &[]), vec![id(2)]);
    }

    #[test]
    fn a_set_is_trusted_for_so_many_backups_and_so_long() {
        let policy = ChunkSetPolicy { max_backups: 20, max_age: std::time::Duration::from_secs(3600) };
        let set = |listed_at, backups| Cached { generation: Generation([0; 16]), listed_at, backups, ids: Vec::new() };
        assert_eq!(too_old(&set(1000, 19), 1000 + 3599, policy), None);
        assert!(too_old(&set(1000, 20), 1000, policy).unwrap().contains("20 backups"));
        assert!(too_old(&set(1000, 0), 1000 + 3600, policy).unwrap().contains("1h old"));
        assert!(too_old(&set(1000, 0), 999, policy).unwrap().contains("clock"));
    }

    #[test]
    fn round_trip_and_every_alteration_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let repo = repo(dir.path());
        let g = Generation([7; 16]);
        let ids = vec![id(1), id(2), id(200)];
        let data = encode(&repo, g, 1_700_000_000, 3, &ids);
        assert_eq!(data.len(), HEADER_LEN + 3 * 32);
        let expected = Cached { generation: g, listed_at: 1_700_000_000, backups: 3, ids: ids.clone() };
        assert_eq!(decode(&repo, &data).unwrap(), expected);
        // Any single flipped bit: header (listing time and backup count
        // included), MAC or ids.
        for at in [0, 9, 12, 30, 37, 41, MAC_AT + 1, HEADER_LEN, data.len() - 1] {
            let mut bad = data.clone();
            bad[at] ^= 1;
            assert!(decode(&repo, &bad).is_err(), "flip at {at} accepted");
        }
        // An id appended with the count raised, without the key.
        let mut forged = data.clone();
        forged[40..48].copy_from_slice(&4u64.to_le_bytes());
        forged.extend_from_slice(&[250; 32]);
        assert!(decode(&repo, &forged).is_err());
        assert!(decode(&repo, &data[..data.len() - 32]).is_err());
        assert!(decode(&repo, &data[..10]).is_err());
        // Another repository's key does not authenticate it.
        let other = tempfile::tempdir().unwrap();
        assert!(decode(&super::tests::repo(other.path()), &data).is_err());
    }
}
