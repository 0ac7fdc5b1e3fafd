#!/usr/bin/env python3
"""End-to-end benchmark of coffer against restic and borg on a synthetic photo library.

    python3 benches/e2e/bench.py --scale 1.0 --install-peers

Builds coffer (release), generates a deterministic photo library (generate.py), and then,
phase by phase, runs every tool on the same data: init, first backup, unchanged
re-backup, the "month of edits" (mutate.py, applied once), backup after the edits,
restore of the latest snapshot (verified against the source, untimed), and check.
For each step it records wall time, throughput of source data, peak RSS, and after each
backup the repository's size on disk. Results go to stdout and to SCRATCH/results.md
(and results.json). See README.md next to this file.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, str(HERE))

import generate  # noqa: E402
import mutate  # noqa: E402

MiB = 1 << 20
MARKER = ".coffer-bench-scratch"
OWNED = ("data", "repos", "restore", "home", "logs", "s3", "trash")
# The standalone S3 server's credentials (it listens on 127.0.0.1 only).
S3_ACCESS_KEY = "COFFERBENCHACCESSKEY"
S3_SECRET_KEY = "coffer-bench-secret-key-0123456789"
S3_BUCKET = "bench"
PASSWORD = "coffer-bench-password"
PEERS = ("restic", "borg")

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


def tree_size(path: Path) -> tuple[int, int]:
    """(sum of file sizes, number of files) below path."""
    total = count = 0
    for dirpath, _, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(dirpath, f)).st_size
                count += 1
            except FileNotFoundError:
                pass
    return total, count


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

    def __init__(self, scratch: Path, args):
        self.scratch = scratch
        self.args = args
        self.repo = scratch / "repos" / self.name
        self.env = clean_env()
        self.archives: list[str] = []

    def version(self) -> str: ...
    def settings(self) -> str: ...
    def init_cmd(self) -> tuple[list[str], Path | None]: ...
    def backup_cmd(self, data: Path, archive: str) -> tuple[list[str], Path | None]: ...
    def restore_cmd(self, target: Path) -> tuple[list[str], Path | None]: ...
    def check_cmd(self) -> tuple[list[str], Path | None] | None: ...

    def added(self, run: Run) -> tuple[int | None, str]:
        """Bytes added as the tool reports them, and what that number means."""
        return None, ""

    def details(self, run: Run) -> dict:
        return {}


class Coffer(Tool):
    name = "coffer"

    def __init__(self, scratch, args, binary: Path, s3_endpoint: str | None = None):
        super().__init__(scratch, args)
        self.bin = str(binary)
        self.env["COFFER_PASSWORD"] = PASSWORD
        self.env["COFFER_CACHE_DIR"] = str(scratch / "home" / "coffer-cache")
        self.location = str(self.repo)
        self.s3 = s3_endpoint is not None
        if s3_endpoint:
            # The repository lives in the server's folder: its size is measured there.
            self.repo = scratch / "s3" / S3_BUCKET / "coffer"
            self.location = f"s3:{s3_endpoint}/{S3_BUCKET}/coffer"
            self.env.update({
                "AWS_ACCESS_KEY_ID": S3_ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": S3_SECRET_KEY,
                "AWS_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true",
                "AWS_CONFIG_FILE": str(scratch / "home" / "no-aws-config"),
                "AWS_SHARED_CREDENTIALS_FILE": str(scratch / "home" / "no-aws-credentials"),
            })
            for k in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION"):
                self.env.pop(k, None)
        h = subprocess.run([self.bin, "check", "--help"], env=self.env, capture_output=True, text=True)
        self.has_check = h.returncode == 0
        self.check_read_data = self.has_check and "--read-data" in h.stdout

    def version(self):
        return capture([self.bin, "--version"], self.env)

    def settings(self):
        where = (f"S3 repository on the in-process s3s-fs server ({self.args.latency_ms} ms added per request)"
                 if self.s3 else "local repository")
        return (f"{where}, default settings: AES-256-PMAC-SIV, keyed BLAKE3 ids, FastCDC "
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

    def __init__(self, scratch, args, s3_endpoint: str | None = None):
        super().__init__(scratch, args)
        self.env["RESTIC_PASSWORD"] = PASSWORD
        self.env["RESTIC_CACHE_DIR"] = str(scratch / "home" / "restic-cache")
        self.location = str(self.repo)
        self.s3 = s3_endpoint is not None
        if s3_endpoint:
            # The same server and bucket as coffer's, under another prefix.
            self.repo = scratch / "s3" / S3_BUCKET / "restic"
            self.location = f"s3:{s3_endpoint}/{S3_BUCKET}/restic"
            self.env.update({"AWS_ACCESS_KEY_ID": S3_ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": S3_SECRET_KEY})
            for k in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_DEFAULT_REGION"):
                self.env.pop(k, None)

    def version(self):
        return capture(["restic", "version"], self.env)

    def settings(self):
        where = "S3 repository on the same server as coffer's" if self.s3 else "local repository"
        return (f"{where}, defaults: repository format 2, compression auto (zstd, about level 3), "
                "AES-256-CTR + Poly1305-AES, SHA-256 ids, Rabin CDC 512 KiB / 1 MiB / 8 MiB, 16 MiB packs, "
                f"cache in the scratch folder{', check --read-data' if self.args.check_read_data else ''}")

    def init_cmd(self):
        return ["restic", "-r", self.location, "init"], None

    def backup_cmd(self, data, archive):
        return ["restic", "-r", self.location, "backup", "--json", str(data)], None

    def restore_cmd(self, target):
        return ["restic", "-r", self.location, "restore", "latest", "--target", str(target)], None

    def check_cmd(self):
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


def build_s3_server(root: Path) -> Path:
    log("building the benchmark's S3 server (cargo build --release -p coffer-benches --bin coffer-s3-server)")
    subprocess.run(["cargo", "build", "--release", "-p", "coffer-benches", "--bin", "coffer-s3-server"], cwd=root,
                   check=True)
    meta = json.loads(subprocess.run(["cargo", "metadata", "--format-version", "1", "--no-deps"], cwd=root,
                                     check=True, capture_output=True, text=True).stdout)
    binary = Path(meta["target_directory"]) / "release" / "coffer-s3-server"
    if not binary.exists():
        sys.exit(f"bench: built the S3 server but found no binary at {binary}")
    return binary


def start_s3_server(binary: Path, root: Path, latency_ms: int, logs: Path) -> tuple[subprocess.Popen, str]:
    """Starts the server on a free port of 127.0.0.1; returns it and its endpoint."""
    env = clean_env()
    env.update({"AWS_ACCESS_KEY_ID": S3_ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": S3_SECRET_KEY})
    err = open(logs / "s3-server.err", "wb")
    p = subprocess.Popen([str(binary), "--root", str(root), "--bucket", S3_BUCKET, "--latency-ms", str(latency_ms)],
                         env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err, text=True)
    line = p.stdout.readline() if p.stdout else ""
    if not line.startswith("listening on "):
        p.kill()
        sys.exit(f"bench: the S3 server did not start (see {logs / 's3-server.err'})")
    endpoint = "http://" + line.split()[-1]
    log(f"S3 server at {endpoint}, {latency_ms} ms per request, objects in {root}")
    return p, endpoint


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


def ratio(results: dict, phase: str, kind: str | None, tools: list[str]) -> tuple[float | None, str]:
    c = results[phase].get("coffer")
    peers = [results[phase][t] for t in tools if t != "coffer" and results[phase].get(t)
             and results[phase][t].get("ok")]
    if not kind or not c or not c.get("ok") or not peers:
        return None, "–"
    if kind == "throughput":
        best = max(p["mib_s"] for p in peers)
        v = c["mib_s"] / best if best else None
        return v, "–" if v is None else f"{v:.2f}× throughput"
    best = min(p["secs"] for p in peers)
    v = c["secs"] / best if best else None
    return v, "–" if v is None else f"{v:.2f}× time"


def render(ctx: dict) -> str:
    tools, res = ctx["tools"], ctx["results"]
    L = []
    L.append(f"# coffer end-to-end benchmark ({time.strftime('%Y-%m-%d %H:%M:%S %Z')})")
    L.append("")
    L.append(f"Scale {ctx['scale']} (seed {ctx['seed']}): {ctx['gen']['files']} files, "
             f"{fmt_mib(ctx['gen']['bytes'])} MiB; after the month of edits {ctx['mut']['library_files_after'] if ctx['mut'] else '?'} "
             f"files, {fmt_mib(ctx['mut']['library_bytes_after']) if ctx['mut'] else '?'} MiB. "
             f"Page cache: **{ctx['cache']}**. Every step is preceded by `sync`; tools run one after another, "
             f"in the order {', '.join(tools)}, on identical data.")
    L.append("")
    L.append("## Steps")
    L.append("")
    head = ["step", "data MiB"]
    for t in tools:
        head += [f"{t} s", f"{t} MiB/s", f"{t} RSS MiB"]
    peers_present = [t for t in tools if t != "coffer"]
    if peers_present and "coffer" in tools:
        head.append("coffer ÷ fastest peer")
    L.append("| " + " | ".join(head) + " |")
    L.append("|" + "|".join(["---"] + ["--:"] * (len(head) - 1)) + "|")
    for key, label, kind in PHASES:
        row = [label, fmt_mib(ctx["phase_bytes"].get(key))]
        for t in tools:
            row += step_cell(res[key].get(t))
        if peers_present and "coffer" in tools:
            row.append(ratio(res, key, kind, tools)[1])
        L.append("| " + " | ".join(row) + " |")
    L.append("")
    L.append("MiB/s is source data (the library, or the restored library) divided by wall time; "
             "for the unchanged re-backup and check it is nominal. RSS is the peak resident set of the "
             "tool's process (GNU time's %M). Ratios: coffer's MiB/s over the best peer's for the first "
             "backup and the restore (higher is better); coffer's time over the best peer's for the others "
             "(lower is better).")
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
        f"{t}: {added[t][1]}" for t in tools if t in added) + ". Growth is the change in the sum of file sizes "
             "in the repository folder.")
    L.append("")
    if "coffer" in tools:
        L.append("## coffer's own numbers")
        L.append("")
        for key, label, _ in PHASES:
            d = ctx["details"].get(key, {}).get("coffer")
            if d:
                L.append(f"- {label}: " + ", ".join(f"{k} {v:,}" if isinstance(v, int) else f"{k} {v}"
                                                   for k, v in d.items()))
        L.append("")
    if "coffer" in tools and any("wire" in (ctx["details"].get(k, {}).get("coffer") or {}) for k, _, _ in PHASES):
        L.append("## Requests")
        L.append("")
        L.append(f"coffer's own count of what each command cost on the wire ({ctx['backend']} repository). "
                 "Per GiB: divided by the step's source data.")
        L.append("")
        L.append("| step | data MiB | PUT | GET | LIST | DELETE | HEAD | MiB up | MiB down | PUT / GiB | GET / GiB | LIST / GiB |")
        L.append("|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|")
        for key, label, _ in PHASES:
            w = (ctx["details"].get(key, {}).get("coffer") or {}).get("wire")
            data = ctx["phase_bytes"].get(key)
            if not w or not data:
                continue
            gib = data / (1 << 30)
            L.append(f"| {label} | {fmt_mib(data)} | {w['puts']:,} | {w['gets']:,} | {w['lists']:,} | "
                     f"{w['deletes']:,} | {w['heads']:,} | {fmt_mib(w['bytes_up'])} | {fmt_mib(w['bytes_down'])} | "
                     f"{w['puts'] / gib:,.0f} | {w['gets'] / gib:,.0f} | {w['lists'] / gib:,.1f} |")
        L.append("")
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
    L.append(f"- library: {g['jpeg_files']} JPEG-like ({fmt_mib(g['jpeg_bytes'])} MiB), {g['raw_files']} RAW-like "
             f"({fmt_mib(g['raw_bytes'])} MiB), {g['xmp_files']} XMP sidecars ({fmt_mib(g['xmp_bytes'])} MiB), "
             f"exact duplicates: {g['duplicate_files']} files ({fmt_mib(g['duplicate_bytes'])} MiB); generated in {g['seconds']} s")
    if ctx["mut"]:
        m = ctx["mut"]
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


def targets(ctx: dict) -> list[str]:
    tools, res = ctx["tools"], ctx["results"]
    out = []
    if "coffer" not in tools:
        return out
    peers = [t for t in tools if t != "coffer"]

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
    ap.add_argument("--scale", type=float, default=1.0, help="library size; 1.0 is about 1.5 GiB (default 1.0)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--scratch", type=Path, default=Path("/var/tmp/coffer-bench"),
                    help="scratch folder for data, repositories, restores and results (default /var/tmp/coffer-bench)")
    ap.add_argument("--out", type=Path, default=None, help="Markdown results (default SCRATCH/results.md)")
    ap.add_argument("--tools", default="coffer,restic,borg", help="comma-separated subset of coffer,restic,borg")
    ap.add_argument("--install-peers", action="store_true", help="apt-get install -y restic borgbackup first")
    ap.add_argument("--drop-caches", action="store_true",
                    help="sync and drop the page cache before every timed step (root only); default: warm cache")
    ap.add_argument("--coffer-bin", type=Path, default=None, help="use this coffer binary instead of building one")
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
                    help="where coffer's repository lives: a local folder, or a bucket of a standalone s3s-fs "
                         "server on 127.0.0.1 (coffer only; peers are compared on local repositories)")
    ap.add_argument("--latency-ms", type=int, default=0, help="with --backend s3: time added to every request")
    ap.add_argument("--s3-server-bin", type=Path, default=None,
                    help="with --backend s3: use this coffer-s3-server binary instead of building one")
    args = ap.parse_args()

    scratch = args.scratch.resolve()
    out_md = args.out or scratch / "results.md"
    wanted = [t.strip() for t in args.tools.split(",") if t.strip()]
    for t in wanted:
        if t not in ("coffer", *PEERS):
            sys.exit(f"bench: unknown tool {t!r}")
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
        if not wanted:
            sys.exit("bench: --backend s3 needs coffer among --tools")
    if args.install_peers:
        install_peers()
    ensure_gnu_time()

    repo_root = HERE.parent.parent
    coffer_bin = None
    if "coffer" in wanted:
        coffer_bin = args.coffer_bin.resolve() if args.coffer_bin else build_coffer(repo_root)

    prepare_scratch(scratch)
    # Rough space check: data + edits, and per tool a repository and a restore (kept
    # until the end, see set_aside).
    need = int(1.6 * 1024 * MiB * args.scale * (1.2 + 2.2 * len(wanted)))
    free = shutil.disk_usage(scratch).free
    if free < need:
        sys.exit(f"bench: {scratch} has {free / MiB:,.0f} MiB free; this scale needs about {need / MiB:,.0f} MiB")

    server = None
    endpoint = None
    if args.backend == "s3":
        server_bin = args.s3_server_bin.resolve() if args.s3_server_bin else build_s3_server(repo_root)
        server, endpoint = start_s3_server(server_bin, scratch / "s3", args.latency_ms, scratch / "logs")
    tools: list[Tool] = []
    for t in wanted:
        if t == "coffer":
            tools.append(Coffer(scratch, args, coffer_bin, endpoint))
        elif shutil.which(t):
            tools.append(Restic(scratch, args, endpoint) if t == "restic" else Borg(scratch, args))
        else:
            notes.append(f"{t} is not installed: skipped (`--install-peers` installs restic and borgbackup)")
            log(notes[-1])
    names = [t.name for t in tools]
    for t in tools:
        t.repo.parent.mkdir(parents=True, exist_ok=True)
    ctx = {
        "scale": args.scale, "seed": args.seed, "tools": names,
        "backend": "local" if args.backend == "local" else f"S3 (s3s-fs on 127.0.0.1, {args.latency_ms} ms per request)",
        "cache": "dropped before every timed step" if args.drop_caches else
                 "warm (not dropped; the data set fits in memory, so reads come from the page cache)",
        "results": {k: {} for k, _, _ in PHASES}, "repo": {t: {} for t in names}, "added": {},
        "details": {}, "verify": {}, "phase_bytes": {}, "notes": notes, "mut": None,
        "machine": machine_info(scratch),
        "versions": {t.name: t.version() for t in tools},
        "settings": {t.name: t.settings() for t in tools},
    }
    coffer = next((t for t in tools if t.name == "coffer"), None)
    if coffer and not coffer.has_check:
        notes.append("coffer has no `check` command yet (`coffer check --help` fails): check is n/a for coffer")

    data = scratch / "data" / "Pictures"
    logs = scratch / "logs"
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
        r = run_measured(cmd, tool.env, logs / f"{phase}-{tool.name}", cwd)
        rec = {"ok": r.ok, "rc": r.rc, "secs": r.secs, "rss_mib": r.rss_kib / 1024, "cpu_secs": r.cpu_secs,
               "mib_s": (data_bytes / MiB / r.secs) if data_bytes and r.secs > 0 else None}
        ctx["results"][phase][tool.name] = rec
        if not r.ok:
            notes.append(f"{tool.name} {phase} failed (exit {r.rc}): `{' '.join(cmd)}`; stderr ends: "
                         + r.stderr_tail(5).replace("\n", " ⏎ "))
            log(notes[-1])
        ctx["details"].setdefault(phase, {})[tool.name] = tool.details(r)
        return r

    try:
        for t in tools:
            step("init", t, t.init_cmd(), None)
        for phase in ("backup1", "backup2"):
            ctx["phase_bytes"][phase] = ctx["gen"]["bytes"]
            for t in tools:
                step(phase, t, t.backup_cmd(data, phase), ctx["gen"]["bytes"])
                ctx["repo"][t.name][phase] = tree_size(t.repo)[0]
        log("applying the month of edits")
        ctx["mut"] = mutate.mutate(str(data), args.seed, args.scale)
        sync()
        if not args.drop_caches:
            read_all(data)
        after = ctx["mut"]["library_bytes_after"]
        ctx["phase_bytes"]["backup3"] = after
        for t in tools:
            r = step("backup3", t, t.backup_cmd(data, "backup3"), after)
            ctx["repo"][t.name]["backup3"] = tree_size(t.repo)[0]
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
    finally:
        ctx["load_end"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
        if ctx.get("gen"):
            text = render(ctx)
            out_md.parent.mkdir(parents=True, exist_ok=True)
            out_md.write_text(text)
            (out_md.with_suffix(".json")).write_text(json.dumps(ctx, indent=2, default=str))
            print(text)
            log(f"results written to {out_md} and {out_md.with_suffix('.json')}; logs in {logs}")
        if server is not None:
            server.kill()
            server.wait()
        if not args.keep:
            cleanup(scratch)
    failed = any(not r.get("ok", True) for p in ctx["results"].values() for r in p.values() if not r.get("na"))
    return 1 if failed else 0


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    sys.exit(main())
