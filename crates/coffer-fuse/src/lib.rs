//! coffer-fuse: a repository's snapshots as a read-only folder, through FUSE.
//!
//! Under the mount point: `snapshots/<time>/` (one folder per snapshot, and
//! `snapshots/latest`), `ids/<short id>/`, `hosts/<host>/<time>/` and
//! `tags/<tag>/<time>/` (see [`layout`]). Inside each, the snapshot's files
//! and folders with their recorded size, mode, owner, times, symlinks and
//! extended attributes. File content is read chunk by chunk, only the chunks
//! a read touches, through a bounded cache of decrypted chunks (see
//! [`chunks`]).
//!
//! The mount uses fuser's pure-Rust mount: `/dev/fuse` directly when run as
//! root, the `fusermount3` helper otherwise; no libfuse. That mount is
//! Linux's alone, so elsewhere the crate is empty (see its `Cargo.toml`).
#![cfg(target_os = "linux")]

mod chunks;
mod fs;
mod inodes;
pub mod layout;
mod lru;

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use coffer_core::Repository;
use coffer_core::lock::LockGuard;
use fuser::{Config, MountOption, SessionACL};

use fs::CofferFs;

/// Default size of the cache of decrypted chunks.
pub const DEFAULT_CACHE_BYTES: u64 = 128 << 20;

#[derive(Clone, Debug)]
pub struct MountOptions {
    /// Let other users (and Samba) read the mount. The kernel still checks
    /// the recorded modes and owners (`default_permissions`).
    pub allow_other: bool,
    /// Bytes of decrypted chunks kept for repeated reads.
    pub cache_bytes: u64,
    /// Threads answering the kernel's requests.
    pub threads: usize,
    /// The kernel's read-ahead for the mount, in KiB, when run as root (see
    /// [`DEFAULT_READ_AHEAD_KIB`]); 0 keeps the kernel's.
    pub read_ahead_kib: u32,
    /// Take no lock: nothing is written to the repository, so read-only
    /// credentials can mount it, but prune is not kept from deleting chunks
    /// of snapshots being read (their reads then fail with EIO, never with
    /// wrong data).
    pub no_lock: bool,
    /// Serve reads through the kernel's page cache, as on kernels before
    /// 6.6, instead of copying each read straight from the decrypted chunk
    /// into the reader's buffer (direct I/O). The page cache adds a copy of
    /// every byte read and holds as much memory as the files read; it helps
    /// only programs that read the same bytes many times in small pieces.
    pub page_cache: bool,
}

/// Read-ahead asked of the kernel when mounted as root: enough for four
/// 1 MiB requests in flight ahead of a sequential reader.
pub const DEFAULT_READ_AHEAD_KIB: u32 = 4096;

impl Default for MountOptions {
    fn default() -> Self {
        MountOptions {
            allow_other: false,
            cache_bytes: DEFAULT_CACHE_BYTES,
            threads: 4,
            read_ahead_kib: DEFAULT_READ_AHEAD_KIB,
            no_lock: false,
            page_cache: false,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("{}: {reason}", path.display())]
    MountPoint { path: PathBuf, reason: String },
    #[error("cannot mount on {}: {error}", path.display())]
    Mount { path: PathBuf, error: io::Error },
    #[error("cannot unmount {}: {error}", path.display())]
    Unmount { path: PathBuf, error: io::Error },
    #[error(transparent)]
    Repository(#[from] coffer_core::Error),
}

/// A mounted repository. Dropping it unmounts.
pub struct Mount {
    session: Option<fuser::BackgroundSession>,
    mountpoint: PathBuf,
    chunks: Arc<chunks::ChunkStore>,
    /// The shared lock held while mounted, so that prune does not delete
    /// chunks under a reader (as restic's and borg's mounts do); none with
    /// [`MountOptions::no_lock`].
    lock: Option<LockGuard>,
}

/// The operation name of the mount's lock, as `coffer unlock` and a
/// blocked prune show it.
pub const LOCK_OPERATION: &str = "mount";

/// How long an unmount waits for the kernel to end the session: a lazy
/// unmount of a mount still in use ends it only when the last user leaves.
const UNMOUNT_WAIT: Duration = Duration::from_secs(2);

fn is_root() -> bool {
    // SAFETY: geteuid cannot fail and touches no memory.
    unsafe { libc::geteuid() == 0 }
}

/// Mounts the snapshots of `repo` on `mountpoint` and serves them from
/// background threads until the returned [`Mount`] is unmounted or dropped.
pub fn spawn(repo: Arc<Repository>, mountpoint: &Path, options: &MountOptions) -> Result<Mount, MountError> {
    let meta = std::fs::metadata(mountpoint)
        .map_err(|e| MountError::MountPoint { path: mountpoint.to_path_buf(), reason: e.to_string() })?;
    if !meta.is_dir() {
        return Err(MountError::MountPoint { path: mountpoint.to_path_buf(), reason: "not a folder".into() });
    }
    // Absolute, so that unmounting does not depend on the working folder.
    let mountpoint = &mountpoint
        .canonicalize()
        .map_err(|e| MountError::MountPoint { path: mountpoint.to_path_buf(), reason: e.to_string() })?;
    // A chunk that does not fit would be fetched again for every request
    // that reads a piece of it.
    let floor = 2 * repo.max_chunk_len() as u64;
    if options.cache_bytes < floor {
        tracing::warn!("the chunk cache needs at least {} MiB (twice the largest chunk): using that", floor >> 20);
    }
    let cache_bytes = options.cache_bytes.max(floor);
    // Refreshed in the background for as long as the mount lives; released
    // when it is unmounted.
    let lock = if options.no_lock { None } else { Some(repo.lock_shared(LOCK_OPERATION)?) };
    let settings = fs::Settings {
        cache_bytes,
        // Prefetched chunks must still be in the cache when the reader gets to them.
        prefetch_bytes: (cache_bytes / 4).min(32 << 20),
        max_in_flight: 16,
        // As many as there are cores: more only share them, and delay the
        // chunk a reader needs next behind the ones after it.
        workers: std::thread::available_parallelism().map_or(1, |n| n.get()),
        tree_cache_bytes: 64 << 20,
        page_cache: options.page_cache,
    };
    let filesystem = CofferFs::new(repo, &settings)?;
    let chunks = filesystem.chunk_store().clone();

    let mut config = Config::default();
    config.mount_options = vec![
        MountOption::FSName("coffer".into()),
        MountOption::Subtype("coffer".into()),
        MountOption::RO,
        // The kernel checks the recorded modes and owners.
        MountOption::DefaultPermissions,
        // Set-user-id programs and device nodes in a backup stay inert.
        MountOption::NoSuid,
        MountOption::NoDev,
        MountOption::NoAtime,
    ];
    // No auto_unmount: fusermount3 is then left waiting on a socket and
    // unmounts only late, and it needs `allow_other`. A signal unmounts
    // cleanly instead (see `serve`); after a SIGKILL, `fusermount3 -u`.
    config.acl = if options.allow_other { SessionACL::All } else { SessionACL::Owner };
    config.n_threads = Some(options.threads.max(1));
    config.clone_fd = true;
    let session = fuser::spawn_mount(filesystem, mountpoint, &config)
        .map_err(|error| MountError::Mount { path: mountpoint.to_path_buf(), error })?;
    raise_read_ahead(mountpoint, options.read_ahead_kib);
    Ok(Mount { session: Some(session), mountpoint: mountpoint.to_path_buf(), chunks, lock })
}

impl Mount {
    /// The mount point, absolute.
    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// Bytes of decrypted chunks in the cache now: never more than the
    /// cache size (as asked for, or twice the largest chunk if that is more).
    pub fn cached_chunk_bytes(&self) -> u64 {
        self.chunks.cached_bytes()
    }

    /// True once the session has ended, e.g. after `fusermount3 -u`.
    pub fn is_finished(&self) -> bool {
        self.session.as_ref().is_none_or(|s| s.guard.is_finished())
    }

    /// Unmounts and waits (briefly) for the session to end.
    pub fn unmount(mut self) -> Result<(), MountError> {
        self.unmount_inner().map_err(|error| MountError::Unmount { path: self.mountpoint.clone(), error })
    }

    fn unmount_inner(&mut self) -> io::Result<()> {
        let result = self.end_session();
        if let Some(lock) = self.lock.take()
            && let Err(e) = lock.release()
        {
            tracing::warn!("could not remove the mount's lock: {e}");
        }
        result
    }

    fn end_session(&mut self) -> io::Result<()> {
        let Some(session) = self.session.take() else { return Ok(()) };
        // Dropping the rest of the session unmounts (`umount` as root,
        // `fusermount3 -u` otherwise); the session thread then ends.
        let guard = {
            let moved = session;
            let fuser::BackgroundSession { guard, .. } = moved;
            guard
        };
        if !wait_for(&guard, UNMOUNT_WAIT) {
            // Still in use (a shell inside it, an open file): detach it now;
            // it goes away when the last program using it leaves.
            tracing::warn!("{} is in use: detaching it", self.mountpoint.display());
            detach(&self.mountpoint);
            if !wait_for(&guard, UNMOUNT_WAIT) {
                return Ok(());
            }
        }
        guard.join().map_err(|_| io::Error::other("the FUSE session thread panicked"))?
    }
}

/// Sets the kernel's read-ahead for the mount to `kib` KiB, if it is more.
///
/// The kernel offers a FUSE file system at most its default read-ahead,
/// 128 KiB (256 KiB for a reader that announces sequential reads, as `cp`
/// and `cat` do), and reads ahead no further: a sequential reader then
/// waits for each 128–256 KiB request in turn, and nothing is read while it
/// writes what it read. With a larger read-ahead the kernel asks for the
/// next MiBs in requests of up to 1 MiB, several at once, while the reader
/// is busy elsewhere. Only root may change it (through the mount's entry in
/// `/sys/class/bdi`, as mergerfs's `readahead` option does); other users
/// keep the default.
fn raise_read_ahead(mountpoint: &Path, kib: u32) {
    use std::os::unix::fs::MetadataExt;
    if kib == 0 || !is_root() {
        return;
    }
    let dev = match std::fs::metadata(mountpoint) {
        Ok(m) => m.dev(),
        Err(e) => return tracing::debug!("cannot find the mount's device to set its read-ahead: {e}"),
    };
    let file = PathBuf::from(format!("/sys/class/bdi/{}:{}/read_ahead_kb", libc::major(dev), libc::minor(dev)));
    let current = std::fs::read_to_string(&file).ok().and_then(|s| s.trim().parse::<u32>().ok());
    if current.is_some_and(|c| c >= kib) {
        return;
    }
    match std::fs::write(&file, kib.to_string()) {
        Ok(()) => tracing::debug!("read-ahead of the mount set to {kib} KiB ({})", file.display()),
        Err(e) => tracing::debug!("cannot set the read-ahead in {}: {e}", file.display()),
    }
}

fn wait_for(guard: &std::thread::JoinHandle<io::Result<()>>, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while !guard.is_finished() {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    true
}

/// A lazy unmount: `umount -l` as root, `fusermount3 -uz` otherwise.
fn detach(mountpoint: &Path) {
    use std::os::unix::ffi::OsStrExt;
    if is_root() {
        if let Ok(path) = std::ffi::CString::new(mountpoint.as_os_str().as_bytes()) {
            // SAFETY: a valid NUL-terminated path; umount2 touches nothing else.
            unsafe {
                libc::umount2(path.as_ptr(), libc::MNT_DETACH);
            }
        }
    } else {
        let _ = std::process::Command::new("fusermount3").arg("-uz").arg(mountpoint).status();
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if let Err(e) = self.unmount_inner() {
            tracing::warn!("unmounting {}: {e}", self.mountpoint.display());
        }
    }
}

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

/// Mounts and serves in the foreground until the mount is unmounted from
/// outside (`fusermount3 -u`, `umount`) or the process gets SIGINT, SIGTERM
/// or SIGHUP, which unmount it cleanly. `ready` is called once it is mounted.
pub fn serve(
    repo: Arc<Repository>,
    mountpoint: &Path,
    options: &MountOptions,
    ready: impl FnOnce(),
) -> Result<(), MountError> {
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: the handler only stores to an atomic, which is
        // async-signal-safe.
        unsafe {
            libc::signal(sig, on_signal as *const () as libc::sighandler_t);
        }
    }
    let mount = spawn(repo, mountpoint, options)?;
    ready();
    while !STOP.load(Ordering::SeqCst) && !mount.is_finished() {
        std::thread::sleep(Duration::from_millis(100));
    }
    mount.unmount()
}
