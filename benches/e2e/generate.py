#!/usr/bin/env python3
"""Deterministic generators of the end-to-end benchmark's data sets: a synthetic photo
library (`--dataset photos`, the default, described here) and 200,000 small files of
random bytes (`--dataset small-files`, see generate_small_files).

Layout (scale 1.0, about 1.5 GiB):

    YYYY/MM/IMG_####.jpg        JPEG-like: a small fixed JPEG/Exif header, then random
                                bytes (incompressible), 2-8 MiB
    YYYY/MM/DSC_####.NEF        RAW-like: a TIFF-like header, an embedded preview, then
                                64 KiB blocks, about 30 % random and 70 % low-entropy,
                                so zstd -3 saves about half; 20-30 MiB
    YYYY/MM/*.xmp               darktable-style XML sidecars, 2-8 KiB: one per photo,
                                plus extra "virtual copy" sidecars (NAME_01.EXT.xmp)
                                so that there are thousands of them
    Favorites/..., YYYY/MM/...  exact copies of some photos in another folder

Every file's bytes come from its own PRNG seeded with (seed, relative path), so the
same seed and scale give the same bytes, whatever the order or the number of worker
processes. Modification times are fixed too (a date in the file's month).

Only the standard library is used: random.Random.randbytes (about 200 MiB/s per core)
in one worker process per CPU. The JSON summary counts the distinct files' bytes drawn
at random ("incompressible_bytes", the floor of any repository's size) and the RAW
files' low-entropy blocks ("low_entropy_bytes").
"""

from __future__ import annotations

import argparse
import calendar
import hashlib
import json
import os
import random
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field

MiB = 1 << 20
KiB = 1 << 10

YEARS = range(2019, 2026)  # 2019..2025
MONTHS = range(1, 13)

# Counts at scale 1.0; sizes of single files do not scale.
BASE_JPEGS = 180
BASE_RAWS = 22
BASE_XMPS = 2500
BASE_DUP_JPEGS = 8
BASE_DUP_RAWS = 1

JPEG_SIZE = (2 * MiB, 8 * MiB)
RAW_SIZE = (20 * MiB, 30 * MiB)
XMP_SIZE = (2 * KiB, 8 * KiB)

RAW_BLOCK = 64 * KiB
RAW_RANDOM_FRACTION = 0.30  # the rest is low-entropy (2 bits per byte)


def file_rng(seed: int, relpath: str) -> random.Random:
    """One PRNG per file, independent of generation order."""
    h = hashlib.sha256(f"coffer-bench:{seed}:{relpath}".encode()).digest()
    return random.Random(int.from_bytes(h, "little"))


def month_mtime(rng: random.Random, year: int, month: int) -> int:
    day = rng.randint(1, calendar.monthrange(year, month)[1])
    return calendar.timegm((year, month, day, rng.randint(7, 21), rng.randint(0, 59), rng.randint(0, 59), 0, 0, 0))


# ---------------------------------------------------------------- file contents

# A fixed, JPEG-like prefix: quantisation and Huffman tables as a real baseline JPEG has
# them (the values do not matter, only that every file from "the camera" shares them).
_fixed = random.Random(0x4A504547)
_DQT = b"\xff\xdb\x00\x84" + b"\x00" + bytes(_fixed.randrange(1, 100) for _ in range(64)) + b"\x01" + bytes(
    _fixed.randrange(1, 100) for _ in range(64)
)
_SOF0 = b"\xff\xc0\x00\x11\x08\x0f\xa0\x17\x70\x03\x01\x22\x00\x02\x11\x01\x03\x11\x01"
_DHT = b"\xff\xc4\x01\xa2" + bytes(_fixed.randrange(0, 256) for _ in range(0x1A0))
_IFD0 = bytes(_fixed.randrange(0, 256) for _ in range(160))  # make, model, orientation, ...
_SOS = b"\xff\xda\x00\x0c\x03\x01\x00\x02\x11\x03\x11\x00\x3f\x00"


def exif_segment(rng: random.Random) -> bytes:
    """APP1 'Exif' segment: TIFF header, a fixed-looking IFD, and per-photo fields."""
    tiff = b"II*\x00\x08\x00\x00\x00" + b"\x0c\x00"
    camera = b"COFFERCAM Model 7\x00" + b"firmware 1.04\x00"
    per_photo = rng.randbytes(300 + rng.randrange(600))  # maker note, GPS, time
    body = b"Exif\x00\x00" + tiff + _IFD0 + camera + per_photo
    return b"\xff\xe1" + (len(body) + 2).to_bytes(2, "big") + body


# Bytes of an APP1 segment that are not drawn at random (see exif_segment).
_EXIF_FIXED = 2 + 2 + 6 + 10 + len(_IFD0) + len(b"COFFERCAM Model 7\x00" + b"firmware 1.04\x00")
_JPEG_FIXED = 2 + _EXIF_FIXED + len(_DQT) + len(_SOF0) + len(_DHT) + len(_SOS) + 2


def jpeg_bytes(rng: random.Random, size: int) -> bytes:
    head = b"\xff\xd8" + exif_segment(rng) + _DQT + _SOF0 + _DHT + _SOS
    body = rng.randbytes(max(0, size - len(head) - 2))
    return head + body + b"\xff\xd9"


# Low-entropy "sensor" blocks: each byte is base + (random & 3): 2 bits of entropy per
# byte, which zstd -3 stores in ~31 % of the space (lz4 in ~57 %).
_LOW_TABLES = [bytes(((base + (b & 3)) & 0xFF) for b in range(256)) for base in range(0, 256, 4)]


_RAW_FIXED = len(b"II*\x00\x08\x00\x00\x00" + b"COFFERCAM RAW v2\x00")


def raw_bytes(rng: random.Random, size: int, counts: list[int] | None = None) -> bytes:
    """A RAW-like file; adds its random and its low-entropy byte counts to `counts`."""
    header = b"II*\x00\x08\x00\x00\x00" + b"COFFERCAM RAW v2\x00" + rng.randbytes(1500 + rng.randrange(1500))
    parts = [header]
    n = len(header)
    random_bytes, low_bytes = len(header) - _RAW_FIXED, 0
    while n < size:
        take = min(RAW_BLOCK, size - n)
        if rng.random() < RAW_RANDOM_FRACTION:
            parts.append(rng.randbytes(take))
            random_bytes += take
        else:
            parts.append(rng.randbytes(take).translate(_LOW_TABLES[rng.randrange(len(_LOW_TABLES))]))
            low_bytes += take
        n += take
    if counts is not None:
        counts[0] += random_bytes
        counts[1] += low_bytes
    return b"".join(parts)


_XMP_HEAD = """<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>
<x:xmpmeta xmlns:x="adobe:ns:meta/" x:xmptk="XMP Core 4.4.0-Exiv2">
 <rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">
  <rdf:Description rdf:about=""
    xmlns:exif="http://ns.adobe.com/exif/1.0/"
    xmlns:xmp="http://ns.adobe.com/xap/1.0/"
    xmlns:xmpMM="http://ns.adobe.com/xap/1.0/mm/"
    xmlns:dc="http://purl.org/dc/elements/1.1/"
    xmlns:darktable="http://darktable.sf.net/"
   exif:DateTimeOriginal="{date}"
   xmp:Rating="{rating}"
   xmpMM:DerivedFrom="{source}"
   darktable:import_timestamp="{stamp}"
   darktable:change_timestamp="{stamp2}"
   darktable:xmp_version="5"
   darktable:raw_params="0"
   darktable:auto_presets_applied="1"
   darktable:history_end="{hend}">
   <dc:subject>
    <rdf:Bag>
{keywords}    </rdf:Bag>
   </dc:subject>
   <darktable:history>
    <rdf:Seq>
"""
_XMP_TAIL = """    </rdf:Seq>
   </darktable:history>
  </rdf:Description>
 </rdf:RDF>
</x:xmpmeta>
<?xpacket end="w"?>
"""
_OPS = ["exposure", "temperature", "highlights", "demosaic", "filmicrgb", "colorbalancergb",
        "lens", "denoiseprofile", "sharpen", "crop", "ashift", "toneequal", "colorin", "colorout"]
_WORDS = ["family", "beach", "mountains", "birthday", "garden", "snow", "city", "cat", "dog",
          "sunset", "portrait", "travel", "school", "concert", "forest", "lake", "grandma"]


def xmp_keywords(rng: random.Random, n: int) -> str:
    return "".join(f"     <rdf:li>{rng.choice(_WORDS)}</rdf:li>\n" for _ in range(n))


def xmp_history_item(rng: random.Random, num: int) -> str:
    op = rng.choice(_OPS)
    params = rng.randbytes(rng.randrange(16, 160)).hex()
    blend = rng.randbytes(rng.randrange(20, 60)).hex()
    return (f"     <rdf:li darktable:num=\"{num}\" darktable:operation=\"{op}\" darktable:enabled=\"1\"\n"
            f"      darktable:modversion=\"{rng.randrange(1, 9)}\" darktable:params=\"{params}\"\n"
            f"      darktable:multi_name=\"\" darktable:multi_priority=\"0\"\n"
            f"      darktable:blendop_version=\"13\" darktable:blendop_params=\"gz{blend}\"/>\n")


def xmp_text(rng: random.Random, source: str, size: int, year: int, month: int, rating: int | None = None,
             keywords: int | None = None) -> bytes:
    date = f"{year:04d}:{month:02d}:{rng.randint(1, 28):02d} {rng.randint(7, 21):02d}:{rng.randint(0, 59):02d}:00"
    parts_head = _XMP_HEAD.format(
        date=date, rating=rng.randint(0, 5) if rating is None else rating, source=source,
        stamp=rng.randrange(10**11, 10**12), stamp2=rng.randrange(10**11, 10**12),
        hend="{hend}", keywords=xmp_keywords(rng, rng.randint(1, 6) if keywords is None else keywords))
    items = []
    total = len(parts_head) + len(_XMP_TAIL)
    while total < size:
        item = xmp_history_item(rng, len(items))
        items.append(item)
        total += len(item)
    text = parts_head.replace("{hend}", str(len(items))) + "".join(items) + _XMP_TAIL
    return text.encode()


# ---------------------------------------------------------------- the plan


@dataclass
class Entry:
    relpath: str
    kind: str  # jpeg | raw | xmp
    size: int
    year: int
    month: int
    source: str = ""  # for xmp: the photo it describes


@dataclass
class Plan:
    seed: int
    scale: float
    entries: list[Entry] = field(default_factory=list)
    duplicates: list[tuple[str, str]] = field(default_factory=list)  # (src, dst)
    dirs: list[str] = field(default_factory=list)


def scaled(n: int, scale: float, minimum: int) -> int:
    return max(minimum, round(n * scale))


def make_plan(seed: int, scale: float) -> Plan:
    rng = random.Random(f"plan:{seed}")
    plan = Plan(seed, scale)
    months = [(y, m) for y in YEARS for m in MONTHS]
    plan.dirs = [f"{y:04d}/{m:02d}" for y, m in months] + ["Favorites"]
    photos: list[Entry] = []
    n_jpeg = scaled(BASE_JPEGS, scale, 4)
    n_raw = scaled(BASE_RAWS, scale, 1)
    # Photos get increasing numbers in time order, as a camera does.
    kinds = ["jpeg"] * n_jpeg + ["raw"] * n_raw
    rng.shuffle(kinds)
    slots = sorted(rng.randrange(len(months)) for _ in kinds)
    for number, (kind, slot) in enumerate(zip(kinds, slots), start=1):
        y, m = months[slot]
        if kind == "jpeg":
            name, size = f"IMG_{number:04d}.jpg", rng.randint(*JPEG_SIZE)
        else:
            name, size = f"DSC_{number:04d}.NEF", rng.randint(*RAW_SIZE)
        photos.append(Entry(f"{y:04d}/{m:02d}/{name}", kind, size, y, m))
    plan.entries.extend(photos)
    # Sidecars: one per photo, then virtual copies of random photos up to the count.
    n_xmp = scaled(BASE_XMPS, scale, len(photos))
    copies: dict[str, int] = {}
    for i in range(n_xmp):
        photo = photos[i] if i < len(photos) else photos[rng.randrange(len(photos))]
        base = photo.relpath.rsplit("/", 1)[1]
        if i < len(photos):
            name = f"{base}.xmp"
        else:
            copies[photo.relpath] = copies.get(photo.relpath, 0) + 1
            stem, ext = base.rsplit(".", 1)
            name = f"{stem}_{copies[photo.relpath]:02d}.{ext}.xmp"
        plan.entries.append(Entry(f"{photo.year:04d}/{photo.month:02d}/{name}", "xmp",
                                  rng.randint(*XMP_SIZE), photo.year, photo.month, source=base))
    # Exact duplicates: in Favorites/, or in another month folder (an import done twice).
    jpegs = [p for p in photos if p.kind == "jpeg"]
    raws = [p for p in photos if p.kind == "raw"]
    dups = rng.sample(jpegs, min(len(jpegs), scaled(BASE_DUP_JPEGS, scale, 1)))
    dups += rng.sample(raws, min(len(raws), scaled(BASE_DUP_RAWS, scale, 0)))
    for i, p in enumerate(dups):
        base = p.relpath.rsplit("/", 1)[1]
        if i % 2 == 0:
            dst = f"Favorites/{base}"
        else:
            y, m = months[rng.randrange(len(months))]
            stem, ext = base.rsplit(".", 1)
            dst = f"{y:04d}/{m:02d}/{stem} (copy).{ext}"
        plan.duplicates.append((p.relpath, dst))
    return plan


def content(seed: int, e: Entry, counts: list[int] | None = None) -> bytes:
    """The entry's bytes; adds its random and low-entropy byte counts to `counts`."""
    rng = file_rng(seed, e.relpath)
    if e.kind == "jpeg":
        data = jpeg_bytes(rng, e.size)
        if counts is not None:
            counts[0] += len(data) - _JPEG_FIXED
        return data
    if e.kind == "raw":
        return raw_bytes(rng, e.size, counts)
    return xmp_text(rng, e.source, e.size, e.year, e.month)


def write_file(path: str, data: bytes, mtime: int) -> None:
    with open(path, "wb", buffering=0) as f:
        view = memoryview(data)
        for off in range(0, len(view), 8 * MiB):
            f.write(view[off:off + 8 * MiB])
    os.utime(path, (mtime, mtime))


def _write_entries(args: tuple[str, int, list[Entry]]) -> tuple[int, int, int]:
    """(bytes written, of which drawn at random, of which low-entropy)."""
    root, seed, entries = args
    total = 0
    counts = [0, 0]
    for e in entries:
        data = content(seed, e, counts)
        write_file(os.path.join(root, e.relpath), data, month_mtime(file_rng(seed, "mtime:" + e.relpath), e.year, e.month))
        total += len(data)
    return total, counts[0], counts[1]


def write_parallel(root: str, seed: int, entries: list[Entry], jobs: int) -> tuple[int, int, int]:
    """Writes entries with `jobs` processes; big files first so the workers finish together.
    Returns (bytes written, of which random, of which low-entropy)."""
    order = sorted(entries, key=lambda e: -e.size)
    if jobs <= 1:
        return _write_entries((root, seed, order))
    batches: list[list[Entry]] = []
    small: list[Entry] = []
    for e in order:
        if e.size >= MiB:
            batches.append([e])
        else:
            small.append(e)
    for i in range(0, len(small), 200):
        batches.append(small[i:i + 200])
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        parts = list(pool.map(_write_entries, [(root, seed, b) for b in batches]))
    return sum(p[0] for p in parts), sum(p[1] for p in parts), sum(p[2] for p in parts)


def run_parallel(root: str, seed: int, entries: list[Entry], jobs: int) -> int:
    """As write_parallel; returns the bytes written."""
    return write_parallel(root, seed, entries, jobs)[0]


def generate(root: str, seed: int = 1, scale: float = 1.0, jobs: int | None = None) -> dict:
    """Creates the library in `root` (which must not exist or be empty). Returns a summary."""
    if os.path.exists(root) and os.listdir(root):
        raise SystemExit(f"generate: {root} exists and is not empty")
    jobs = jobs or os.cpu_count() or 1
    t0 = time.monotonic()
    plan = make_plan(seed, scale)
    for d in plan.dirs:
        os.makedirs(os.path.join(root, d), exist_ok=True)
    written, random_bytes, low_bytes = write_parallel(root, seed, plan.entries, jobs)
    dup_bytes = 0
    for src, dst in plan.duplicates:
        shutil.copyfile(os.path.join(root, src), os.path.join(root, dst))
        st = os.stat(os.path.join(root, src))
        os.utime(os.path.join(root, dst), (st.st_mtime, st.st_mtime))
        dup_bytes += st.st_size
    # Directory mtimes, last, so they are deterministic too.
    for d in sorted(plan.dirs, reverse=True):
        ts = calendar.timegm((int(d[:4]), int(d[5:7]), 28, 12, 0, 0, 0, 0, 0)) if d[0].isdigit() else 1735689600
        os.utime(os.path.join(root, d), (ts, ts))
    for y in YEARS:
        ts = calendar.timegm((y, 12, 31, 12, 0, 0, 0, 0, 0))
        os.utime(os.path.join(root, f"{y:04d}"), (ts, ts))
    os.utime(root, (1735689600, 1735689600))
    count = lambda k: sum(1 for e in plan.entries if e.kind == k)  # noqa: E731
    size = lambda k: sum(e.size for e in plan.entries if e.kind == k)  # noqa: E731
    return {
        "dataset": "photos",
        "root": root,
        "seed": seed,
        "scale": scale,
        "files": len(plan.entries) + len(plan.duplicates),
        "bytes": written + dup_bytes,
        # Of the distinct files' bytes (exact duplicates not counted again): those drawn
        # uniformly at random, which no compressor shrinks, and the RAW files'
        # low-entropy blocks (2 bits per byte). Fixed headers and the XMP text are the rest.
        "incompressible_bytes": random_bytes,
        "low_entropy_bytes": low_bytes,
        "jpeg_files": count("jpeg"),
        "jpeg_bytes": size("jpeg"),
        "raw_files": count("raw"),
        "raw_bytes": size("raw"),
        "xmp_files": count("xmp"),
        "xmp_bytes": size("xmp"),
        "duplicate_files": len(plan.duplicates),
        "duplicate_bytes": dup_bytes,
        "seconds": round(time.monotonic() - t0, 2),
    }


# ---------------------------------------------------------------- small files

# The small-files data set: SMALL_FILES files (at scale 1.0) of 1-6 KiB of random bytes,
# SMALL_PER_DIR to a folder, SMALL_DIRS_PER_TOP folders to a top-level folder:
#     t000/d000/f000000.dat ... t039/d799/f199999.dat    (about 0.7 GB)
# the shape of a mail store, a source tree or a cache, where a tool's cost per file and
# per stored object dominates its cost per byte.
SMALL_FILES = 200_000
SMALL_SIZE = (1 * KiB, 6 * KiB)
SMALL_PER_DIR = 250
SMALL_DIRS_PER_TOP = 20
SMALL_EPOCH = 1704067200  # 2024-01-01: modification times are this plus a per-file offset


def small_dir(index: int) -> str:
    """Relative path of the index-th leaf folder."""
    return f"t{index // SMALL_DIRS_PER_TOP:03d}/d{index:03d}"


def small_files_of(seed: int, rel_dir: str, first: int, n: int) -> list[tuple[str, bytes, int]]:
    """(name, bytes, mtime) of the n files numbered from `first` in one folder; one PRNG per
    folder, so the bytes do not depend on the number of worker processes."""
    rng = file_rng(seed, "small:" + rel_dir)
    out = []
    for i in range(first, first + n):
        size = rng.randint(*SMALL_SIZE)
        out.append((f"f{i:06d}.dat", rng.randbytes(size), SMALL_EPOCH + rng.randrange(365 * 86400)))
    return out


def _write_small_dir(args: tuple[str, int, int, int]) -> int:
    root, seed, index, n = args
    rel = small_dir(index)
    folder = os.path.join(root, rel)
    os.makedirs(folder, exist_ok=True)
    total = 0
    for name, data, mtime in small_files_of(seed, rel, index * SMALL_PER_DIR, n):
        write_file(os.path.join(folder, name), data, mtime)
        total += len(data)
    return total


def small_files_count(scale: float) -> int:
    return max(1, round(SMALL_FILES * scale))


def generate_small_files(root: str, seed: int = 1, count: int = SMALL_FILES, jobs: int | None = None) -> dict:
    """Creates the small-files data set in `root` (must not exist or be empty)."""
    if os.path.exists(root) and os.listdir(root):
        raise SystemExit(f"generate: {root} exists and is not empty")
    jobs = jobs or os.cpu_count() or 1
    t0 = time.monotonic()
    os.makedirs(root, exist_ok=True)
    dirs = [(root, seed, i, min(SMALL_PER_DIR, count - i * SMALL_PER_DIR))
            for i in range((count + SMALL_PER_DIR - 1) // SMALL_PER_DIR)]
    if jobs <= 1:
        written = sum(map(_write_small_dir, dirs))
    else:
        with ProcessPoolExecutor(max_workers=jobs) as pool:
            written = sum(pool.map(_write_small_dir, dirs, chunksize=4))
    tops = sorted({small_dir(i).split("/")[0] for i in range(len(dirs))})
    for i in range(len(dirs)):
        os.utime(os.path.join(root, small_dir(i)), (SMALL_EPOCH + 366 * 86400,) * 2)
    for t in tops:
        os.utime(os.path.join(root, t), (SMALL_EPOCH + 366 * 86400,) * 2)
    os.utime(root, (SMALL_EPOCH + 366 * 86400,) * 2)
    return {
        "dataset": "small-files",
        "root": root,
        "seed": seed,
        "files": count,
        "folders": len(dirs),
        "bytes": written,
        "incompressible_bytes": written,  # every byte is drawn at random
        "low_entropy_bytes": 0,
        "seconds": round(time.monotonic() - t0, 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("root", help="folder to create (must not exist, or be empty)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--scale", type=float, default=1.0,
                    help="photos: 1.0 is about 1.5 GiB; small-files: 1.0 is 200,000 files (about 0.7 GB)")
    ap.add_argument("--dataset", choices=("photos", "small-files"), default="photos")
    ap.add_argument("--small-files-count", type=int, default=None,
                    help="small-files: this many files (default 200,000 × scale)")
    ap.add_argument("--jobs", type=int, default=None, help="worker processes (default: all CPUs)")
    a = ap.parse_args()
    if a.dataset == "photos":
        summary = generate(a.root, a.seed, a.scale, a.jobs)
    else:
        summary = generate_small_files(a.root, a.seed, a.small_files_count or small_files_count(a.scale), a.jobs)
    json.dump(summary, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
