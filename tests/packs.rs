//! Format v2 groundwork against real backends: what the packer stores, the
//! index loader finds — blobs of listed packs only, packs nobody indexed
//! named for re-indexing, damaged packs left out — with index objects
//! served from the local cache once read.

use coffer_core::blob::{self, Compression};
use coffer_core::crypto::ObjectKind;
use coffer_core::index::{self, Index};
use coffer_core::pack::{PackKind, pack_key};
use coffer_core::packer::{Packer, PackerOptions, Stored};
use coffer_core::progress::NoProgress;
use coffer_core::repo::object_key;
use coffer_core::restorer::{self, RestoreOptions};
use coffer_core::{Id, Repository};

use crate::common::{Backend, Env, both_backends, open_repo, random_bytes};

/// Packs `chunks` data blobs and `trees` tree blobs of a few KiB into small
/// packs, an index object every two packs. Returns what was stored and the
/// blob ids by kind.
fn pack_some(repo: &Repository, chunks: u64, trees: u64) -> (Stored, Vec<(ObjectKind, Id)>) {
    let options = PackerOptions { data_target: 30_000, tree_target: 8_000, open_packs: 2, index_every: 2 };
    let packer = Packer::new(repo.backend().clone(), repo.keys().clone(), *repo.repo_id(), options);
    let mut ids = Vec::new();
    let stored = repo.runtime().block_on(async {
        for (kind, n, seed) in [(ObjectKind::Chunk, chunks, 0), (ObjectKind::Tree, trees, 1000)] {
            for i in 0..n {
                let plain = random_bytes(3000, seed + i);
                let id = repo.keys().id(&plain);
                let enc = blob::encode(repo.keys(), repo.repo_id(), kind, &id, &plain, Compression { level: 0 });
                packer.add(kind, id, &enc, plain.len() as u32).await.unwrap();
                ids.push((kind, id));
            }
        }
        packer.flush().await.unwrap()
    });
    (stored, ids)
}

both_backends!(the_index_names_what_the_packs_hold);

fn the_index_names_what_the_packs_hold(backend: Backend) {
    let env = Env::init_on(backend);
    let repo = open_repo(&env).with_cache(&env.path("cache"));
    let (stored, ids) = pack_some(&repo, 40, 10);
    let loaded = index::load(&repo).unwrap();
    assert_eq!(loaded.blobs.len(), 50);
    assert!(ids.iter().all(|(k, id)| loaded.blobs.contains(*k, id)));
    assert!(loaded.unindexed.is_empty() && loaded.mismatched.is_empty() && loaded.unreadable.is_empty());
    assert_eq!(loaded.indexes.len(), stored.indexes.len());

    // Loaded again: every index object comes from the cache.
    let before = repo.backend().wire_stats();
    index::load(&repo).unwrap();
    let again = repo.backend().wire_stats().since(&before);
    assert_eq!((again.gets, again.lists), (0, 3), "index/, data/ and tree/ listed, nothing fetched");

    // A pack the store lost takes its blobs with it; a pack whose index
    // object is gone is named for re-indexing, and its blobs come back once
    // its header is read.
    let lost = &stored.packs[0];
    std::fs::remove_file(env.repo.join(pack_key(lost.kind, &lost.id))).unwrap();
    let orphan_index = stored.indexes.last().unwrap();
    std::fs::remove_file(env.repo.join(object_key(ObjectKind::Index, orphan_index))).unwrap();
    let loaded = index::load(&repo).unwrap();
    for b in &lost.blobs {
        assert!(!loaded.blobs.contains(lost.kind.blob_kind(), &b.id), "a blob of the lost pack is still known");
    }
    let orphans: Vec<Id> = loaded.unindexed.iter().map(|(_, id, _)| *id).collect();
    let last_packs: Vec<Id> = stored.packs.iter().rev().take(orphans.len()).map(|p| p.id).collect();
    assert!(!orphans.is_empty() && orphans.iter().all(|id| last_packs.contains(id)), "{orphans:?}");
    let (rebuilt, failed) = repo.runtime().block_on(index::index_packs(
        &**repo.backend(),
        repo.keys(),
        repo.repo_id(),
        &loaded.unindexed,
        4,
    ));
    assert!(failed.is_empty(), "{failed:?}");
    let recovered: usize = rebuilt.packs.iter().map(|p| p.blobs.len()).sum();
    // The load read those headers itself: their blobs are known, and the
    // entries it rebuilt are the same.
    assert!(recovered > 0);
    assert_eq!(loaded.recovered, rebuilt);
    assert_eq!(loaded.blobs.len(), 50 - lost.blobs.len());
}

/// A pack cut short keeps its name but not its length: its blobs count as
/// absent (and would be stored again).
#[test]
fn a_pack_of_the_wrong_length_is_left_out() {
    let env = Env::init();
    let repo = open_repo(&env);
    let (stored, _) = pack_some(&repo, 20, 0);
    let victim = &stored.packs[1];
    let path = env.repo.join(pack_key(victim.kind, &victim.id));
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() - 100]).unwrap();
    let loaded = index::load(&repo).unwrap();
    assert_eq!(loaded.mismatched.len(), 1);
    let m = &loaded.mismatched[0];
    assert_eq!((m.kind, m.id, m.length), (PackKind::Data, victim.id, bytes.len() as u64 - 100));
    assert_eq!(m.indexed, (PackKind::Data, bytes.len() as u64));
    assert_eq!(loaded.blobs.len(), 20 - victim.blobs.len());
    assert!(!loaded.blobs.contains(ObjectKind::Chunk, &victim.blobs[0].id));
}

/// An index object that does not authenticate is named, and the packs it
/// listed count as unindexed rather than vanishing silently.
#[test]
fn an_unreadable_index_object_is_named() {
    let env = Env::init();
    let repo = open_repo(&env);
    let (stored, _) = pack_some(&repo, 20, 0);
    let victim = stored.indexes[0];
    let path = env.repo.join(object_key(ObjectKind::Index, &victim));
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[30] ^= 1;
    std::fs::write(&path, &bytes).unwrap();
    let loaded = index::load(&repo).unwrap();
    assert_eq!(loaded.unreadable.len(), 1);
    assert_eq!(loaded.unreadable[0].0, victim);
    assert!(loaded.unreadable[0].1.to_string().contains("does not authenticate"), "{}", loaded.unreadable[0].1);
    let stored_bytes = std::fs::read(&path).unwrap();
    let err = Index::open(repo.keys(), repo.repo_id(), &victim, &stored_bytes).unwrap_err();
    assert!(err.to_string().contains(&victim.to_hex()), "{err}");
    assert!(!loaded.unindexed.is_empty(), "its packs are named for re-indexing");
}

/// `check` reads index objects from the repository, never the cached
/// copies: an index object damaged after this host cached it still loads
/// from the cache for backup, but `check` names it.
#[test]
fn check_reads_index_objects_from_the_repository() {
    let env = Env::init();
    env.write("f", &random_bytes(5000, 1));
    env.backup_json(&[]);
    let cache = env.path("cache");
    let repo = open_repo(&env).with_cache(&cache);
    index::load(&repo).unwrap();
    let ids: Vec<Id> = std::fs::read_dir(env.repo.join("index"))
        .unwrap()
        .filter_map(|e| Id::from_hex(e.unwrap().file_name().to_str().unwrap()))
        .collect();
    assert_eq!(ids.len(), 1);
    let path = env.repo.join(object_key(ObjectKind::Index, &ids[0]));
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[40] ^= 1;
    std::fs::write(&path, &bytes).unwrap();
    let loaded = index::load(&repo).unwrap();
    assert!(loaded.unreadable.is_empty(), "the cached copy serves a normal load");
    let report = coffer_core::check::check(&repo, coffer_core::check::ReadData::None).unwrap();
    let damage: Vec<_> = report.damage.iter().filter(|d| d.kind == "index").collect();
    assert_eq!(damage.len(), 1, "{:?}", report.damage);
    assert_eq!(damage[0].id, ids[0]);
    assert!(damage[0].problem.contains("does not authenticate"), "{}", damage[0].problem);
}

both_backends!(restore_reads_neighbouring_chunks_together);

/// Restore fetches chunks that lie near each other in a pack in one ranged
/// read: 300 small files, stored in a couple of packs, come back whole with
/// a few GETs rather than one per file.
fn restore_reads_neighbouring_chunks_together(backend: Backend) {
    let env = Env::init_on(backend);
    let files: Vec<(String, Vec<u8>)> =
        (0..300u64).map(|i| (format!("small/f{i:03}"), random_bytes(3000 + i as usize * 7, i))).collect();
    for (name, data) in &files {
        env.write(name, data);
    }
    env.backup_json(&[]);
    let repo = open_repo(&env);
    let (_, snap) = repo.find_snapshot("latest").unwrap();
    let data_packs = index::load(&repo).unwrap().blobs.packs().iter().filter(|p| p.kind == PackKind::Data).count();
    repo.blob_set().unwrap();
    let target = env.path("out");
    let options = RestoreOptions { target: target.clone(), ..RestoreOptions::default() };
    let before = repo.backend().wire_stats();
    let outcome = restorer::restore(&repo, &snap.tree, &options, &NoProgress).unwrap();
    let cost = repo.backend().wire_stats().since(&before);
    assert!(outcome.problems.is_empty(), "{:?}", outcome.problems);
    assert_eq!(outcome.files, 300);
    for (name, data) in &files {
        assert!(std::fs::read(env.restored_src(&target).join(name)).unwrap() == *data, "{name}");
    }
    // The trees on the way to small/ (one per folder of the source's
    // absolute path) and one read per data pack, where one GET per chunk
    // would be 300.
    let trees = env.src.components().count() as u64 + 1;
    assert!(data_packs <= 2, "{data_packs} data packs");
    assert!(cost.gets <= trees + data_packs as u64, "{} GETs for {data_packs} data packs: {cost:?}", cost.gets);
}
