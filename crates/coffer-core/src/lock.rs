//! Repository locks (the design's invariant 6).
//!
//! A lock is one object `locks/<random id>` holding a sealed [`LockRecord`].
//! Backup and forget take a *shared* lock for as long as they rely on their
//! view of the repository; prune takes the *exclusive* lock only for its
//! short delete phase. Exclusive conflicts with every other lock, shared only
//! with exclusive.
//!
//! - **Acquire** is write-then-list: write our lock, list `locks/`, read the
//!   others. A conflict removes our lock and retries until `--retry-lock`
//!   runs out. Two processes that race both see each other and both back
//!   off (with random jitter), so neither proceeds without having seen the
//!   other absent.
//! - **Refresh**: the holder rewrites *the same object* with the refresh
//!   counter plus one, every [`LockSettings::stale`]/6. One name per holder
//!   keeps the listing at one object per process, leaves nothing behind when
//!   a refresh lands but its old name could not be deleted, and gives
//!   watchers a single (name, counter) pair to follow.
//! - **The holder aborts itself** when it has had no successful refresh for
//!   half the stale time, measured on `CLOCK_BOOTTIME` (which counts
//!   suspend), and re-reads its own lock before it writes a snapshot.
//! - **Others judge staleness only by what they observe**: the same counter
//!   unchanged for the whole stale time on their own `CLOCK_BOOTTIME`, or, on
//!   the same host (same boot id and pid namespace), a holder process that no
//!   longer runs. Wall-clock times in records are shown to people and never
//!   compared. A watcher needs the full stale time to call a lock stale; the
//!   holder gives up after half of it, so by the time anyone may ignore a
//!   lock its holder has stopped relying on it, however long it was frozen
//!   (SIGSTOP, a suspended laptop, a stalled VM).
//!
//! A stale lock is ignored, never deleted, by the commands that meet it: only
//! `coffer unlock` removes locks.

use std::collections::HashMap;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::backend::Backend;
use crate::blob;
use crate::crypto::{Keys, ObjectKind};
use crate::error::{Error, Result};
use crate::id::Id;
use crate::repo::{Repository, object_key, parse_object_key};

pub const LOCK_VERSION: u32 = 1;
/// Largest lock plaintext a client decodes.
const MAX_LOCK_LEN: usize = 64 * 1024;
/// Largest stored lock object a client reads (docs/format.md, section 13):
/// a larger `locks/…` object is refused unread and counts as damaged.
pub const MAX_STORED: u64 = blob::max_stored_random_len(MAX_LOCK_LEN);
/// The operation name prune's locks carry.
pub const PRUNE: &str = "prune";
/// The operation name forget's lock carries.
pub const FORGET: &str = "forget";
/// The operation name the locks of `repair index|packs|snapshots` carry.
pub const REPAIR: &str = "repair";
/// The operation name rewrite's lock carries.
pub const REWRITE: &str = "rewrite";
/// Operations whose locks others wait for without a limit, since they are
/// held briefly (prune's exclusive phase, forget's few deletes): two hosts
/// running `forget --prune` at once then both finish, one after the other.
/// A holder that died leaves a lock that turns stale and is then ignored.
pub const SHORT_OPERATIONS: &[&str] = &[FORGET, PRUNE];

/// Default stale time: a lock whose counter nobody saw change for this long
/// belongs to a process that is gone or frozen.
pub const DEFAULT_STALE: Duration = Duration::from_secs(30 * 60);

/// Timing of locks, per repository handle.
#[derive(Clone, Copy, Debug)]
pub struct LockSettings {
    /// See [`DEFAULT_STALE`]. The holder refreshes every `stale / 6` and gives
    /// up after `stale / 2` without a successful refresh.
    pub stale: Duration,
    /// How long to wait for a conflicting lock (`--retry-lock`) before
    /// failing with [`Error::Locked`]. Locks of [`SHORT_OPERATIONS`] are
    /// waited for regardless.
    pub retry: Duration,
    /// Added to the wall-clock time written into records. Only for tests
    /// that simulate a machine whose clock is wrong; no decision depends on
    /// that time.
    pub wall_clock_offset: jiff::SignedDuration,
}

impl Default for LockSettings {
    fn default() -> Self {
        LockSettings { stale: DEFAULT_STALE, retry: Duration::ZERO, wall_clock_offset: jiff::SignedDuration::ZERO }
    }
}

impl LockSettings {
    fn refresh_interval(&self) -> Duration {
        self.stale / 6
    }

    fn give_up_after(&self) -> Duration {
        self.stale / 2
    }

    /// The stale time a watcher with these settings applies to a lock whose
    /// holder recorded `holder_secs`: the larger of the two.
    fn stale_for(&self, holder_secs: u64) -> Duration {
        self.stale.max(Duration::from_secs(holder_secs))
    }

    /// How often a waiting process looks at the locks again.
    fn poll_interval(&self) -> Duration {
        (self.stale / 20).clamp(Duration::from_millis(50), Duration::from_secs(5))
    }
}

/// What a lock object holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockRecord {
    pub version: u32,
    pub exclusive: bool,
    /// The command that holds it (`backup`, `forget`, `prune`, …).
    pub operation: String,
    pub host: String,
    pub user: String,
    /// `/proc/sys/kernel/random/boot_id` of the holder's machine.
    pub boot_id: String,
    /// The holder's pid namespace (`pid:[4026531836]`), so that containers
    /// sharing a kernel never judge each other's pids.
    pub pid_namespace: String,
    pub pid: u32,
    /// The process's start time in clock ticks since boot: a pid reused by
    /// another process has a different one.
    pub process_start: u64,
    /// The random id that names the object (`locks/<id>`).
    pub lock_id: Id,
    /// Incremented by each refresh.
    pub counter: u64,
    /// When it was written (RFC 3339), for people only.
    pub time: String,
    /// The holder's stale time in seconds: others wait at least this long
    /// (and at least their own stale time) before they call it stale, so a
    /// watcher with a short stale time never overrides a holder that
    /// refreshes slowly. 0 in records that predate it: the default applies.
    #[serde(default)]
    pub stale_secs: u64,
}

impl LockRecord {
    /// A record for this process.
    fn for_this_process(exclusive: bool, operation: &str, settings: &LockSettings) -> LockRecord {
        let pid = std::process::id();
        LockRecord {
            version: LOCK_VERSION,
            exclusive,
            operation: operation.to_string(),
            host: crate::repo::host_name(),
            user: crate::metadata::OwnerNames::default().user(nix::unistd::geteuid().as_raw()).unwrap_or_default(),
            boot_id: boot_id(),
            pid_namespace: pid_namespace(),
            pid,
            process_start: process_start(pid).unwrap_or(0),
            lock_id: Id::random(),
            counter: 0,
            time: wall_time(settings.wall_clock_offset),
            stale_secs: settings.stale.as_secs().max(1),
        }
    }

    /// A record for another process of this machine, for tests of stale
    /// locks left by a process that has died. Its stale time is the default.
    pub fn for_process(pid: u32, exclusive: bool, operation: &str) -> LockRecord {
        let mut r = LockRecord::for_this_process(exclusive, operation, &LockSettings::default());
        r.pid = pid;
        r.process_start = process_start(pid).unwrap_or(0);
        r
    }

    pub fn name(&self) -> String {
        object_key(ObjectKind::Lock, &self.lock_id)
    }

    /// Who holds it, for messages.
    pub fn describe(&self) -> String {
        let kind = if self.exclusive { "exclusive" } else { "shared" };
        let user = if self.user.is_empty() { String::new() } else { format!("{}@", self.user) };
        format!("{} ({kind} lock) of {user}{}, pid {}, since {}", self.operation, self.host, self.pid, self.time)
    }

    fn conflicts_with(&self, exclusive: bool) -> bool {
        exclusive || self.exclusive
    }

    /// True when the holder provably no longer runs: it was on this very
    /// machine, in this boot and pid namespace, and its pid is gone or now
    /// belongs to a process started at another time. Anything that cannot
    /// be known (a `/proc` hidden by `hidepid` or `ProtectProc`, a read that
    /// fails, a record without a start time) means alive.
    pub fn holder_is_dead(&self) -> bool {
        self.holder_is_dead_with(read_proc_stat)
    }

    /// [`LockRecord::holder_is_dead`], reading `/proc/<pid>/stat` with
    /// `read_stat` (tests make that read fail as a hidden `/proc` does).
    pub fn holder_is_dead_with(&self, read_stat: impl Fn(u32) -> std::io::Result<String>) -> bool {
        if self.boot_id.is_empty() || self.pid_namespace.is_empty() {
            return false;
        }
        if self.host != crate::repo::host_name() || self.boot_id != boot_id() || self.pid_namespace != pid_namespace() {
            return false;
        }
        match process_state(self.pid, read_stat) {
            ProcessState::Gone => true,
            ProcessState::Running { start } => self.process_start != 0 && start != self.process_start,
            ProcessState::Unknown => false,
        }
    }

    fn seal(&self, keys: &Keys, repo_id: &[u8; 32]) -> Vec<u8> {
        let plain = rmp_serde::to_vec_named(self).unwrap_or_default();
        blob::seal_random(keys, repo_id, ObjectKind::Lock, &self.name(), b"", &plain)
    }

    /// Authenticates and parses the lock stored under `name`.
    pub fn open(keys: &Keys, repo_id: &[u8; 32], name: &str, stored: &[u8]) -> Result<LockRecord> {
        match LockRecord::open_authentic(keys, repo_id, name, stored)? {
            Ok(record) => Ok(record),
            Err(foreign) => Err(Error::corrupt("lock", name, foreign.why)),
        }
    }

    /// [`LockRecord::open`], telling a lock that does not authenticate
    /// (`Err`: garbage, whoever wrote it has no key) from an authentic one
    /// this version cannot read (`Ok(Err(_))`: a newer coffer's, or a
    /// writer's bug), which must be honoured as a live lock.
    fn open_authentic(
        keys: &Keys,
        repo_id: &[u8; 32],
        name: &str,
        stored: &[u8],
    ) -> Result<std::result::Result<LockRecord, ForeignLock>> {
        let foreign = |why: String, summary: LockSummary| ForeignLock { name: name.to_string(), summary, why };
        let plain = match blob::open_random_authentic(keys, repo_id, ObjectKind::Lock, name, b"", stored, MAX_LOCK_LEN)?
        {
            Ok(p) => p,
            Err(why) => return Ok(Err(foreign(why, LockSummary::default()))),
        };
        let summary = || rmp_serde::from_slice::<LockSummary>(&plain).unwrap_or_default();
        let record: LockRecord = match rmp_serde::from_slice(&plain) {
            Ok(r) => r,
            Err(e) => return Ok(Err(foreign(format!("does not parse: {e}"), summary()))),
        };
        if record.version != LOCK_VERSION {
            return Ok(Err(foreign(
                format!("lock version {}, newer than this coffer's {LOCK_VERSION}", record.version),
                summary(),
            )));
        }
        if record.name() != name {
            return Ok(Err(foreign("its id does not match its name".into(), summary())));
        }
        Ok(Ok(record))
    }

    /// The stale time others apply to it: the larger of theirs and its
    /// holder's.
    fn stale_after(&self, settings: &LockSettings) -> Duration {
        settings.stale_for(self.stale_secs)
    }
}

/// What can be read of an authentic lock this version does not understand:
/// every field is optional, so a newer record still names its holder.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct LockSummary {
    pub version: u32,
    pub operation: String,
    pub host: String,
    pub user: String,
    pub pid: u32,
    pub time: String,
    pub stale_secs: u64,
}

/// An authentic lock this version cannot read: it counts as a live
/// exclusive lock until nobody saw it change for the stale time.
#[derive(Clone, Debug)]
pub struct ForeignLock {
    /// Its object name (`locks/<id>`).
    pub name: String,
    pub summary: LockSummary,
    /// Why this version cannot read it.
    pub why: String,
}

impl ForeignLock {
    pub fn describe(&self) -> String {
        let s = &self.summary;
        let op = if s.operation.is_empty() { "an unknown operation" } else { s.operation.as_str() };
        let user = if s.user.is_empty() { String::new() } else { format!("{}@", s.user) };
        let host = if s.host.is_empty() { "an unknown host" } else { s.host.as_str() };
        format!(
            "{op} (a lock this coffer cannot read: {}; it is honoured as exclusive) of {user}{host}, pid {}, since {}, in {}",
            self.why,
            s.pid,
            if s.time.is_empty() { "an unknown time" } else { s.time.as_str() },
            self.name
        )
    }

    fn stale_after(&self, settings: &LockSettings) -> Duration {
        settings.stale_for(self.summary.stale_secs)
    }
}

/// A `locks/…` object that does not authenticate or is too large to be a
/// lock: it protects nothing (its writer had no key, or it is not a lock).
#[derive(Clone, Debug)]
pub struct DamagedLock {
    pub name: String,
    pub why: String,
}

/// Everything `locks/` holds, read and sorted by what it means.
#[derive(Debug, Default)]
pub struct LockListing {
    pub records: Vec<LockRecord>,
    pub foreign: Vec<ForeignLock>,
    pub damaged: Vec<DamagedLock>,
    /// A digest of each object's stored bytes (or of its size, when it was
    /// too large to read), by name: what watchers follow to see whether an
    /// unreadable lock changes.
    fingerprints: HashMap<String, u128>,
}

impl LockListing {
    fn fingerprint(&self, name: &str) -> u128 {
        self.fingerprints.get(name).copied().unwrap_or_default()
    }
}

fn fingerprint(bytes: &[u8]) -> u128 {
    let h = blake3::hash(bytes);
    let mut first = [0u8; 16];
    first.copy_from_slice(&h.as_bytes()[..16]);
    u128::from_le_bytes(first)
}

/// `CLOCK_BOOTTIME`: monotonic, and counting time spent suspended.
pub fn boottime() -> Duration {
    match nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME) {
        Ok(t) => Duration::new(t.tv_sec().max(0) as u64, t.tv_nsec().clamp(0, 999_999_999) as u32),
        // Not Linux: the monotonic clock is the closest there is.
        Err(_) => {
            static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
            START.get_or_init(std::time::Instant::now).elapsed()
        }
    }
}

/// This host's clock, moved by `offset` (tests of a clock that is off).
pub(crate) fn wall_clock(offset: jiff::SignedDuration) -> jiff::Timestamp {
    let now = jiff::Timestamp::now();
    now.checked_add(offset).unwrap_or(now)
}

fn wall_time(offset: jiff::SignedDuration) -> String {
    wall_clock(offset).to_string()
}

fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id").map(|s| s.trim().to_string()).unwrap_or_default()
}

fn pid_namespace() -> String {
    std::fs::read_link("/proc/self/ns/pid").map(|p| p.to_string_lossy().into_owned()).unwrap_or_default()
}

/// What this machine can tell about a pid.
#[derive(Debug, PartialEq, Eq)]
enum ProcessState {
    /// It runs, and started at this many clock ticks after boot.
    Running { start: u64 },
    /// No process has that pid, or it is a zombie.
    Gone,
    /// It may run: its `/proc` entry could not be read (hidden by
    /// `hidepid`/`ProtectProc`, or another error) or made no sense.
    Unknown,
}

/// Asks the kernel whether `pid` exists (signal 0: ESRCH is the only answer
/// that means "no such process"; EPERM means it exists under another user),
/// then reads its start time with `read_stat`.
fn process_state(pid: u32, read_stat: impl Fn(u32) -> std::io::Result<String>) -> ProcessState {
    // 0 and negative pids address process groups, not a process.
    let Ok(raw) = i32::try_from(pid) else { return ProcessState::Unknown };
    if raw <= 0 {
        return ProcessState::Unknown;
    }
    if let Err(nix::errno::Errno::ESRCH) = nix::sys::signal::kill(nix::unistd::Pid::from_raw(raw), None) {
        return ProcessState::Gone;
    }
    // The process exists. A failed read is no evidence of anything: under
    // `hidepid=2` another user's entry reads as ENOENT although it runs.
    let Ok(stat) = read_stat(pid) else { return ProcessState::Unknown };
    match parse_stat(&stat) {
        Some(Some(start)) => ProcessState::Running { start },
        Some(None) => ProcessState::Gone,
        None => ProcessState::Unknown,
    }
}

/// `/proc/<pid>/stat`, as the kernel gives it to this process.
fn read_proc_stat(pid: u32) -> std::io::Result<String> {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
}

/// A process's start time, when it can be known.
fn process_start(pid: u32) -> Option<u64> {
    match process_state(pid, read_proc_stat) {
        ProcessState::Running { start } => Some(start),
        _ => None,
    }
}

/// The start time (field 22) in a `/proc/<pid>/stat` line: `Some(None)` for
/// a zombie, `None` when the line does not parse.
fn parse_stat(stat: &str) -> Option<Option<u64>> {
    // The command name (field 2) is in parentheses and may hold anything;
    // the fields after its last ')' are plain.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?;
    if state == "Z" || state == "X" {
        return Some(None);
    }
    // `rest` starts at field 3 (state); field 22 is 19 further on.
    fields.nth(18)?.parse().ok().map(Some)
}

/// Reads every lock in the repository. Reading one never takes more than
/// [`MAX_STORED`] bytes: a larger object is damaged, not read.
async fn read_locks_async(backend: &dyn Backend, keys: &Keys, repo_id: &[u8; 32]) -> Result<LockListing> {
    let mut listing = LockListing::default();
    for entry in backend.list("locks/").await? {
        if parse_object_key(ObjectKind::Lock, &entry.key).is_none() {
            continue;
        }
        let mut stored = match backend.get(&entry.key, MAX_STORED).await {
            Ok(b) => b,
            // Released between the listing and the read.
            Err(e) if e.is_not_found() => continue,
            Err(e @ crate::backend::BackendError::TooLarge { size, .. }) => {
                tracing::warn!("ignoring {}: {e}", entry.key);
                listing.fingerprints.insert(entry.key.clone(), fingerprint(&size.to_le_bytes()));
                listing.damaged.push(DamagedLock { name: entry.key, why: e.to_string() });
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        // One that does not authenticate is read again once: a bit flipped
        // on the way must not make a live lock look damaged.
        if LockRecord::open_authentic(keys, repo_id, &entry.key, &stored).is_err() {
            match backend.get(&entry.key, MAX_STORED).await {
                Ok(again) => stored = again,
                Err(e) if e.is_not_found() => continue,
                Err(e) => tracing::debug!("reading {} again: {e}", entry.key),
            }
        }
        listing.fingerprints.insert(entry.key.clone(), fingerprint(&stored));
        match LockRecord::open_authentic(keys, repo_id, &entry.key, &stored) {
            Ok(Ok(r)) => listing.records.push(r),
            Ok(Err(foreign)) => {
                tracing::warn!(
                    "cannot read the lock {}: {}; it is honoured as a live exclusive lock",
                    entry.key,
                    foreign.why
                );
                listing.foreign.push(foreign);
            }
            Err(e) => {
                tracing::warn!("ignoring the lock {}: {e}", entry.key);
                listing.damaged.push(DamagedLock { name: entry.key, why: e.to_string() });
            }
        }
    }
    Ok(listing)
}

/// What a process waiting for locks has seen of each object: a token of its
/// state (a record's counter, an unreadable object's digest) and when (on
/// its own boot-time clock) it first saw that token.
#[derive(Default)]
pub struct Observations {
    seen: HashMap<String, (u128, Duration)>,
}

impl Observations {
    /// Records a sighting; returns how long the lock has been seen unchanged.
    pub fn observe(&mut self, record: &LockRecord, now: Duration) -> Duration {
        self.observe_token(&record.name(), u128::from(record.counter), now)
    }

    fn observe_token(&mut self, name: &str, token: u128, now: Duration) -> Duration {
        let entry = self.seen.entry(name.to_string()).or_insert((token, now));
        if entry.0 != token {
            *entry = (token, now);
        }
        now.saturating_sub(entry.1)
    }
}

/// Why a lock does not count.
fn stale_reason(record: &LockRecord, unchanged_for: Duration, settings: &LockSettings) -> Option<String> {
    if record.holder_is_dead() {
        return Some(format!("its process {} on this machine is gone", record.pid));
    }
    unchanged_stale(unchanged_for, record.stale_after(settings))
}

fn unchanged_stale(unchanged_for: Duration, stale: Duration) -> Option<String> {
    (unchanged_for >= stale).then(|| format!("it was not refreshed for {}s", unchanged_for.as_secs()))
}

/// A lock that keeps another from being taken.
struct Conflict {
    holder: String,
    /// Held for one of the [`SHORT_OPERATIONS`]: waited for without a limit.
    short: bool,
}

impl Repository {
    /// Takes a shared lock (backup, forget): compatible with other shared
    /// locks, not with prune's exclusive phase.
    pub fn lock_shared(&self, operation: &str) -> Result<LockGuard> {
        self.lock(false, operation)
    }

    /// Takes the exclusive lock (prune's delete phase).
    pub fn lock_exclusive(&self, operation: &str) -> Result<LockGuard> {
        self.lock(true, operation)
    }

    /// The locks in the repository this version reads, and the names of
    /// those it cannot (damaged or foreign).
    pub fn locks(&self) -> Result<(Vec<LockRecord>, Vec<String>)> {
        let l = self.lock_listing()?;
        let others = l.foreign.into_iter().map(|f| f.name).chain(l.damaged.into_iter().map(|d| d.name)).collect();
        Ok((l.records, others))
    }

    /// Everything `locks/` holds, sorted by what it means.
    pub fn lock_listing(&self) -> Result<LockListing> {
        self.runtime().block_on(read_locks_async(&**self.backend(), self.keys(), self.repo_id()))
    }

    /// Writes a lock record as it is, under its own name: for tests and
    /// tools that need the lock of another process. Commands take locks with
    /// [`Repository::lock_shared`] and [`Repository::lock_exclusive`].
    pub fn write_lock_record(&self, record: &LockRecord) -> Result<()> {
        let stored = record.seal(self.keys(), self.repo_id());
        self.runtime().block_on(async {
            self.backend().put(&record.name(), stored.into()).await?;
            self.backend().sync().await
        })?;
        Ok(())
    }

    fn lock(&self, exclusive: bool, operation: &str) -> Result<LockGuard> {
        let settings = self.lock_settings();
        let backend = self.backend().clone();
        let rt = self.runtime().clone();
        let keys = self.keys().clone();
        let repo_id = *self.repo_id();
        let start = boottime();
        let mut observed = Observations::default();
        let mut record = LockRecord::for_this_process(exclusive, operation, &settings);
        let name = record.name();
        let my_id = record.lock_id;
        let mut told = false;
        let blocking = |observed: &mut Observations| -> Result<Vec<Conflict>> {
            let mut listing = rt.block_on(read_locks_async(&*backend, &keys, &repo_id))?;
            let now = boottime();
            let mut out = Vec::new();
            for other in std::mem::take(&mut listing.records).into_iter().filter(|l| l.lock_id != my_id) {
                if !other.conflicts_with(exclusive) {
                    continue;
                }
                let unchanged = observed.observe(&other, now);
                match stale_reason(&other, unchanged, &settings) {
                    Some(why) => tracing::info!("ignoring the stale lock {}: {why}", other.describe()),
                    None => out.push(Conflict {
                        holder: other.describe(),
                        short: SHORT_OPERATIONS.contains(&other.operation.as_str()),
                    }),
                }
            }
            // A lock this version cannot read may mean anything: it
            // conflicts with every lock until it is seen unchanged for the
            // stale time.
            for other in listing.foreign.iter().filter(|f| f.name != name) {
                let unchanged = observed.observe_token(&other.name, listing.fingerprint(&other.name), now);
                match unchanged_stale(unchanged, other.stale_after(&settings)) {
                    Some(why) => tracing::info!("ignoring the stale lock {}: {why}", other.describe()),
                    None => out.push(Conflict { holder: other.describe(), short: false }),
                }
            }
            Ok(out)
        };
        loop {
            let mut conflicts = blocking(&mut observed)?;
            if conflicts.is_empty() {
                record.time = wall_time(settings.wall_clock_offset);
                let stored = record.seal(&keys, &repo_id);
                let written_at = boottime();
                rt.block_on(async {
                    backend.put(&name, stored.into()).await?;
                    backend.sync().await
                })?;
                conflicts = blocking(&mut observed)?;
                if conflicts.is_empty() {
                    return Ok(LockGuard::start(GuardParts {
                        backend: backend.clone(),
                        runtime: rt.clone(),
                        keys: keys.clone(),
                        repo_id,
                        record,
                        written_at,
                        settings,
                    }));
                }
                // Both of us saw the other: back off, and let the jitter
                // decide who goes first next time.
                rt.block_on(backend.delete(&name))?;
            }
            let only_short = conflicts.iter().all(|c| c.short);
            let holder = &conflicts[0].holder;
            if !only_short && boottime().saturating_sub(start) >= settings.retry {
                return Err(Error::Locked {
                    holder: holder.clone(),
                    hint: if settings.retry.is_zero() {
                        "; wait for it to finish, pass --retry-lock to wait, or, if its process is gone, run `coffer unlock`"
                            .into()
                    } else {
                        format!(
                            "; waited {}s (--retry-lock); if its process is gone, run `coffer unlock`",
                            settings.retry.as_secs()
                        )
                    },
                });
            }
            if !told {
                tracing::warn!("waiting for the lock of {holder}");
                told = true;
            }
            let poll = settings.poll_interval();
            let mut jitter = [0u8; 2];
            crate::crypto::fill_random(&mut jitter);
            let extra = poll.mul_f64(f64::from(u16::from_le_bytes(jitter)) / f64::from(u16::MAX) * 0.5);
            std::thread::sleep(poll + extra);
        }
    }

    /// Removes locks that are provably stale: those of a process of this
    /// machine that is gone and, when `observe` is at least the stale time,
    /// those (readable, foreign or damaged) that did not change while
    /// watched for the stale time. With `remove_all`, removes every lock,
    /// live or not, as restic's `unlock --remove-all` does: only for when no
    /// other coffer can be running. What is kept is listed.
    pub fn unlock(&self, observe: Duration, remove_all: bool) -> Result<UnlockOutcome> {
        let settings = self.lock_settings();
        let backend = self.backend().clone();
        // The watch starts at the first listing's observations, not when
        // the command started: a listing that took longer than the stale
        // time (a slow store, a loaded machine) must not count as watching.
        let mut start = None;
        let mut observed = Observations::default();
        let mut outcome = UnlockOutcome::default();
        loop {
            let listing = self.lock_listing()?;
            let now = boottime();
            let watched = now.saturating_sub(*start.get_or_insert(now));
            let mut remove = |name: &str, who: String, why: String| -> Result<()> {
                self.runtime().block_on(backend.delete(name))?;
                outcome.removed.push((who, why));
                Ok(())
            };
            let mut live = Vec::new();
            let mut foreign = Vec::new();
            let mut damaged = Vec::new();
            for d in listing.damaged.iter() {
                let unchanged = observed.observe_token(&d.name, listing.fingerprint(&d.name), now);
                if remove_all {
                    remove(&d.name, d.name.clone(), format!("--remove-all, and {}", d.why))?;
                } else if let Some(why) = unchanged_stale(unchanged, settings.stale) {
                    remove(&d.name, d.name.clone(), format!("{why}, and {}", d.why))?;
                } else {
                    damaged.push(d.clone());
                }
            }
            for f in listing.foreign.iter() {
                let unchanged = observed.observe_token(&f.name, listing.fingerprint(&f.name), now);
                if remove_all {
                    remove(&f.name, f.describe(), "--remove-all".into())?;
                } else if let Some(why) = unchanged_stale(unchanged, f.stale_after(&settings)) {
                    remove(&f.name, f.describe(), why)?;
                } else {
                    foreign.push(f.clone());
                }
            }
            for l in listing.records {
                let unchanged = observed.observe(&l, now);
                if remove_all {
                    remove(&l.name(), l.describe(), "--remove-all".into())?;
                    continue;
                }
                match stale_reason(&l, unchanged, &settings) {
                    Some(why) => remove(&l.name(), l.describe(), why)?,
                    None => live.push(l),
                }
            }
            let pending = !(live.is_empty() && foreign.is_empty() && damaged.is_empty());
            if !pending || watched >= observe || observe < settings.stale {
                self.runtime().block_on(backend.sync())?;
                outcome.live = live;
                outcome.foreign = foreign;
                outcome.damaged = damaged;
                return Ok(outcome);
            }
            std::thread::sleep(settings.poll_interval());
        }
    }
}

/// What `unlock` did.
#[derive(Debug, Default)]
pub struct UnlockOutcome {
    /// (who held it, why it was removed).
    pub removed: Vec<(String, String)>,
    /// Locks that are in use, or not provably stale.
    pub live: Vec<LockRecord>,
    /// Authentic locks this version cannot read, not seen unchanged for the
    /// stale time: honoured as live.
    pub foreign: Vec<ForeignLock>,
    /// Locks that do not authenticate, kept because they were not watched
    /// for the stale time. They hold nobody back.
    pub damaged: Vec<DamagedLock>,
}

struct GuardParts {
    backend: Arc<dyn Backend>,
    runtime: Arc<tokio::runtime::Runtime>,
    keys: Arc<Keys>,
    repo_id: [u8; 32],
    record: LockRecord,
    written_at: Duration,
    settings: LockSettings,
}

struct Held {
    /// The record as last written or attempted.
    record: LockRecord,
    /// The counter of the last write known to have landed.
    confirmed: u64,
    /// Boot-time clock when the last successful refresh was *started*: the
    /// conservative end, as a watcher may have seen the write any time after.
    last_ok: Duration,
    /// Set once the lock can no longer be relied on.
    lost: Option<String>,
}

struct GuardState {
    parts: GuardParts,
    held: Mutex<Held>,
}

impl GuardState {
    /// One refresh; false if it failed.
    fn refresh(&self) -> bool {
        let Ok(mut held) = self.held.lock() else { return false };
        if held.lost.is_some() {
            return false;
        }
        let now = boottime();
        if now.saturating_sub(held.last_ok) > self.parts.settings.give_up_after() {
            held.lost = Some(format!(
                "it could not be refreshed for {}s, half the stale time",
                now.saturating_sub(held.last_ok).as_secs()
            ));
            tracing::error!("{}", held.lost.as_deref().unwrap_or_default());
            return false;
        }
        let name = held.record.name();
        let backend = &self.parts.backend;
        // A lock that someone removed is not written back: whoever removed
        // it may already act as if this process were gone.
        match self.parts.runtime.block_on(backend.get(&name, MAX_STORED)) {
            Err(e) if e.is_not_found() => {
                held.lost = Some(format!("{name} was removed by another process"));
                tracing::error!("{}", held.lost.as_deref().unwrap_or_default());
                return false;
            }
            Err(e) => {
                tracing::warn!("could not read the lock {name} back: {e}");
                return false;
            }
            Ok(_) => {}
        }
        held.record.counter += 1;
        held.record.time = wall_time(self.parts.settings.wall_clock_offset);
        let stored = held.record.seal(&self.parts.keys, &self.parts.repo_id);
        let result = self.parts.runtime.block_on(async {
            backend.put(&name, stored.into()).await?;
            backend.sync().await
        });
        match result {
            Ok(()) => {
                held.confirmed = held.record.counter;
                held.last_ok = now;
                true
            }
            Err(e) => {
                tracing::warn!("could not refresh the lock {name}: {e}");
                false
            }
        }
    }

    fn alive(&self) -> Result<()> {
        let held = self.held.lock().map_err(|_| Error::LockLost { reason: "lock state poisoned".into() })?;
        if let Some(reason) = &held.lost {
            return Err(Error::LockLost { reason: reason.clone() });
        }
        let since = boottime().saturating_sub(held.last_ok);
        if since > self.parts.settings.give_up_after() {
            return Err(Error::LockLost {
                reason: format!("it was last refreshed {}s ago, more than half the stale time", since.as_secs()),
            });
        }
        Ok(())
    }
}

/// A held lock. It is refreshed by a background thread until released or
/// dropped (both remove it from the repository).
pub struct LockGuard {
    state: Arc<GuardState>,
    stop: Option<mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    released: bool,
}

impl LockGuard {
    fn start(parts: GuardParts) -> LockGuard {
        let held = Held {
            confirmed: parts.record.counter,
            record: parts.record.clone(),
            last_ok: parts.written_at,
            lost: None,
        };
        let interval = parts.settings.refresh_interval();
        let state = Arc::new(GuardState { parts, held: Mutex::new(held) });
        let (stop, stopped) = mpsc::channel::<()>();
        let s = state.clone();
        let thread = std::thread::Builder::new()
            .name("coffer-lock".into())
            .spawn(move || {
                let mut wait = interval;
                while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(wait) {
                    // After a failed refresh, try again sooner: there are
                    // only a few chances before half the stale time is up.
                    wait = if s.refresh() { interval } else { interval / 4 };
                }
            })
            .ok();
        if thread.is_none() {
            tracing::error!(
                "cannot start the lock refresh thread; the lock will be given up after half the stale time"
            );
        }
        LockGuard { state, stop: Some(stop), thread, released: false }
    }

    /// The record as last written.
    pub fn record(&self) -> LockRecord {
        self.state.held.lock().map(|h| h.record.clone()).unwrap_or_else(|p| p.into_inner().record.clone())
    }

    /// Cheap check, without I/O, that the lock can still be relied on: it
    /// was refreshed within half the stale time. Long operations call it
    /// often, to stop early.
    pub fn alive(&self) -> Result<()> {
        self.state.alive()
    }

    /// The check before committing (writing a snapshot, deleting): the lock
    /// was refreshed recently enough, and re-reading it from the repository
    /// finds it still there, ours, and not older than our last refresh.
    pub fn check(&self) -> Result<()> {
        self.alive()?;
        {
            let held = self.state.held.lock().map_err(|_| Error::LockLost { reason: "lock state poisoned".into() })?;
            let name = held.record.name();
            let p = &self.state.parts;
            // Read again once if it does not authenticate: a bit flipped on
            // the way does not make the lock lost.
            let found = crate::repo::read_twice_blocking(|| {
                let stored = match p.runtime.block_on(p.backend.get(&name, MAX_STORED)) {
                    Ok(b) => b,
                    Err(e) if e.is_not_found() => {
                        return Err(Error::LockLost { reason: format!("{name} was removed by another process") });
                    }
                    Err(e) => return Err(e.into()),
                };
                LockRecord::open(&p.keys, &p.repo_id, &name, &stored)
            })
            .map_err(|e| match e {
                e @ Error::Corrupt { .. } => Error::LockLost { reason: e.to_string() },
                e => e,
            })?;
            let ours = found.lock_id == held.record.lock_id
                && found.pid == held.record.pid
                && (held.confirmed..=held.record.counter).contains(&found.counter);
            if !ours {
                return Err(Error::LockLost { reason: format!("{name} holds another record than ours") });
            }
        }
        self.alive()
    }

    /// Stops refreshing and removes the lock.
    pub fn release(mut self) -> Result<()> {
        self.released = true;
        self.stop_refreshing();
        self.remove()
    }

    fn stop_refreshing(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }

    fn remove(&self) -> Result<()> {
        let p = &self.state.parts;
        let name = self.record().name();
        p.runtime.block_on(async {
            p.backend.delete(&name).await?;
            p.backend.sync().await
        })?;
        Ok(())
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        if self.released {
            return;
        }
        self.stop_refreshing();
        if let Err(e) = self.remove() {
            tracing::warn!("could not remove the lock {}: {e}", self.record().name());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_alive_and_a_finished_child_is_dead() {
        let me = LockRecord::for_this_process(false, "backup", &LockSettings::default());
        assert!(me.process_start > 0);
        assert!(!me.holder_is_dead());
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        let dead = LockRecord::for_process(pid, false, "backup");
        assert!(dead.holder_is_dead());
        // Our own pid with another start time is a reused pid.
        let mut reused = me.clone();
        reused.process_start += 1;
        assert!(reused.holder_is_dead());
        // Another machine's process is never judged by pid.
        let mut elsewhere = dead.clone();
        elsewhere.boot_id = "another boot".into();
        assert!(!elsewhere.holder_is_dead());
    }

    /// A `/proc` entry that cannot be read (`hidepid=2` makes another
    /// user's read as ENOENT; `ProtectProc` or an LSM as EACCES) proves
    /// nothing: the holder counts as alive while the kernel says its pid
    /// exists, and as dead once it does not.
    #[test]
    fn a_running_holder_whose_proc_entry_cannot_be_read_is_alive() {
        use std::io::{Error as IoError, ErrorKind};
        let mut child = std::process::Command::new("sleep").arg("60").spawn().unwrap();
        let record = LockRecord::for_process(child.id(), true, "backup");
        assert!(record.process_start > 0);
        assert!(!record.holder_is_dead(), "a running child is alive");
        for kind in [ErrorKind::NotFound, ErrorKind::PermissionDenied, ErrorKind::Other] {
            assert!(!record.holder_is_dead_with(|_| Err(IoError::from(kind))), "{kind:?} judged the holder dead");
        }
        assert!(!record.holder_is_dead_with(|_| Ok("garbage".into())), "an unparsable stat judged it dead");
        // Recorded without a start time (its own /proc was hidden): alive
        // whatever start time the entry now shows.
        let mut unknown_start = record.clone();
        unknown_start.process_start = 0;
        assert!(!unknown_start.holder_is_dead());
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(record.holder_is_dead(), "a reaped child is gone");
        assert!(record.holder_is_dead_with(|_| Err(IoError::from(ErrorKind::PermissionDenied))));
    }

    #[test]
    fn stat_lines_parse_with_any_command_name() {
        let line =
            |state: &str| format!("42 (a) b) c) {state} 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 987654 21 22");
        assert_eq!(parse_stat(&line("S")), Some(Some(987654)));
        assert_eq!(parse_stat(&line("Z")), Some(None));
        assert_eq!(parse_stat("42 (no close"), None);
        assert_eq!(parse_stat("42 (x) S 1 2"), None);
    }

    #[test]
    fn a_newer_lock_is_foreign_and_garbage_is_an_error() {
        let keys = Keys::generate();
        let repo_id = [3u8; 32];
        let mut newer = LockRecord::for_this_process(false, "backup", &LockSettings::default());
        newer.version = LOCK_VERSION + 1;
        newer.stale_secs = 7200;
        let stored = newer.seal(&keys, &repo_id);
        let foreign = LockRecord::open_authentic(&keys, &repo_id, &newer.name(), &stored).unwrap().unwrap_err();
        assert_eq!((foreign.summary.operation.as_str(), foreign.summary.stale_secs), ("backup", 7200));
        assert!(foreign.describe().contains("cannot read") && foreign.describe().contains(&newer.name()));
        let settings = LockSettings { stale: Duration::from_secs(60), ..LockSettings::default() };
        assert_eq!(foreign.stale_after(&settings), Duration::from_secs(7200), "the holder's longer stale time wins");
        let mut damaged = stored.clone();
        damaged[20] ^= 1;
        assert!(LockRecord::open_authentic(&keys, &repo_id, &newer.name(), &damaged).is_err());
    }

    #[test]
    fn watchers_use_the_longer_of_their_stale_time_and_the_holders() {
        let short = LockSettings { stale: Duration::from_secs(5), ..LockSettings::default() };
        let holder = LockRecord::for_this_process(false, "backup", &LockSettings::default());
        assert_eq!(holder.stale_secs, DEFAULT_STALE.as_secs());
        assert_eq!(holder.stale_after(&short), DEFAULT_STALE);
        assert!(unchanged_stale(Duration::from_secs(60), holder.stale_after(&short)).is_none());
        let quick = LockRecord::for_this_process(false, "backup", &short);
        assert_eq!(quick.stale_after(&LockSettings::default()), DEFAULT_STALE);
        assert_eq!(quick.stale_after(&short), Duration::from_secs(5));
    }

    #[test]
    fn a_record_opens_only_under_its_own_name() {
        let keys = Keys::generate();
        let repo_id = [3u8; 32];
        let r = LockRecord::for_this_process(true, "prune", &LockSettings::default());
        let stored = r.seal(&keys, &repo_id);
        assert_eq!(LockRecord::open(&keys, &repo_id, &r.name(), &stored).unwrap(), r);
        let other = object_key(ObjectKind::Lock, &Id::random());
        assert!(LockRecord::open(&keys, &repo_id, &other, &stored).is_err());
        assert!(LockRecord::open(&keys, &[4u8; 32], &r.name(), &stored).is_err());
    }

    proptest::proptest! {
        #[test]
        fn damaged_records_are_errors_not_panics(pos in proptest::prelude::any::<usize>(), val in proptest::prelude::any::<u8>()) {
            let keys = Keys::from_master(&[9u8; 64]);
            let r = LockRecord::for_this_process(false, "backup", &LockSettings::default());
            let mut plain = rmp_serde::to_vec_named(&r).unwrap();
            let i = pos % plain.len();
            plain[i] = val;
            let stored = blob::seal_random(&keys, &[1; 32], ObjectKind::Lock, &r.name(), b"", &plain);
            let _ = LockRecord::open(&keys, &[1; 32], &r.name(), &stored);
        }
    }

    #[test]
    fn observations_measure_an_unchanged_counter() {
        let mut o = Observations::default();
        let mut r = LockRecord::for_this_process(false, "backup", &LockSettings::default());
        assert_eq!(o.observe(&r, Duration::from_secs(10)), Duration::ZERO);
        assert_eq!(o.observe(&r, Duration::from_secs(25)), Duration::from_secs(15));
        r.counter += 1;
        assert_eq!(o.observe(&r, Duration::from_secs(30)), Duration::ZERO);
        assert_eq!(o.observe(&r, Duration::from_secs(31)), Duration::from_secs(1));
    }
}
