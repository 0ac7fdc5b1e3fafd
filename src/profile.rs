//! Profiles: a TOML file of defaults, so that a nightly job needs no flags.
//!
//! `$COFFER_PROFILES`, else `$XDG_CONFIG_HOME/coffer/profiles.toml`, else
//! `~/.config/coffer/profiles.toml`, holds one table per profile. The one
//! named by `--profile NAME` (or `COFFER_PROFILE`) is used, else `default`
//! when the file has it. Precedence is file < environment < flag:
//!
//! - the repository, password file or command, S3 options and cache folder
//!   become the environment variables the options read, set only where the
//!   environment does not set them already, so that a variable or a flag
//!   still wins;
//! - `[NAME.backup]` gives the paths and excludes of a `backup` given none,
//!   and `[NAME.forget]` the retention policy of a `forget` given no policy
//!   and no snapshot: options given on the command line replace the file's
//!   whole list, they are not merged with it.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Parser;
use serde::Deserialize;

use crate::cli::{Cli, Command};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct Profile {
    repository: Option<String>,
    password_file: Option<String>,
    password_command: Option<String>,
    s3_region: Option<String>,
    s3_storage_class: Option<String>,
    s3_connections: Option<u32>,
    cache_dir: Option<String>,
    #[serde(default)]
    backup: BackupProfile,
    #[serde(default)]
    forget: ForgetProfile,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct BackupProfile {
    #[serde(default)]
    paths: Vec<String>,
    #[serde(default)]
    exclude: Vec<String>,
    #[serde(default)]
    exclude_file: Vec<String>,
    #[serde(default)]
    tag: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct ForgetProfile {
    keep_last: Option<u32>,
    keep_hourly: Option<u32>,
    keep_daily: Option<u32>,
    keep_weekly: Option<u32>,
    keep_monthly: Option<u32>,
    keep_yearly: Option<u32>,
    keep_within: Option<String>,
    #[serde(default)]
    keep_tag: Vec<String>,
}

/// Where the profiles live.
pub fn file() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("COFFER_PROFILES").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(path));
    }
    if let Some(dir) = std::env::var_os("XDG_CONFIG_HOME").map(PathBuf::from).filter(|d| d.is_absolute()) {
        return Some(dir.join("coffer").join("profiles.toml"));
    }
    std::env::var_os("HOME").filter(|h| !h.is_empty()).map(|h| Path::new(&h).join(".config/coffer/profiles.toml"))
}

/// `~/x` as the shell would expand it.
fn expand(path: &str) -> String {
    match (path.strip_prefix("~/"), std::env::var("HOME")) {
        (Some(rest), Ok(home)) => format!("{home}/{rest}"),
        _ => path.to_string(),
    }
}

/// The profile named on the command line (`--profile NAME`,
/// `--profile=NAME`) or in `COFFER_PROFILE`.
fn requested(args: &[OsString]) -> Option<String> {
    let mut it = args.iter().map(|a| a.to_string_lossy());
    while let Some(arg) = it.next() {
        if arg == "--" {
            break;
        }
        if arg == "--profile" {
            return it.next().map(|v| v.into_owned());
        }
        if let Some(v) = arg.strip_prefix("--profile=") {
            return Some(v.to_string());
        }
    }
    std::env::var("COFFER_PROFILE").ok().filter(|p| !p.is_empty())
}

/// Applies the profile to the environment and returns the arguments to
/// parse, with the profile's backup paths and excludes or retention policy
/// added where the command line gives none.
pub fn apply(args: Vec<OsString>) -> Result<Vec<OsString>> {
    let named = requested(&args);
    let Some(path) = file() else {
        if let Some(name) = named {
            bail!("profile {name:?}: no profile file (set HOME or COFFER_PROFILES)");
        }
        return Ok(args);
    };
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && named.is_none() => return Ok(args),
        Err(e) => return Err(e).with_context(|| format!("cannot read the profiles in {}", path.display())),
    };
    let mut profiles: std::collections::BTreeMap<String, toml::Value> =
        toml::from_str(&text).with_context(|| format!("the profiles in {} do not parse", path.display()))?;
    let name = named.clone().unwrap_or_else(|| "default".into());
    let Some(table) = profiles.remove(&name) else {
        if named.is_some() {
            let known: Vec<&String> = profiles.keys().collect();
            bail!("{} has no profile {name:?} (it has {known:?})", path.display());
        }
        return Ok(args);
    };
    let profile: Profile =
        table.try_into().with_context(|| format!("profile {name:?} in {} does not parse", path.display()))?;
    tracing::debug!("using profile {name:?} of {}", path.display());
    let vars = [
        ("COFFER_REPOSITORY", profile.repository.as_deref().map(expand)),
        ("COFFER_PASSWORD_FILE", profile.password_file.as_deref().map(expand)),
        ("COFFER_PASSWORD_COMMAND", profile.password_command.clone()),
        ("COFFER_S3_REGION", profile.s3_region.clone()),
        ("COFFER_S3_STORAGE_CLASS", profile.s3_storage_class.clone()),
        ("COFFER_S3_CONNECTIONS", profile.s3_connections.map(|n| n.to_string())),
        ("COFFER_CACHE_DIR", profile.cache_dir.as_deref().map(expand)),
    ];
    // A password given in the environment outranks a file's password option.
    let password_in_env = ["COFFER_PASSWORD", "COFFER_PASSWORD_FILE", "COFFER_PASSWORD_COMMAND"]
        .iter()
        .any(|v| std::env::var_os(v).is_some_and(|x| !x.is_empty()));
    for (var, value) in vars {
        let is_password = var.starts_with("COFFER_PASSWORD");
        if let Some(value) = value
            && std::env::var_os(var).is_none()
            && !(is_password && password_in_env)
        {
            // SAFETY: called from main before any other thread exists.
            unsafe { std::env::set_var(var, value) };
        }
    }
    extend_args(args, &profile)
}

/// The profile's defaults for the subcommand, appended to `args`.
fn extend_args(mut args: Vec<OsString>, profile: &Profile) -> Result<Vec<OsString>> {
    // Arguments that do not parse are left to clap to report.
    let Ok(parsed) = Cli::try_parse_from(&args) else { return Ok(args) };
    let after_double_dash = args.iter().any(|a| a == "--");
    let mut push = |flag: &str, value: &str| {
        args.push(flag.into());
        args.push(value.into());
    };
    match &parsed.command {
        Command::Backup(b) => {
            let given_sources = !b.paths.is_empty()
                || !b.files_from.is_empty()
                || b.stdin
                || b.stdin_from_command
                || !b.command.is_empty();
            if b.patterns.excludes.is_empty() && b.patterns.exclude_files.is_empty() && !after_double_dash {
                for e in &profile.backup.exclude {
                    push("--exclude", e);
                }
                for f in &profile.backup.exclude_file {
                    push("--exclude-file", &expand(f));
                }
            }
            if b.tags.is_empty() && !after_double_dash {
                for t in &profile.backup.tag {
                    push("--tag", t);
                }
            }
            if !given_sources && !after_double_dash {
                args.extend(profile.backup.paths.iter().map(|p| OsString::from(expand(p))));
            }
        }
        Command::Forget(f) => {
            let policy_given =
                f.keep_last + f.keep_hourly + f.keep_daily + f.keep_weekly + f.keep_monthly + f.keep_yearly > 0
                    || f.keep_within.is_some()
                    || f.keep_within_hourly.is_some()
                    || f.keep_within_daily.is_some()
                    || f.keep_within_weekly.is_some()
                    || f.keep_within_monthly.is_some()
                    || f.keep_within_yearly.is_some()
                    || !f.keep_tags.is_empty();
            if !policy_given && f.snapshots.is_empty() && !after_double_dash {
                let p = &profile.forget;
                for (flag, n) in [
                    ("--keep-last", p.keep_last),
                    ("--keep-hourly", p.keep_hourly),
                    ("--keep-daily", p.keep_daily),
                    ("--keep-weekly", p.keep_weekly),
                    ("--keep-monthly", p.keep_monthly),
                    ("--keep-yearly", p.keep_yearly),
                ] {
                    if let Some(n) = n {
                        push(flag, &n.to_string());
                    }
                }
                if let Some(w) = &p.keep_within {
                    push("--keep-within", w);
                }
                for t in &p.keep_tag {
                    push("--keep-tag", t);
                }
            }
        }
        _ => {}
    }
    Ok(args)
}
