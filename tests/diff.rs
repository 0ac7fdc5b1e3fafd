//! `coffer diff`: added, removed, modified, type-changed and (with
//! `--metadata`) metadata-only changes between two snapshots.

use std::os::unix::fs::PermissionsExt;

use serde_json::Value;

use crate::common::{Backend, Env, both_backends};

/// The changes below `src`, as (modifier, path relative to `src`), from
/// `diff --json`; and the statistics line.
fn diff(env: &Env, a: &str, b: &str, extra: &[&str]) -> (Vec<(String, String)>, Value) {
    let out = env.coffer().args(["diff", "--json", a, b]).args(extra).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let prefix = format!("{}/", env.src.display());
    let mut changes = Vec::new();
    let mut stats = Value::Null;
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let v: Value = serde_json::from_str(line).unwrap();
        match v["message_type"].as_str() {
            Some("change") => {
                let path = v["path"].as_str().unwrap();
                if let Some(rel) = path.strip_prefix(&prefix) {
                    changes.push((v["modifier"].as_str().unwrap().to_string(), rel.to_string()));
                } else if path == prefix {
                    changes.push((v["modifier"].as_str().unwrap().to_string(), String::new()));
                }
            }
            Some("statistics") => stats = v,
            other => panic!("unexpected line {other:?}: {line}"),
        }
    }
    (changes, stats)
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter().map(|(m, p)| (m.to_string(), p.to_string())).collect()
}

both_backends!(reports_each_kind_of_change);

fn reports_each_kind_of_change(backend: Backend) {
    let env = Env::init_on(backend);
    env.write("keep.txt", b"unchanged");
    env.write("change.txt", b"version 1");
    env.write("gone.txt", b"to be removed");
    env.write("olddir/x.txt", b"x");
    env.write("typechange", b"a file for now");
    env.write("meta.txt", b"metadata only");
    env.write("sub/deep/same.txt", b"same");
    let first = env.backup_json(&[])["snapshot_id"].as_str().unwrap().to_string();

    env.write("change.txt", b"version 2, longer");
    std::fs::remove_file(env.src.join("gone.txt")).unwrap();
    std::fs::remove_dir_all(env.src.join("olddir")).unwrap();
    env.write("newdir/y.txt", b"y");
    std::fs::remove_file(env.src.join("typechange")).unwrap();
    env.write("typechange/z.txt", b"z");
    std::fs::set_permissions(env.src.join("meta.txt"), std::fs::Permissions::from_mode(0o600)).unwrap();
    let second = env.backup_json(&[])["snapshot_id"].as_str().unwrap().to_string();

    let (changes, stats) = diff(&env, &first, &second, &[]);
    // In path order; nothing for keep.txt, meta.txt (metadata only) or the
    // unchanged sub/ tree.
    assert_eq!(
        changes,
        pairs(&[
            ("M", "change.txt"),
            ("-", "gone.txt"),
            ("+", "newdir/"),
            ("+", "newdir/y.txt"),
            ("-", "olddir/"),
            ("-", "olddir/x.txt"),
            ("T", "typechange/"),
            ("+", "typechange/z.txt"),
        ])
    );
    assert_eq!(stats["added"]["files"], 2);
    assert_eq!(stats["added"]["dirs"], 1);
    assert_eq!(stats["removed"]["files"], 2);
    assert_eq!(stats["removed"]["dirs"], 1);
    assert_eq!(stats["changed_files"], 1);
    assert_eq!(stats["source_snapshot"], first.as_str());

    // --metadata adds the mode change of meta.txt and the source folder
    // itself (its mtime changed with its entries).
    let (changes, _) = diff(&env, &first, &second, &["--metadata"]);
    assert!(changes.contains(&("U".to_string(), "meta.txt".to_string())), "{changes:?}");
    assert!(changes.contains(&("U".to_string(), String::new())), "{changes:?}");
    assert!(!changes.iter().any(|(_, p)| p == "keep.txt" || p.starts_with("sub/")), "{changes:?}");

    // The reverse direction swaps + and -.
    let (changes, _) = diff(&env, &second, &first, &[]);
    assert!(changes.contains(&("+".to_string(), "gone.txt".to_string())));
    assert!(changes.contains(&("-".to_string(), "newdir/y.txt".to_string())));
    assert!(changes.contains(&("T".to_string(), "typechange".to_string())));
    assert!(changes.contains(&("-".to_string(), "typechange/z.txt".to_string())), "{changes:?}");

    // A snapshot against itself: no change. And the text form.
    assert!(diff(&env, &first, &first, &["--metadata"]).0.is_empty());
    let out = env.coffer().args(["diff", &first[..8], "latest"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(&format!("M    {}/change.txt", env.src.display())), "{text}");
    assert!(text.contains("Files:   2 new, 2 removed, 1 changed"), "{text}");
}

/// Replaces the node at `path` (components below the root tree) with what
/// `change` makes of it, storing the new trees; returns the new root id.
fn rewrite(
    repo: &coffer_core::Repository,
    tree: &coffer_core::Id,
    path: &[Vec<u8>],
    change: &dyn Fn(&mut coffer_core::tree::Node),
) -> coffer_core::Id {
    let mut t = repo.load_tree(tree).unwrap();
    let node = t.nodes.iter_mut().find(|n| n.name == path[0]).expect("path in the snapshot");
    if path.len() == 1 {
        change(node);
    } else {
        node.subtree = Some(rewrite(repo, &node.subtree.unwrap(), &path[1..], change));
    }
    let (id, stored) = repo.encode_tree(&t);
    let raw = t.to_bytes().len() as u32;
    crate::common::store_blobs(repo, coffer_core::crypto::ObjectKind::Tree, &[(id, stored, raw)]);
    id
}

both_backends!(content_change_without_metadata_change_is_flagged);

fn content_change_without_metadata_change_is_flagged(backend: Backend) {
    let env = Env::init_on(backend);
    env.write("photo.jpg", b"original bytes");
    env.write("other.jpg", b"different bytes");
    let first = env.backup_json(&[])["snapshot_id"].as_str().unwrap().to_string();
    // A snapshot where photo.jpg has other.jpg's chunks but all of its own
    // metadata: what bit rot that the file system did not notice looks like.
    let repo = crate::common::open_repo(&env);
    let (_, mut snap) = repo.find_snapshot(&first).unwrap();
    let other = crate::common::snapshot_node(&repo, &first, &env.src.join("other.jpg"));
    let comps = coffer_core::walk::snapshot_components(&env.src.join("photo.jpg")).unwrap();
    snap.tree = rewrite(&repo, &snap.tree, &comps, &|n| n.content = other.content.clone());
    let second = repo.save_snapshot(&snap).unwrap().to_hex();
    let (changes, stats) = diff(&env, &first, &second, &[]);
    assert_eq!(changes, pairs(&[("M?", "photo.jpg")]));
    assert_eq!(stats["changed_files"], 1);
}
