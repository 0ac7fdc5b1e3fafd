//! Turning a repository location into a backend, and opening it.

use std::sync::Arc;

use anyhow::{Result, bail};
use coffer_core::Repository;
use coffer_core::backend::Backend;
use coffer_core::backend::local::LocalBackend;
use coffer_core::backend::s3::{S3Backend, S3Config};

use crate::cli::GlobalArgs;

pub fn backend(global: &GlobalArgs) -> Result<Arc<dyn Backend>> {
    backend_for(global, false, false)
}

/// `--limit-upload` and `--limit-download` around `backend`.
fn limited(global: &GlobalArgs, backend: Arc<dyn Backend>) -> Arc<dyn Backend> {
    if global.limit_upload.is_none() && global.limit_download.is_none() {
        return backend;
    }
    let kib = |v: Option<u64>| v.map(|k| k.saturating_mul(1024));
    Arc::new(coffer_core::backend::limit::LimitBackend::new(
        backend,
        kib(global.limit_upload),
        kib(global.limit_download),
    ))
}

/// The backend for the location; `create_bucket` lets an S3 backend create
/// its bucket (only `init --create-bucket` asks for that), with Object Lock
/// enabled when `object_lock` says so.
pub fn backend_for(global: &GlobalArgs, create_bucket: bool, object_lock: bool) -> Result<Arc<dyn Backend>> {
    let Some(location) = global.repo.as_deref() else {
        bail!("no repository given: use --repo LOCATION or set COFFER_REPOSITORY");
    };
    if location.is_empty() {
        bail!("the repository location is empty");
    }
    if let Some(rest) = location.strip_prefix("local:") {
        return Ok(limited(global, with_test_hook(Arc::new(LocalBackend::new(rest)))));
    }
    if let Some(rest) = location.strip_prefix("s3:") {
        let parsed = parse_s3(rest)?;
        let mut config = S3Config::new(parsed.bucket, parsed.prefix);
        // An explicit endpoint is an S3-compatible store: those want path style.
        config.path_style = global.s3_path_style || parsed.endpoint.is_some();
        config.endpoint = parsed.endpoint;
        config.region = global.s3_region.clone();
        config.connections = global.s3_connections;
        config.storage_class = global.s3_storage_class.clone();
        config.max_attempts = global.s3_max_attempts;
        config.create_bucket = create_bucket;
        config.create_with_object_lock = object_lock;
        return Ok(limited(global, with_test_hook(Arc::new(S3Backend::new(config)?))));
    }
    Ok(limited(global, with_test_hook(Arc::new(LocalBackend::new(location)))))
}

/// For the tests of locks only: `COFFER_TEST_STOP_AFTER=OP:PREFIX` (e.g.
/// `list:tree/`) makes the process stop itself with SIGSTOP right after
/// the first such call, so that a test can freeze it at an exact point and
/// resume it later with SIGCONT.
fn with_test_hook(backend: Arc<dyn Backend>) -> Arc<dyn Backend> {
    use coffer_core::backend::pausing::{Action, Op, PausingBackend};
    let Ok(spec) = std::env::var("COFFER_TEST_STOP_AFTER") else { return backend };
    let Some((op, prefix)) = spec.split_once(':').and_then(|(op, p)| Some((Op::parse(op)?, p))) else {
        tracing::warn!("ignoring COFFER_TEST_STOP_AFTER={spec:?}: expected OP:PREFIX");
        return backend;
    };
    let wrapped = PausingBackend::new(backend);
    wrapped.add_rule(
        op,
        prefix,
        0,
        1,
        Action::Hook(Arc::new(|| {
            // SAFETY: raise only sends a signal to this process.
            unsafe {
                libc::raise(libc::SIGSTOP);
            }
        })),
    );
    wrapped
}

/// The parts of an `s3:` location.
#[derive(Debug, PartialEq, Eq)]
pub struct S3Location {
    /// `http(s)://host[:port]` for an S3-compatible store; `None` for AWS.
    pub endpoint: Option<String>,
    pub bucket: String,
    /// Without leading or trailing `/`; may be empty.
    pub prefix: String,
}

/// Parses what follows `s3:`: `BUCKET[/PREFIX]` (AWS; `//BUCKET/PREFIX` as
/// in `s3://bucket/prefix` is accepted too) or
/// `http(s)://HOST[:PORT]/BUCKET[/PREFIX]`.
pub fn parse_s3(rest: &str) -> Result<S3Location> {
    let syntax = "expected s3:BUCKET[/PREFIX] or s3:http(s)://HOST[:PORT]/BUCKET[/PREFIX]";
    let (endpoint, path) = match rest.split_once("://") {
        Some((scheme @ ("http" | "https"), after)) => {
            let (host, path) = after.split_once('/').unwrap_or((after, ""));
            if host.is_empty() {
                bail!("s3:{rest}: the endpoint has no host; {syntax}");
            }
            (Some(format!("{scheme}://{host}")), path)
        }
        Some((scheme, _)) if !scheme.contains('/') => {
            bail!("s3:{rest}: unsupported scheme {scheme:?}; {syntax}")
        }
        _ => (None, rest.strip_prefix("//").unwrap_or(rest)),
    };
    let path = path.trim_matches('/');
    let (bucket, prefix) = path.split_once('/').unwrap_or((path, ""));
    if bucket.is_empty() {
        bail!("s3:{rest}: no bucket named; {syntax}");
    }
    let prefix = prefix.trim_matches('/');
    if prefix.split('/').any(|seg| seg.is_empty() || seg == "." || seg == "..") && !prefix.is_empty() {
        bail!("s3:{rest}: the prefix {prefix:?} has an empty, `.` or `..` component");
    }
    Ok(S3Location { endpoint, bucket: bucket.to_string(), prefix: prefix.to_string() })
}

/// Opens the repository named by the global arguments, asking for the
/// password, and reports what the per-host state noticed.
pub fn open(global: &GlobalArgs) -> Result<Repository> {
    open_checking_state(global, true)
}

/// Opens the repository with the per-host state turned on but not checked
/// yet: for `backup`, which checks it against the listing of `snapshots/` it
/// takes under its lock anyway (and then calls [`report_state`]).
pub fn open_unchecked(global: &GlobalArgs) -> Result<Repository> {
    open_checking_state(global, false)
}

fn open_checking_state(global: &GlobalArgs, check_state: bool) -> Result<Repository> {
    let backend = backend(global)?;
    let location = backend.location();
    let repo = Repository::open_with(backend, || {
        crate::password::read(global, false)
            .map(|pw| zeroize::Zeroizing::new(pw.as_bytes().to_vec()))
            .map_err(|e| coffer_core::Error::InvalidInput(format!("{e:#}")))
    })?;
    let mut repo = repo;
    tracing::debug!("opened {location} with {}", repo.key_name());
    let mut locks = coffer_core::lock::LockSettings::default();
    if let Some(secs) = global.lock_stale_secs {
        locks.stale = std::time::Duration::from_secs(secs.max(1));
    }
    locks.retry = global.retry_lock.unwrap_or_default();
    repo.set_lock_settings(locks);
    // The cache first: what the state check finds may drop cached data.
    if !global.no_cache
        && let Some(base) = global.cache_dir.clone().or_else(coffer_core::cache::default_base)
    {
        repo = repo.with_cache(&base);
    }
    if let Some(base) = coffer_core::state::default_base() {
        repo = repo.with_state(&base);
        if check_state {
            report_state(&repo.check_state()?);
        }
    }
    Ok(repo)
}

/// Tells the person, on standard error, what changed in the repository since
/// this host last saw it.
pub fn report_state(report: &coffer_core::state::StateReport) {
    for id in &report.vanished {
        eprintln!(
            "WARNING: snapshot {id}, which this host saw, is gone from the repository without a forget from here: \
             another machine forgot it, or the storage lost it or was rolled back"
        );
    }
    if report.config_changed {
        eprintln!("WARNING: the repository's config object changed since this host last saw it");
    }
    if report.keys_changed {
        eprintln!(
            "WARNING: keys (passwords) were added to or removed from the repository since this host last saw it; \
             `coffer key list` shows them"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loc(endpoint: Option<&str>, bucket: &str, prefix: &str) -> S3Location {
        S3Location { endpoint: endpoint.map(str::to_string), bucket: bucket.into(), prefix: prefix.into() }
    }

    #[test]
    fn aws_locations() {
        assert_eq!(parse_s3("photos").unwrap(), loc(None, "photos", ""));
        assert_eq!(parse_s3("photos/").unwrap(), loc(None, "photos", ""));
        assert_eq!(parse_s3("photos/coffer").unwrap(), loc(None, "photos", "coffer"));
        assert_eq!(parse_s3("photos/a/b/").unwrap(), loc(None, "photos", "a/b"));
        assert_eq!(parse_s3("//photos/a").unwrap(), loc(None, "photos", "a"));
    }

    #[test]
    fn endpoint_locations() {
        assert_eq!(parse_s3("http://127.0.0.1:9000/b1").unwrap(), loc(Some("http://127.0.0.1:9000"), "b1", ""));
        assert_eq!(
            parse_s3("https://s3.example.com/bucket/x/y").unwrap(),
            loc(Some("https://s3.example.com"), "bucket", "x/y")
        );
        assert_eq!(parse_s3("http://[::1]:9000/b/p/").unwrap(), loc(Some("http://[::1]:9000"), "b", "p"));
    }

    #[test]
    fn bad_locations() {
        for bad in
            ["", "/", "http://", "http:///bucket", "http://host", "http://host/", "ftp://host/b", "b/x//y", "b/../y"]
        {
            assert!(parse_s3(bad).is_err(), "{bad:?} was accepted");
        }
        let err = parse_s3("http://host:9000").unwrap_err().to_string();
        assert!(err.contains("no bucket"), "{err}");
    }
}
