use std::ffi::OsString;
use std::io::{IsTerminal, Read};
use std::process::{Child, ChildStdout, ExitStatus, Stdio};
use std::time::Instant;

use anyhow::Result;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
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
    let stream = stream_source(a)?;
    let mut paths = a.paths.clone();
    if stream.is_none() {
        // Without --stdin-from-command, what follows `--` are paths too.
        paths.extend(a.command.iter().map(PathBuf::from));
        for list in &a.files_from {
            paths.extend(read_path_list(list)?);
        }
        // Check the sources before touching the repository.
        archiver::resolve_paths(&paths)?;
    }
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
    // The command starts only now that the repository is open: a wrong
    // password or a missing repository does not run it.
    let command = match &stream {
        Some(Stream::Command { argv, .. }) => Some(CommandReader::spawn(argv)?),
        _ => None,
    };
    let bar = Bar::new(!g.quiet && !g.json, "backup");
    let result = match (&stream, command) {
        (Some(Stream::Command { name, .. }), Some(mut reader)) => {
            let result = archiver::backup_stream(&repo, &options, name, &mut reader, &bar);
            reader.finish(result)
        }
        (Some(Stream::Stdin { name }), _) => {
            archiver::backup_stream(&repo, &options, name, &mut std::io::stdin().lock(), &bar).map_err(Into::into)
        }
        _ => archiver::backup(&repo, &options, &bar).map_err(Into::into),
    };
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

/// What a backup of one stream reads (`--stdin`, `--stdin-from-command`).
enum Stream {
    Stdin { name: String },
    Command { name: String, argv: Vec<OsString> },
}

/// The stream to back up, if `--stdin` or `--stdin-from-command` asks for
/// one; refuses combinations that make no sense before anything is read.
fn stream_source(a: &BackupArgs) -> Result<Option<Stream>> {
    let name = a.stdin_filename.clone().unwrap_or_else(|| "stdin".to_string());
    if a.stdin && a.stdin_from_command {
        bail!("--stdin and --stdin-from-command cannot be combined: give one source");
    }
    let flag = if a.stdin {
        "--stdin"
    } else if a.stdin_from_command {
        "--stdin-from-command"
    } else {
        if a.stdin_filename.is_some() {
            bail!("--stdin-filename names the file of --stdin or --stdin-from-command; give one of them");
        }
        return Ok(None);
    };
    if !a.paths.is_empty() || (a.stdin && !a.command.is_empty()) {
        bail!("{flag} backs up one stream as one file: it cannot be combined with paths");
    }
    if !a.files_from.is_empty() {
        bail!("{flag} backs up one stream as one file: it cannot be combined with --files-from");
    }
    archiver::stream_name(&name)?;
    if a.stdin {
        if std::io::stdin().is_terminal() {
            bail!(
                "--stdin: nothing piped in (standard input is a terminal); for example `pg_dump db | coffer backup --stdin --stdin-filename db.sql`"
            );
        }
        return Ok(Some(Stream::Stdin { name }));
    }
    if a.command.is_empty() {
        bail!(
            "--stdin-from-command needs the command after `--`: coffer backup --stdin-from-command -- COMMAND [ARGS...]"
        );
    }
    Ok(Some(Stream::Command { name, argv: a.command.clone() }))
}

/// The standard output of a `--stdin-from-command` command, which runs
/// without a shell, with coffer's standard input and standard error. At the
/// end of its output the command is waited for, and an exit other than 0 is
/// a read error: the backup fails and writes no snapshot (as restic's).
struct CommandReader {
    child: Child,
    stdout: ChildStdout,
    /// The command line, for messages.
    shown: String,
    /// How the command exited, once its output ended.
    status: Option<ExitStatus>,
}

impl CommandReader {
    fn spawn(argv: &[OsString]) -> Result<CommandReader> {
        let shown = shell_words(argv);
        let mut child = std::process::Command::new(&argv[0])
            .args(&argv[1..])
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot run the command {shown}"))?;
        let stdout = child.stdout.take().context("the command's output is not piped")?;
        Ok(CommandReader { child, stdout, shown, status: None })
    }

    /// The backup's result, made to name the command when that failed.
    fn finish<T>(mut self, result: coffer_core::Result<T>) -> Result<T> {
        match self.status {
            Some(status) if !status.success() => {
                bail!("the command {} failed with {}: no snapshot was written", self.shown, describe(status))
            }
            Some(_) => Ok(result?),
            None => {
                // The backup stopped before the command's output ended.
                let _ = self.child.kill();
                let _ = self.child.wait();
                Ok(result?)
            }
        }
    }
}

impl Read for CommandReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if let Some(status) = self.status {
            return if status.success() { Ok(0) } else { Err(self.failure(status)) };
        }
        let n = self.stdout.read(buf)?;
        if n == 0 && !buf.is_empty() {
            let status = self.child.wait()?;
            self.status = Some(status);
            if !status.success() {
                return Err(self.failure(status));
            }
        }
        Ok(n)
    }
}

impl CommandReader {
    fn failure(&self, status: ExitStatus) -> std::io::Error {
        std::io::Error::other(format!("the command {} failed with {}", self.shown, describe(status)))
    }
}

/// "exit status 3", or the signal that ended a process.
fn describe(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit status {code}"),
        (None, Some(signal)) => format!("signal {signal}"),
        (None, None) => status.to_string(),
    }
}

/// A command line as a shell would take it back, for messages.
fn shell_words(argv: &[OsString]) -> String {
    let safe = |c: char| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c);
    argv.iter()
        .map(|a| {
            let a = a.to_string_lossy();
            if !a.is_empty() && a.chars().all(safe) {
                a.into_owned()
            } else {
                format!("'{}'", a.replace('\'', "'\\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
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
