#!/usr/bin/env python3
"""Reading through `coffer mount` against `coffer restore` of the same data.

Measures (issue 6):
- sequential read of one large file through the mount (copied to the scratch disk,
  as restore writes it, and read to /dev/null), against `coffer restore --include` of it;
- the same for a folder of photos (`cp -r` through the mount);
- listing a folder of 10,000 entries through a fresh mount (readdir, and readdir + stat
  of every entry as `ls -l` does).

Targets: the mount reads sequentially at >= 70 % of restore's throughput; the listing
returns in well under a second.

    python3 benches/e2e/mount_bench.py                          # defaults: 2 GiB file, 200 photos
    python3 benches/e2e/mount_bench.py --big-mib 64 --photos 8 --entries 2000   # a smoke run

Needs root (or fusermount3) and /dev/fuse. Standard library only. Every measurement is
taken on a fresh mount, so neither the kernel's page cache of the mount nor coffer's
chunk cache helps; the repository's own files are in the page cache (warm) unless
--drop-caches is given.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import build_coffer, drop_caches, log, sync  # noqa: E402

MARKER = ".coffer-mount-bench-scratch"
PASSWORD = "mount-bench"


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


class Coffer:
    def __init__(self, binary: Path, repo: Path):
        self.binary = binary
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("COFFER_")}
        self.env.update(COFFER_REPOSITORY=str(repo), COFFER_PASSWORD=PASSWORD)

    def run(self, *args: str) -> None:
        subprocess.run([str(self.binary), *args], env=self.env, check=True, stdout=subprocess.DEVNULL)

    def mount(self, at: Path, cache: str) -> subprocess.Popen:
        at.mkdir(parents=True, exist_ok=True)
        proc = subprocess.Popen([str(self.binary), "-q", "mount", str(at), "--cache-size", cache], env=self.env)
        deadline = time.monotonic() + 60
        while not os.path.ismount(at):
            if proc.poll() is not None or time.monotonic() > deadline:
                sys.exit("mount_bench: coffer mount did not come up")
            time.sleep(0.05)
        return proc


def unmount(proc: subprocess.Popen, at: Path) -> None:
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)
    if os.path.ismount(at):
        subprocess.run(["umount", "-l", str(at)])


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--big-mib", type=int, default=2048, help="size of the large file (default 2048)")
    ap.add_argument("--photos", type=int, default=200, help="photos of 3-8 MiB (default 200, about 1 GiB)")
    ap.add_argument("--entries", type=int, default=10_000, help="files in the listed folder (default 10000)")
    ap.add_argument("--cache", default="128M", help="coffer mount --cache-size (default 128M)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--scratch", type=Path, default=Path("/var/tmp/coffer-mount-bench"))
    ap.add_argument("--coffer-bin", type=Path, help="use this binary instead of building a release one")
    ap.add_argument("--drop-caches", action="store_true", help="drop the page cache before each timed step (root)")
    ap.add_argument("--keep", action="store_true", help="keep the scratch folder")
    args = ap.parse_args()

    scratch = args.scratch
    if scratch.exists() and not (scratch / MARKER).exists():
        sys.exit(f"mount_bench: {scratch} exists and was not made by this script")
    if scratch.exists():
        shutil.rmtree(scratch)
    scratch.mkdir(parents=True)
    (scratch / MARKER).touch()
    binary = args.coffer_bin or build_coffer(Path(__file__).resolve().parents[2])
    data, repo, mnt = scratch / "data", scratch / "repo", scratch / "mnt"
    generate(data, args)
    coffer = Coffer(binary, repo)
    # Cheap key derivation: restore timings then measure reading, not argon2id.
    coffer.run("init", "--argon2-memory", "1024", "--argon2-iterations", "1")
    coffer.run("backup", str(data))

    def prepare() -> None:
        sync()
        if args.drop_caches:
            drop_caches()

    results = {}
    for name, rel in [("large file", "big"), ("photos", "photos")]:
        size = tree_bytes(data / rel)
        src_in_snapshot = str(data.resolve() / rel)
        target = scratch / "restored"
        shutil.rmtree(target, ignore_errors=True)
        prepare()
        t_restore = timed(lambda: coffer.run("restore", "latest", "--target", str(target), "--include", src_in_snapshot))
        shutil.rmtree(target, ignore_errors=True)

        proc = coffer.mount(mnt, args.cache)
        inside = mnt / "snapshots" / "latest" / str(data.resolve() / rel).lstrip("/")
        copy_to = scratch / "copied"
        shutil.rmtree(copy_to, ignore_errors=True)
        prepare()
        t_copy = timed(lambda: subprocess.run(["cp", "-r", str(inside), str(copy_to)], check=True))
        unmount(proc, mnt)
        shutil.rmtree(copy_to, ignore_errors=True)

        proc = coffer.mount(mnt, args.cache)
        prepare()
        files = sorted(p for p in inside.rglob("*") if p.is_file()) if inside.is_dir() else [inside]
        t_read = timed(lambda: [subprocess.run(["cat", str(f)], check=True, stdout=subprocess.DEVNULL) for f in files])
        unmount(proc, mnt)
        results[name] = {
            "bytes": size,
            "restore_s": t_restore,
            "mount_cp_s": t_copy,
            "mount_read_s": t_read,
            "restore_MBps": size / t_restore / 1e6,
            "mount_cp_MBps": size / t_copy / 1e6,
            "mount_read_MBps": size / t_read / 1e6,
            "cp_vs_restore": t_restore / t_copy,
        }

    proc = coffer.mount(mnt, args.cache)
    listing = mnt / "snapshots" / "latest" / str(data.resolve() / "listing").lstrip("/")
    # The folders above are looked up once, outside the timing.
    os.stat(listing)
    t_list = timed(lambda: os.listdir(listing))
    unmount(proc, mnt)
    proc = coffer.mount(mnt, args.cache)
    os.stat(listing)
    t_list_stat = timed(lambda: [e.stat(follow_symlinks=False) for e in os.scandir(listing)])
    unmount(proc, mnt)
    results["listing"] = {"entries": args.entries, "readdir_s": t_list, "readdir_stat_s": t_list_stat}

    lines = [
        "# coffer mount against coffer restore",
        "",
        f"cache {args.cache}, {'cold' if args.drop_caches else 'warm'} page cache for the repository, "
        f"load average {os.getloadavg()[0]:.2f}",
        "",
        "| data | size | restore | mount, cp | mount, cat > /dev/null | cp / restore |",
        "|---|---|---|---|---|---|",
    ]
    for name in ("large file", "photos"):
        r = results[name]
        lines.append(
            f"| {name} | {r['bytes'] / 2**20:.0f} MiB | {r['restore_MBps']:.0f} MB/s | {r['mount_cp_MBps']:.0f} MB/s "
            f"| {r['mount_read_MBps']:.0f} MB/s | {r['cp_vs_restore'] * 100:.0f} % (target >= 70 %) |"
        )
    r = results["listing"]
    lines += [
        "",
        f"Listing {r['entries']} entries: readdir {r['readdir_s'] * 1000:.0f} ms, "
        f"readdir + stat {r['readdir_stat_s'] * 1000:.0f} ms (target: well under 1 s).",
    ]
    report = "\n".join(lines) + "\n"
    print(report)
    (scratch.parent / "coffer-mount-bench.md").write_text(report)
    (scratch.parent / "coffer-mount-bench.json").write_text(json.dumps(results, indent=2))
    if not args.keep:
        shutil.rmtree(scratch)


if __name__ == "__main__":
    main()
