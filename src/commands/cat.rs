//! `coffer cat`: one repository object, decrypted and authenticated, for
//! debugging and for the curious. Everything but a blob prints as JSON.

use anyhow::{Context, Result, anyhow, bail};
use coffer_core::crypto::ObjectKind;
use coffer_core::id::Id;
use serde_json::{Value, json};

use crate::cli::{CatArgs, CatWhat, GlobalArgs};
use crate::exit;

/// The one id among `candidates` that starts with `prefix`.
fn resolve(what: &str, prefix: &str, candidates: impl IntoIterator<Item = Id>) -> Result<Id> {
    let prefix = prefix.to_ascii_lowercase();
    let mut found: Vec<Id> = candidates.into_iter().filter(|id| id.to_hex().starts_with(&prefix)).collect();
    found.sort();
    found.dedup();
    match found.as_slice() {
        [id] => Ok(*id),
        [] => bail!("no {what} has an id starting with {prefix:?}"),
        many => bail!("{} {what}s have ids starting with {prefix:?}: give more digits", many.len()),
    }
}

fn entries(blobs: &[coffer_core::pack::PackEntry]) -> Value {
    Value::Array(
        blobs
            .iter()
            .map(|b| json!({"id": b.id.to_hex(), "offset": b.offset, "length": b.length, "raw_length": b.raw_length}))
            .collect(),
    )
}

pub fn run(g: &GlobalArgs, a: &CatArgs) -> Result<u8> {
    let repo = crate::repository::open(g)?;
    let id = || a.id.as_deref().ok_or_else(|| anyhow!("`coffer cat {:?}` needs an id", a.what));
    let value: Value = match a.what {
        CatWhat::Config => serde_json::to_value(repo.config())?,
        CatWhat::Snapshot => {
            let (id, snap) = repo.find_snapshot(id()?)?;
            let mut v = serde_json::to_value(&snap)?;
            v["id"] = json!(id.to_hex());
            v
        }
        CatWhat::Tree | CatWhat::Blob => {
            let kind = if a.what == CatWhat::Tree { ObjectKind::Tree } else { ObjectKind::Chunk };
            let set = repo.blob_set()?;
            let blob = resolve(if kind == ObjectKind::Tree { "tree" } else { "blob" }, id()?, set.ids(kind))?;
            if kind == ObjectKind::Chunk {
                let data = repo.load_chunk(&blob)?;
                std::io::Write::write_all(&mut std::io::stdout().lock(), &data).context("writing the blob")?;
                return Ok(exit::OK);
            }
            serde_json::to_value(repo.load_tree(&blob)?)?
        }
        CatWhat::Index => {
            let index = resolve("index object", id()?, repo.list_ids(ObjectKind::Index)?)?;
            let stored = repo.runtime().block_on(coffer_core::repo::fetch(
                &**repo.backend(),
                ObjectKind::Index,
                &index,
                coffer_core::index::MAX_STORED,
            ))?;
            let opened = coffer_core::index::Index::open(repo.keys(), repo.repo_id(), &index, &stored)?;
            let packs: Vec<Value> = opened
                .packs
                .iter()
                .map(|p| json!({"id": p.id.to_hex(), "kind": p.kind, "length": p.length, "blobs": entries(&p.blobs)}))
                .collect();
            json!({"id": index.to_hex(), "packs": packs})
        }
        CatWhat::Pack => {
            let set = repo.blob_set()?;
            let pack = resolve("pack", id()?, set.packs().iter().map(|p| p.id))?;
            let info =
                set.packs().iter().find(|p| p.id == pack).copied().ok_or_else(|| anyhow!("pack {pack} vanished"))?;
            let header = repo.runtime().block_on(coffer_core::pack::fetch_header(
                &**repo.backend(),
                repo.keys(),
                repo.repo_id(),
                info.kind,
                &pack,
                info.length,
            ))?;
            json!({"id": pack.to_hex(), "kind": info.kind, "length": info.length, "blobs": entries(&header)})
        }
    };
    super::print_json(&value)?;
    Ok(exit::OK)
}
