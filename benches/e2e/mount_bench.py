#!/usr/bin/env python3
"""Reading through `coffer mount` against `coffer restore`, and against `restic mount`
and `borg mount`, on the same data.

Measures (issue 6), for one large file and for a folder of photos:
- `coffer restore --include` of it (the baseline);
- reading it through the mount: `cat` of every file to /dev/null (one `cat` process);
- copying it out of the mount with `cp -r` to the scratch disk, where restore writes;
- the control: the same `cp -r` from a copy of the data in RAM (/dev/shm), the fastest
  source `cp` can have. (From the original files on the same disk `cp` would not loop
  at all: it hands the copy to the kernel with copy_file_range.) Skipped, with a note,
  when /dev/shm has no room for it;
- the same `cat` and `cp -r` through `restic mount` and `borg mount` where installed;
and listing a folder of 10,000 entries through a fresh mount (readdir, and readdir +
stat of every entry as `ls -l` does), for every tool.

How the figures are taken:
- one tool at a time, with only its own repository on disk (a peer's is deleted after
  its turn): with three repositories of the data the page cache fills, and whichever
  step writes next pays for reclaiming it (first runs of this script, docs/performance.md);
- before every timed step that writes (restore and every `cp`), a file of the data's size
  is written and deleted, so that each such step finds the same recently freed memory
  for its page cache: on a VM that hands free memory back to its host, pages freed
  minutes ago must be faulted in again by the host, and whichever step happened to
  follow a deletion otherwise wrote several times faster (docs/performance.md);
- every step runs once per round, each on a fresh mount (neither the kernel's cache of
  the mount nor a tool's chunk cache helps); the repository's files are in the page
  cache (warm) unless --drop-caches is given;
- each figure in the report is the median of --rounds rounds (default 3), with the
  fastest and slowest beside it; the JSON keeps every round. The first round after the
  data is written is slower for every tool on a VM (memory not yet touched), so a single
  round says more about the VM than about the tools.

Target: the mount reads sequentially at >= 70 % of restore's throughput (the `cat`
figure is the mount's reading; `cp` adds `cp`'s own serial writing, which the control
bounds); a listing returns in well under a second.

    python3 benches/e2e/mount_bench.py                          # 2 GiB file, 200 photos, 3 rounds
    python3 benches/e2e/mount_bench.py --big-mib 64 --photos 8 --entries 2000 --rounds 1   # a smoke run

Needs root (or fusermount3) and /dev/fuse. Standard library only. borg mount needs
borg's Python FUSE binding (Debian's borgbackup pulls it in).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import build_coffer, clean_env, drop_caches, log, sync  # noqa: E402

MARKER = ".coffer-mount-bench-scratch"
PASSWORD = "mount-bench"
DATASETS = [("large file", "big"), ("photos", "photos")]


def write_random(path: Path, size: int, rng: random.Random) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    block = 1 << 20
    with open(path, "wb") as f:
        left = size
        while left > 0:
            n = min(block, left)
            f.write(rng.randbytes(n))
            left -= n


def generate(data: Path, args) -> None:
    rng = random.Random(args.seed)
    log(f"generating {args.big_mib} MiB file, {args.photos} photos, {args.entries} small files")
    write_random(data / "big" / "video.mov", args.big_mib << 20, rng)
    for i in range(args.photos):
        write_random(data / "photos" / f"IMG_{i:05}.jpg", rng.randint(3 << 20, 8 << 20), rng)
    listing = data / "listing"
    listing.mkdir(parents=True, exist_ok=True)
    for i in range(args.entries):
        (listing / f"sidecar_{i:05}.xmp").write_bytes(rng.randbytes(64))


def tree_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def wait_mounted(proc: subprocess.Popen, at: Path, what: str) -> None:
    deadline = time.monotonic() + 120
    while not os.path.ismount(at):
        if proc.poll() is not None or time.monotonic() > deadline:
            sys.exit(f"mount_bench: {what} did not come up")
        time.sleep(0.05)


def unmount(proc: subprocess.Popen, at: Path) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    if os.path.ismount(at):
        subprocess.run(["umount", "-l", str(at)])


class Tool:
    """One tool's repository of the data and how it mounts it."""

    name = ""

    def __init__(self, scratch: Path, data: Path):
        self.repo = scratch / f"repo-{self.name}"
        self.data = data
        self.env = clean_env()

    def run(self, *cmd: str) -> None:
        subprocess.run(list(cmd), env=self.env, check=True, stdout=subprocess.DEVNULL)

    def mount(self, at: Path) -> subprocess.Popen:
        at.mkdir(parents=True, exist_ok=True)
        proc = subprocess.Popen(self.mount_cmd(at), env=self.env, stdout=subprocess.DEVNULL)
        wait_mounted(proc, at, f"{self.name} mount")
        return proc

    def mount_cmd(self, at: Path) -> list[str]:
        raise NotImplementedError

    def inside(self, at: Path, rel: str) -> Path:
        """Where the data's `rel` appears under the mount point."""
        raise NotImplementedError


class Coffer(Tool):
    name = "coffer"

    def __init__(self, scratch, data, binary: Path, cache: str):
        super().__init__(scratch, data)
        self.binary, self.cache = str(binary), cache
        self.env.update(COFFER_REPOSITORY=str(self.repo), COFFER_PASSWORD=PASSWORD)

    def create(self) -> None:
        # Cheap key derivation: restore timings then measure reading, not argon2id.
        self.run(self.binary, "init", "--argon2-memory", "1024", "--argon2-iterations", "1")
        self.run(self.binary, "backup", str(self.data))

    def restore(self, rel: str, target: Path) -> None:
        self.run(self.binary, "restore", "latest", "--target", str(target), "--include", str(self.data / rel))

    def mount_cmd(self, at):
        return [self.binary, "-q", "mount", str(at), "--cache-size", self.cache]

    def inside(self, at, rel):
        return at / "snapshots" / "latest" / str(self.data / rel).lstrip("/")


class Restic(Tool):
    name = "restic"

    def __init__(self, scratch, data):
        super().__init__(scratch, data)
        self.env.update(RESTIC_REPOSITORY=str(self.repo), RESTIC_PASSWORD=PASSWORD,
                        RESTIC_CACHE_DIR=str(scratch / "restic-home"))

    def create(self) -> None:
        self.run("restic", "init")
        self.run("restic", "backup", "-q", str(self.data))

    def mount_cmd(self, at):
        return ["restic", "mount", str(at)]

    def inside(self, at, rel):
        return at / "snapshots" / "latest" / str(self.data / rel).lstrip("/")


class Borg(Tool):
    name = "borg"

    def __init__(self, scratch, data):
        super().__init__(scratch, data)
        self.env.update(BORG_PASSPHRASE=PASSWORD, BORG_BASE_DIR=str(scratch / "borg-home"))
        flags = Path("/proc/cpuinfo").read_text(errors="replace")
        # As in bench.py: borg's own advice for the MAC, and its default compression.
        self.encryption = "repokey" if " sha_ni" in flags else "repokey-blake2"

    def create(self) -> None:
        self.run("borg", "init", "--encryption", self.encryption, str(self.repo))
        self.run("borg", "create", "--compression", "lz4", f"{self.repo}::data", str(self.data))

    def mount_cmd(self, at):
        return ["borg", "mount", "--foreground", f"{self.repo}::data", str(at)]

    def inside(self, at, rel):
        return at / str(self.data / rel).lstrip("/")


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def files_under(path: Path) -> list[Path]:
    return sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]


def cat_all(files: list[Path]) -> None:
    subprocess.run(["cat", *map(str, files)], check=True, stdout=subprocess.DEVNULL)


def cp_r(src: Path, dst: Path) -> float:
    """Copies with `cp -r`; returns the CPU seconds `cp` itself spent (user + system).

    With FUSE direct I/O the mount copies each reply into `cp`'s buffer on its own
    threads, so `cp`'s CPU is almost all its writing: it tells a copy that waited for
    the mount from one that was busy writing.
    """
    proc = subprocess.Popen(["cp", "-r", str(src), str(dst)])
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise subprocess.CalledProcessError(proc.returncode, proc.args)
    return usage.ru_utime + usage.ru_stime


def summary(secs: list[float], size: int) -> dict:
    med = statistics.median(secs)
    return {"rounds_s": secs, "median_s": med, "MBps": size / med / 1e6,
            "MBps_range": [size / max(secs) / 1e6, size / min(secs) / 1e6]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--big-mib", type=int, default=2048, help="size of the large file (default 2048)")
    ap.add_argument("--photos", type=int, default=200, help="photos of 3-8 MiB (default 200, about 1 GiB)")
    ap.add_argument("--entries", type=int, default=10_000, help="files in the listed folder (default 10000)")
    ap.add_argument("--cache", default="128M", help="coffer mount --cache-size (default 128M)")
    ap.add_argument("--rounds", type=int, default=3, help="rounds of every step; figures are medians (default 3)")
    ap.add_argument("--peers", default="restic,borg",
                    help="peers to compare where installed (default restic,borg; empty for none)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--scratch", type=Path, default=Path("/var/tmp/coffer-mount-bench"))
    ap.add_argument("--coffer-bin", type=Path, help="use this binary instead of building a release one")
    ap.add_argument("--drop-caches", action="store_true", help="drop the page cache before each timed step (root)")
    ap.add_argument("--keep", action="store_true", help="keep the scratch folder")
    args = ap.parse_args()
    if args.rounds < 1:
        sys.exit("mount_bench: --rounds must be at least 1")

    scratch = args.scratch
    if scratch.exists() and not (scratch / MARKER).exists():
        sys.exit(f"mount_bench: {scratch} exists and was not made by this script")
    if scratch.exists():
        shutil.rmtree(scratch)
    scratch.mkdir(parents=True)
    (scratch / MARKER).touch()
    binary = args.coffer_bin or build_coffer(Path(__file__).resolve().parents[2])
    data, mnt = (scratch / "data").resolve(), scratch / "mnt"
    generate(data, args)

    coffer = Coffer(scratch, data, binary, args.cache)
    tools: list[Tool] = [coffer]
    skipped = []
    for name, cls in (("restic", Restic), ("borg", Borg)):
        if name not in [p for p in args.peers.split(",") if p]:
            continue
        if shutil.which(name):
            tools.append(cls(scratch, data))
        else:
            skipped.append(f"{name} (not installed)")
    # The control's source: a copy of one data set in RAM, made for each
    # measurement and removed after it, so that it never crowds the page cache.
    in_ram = Path("/dev/shm") / f"coffer-mount-bench-{os.getpid()}"
    sizes = {name: tree_bytes(data / rel) for name, rel in DATASETS}
    largest = max(sizes.values())
    try:
        room = shutil.disk_usage("/dev/shm").free
    except OSError:
        room = 0
    control = room > largest * 1.2 + (1 << 30)
    if not control:
        skipped.append("the control (/dev/shm has no room for a copy of the data)")

    def prepare() -> None:
        sync()
        if args.drop_caches:
            drop_caches()

    def free_recently(size: int) -> None:
        """Writes and deletes `size` bytes, leaving that much memory freed just now."""
        block = bytes(1 << 20)
        path = scratch / "recently-freed"
        with open(path, "wb") as f:
            for _ in range(0, size, len(block)):
                f.write(block)
        sync()
        path.unlink()

    def through_mount(tool: Tool, rel: str, fn) -> float:
        proc = tool.mount(mnt)
        try:
            inside = tool.inside(mnt, rel)
            # The path down to the data is looked up outside the timing.
            os.stat(inside)
            prepare()
            return fn(inside)
        finally:
            unmount(proc, mnt)

    copy_to, restored = scratch / "copied", scratch / "restored"
    steps: dict[tuple[str, str], list[float]] = {}

    def record(dataset: str, step: str, secs: float) -> None:
        steps.setdefault((dataset, step), []).append(secs)

    cpu: dict[tuple[str, str], list[float]] = {}

    def copy(dataset: str, step: str, src: Path) -> None:
        start = time.perf_counter()
        used = cp_r(src, copy_to)
        record(dataset, step, time.perf_counter() - start)
        cpu.setdefault((dataset, step), []).append(used)

    def measure(tool: Tool) -> None:
        for rnd in range(1, args.rounds + 1):
            log(f"{tool.name}: round {rnd} of {args.rounds}")
            for name, rel in DATASETS:
                if tool is coffer:
                    shutil.rmtree(restored, ignore_errors=True)
                    free_recently(sizes[name])
                    prepare()
                    record(name, "coffer restore", timed(lambda: coffer.restore(rel, restored)))
                    shutil.rmtree(restored, ignore_errors=True)
                    if control:
                        try:
                            shutil.copytree(data / rel, in_ram / rel)
                            shutil.rmtree(copy_to, ignore_errors=True)
                            free_recently(sizes[name])
                            prepare()
                            copy(name, "cp from RAM (control)", in_ram / rel)
                        finally:
                            shutil.rmtree(in_ram, ignore_errors=True)
                shutil.rmtree(copy_to, ignore_errors=True)
                free_recently(sizes[name])
                through_mount(tool, rel, lambda inside: copy(name, f"{tool.name} mount, cp", inside))
                shutil.rmtree(copy_to, ignore_errors=True)
                record(name, f"{tool.name} mount, cat",
                       through_mount(tool, rel, lambda inside: timed(lambda: cat_all(files_under(inside)))))

            def listing(stat: bool) -> float:
                def go(inside: Path) -> float:
                    if stat:
                        return timed(lambda: [e.stat(follow_symlinks=False) for e in os.scandir(inside)])
                    return timed(lambda: os.listdir(inside))
                return through_mount(tool, "listing", go)
            record("listing", f"{tool.name} readdir", listing(False))
            record("listing", f"{tool.name} readdir + stat", listing(True))

    # One tool at a time, with only its own repository on disk: three
    # repositories of the data would crowd the page cache, and whichever step
    # then writes pays for reclaiming it.
    for tool in tools:
        log(f"{tool.name}: repository of the data")
        tool.create()
        measure(tool)
        if tool is not coffer:
            shutil.rmtree(tool.repo, ignore_errors=True)
            shutil.rmtree(scratch / f"{tool.name}-home", ignore_errors=True)

    results: dict = {"rounds": args.rounds, "cache": args.cache, "drop_caches": args.drop_caches,
                     "skipped": skipped, "datasets": {}}
    for name, _ in DATASETS:
        size = sizes[name]
        results["datasets"][name] = {"bytes": size, **{step: summary(secs, size)
                                                       for (ds, step), secs in steps.items() if ds == name}}
        for (ds, step), used in cpu.items():
            if ds == name:
                results["datasets"][name][step]["cp_cpu_s"] = used
    results["listing"] = {"entries": args.entries,
                          **{step: {"rounds_s": secs, "median_s": statistics.median(secs)}
                             for (ds, step), secs in steps.items() if ds == "listing"}}

    lines = [
        "# coffer mount against coffer restore, restic mount and borg mount",
        "",
        f"Median of {args.rounds} round(s) (slowest - fastest in brackets); coffer cache {args.cache}; "
        f"{'cold' if args.drop_caches else 'warm'} page cache for the repositories; "
        f"load average {os.getloadavg()[0]:.2f} at the end.",
    ]
    if skipped:
        lines.append(f"Skipped: {', '.join(skipped)}.")
    for name, _ in DATASETS:
        r = results["datasets"][name]
        base = r["coffer restore"]["MBps"]
        lines += ["", f"## {name}, {r['bytes'] / 2**20:.0f} MiB", "",
                  "| step | MB/s | range | ÷ coffer restore | `cp`'s own CPU |", "|---|--:|--:|--:|--:|"]
        for step, s in r.items():
            if step == "bytes":
                continue
            lo, hi = s["MBps_range"]
            used = f"{statistics.median(s['cp_cpu_s']):.2f} s" if "cp_cpu_s" in s else ""
            lines.append(f"| {step} | {s['MBps']:.0f} | {lo:.0f} - {hi:.0f} | {s['MBps'] / base * 100:.0f} % | {used} |")
        read, cp = r["coffer mount, cat"]["MBps"], r["coffer mount, cp"]["MBps"]
        line = (f"Reading through the mount: {read / base * 100:.0f} % of restore (target >= 70 %). "
                f"`cp` out of the mount: {cp / base * 100:.0f} % of restore")
        if "cp from RAM (control)" in r:
            ram = r["cp from RAM (control)"]["MBps"]
            line += f", {cp / ram * 100:.0f} % of the same `cp` from RAM (which is {ram / base * 100:.0f} % of restore)"
        lines += ["", line + "."]
    r = results["listing"]
    lines += ["", f"## listing {r['entries']} entries", "", "| step | ms |", "|---|--:|"]
    for step, s in r.items():
        if step != "entries":
            lines.append(f"| {step} | {s['median_s'] * 1000:.0f} |")
    lines += ["", "Target: well under 1 s."]
    report = "\n".join(lines) + "\n"
    print(report)
    (scratch.parent / "coffer-mount-bench.md").write_text(report)
    (scratch.parent / "coffer-mount-bench.json").write_text(json.dumps(results, indent=2))
    if not args.keep:
        shutil.rmtree(scratch)


if __name__ == "__main__":
    main()
