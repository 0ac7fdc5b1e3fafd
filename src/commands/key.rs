//! `coffer key add | list | remove | passwd`.

use anyhow::Result;
use coffer_core::key::KdfParams;
use serde::Serialize;

use crate::cli::{GlobalArgs, KeyCommand, NewKeyArgs};
use crate::exit;
use crate::output::{local_time, table};

#[derive(Serialize)]
struct Listed<'a> {
    id: &'a str,
    current: bool,
    /// False when the envelope does not parse (the other fields are then empty).
    readable: bool,
    user: &'a str,
    host: &'a str,
    created: &'a str,
}

#[derive(Serialize)]
struct Changed {
    added: Option<String>,
    removed: Option<String>,
}

fn kdf(a: &NewKeyArgs) -> KdfParams {
    let mut kdf = KdfParams::DEFAULT;
    if let Some(m) = a.argon2_memory {
        kdf.memory_kib = m;
    }
    if let Some(t) = a.argon2_iterations {
        kdf.iterations = t;
    }
    kdf
}

fn id_of(name: &str) -> String {
    name.strip_prefix("keys/").unwrap_or(name).to_string()
}

fn report(g: &GlobalArgs, added: Option<String>, removed: Option<String>) -> Result<u8> {
    if g.json {
        super::print_json(&Changed { added: added.as_deref().map(id_of), removed: removed.as_deref().map(id_of) })?;
    } else if !g.quiet {
        if let Some(a) = &added {
            println!("added key {}", &id_of(a)[..8]);
        }
        if let Some(r) = &removed {
            println!("removed key {}", &id_of(r)[..8]);
        }
    }
    Ok(exit::OK)
}

pub fn run(g: &GlobalArgs, c: &KeyCommand) -> Result<u8> {
    match c {
        KeyCommand::Add(a) => {
            // Open first: a wrong password must fail before a new one is asked.
            let repo = crate::repository::open(g)?;
            let pw = crate::password::read_new(a.new_password_file.as_deref())?;
            let name = repo.add_key(pw.as_bytes(), kdf(a))?;
            report(g, Some(name), None)
        }
        KeyCommand::Passwd(a) => {
            let mut repo = crate::repository::open(g)?;
            let pw = crate::password::read_new(a.new_password_file.as_deref())?;
            let old = repo.key_name().to_string();
            let new = repo.change_password(pw.as_bytes(), kdf(a))?;
            report(g, Some(new), Some(old))
        }
        KeyCommand::Remove { id } => {
            let repo = crate::repository::open(g)?;
            let key = repo.find_key(id)?;
            repo.remove_key(&key.name)?;
            report(g, None, Some(key.name))
        }
        KeyCommand::List => {
            let repo = crate::repository::open(g)?;
            let keys = repo.list_keys()?;
            let listed: Vec<Listed> = keys
                .iter()
                .map(|k| {
                    let env = k.envelope.as_ref();
                    Listed {
                        id: k.id(),
                        current: k.name == repo.key_name(),
                        readable: env.is_some(),
                        user: env.map_or("", |e| e.user.as_str()),
                        host: env.map_or("", |e| e.host.as_str()),
                        created: env.map_or("", |e| e.created.as_str()),
                    }
                })
                .collect();
            if g.json {
                super::print_json(&listed)?;
                return Ok(exit::OK);
            }
            let rows: Vec<Vec<String>> = listed
                .iter()
                .map(|k| {
                    vec![
                        format!("{}{}", if k.current { "*" } else { " " }, &k.id[..8.min(k.id.len())]),
                        k.user.to_string(),
                        k.host.to_string(),
                        if k.readable { local_time(k.created) } else { "(damaged)".into() },
                    ]
                })
                .collect();
            print!("{}", table(&[" ID", "User", "Host", "Created"], &rows));
            Ok(exit::OK)
        }
    }
}
