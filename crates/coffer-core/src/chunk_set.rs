//! The local copy of which chunks the repository holds, so that a nightly
//! backup of a large repository does not LIST every chunk every night.
//!
//! Trust (invariant 5): the copy is used only while the prune generation it
//! was taken under is still the repository's (see [`crate::generation`]).
//! Nothing but prune deletes chunks, so under an unchanged generation every
//! id in the copy is still stored; chunks added since by other clients are
//! merely missing from it, which costs an upload, never data. The set is
//! exact — a sorted array of 32-byte ids, never a probabilistic filter,
//! since a false positive would make a backup reference a chunk nobody
//! stored.
//!
//! The file is `<repository cache folder>/chunks`:
//!
//! ```text
//! magic "coffercs" (8) ‖ version u32 LE = 1 ‖ generation (16) ‖ count u64 LE ‖ MAC (32) ‖ count × id (32), strictly ascending
//! ```
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
const VERSION: u32 = 1;
/// magic, version, generation, count, MAC.
const HEADER_LEN: usize = 8 + 4 + 16 + 8 + 32;
const MAC_AT: usize = HEADER_LEN - 32;

/// The chunks a backup may take as stored.
pub struct KnownChunks {
    /// Sorted, without duplicates.
    pub ids: Vec<Id>,
    /// The generation read before the set was taken; `None` when the cache
    /// is off or the generation could not be read (then nothing is saved).
    pub generation: Option<Generation>,
    /// Whether the set came from the cache rather than a LIST.
    pub from_cache: bool,
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
fn encode(repo: &Repository, generation: Generation, ids: &[Id]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + ids.len() * 32);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&generation.0);
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
fn decode(repo: &Repository, data: &[u8]) -> std::result::Result<(Generation, Vec<Id>), String> {
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
    let count = u64::from_le_bytes(field(28, 8).try_into().map_err(|_| "short header")?);
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
    Ok((Generation(generation), ids))
}

/// Reads the cached set, if there is a valid one.
fn load(repo: &Repository, path: &Path) -> Option<(Generation, Vec<Id>)> {
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

/// The chunks the repository holds: from the cache while the prune
/// generation is the one it was taken under, else from a LIST.
pub fn known_chunks(repo: &Repository) -> Result<KnownChunks> {
    let Some(path) = path(repo) else {
        return Ok(KnownChunks { ids: repo.list_ids(ObjectKind::Chunk)?, generation: None, from_cache: false });
    };
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
        && let Some((cached, ids)) = load(repo, &path)
    {
        if cached == current {
            tracing::debug!("{} chunks known from the cache", ids.len());
            return Ok(KnownChunks { ids, generation, from_cache: true });
        }
        tracing::info!("the repository was pruned since the chunk set was cached; listing it");
    }
    Ok(KnownChunks { ids: repo.list_ids(ObjectKind::Chunk)?, generation, from_cache: false })
}

/// Records `known` plus the chunks a successful backup `added` (stored and
/// synced) as the cached set, under the generation `known` was taken under.
/// A failure to write is only a warning: the next backup lists instead.
pub fn record(repo: &Repository, known: &KnownChunks, added: &[Id]) {
    let (Some(path), Some(generation)) = (path(repo), known.generation) else { return };
    if known.from_cache && added.is_empty() {
        return;
    }
    let ids = merge(&known.ids, added);
    if let Err(e) = write_atomic(&path, &encode(repo, generation, &ids)) {
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
    fn round_trip_and_every_alteration_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let repo = repo(dir.path());
        let g = Generation([7; 16]);
        let ids = vec![id(1), id(2), id(200)];
        let data = encode(&repo, g, &ids);
        assert_eq!(data.len(), HEADER_LEN + 3 * 32);
        assert_eq!(decode(&repo, &data).unwrap(), (g, ids.clone()));
        // Any single flipped bit: header, MAC or ids.
        for at in [0, 9, 12, 30, MAC_AT + 1, HEADER_LEN, data.len() - 1] {
            let mut bad = data.clone();
            bad[at] ^= 1;
            assert!(decode(&repo, &bad).is_err(), "flip at {at} accepted");
        }
        // An id appended with the count raised, without the key.
        let mut forged = data.clone();
        forged[28..36].copy_from_slice(&4u64.to_le_bytes());
        forged.extend_from_slice(&[250; 32]);
        assert!(decode(&repo, &forged).is_err());
        assert!(decode(&repo, &data[..data.len() - 32]).is_err());
        assert!(decode(&repo, &data[..10]).is_err());
        // Another repository's key does not authenticate it.
        let other = tempfile::tempdir().unwrap();
        assert!(decode(&super::tests::repo(other.path()), &data).is_err());
    }
}
