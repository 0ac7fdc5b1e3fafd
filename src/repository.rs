//! Turning a repository location into a backend, and opening it.

use std::sync::Arc;

use anyhow::{Result, bail};
use coffer_core::Repository;
use coffer_core::backend::Backend;
use coffer_core::backend::local::LocalBackend;

use crate::cli::GlobalArgs;

pub fn backend(global: &GlobalArgs) -> Result<Arc<dyn Backend>> {
    let Some(location) = global.repo.as_deref() else {
        bail!("no repository given: use --repo LOCATION or set COFFER_REPOSITORY");
    };
    if location.is_empty() {
        bail!("the repository location is empty");
    }
    if let Some(rest) = location.strip_prefix("local:") {
        return Ok(Arc::new(LocalBackend::new(rest)));
    }
    if location.starts_with("s3:") {
        bail!("S3 repositories are not supported by this build yet: {location}");
    }
    Ok(Arc::new(LocalBackend::new(location)))
}

/// Opens the repository named by the global arguments, asking for the password.
pub fn open(global: &GlobalArgs) -> Result<Repository> {
    let backend = backend(global)?;
    let location = backend.location();
    let repo = Repository::open_with(backend, || {
        crate::password::read(global, false)
            .map(|pw| zeroize::Zeroizing::new(pw.as_bytes().to_vec()))
            .map_err(|e| coffer_core::Error::InvalidInput(format!("{e:#}")))
    })?;
    tracing::debug!("opened {location} with {}", repo.key_name());
    Ok(repo)
}
