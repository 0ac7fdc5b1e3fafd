use std::time::Instant;

use anyhow::Result;
use std::path::{Path, PathBuf};

use anyhow::Context;
use coffer_core::archiver::{self, BackupOptions, ChangeDetection, ParentChoice};
use serde::Serialize;

use crate::cli::{BackupArgs, GlobalArgs};
use crate::exit;
use crate::output::{bytes, duration_ms};
use crate::progress::Bar;

#[derive(Serialize)]
struct Report<'a> {
    snapshot_id: Option<String>,
    parent: Option<String>,
    dry_run: bool,
    #[serde(flatten)]
    summary: &'a coffer_core::snapshot::Summary,
    /// Requests and bytes this command cost, from opening the repository on.
    wire: coffer_core::backend::WireStats,
    /// Object Lock: how the retention of what the snapshot uses was extended.
    #[serde(skip_serializing_if = "Option::is_none")]
    retention: Option<coffer_core::retention::Extended>,
}

pub fn run(g: &GlobalArgs, a: &BackupArgs) -> Result<u8> {
    let mut paths = a.paths.clone();
    for list in &a.files_from {
        paths.extend(read_path_list(list)?);
    }
    // Check the sources before touching the repository.
    archiver::resolve_paths(&paths)?;
    let mut excludes = a.patterns.excludes()?;
    if a.exclude_caches {
        excludes = excludes.caches();
    }
    for spec in &a.exclude_if_present {
        excludes = excludes.if_present(spec)?;
    }
    if let Some(size) = &a.exclude_larger_than {
        excludes = excludes.larger_than(coffer_core::exclude::parse_size(size)?);
    }
    let time = a.time.as_deref().map(parse_time).transpose()?;
    // The backup checks the per-host state itself, on the listing it takes
    // under its lock.
    let repo = crate::repository::open_unchecked(g)?;
    let parent = if a.force {
        ParentChoice::None
    } else if let Some(spec) = &a.parent {
        ParentChoice::Snapshot(repo.find_snapshot(spec)?.0)
    } else {
        ParentChoice::Auto
    };
    let options = BackupOptions {
        paths,
        change: ChangeDetection { ignore_inode: a.ignore_inode, ignore_ctime: a.ignore_ctime },
        one_file_system: a.one_file_system,
        excludes,
        tags: a.tags.iter().filter(|t| !t.is_empty()).cloned().collect(),
        host: a.host.clone(),
        parent,
        dry_run: a.dry_run,
        time,
        ..BackupOptions::default()
    };
    let start = Instant::now();
    let bar = Bar::new(!g.quiet && !g.json, "backup");
    let result = archiver::backup(&repo, &options, &bar);
    bar.finish();
    let outcome = result?;
    crate::repository::report_state(&outcome.state);
    // Object Lock: the new snapshot and everything it uses stay retained
    // for the repository's days from now.
    let mut retention_failed = None;
    let retention = match (outcome.snapshot_id, coffer_core::state::default_base()) {
        (Some(id), Some(base)) if repo.config().object_lock.is_some() => {
            let mut record = coffer_core::retention::RetentionRecord::load(&base, repo.repo_id());
            match coffer_core::retention::extend_for_snapshot(&repo, &id, &mut record) {
                Ok(extended) => extended,
                Err(e) => {
                    retention_failed = Some(e);
                    None
                }
            }
        }
        _ => None,
    };
    let s = &outcome.snapshot.summary;
    let wire = repo.backend().wire_stats();
    if g.json {
        super::print_json(&Report {
            snapshot_id: outcome.snapshot_id.map(|id| id.to_hex()),
            parent: outcome.parent.map(|id| id.to_hex()),
            dry_run: a.dry_run,
            summary: s,
            wire,
            retention: retention.clone(),
        })?;
    } else if !g.quiet {
        if let Some(p) = outcome.parent {
            println!("using parent snapshot {}", p.short());
        }
        println!("Files:       {} new, {} changed, {} unchanged", s.files_new, s.files_changed, s.files_unchanged);
        println!("Dirs:        {}", s.dirs);
        let secs = start.elapsed().as_secs_f64().max(0.001);
        println!("Read:        {} ({}/s)", bytes(s.bytes_read), bytes((s.bytes_read as f64 / secs) as u64));
        println!(
            "Added:       {} to the repository ({} chunks, {} trees){}",
            bytes(s.bytes_added),
            s.chunks_added,
            s.trees_added,
            if a.dry_run { " [dry run: would add, before compression]" } else { "" }
        );
        println!("Total size:  {}", bytes(s.bytes_total));
        println!("Duration:    {}", duration_ms(s.duration_ms));
        println!("Requests:    {}", crate::output::wire(&wire));
        if let Some(r) = &retention {
            println!(
                "Retention:   {} objects retained until at least {} ({} extended)",
                r.objects,
                coffer_core::retention::date(r.retained_until),
                r.extended
            );
        }
        match outcome.snapshot_id {
            Some(id) => println!("snapshot {} saved", id.short()),
            None => println!("dry run: no snapshot saved"),
        }
    }
    if s.files_changed_while_read > 0 {
        eprintln!(
            "warning: {} files changed while they were read; they are stored as read (see the warnings above) and the next backup reads them again",
            s.files_changed_while_read
        );
    }
    if let Some(e) = retention_failed {
        eprintln!(
            "error: the snapshot is saved, but the Object Lock retention of what it uses could not be extended: {e}; \
             the next backup tries again"
        );
        return Ok(exit::FATAL);
    }
    if s.errors > 0 {
        eprintln!("warning: {} entries could not be read and are missing from the snapshot", s.errors);
        return Ok(exit::PARTIAL);
    }
    Ok(exit::OK)
}

/// Parses `--time`: RFC 3339 (its offset is kept), or restic's
/// `YYYY-MM-DD HH:MM:SS` in the local time zone.
fn parse_time(s: &str) -> Result<jiff::ZonedDateTime> {
    if let Ok(ts) = s.parse::<jiff::Timestamp>() {
        let offset = jiff::fmt::temporal::Pieces::parse(s)
            .ok()
            .and_then(|p| p.to_numeric_offset())
            .unwrap_or(jiff::tz::Offset::UTC);
        return Ok(ts.to_zoned_datetime(jiff::tz::TimeZone::fixed(offset)));
    }
    let local = jiff::civil::DateTime::strptime("%Y-%m-%d %H:%M:%S", s)
        .with_context(|| format!("--time {s:?}: expected YYYY-MM-DD HH:MM:SS or an RFC 3339 time"))?;
    Ok(local.to_zoned_datetime(jiff::tz::TimeZone::system())?)
}

/// Reads a `--files-from` list: one path per line; blank lines and lines
/// starting with `#` are skipped. Paths are taken verbatim (no trimming), so
/// names with leading or trailing spaces survive.
fn read_path_list(file: &Path) -> Result<Vec<PathBuf>> {
    use std::os::unix::ffi::OsStrExt;
    let data = std::fs::read(file).with_context(|| format!("reading the path list {}", file.display()))?;
    Ok(data
        .split(|&b| b == b'\n')
        .map(|line| line.strip_suffix(b"\r").unwrap_or(line))
        .filter(|line| !line.is_empty() && !line.starts_with(b"#"))
        .map(|line| PathBuf::from(std::ffi::OsStr::from_bytes(line)))
        .collect())
}
