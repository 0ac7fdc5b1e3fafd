use anyhow::{Context, Result, bail};
use coffer_core::chunker::ChunkerParams;
use coffer_core::key::KdfParams;
use coffer_core::repo::{InitOptions, Repository};
use serde::Serialize;

use crate::cli::{GlobalArgs, InitArgs};
use crate::exit;

#[derive(Serialize)]
struct Created {
    location: String,
    repository_id: String,
}

pub fn run(g: &GlobalArgs, a: &InitArgs) -> Result<u8> {
    let backend = crate::repository::backend_for(g, a.create_bucket, a.object_lock.is_some())?;
    let location = backend.location();
    // A local folder must be new or empty: never mix a repository into
    // someone's files.
    if !location.starts_with("s3:") {
        let path = std::path::Path::new(&location);
        if path.exists() && !path.join("config").exists() {
            let mut entries = std::fs::read_dir(path).with_context(|| format!("reading {location}"))?;
            if entries.next().is_some() {
                return Err(coffer_core::Error::RepositoryExists {
                    location,
                    reason: "the folder is not empty".into(),
                }
                .into());
            }
        }
    }
    let mut kdf = KdfParams::DEFAULT;
    if let Some(m) = a.argon2_memory {
        kdf.memory_kib = m;
    }
    if let Some(t) = a.argon2_iterations {
        kdf.iterations = t;
    }
    let mut chunker = ChunkerParams::default();
    if let Some(avg) = a.chunk_size {
        chunker.avg_size = avg;
        chunker.min_size = avg / 2;
        chunker.max_size = avg.saturating_mul(8);
    }
    let object_lock = a.object_lock.map(|days| coffer_core::backend::ObjectLock {
        days,
        mode: match a.object_lock_mode {
            crate::cli::LockModeArg::Governance => coffer_core::backend::LockMode::Governance,
            crate::cli::LockModeArg::Compliance => coffer_core::backend::LockMode::Compliance,
        },
    });
    let mut options = InitOptions { kdf, chunker, object_lock, ..InitOptions::default() };
    for (arg, field, name) in [
        (&a.pack_size, &mut options.data_pack_size, "--pack-size"),
        (&a.tree_pack_size, &mut options.tree_pack_size, "--tree-pack-size"),
    ] {
        if let Some(text) = arg {
            let bytes = coffer_core::exclude::parse_size(text).with_context(|| format!("{name} {text:?}"))?;
            *field = u32::try_from(bytes)
                .ok()
                .filter(|b| coffer_core::config::PACK_SIZE_RANGE.contains(b))
                .with_context(|| format!("{name} {text:?}: a pack size must lie between 4M and 512M"))?;
        }
    }
    let password = crate::password::read(g, true)?;
    if password.is_empty() {
        bail!("an empty password is not allowed");
    }
    let repo = Repository::init(backend, password.as_bytes(), &options)?;
    let repository_id = hex_id(repo.repo_id());
    if g.json {
        super::print_json(&Created { location, repository_id })?;
    } else if !g.quiet {
        println!("created coffer repository {} at {location}", &repository_id[..8]);
        println!();
        println!("Keep the password safe: without it the data in this repository cannot be recovered.");
    }
    Ok(exit::OK)
}

fn hex_id(id: &[u8; 32]) -> String {
    coffer_core::Id(*id).to_hex()
}
