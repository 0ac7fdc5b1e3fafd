#!/usr/bin/env python3
"""A "month of edits" applied to a library made by generate.py, deterministically.

What a month of photography does to a library (counts at scale 1.0):

- new photos: 30 JPEGs and 3 RAWs, each with its sidecar, in a new folder 2026/01;
- header edits that INSERT bytes: 100-3000 bytes of new Exif-like data inserted near
  the start of 15 existing JPEGs (inside the APP1 segment, whose length field is
  updated) and 3 RAWs (in the TIFF-like header), written as a new file and renamed
  over the old one, as exiftool does -- every byte after the insertion point shifts;
- a renamed folder: the month folder with the most photos gets a name ("2021/02" ->
  "2021/02 Summer trip" at scale 1.0, seed 1);
- deletions: 5 JPEGs and their main sidecars;
- sidecar edits: 200 XMP files get a new rating, a keyword and a history step.

It reports the "genuinely new" bytes it introduced: the sizes of the new files, the
inserted bytes (plus the two bytes of each updated segment length), and the full new
size of each edited sidecar (a sidecar is far smaller than any chunk, so the whole file
is new to any chunking backup tool). Renames and deletions add nothing new.

For the small-files data set (generate.py --dataset small-files), mutate_small_files
(`--dataset small-files`) applies its own edits instead: 1 % new files, 1 % rewritten,
0.5 % deleted, one folder renamed.
"""

from __future__ import annotations

import argparse
import calendar
import json
import os
import random
import sys
sys.dont_write_bytecode = True  # no __pycache__ in the source tree

import generate as gen

NEW_MONTH = (2026, 1)
BASE_NEW_JPEGS = 30
BASE_NEW_RAWS = 3
BASE_EDIT_JPEGS = 15
BASE_EDIT_RAWS = 3
BASE_DELETES = 5
BASE_XMP_EDITS = 200
INSERT_SIZE = (100, 3000)
RENAME_SUFFIX = " Summer trip"


def _scan(root: str) -> list[str]:
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for f in sorted(filenames):
            out.append(os.path.relpath(os.path.join(dirpath, f), root))
    return sorted(out)


def _month_of(rel: str) -> str | None:
    parts = rel.split("/")
    if len(parts) == 3 and parts[0].isdigit() and parts[1].isdigit():
        return f"{parts[0]}/{parts[1]}"
    return None


def _replace(path: str, data: bytes, mtime: int) -> None:
    """Writes a new file and renames it over the old one, as exiftool and darktable do."""
    tmp = path + ".bench-tmp"
    gen.write_file(tmp, data, mtime)
    os.replace(tmp, path)


def _new_mtime(rng: random.Random) -> int:
    y, m = NEW_MONTH
    return calendar.timegm((y, m, rng.randint(1, 28), rng.randint(7, 21), rng.randint(0, 59), rng.randint(0, 59), 0, 0, 0))


def insert_jpeg(data: bytes, rng: random.Random, n: int) -> tuple[bytes, int]:
    """Inserts n bytes inside the APP1 segment; returns the new bytes and the bytes changed."""
    if data[:4] != b"\xff\xd8\xff\xe1":
        at = min(len(data), 20)
        return data[:at] + rng.randbytes(n) + data[at:], n
    seg_len = int.from_bytes(data[4:6], "big")
    at = rng.randrange(30, 4 + seg_len)  # inside the segment, after the TIFF header
    new = bytearray(data[:at] + rng.randbytes(n) + data[at:])
    changed = n
    if seg_len + n <= 0xFFFF:
        new[4:6] = (seg_len + n).to_bytes(2, "big")
        changed += 2
    return bytes(new), changed


def insert_raw(data: bytes, rng: random.Random, n: int) -> tuple[bytes, int]:
    at = rng.randrange(24, 1500)
    return data[:at] + rng.randbytes(n) + data[at:], n


def edit_xmp(text: bytes, rng: random.Random) -> bytes:
    s = text.decode()
    start = s.index('xmp:Rating="') + len('xmp:Rating="')
    s = s[:start] + str(rng.randint(0, 5)) + s[s.index('"', start):]
    kw = f"     <rdf:li>{rng.choice(gen._WORDS)}</rdf:li>\n"
    s = s.replace("    </rdf:Bag>", kw + "    </rdf:Bag>", 1)
    hstart = s.index('darktable:history_end="') + len('darktable:history_end="')
    hend = int(s[hstart:s.index('"', hstart)])
    s = s[:hstart] + str(hend + 1) + s[s.index('"', hstart):]
    tail = s.rindex("    </rdf:Seq>")
    s = s[:tail] + gen.xmp_history_item(rng, hend) + s[tail:]
    return s.encode()


def mutate(root: str, seed: int = 1, scale: float = 1.0) -> dict:
    y, m = NEW_MONTH
    new_dir = os.path.join(root, f"{y:04d}", f"{m:02d}")
    if os.path.exists(new_dir):
        raise SystemExit(f"mutate: {new_dir} exists: this library was already mutated")
    rng = random.Random(f"mutate:{seed}")
    files = _scan(root)
    originals = [f for f in files if _month_of(f) and "(copy)" not in f]
    photos = [f for f in originals if f.endswith((".jpg", ".NEF"))]
    report: dict = {"root": root, "seed": seed, "scale": scale}

    # 1. The renamed folder: the month folder with the most photos (all its files move).
    by_month: dict[str, int] = {}
    for p in photos:
        by_month[_month_of(p)] = by_month.get(_month_of(p), 0) + 1
    renamed = sorted(by_month, key=lambda k: (-by_month[k], k))[0]
    renamed_files = [f for f in files if _month_of(f) == renamed]
    os.rename(os.path.join(root, renamed), os.path.join(root, renamed + RENAME_SUFFIX))
    report["renamed_folder"] = [renamed, renamed + RENAME_SUFFIX]
    report["renamed_files"] = len(renamed_files)
    report["renamed_bytes"] = sum(os.path.getsize(os.path.join(root, renamed + RENAME_SUFFIX, f.split("/")[2]))
                                  for f in renamed_files)

    pool = [p for p in photos if _month_of(p) != renamed]
    rng.shuffle(pool)
    jpeg_pool = [p for p in pool if p.endswith(".jpg")]
    raw_pool = [p for p in pool if p.endswith(".NEF")]

    # 2. Deletions (JPEGs and their main sidecar).
    n_del = min(gen.scaled(BASE_DELETES, scale, 1), max(0, len(jpeg_pool) - 2))
    deleted, deleted_bytes = [], 0
    for p in jpeg_pool[:n_del]:
        for f in (p, p + ".xmp"):
            full = os.path.join(root, f)
            if os.path.exists(full):
                deleted_bytes += os.path.getsize(full)
                os.remove(full)
                deleted.append(f)
    jpeg_pool = jpeg_pool[n_del:]
    report["deleted_files"] = len(deleted)
    report["deleted_bytes"] = deleted_bytes

    # 3. Header edits that insert bytes.
    inserted = 0
    edited = []
    for group, n, fn in ((jpeg_pool, gen.scaled(BASE_EDIT_JPEGS, scale, 2), insert_jpeg),
                         (raw_pool, gen.scaled(BASE_EDIT_RAWS, scale, 1), insert_raw)):
        for p in sorted(group[:n]):
            full = os.path.join(root, p)
            with open(full, "rb") as f:
                data = f.read()
            new, changed = fn(data, rng, rng.randint(*INSERT_SIZE))
            _replace(full, new, _new_mtime(rng))
            inserted += changed
            edited.append(p)
    report["header_edited_files"] = len(edited)
    report["header_edited_jpegs"] = sum(1 for p in edited if p.endswith(".jpg"))
    report["header_edited_raws"] = sum(1 for p in edited if p.endswith(".NEF"))
    report["inserted_bytes"] = inserted

    # 4. Sidecar edits (not in the renamed folder, not deleted).
    gone = set(deleted)
    xmps = [f for f in originals if f.endswith(".xmp") and _month_of(f) != renamed and f not in gone]
    picked = sorted(rng.sample(xmps, min(len(xmps), gen.scaled(BASE_XMP_EDITS, scale, 5))))
    xmp_bytes = 0
    for f in picked:
        full = os.path.join(root, f)
        with open(full, "rb") as fh:
            new = edit_xmp(fh.read(), rng)
        _replace(full, new, _new_mtime(rng))
        xmp_bytes += len(new)
    report["xmp_edited_files"] = len(picked)
    report["xmp_edited_bytes"] = xmp_bytes

    # 5. New photos in a new month folder, numbered after the last one.
    os.makedirs(new_dir)
    last = max(int(p.rsplit("_", 1)[1].split(".")[0]) for p in photos)
    kinds = ["jpeg"] * gen.scaled(BASE_NEW_JPEGS, scale, 2) + ["raw"] * gen.scaled(BASE_NEW_RAWS, scale, 1)
    rng.shuffle(kinds)
    entries = []
    for i, kind in enumerate(kinds, start=last + 1):
        if kind == "jpeg":
            name, size = f"IMG_{i:04d}.jpg", rng.randint(*gen.JPEG_SIZE)
        else:
            name, size = f"DSC_{i:04d}.NEF", rng.randint(*gen.RAW_SIZE)
        rel = f"{y:04d}/{m:02d}/{name}"
        entries.append(gen.Entry(rel, kind, size, y, m))
        entries.append(gen.Entry(rel + ".xmp", "xmp", rng.randint(*gen.XMP_SIZE), y, m, source=name))
    # A different seed space from the base library: new photos are new data.
    new_bytes = gen.run_parallel(root, seed ^ 0x5EED_2026, entries, os.cpu_count() or 1)
    # Fixed mtimes on every folder the month touched, so the result is deterministic.
    touched = {"", f"{y:04d}", f"{y:04d}/{m:02d}", renamed.split("/")[0], renamed + RENAME_SUFFIX}
    touched |= {os.path.dirname(f) for f in deleted + edited + picked}
    ts = calendar.timegm((y, m, 31, 12, 0, 0, 0, 0, 0))
    for d in sorted(touched):
        os.utime(os.path.join(root, d), (ts, ts))
    report["new_files"] = len(entries)
    report["new_photos"] = len(kinds)
    report["new_bytes"] = new_bytes

    report["genuinely_new_bytes"] = new_bytes + inserted + xmp_bytes
    report["library_bytes_after"] = sum(os.path.getsize(os.path.join(root, f)) for f in _scan(root))
    report["library_files_after"] = len(_scan(root))
    return report


# The small-files data set's edits, as fractions of its files (at 200,000 files: 2,000
# new files in a new top-level folder, 2,000 rewritten with new contents, 1,000 deleted,
# and one folder of 250 renamed).
SMALL_NEW = 0.01
SMALL_REWRITE = 0.01
SMALL_DELETE = 0.005
SMALL_NEW_TOP = "t-new"


def mutate_small_files(root: str, seed: int = 1) -> dict:
    """The small-files data set's "edits": new files, rewritten files (new random contents
    renamed over the old ones), deletions and a renamed folder. Genuinely new: the sizes of
    the new and the rewritten files."""
    if os.path.exists(os.path.join(root, SMALL_NEW_TOP)):
        raise SystemExit(f"mutate: {root}/{SMALL_NEW_TOP} exists: this data set was already mutated")
    rng = random.Random(f"mutate-small:{seed}")
    files = _scan(root)
    n = len(files)
    report: dict = {"root": root, "seed": seed, "dataset": "small-files"}
    n_rewrite, n_delete = max(1, round(n * SMALL_REWRITE)), max(1, round(n * SMALL_DELETE))
    picked = rng.sample(files, min(n, n_rewrite + n_delete))
    rewrite, delete = sorted(picked[:n_rewrite]), sorted(picked[n_rewrite:])
    deleted_bytes = 0
    for f in delete:
        full = os.path.join(root, f)
        deleted_bytes += os.path.getsize(full)
        os.remove(full)
    rewritten_bytes = 0
    for f in rewrite:
        data = rng.randbytes(rng.randint(*gen.SMALL_SIZE))
        _replace(os.path.join(root, f), data, gen.SMALL_EPOCH + 400 * 86400 + rng.randrange(86400))
        rewritten_bytes += len(data)
    # A renamed folder (all its remaining files move), one not edited above if there is one.
    touched = {os.path.dirname(f) for f in picked}
    folders = sorted({os.path.dirname(f) for f in files} - touched) or sorted({os.path.dirname(f) for f in files})
    renamed = folders[rng.randrange(len(folders))]
    renamed_files = len(os.listdir(os.path.join(root, renamed)))
    os.rename(os.path.join(root, renamed), os.path.join(root, renamed + " renamed"))
    touched.discard(renamed)
    # New files, in folders of the generator's size under a new top-level folder.
    new_count = max(1, round(n * SMALL_NEW))
    new_bytes = 0
    for d in range((new_count + gen.SMALL_PER_DIR - 1) // gen.SMALL_PER_DIR):
        rel = f"{SMALL_NEW_TOP}/d{d:03d}"
        os.makedirs(os.path.join(root, rel))
        # A different seed space from the base data set: new files are new data.
        for name, data, mtime in gen.small_files_of(seed ^ 0x5EED_2026, rel, d * gen.SMALL_PER_DIR,
                                                    min(gen.SMALL_PER_DIR, new_count - d * gen.SMALL_PER_DIR)):
            gen.write_file(os.path.join(root, rel, name), data, mtime)
            new_bytes += len(data)
    ts = gen.SMALL_EPOCH + 401 * 86400
    for d in sorted({"", SMALL_NEW_TOP, renamed.split("/")[0], renamed + " renamed"} | touched):
        os.utime(os.path.join(root, d), (ts, ts))
    for d in range((new_count + gen.SMALL_PER_DIR - 1) // gen.SMALL_PER_DIR):
        os.utime(os.path.join(root, SMALL_NEW_TOP, f"d{d:03d}"), (ts, ts))
    report.update({
        "new_files": new_count, "new_bytes": new_bytes,
        "rewritten_files": len(rewrite), "rewritten_bytes": rewritten_bytes,
        "deleted_files": len(delete), "deleted_bytes": deleted_bytes,
        "renamed_folder": [renamed, renamed + " renamed"], "renamed_files": renamed_files,
        "genuinely_new_bytes": new_bytes + rewritten_bytes,
    })
    after = _scan(root)
    report["library_bytes_after"] = sum(os.path.getsize(os.path.join(root, f)) for f in after)
    report["library_files_after"] = len(after)
    return report


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("root", help="a library made by generate.py (mutated in place, once)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--scale", type=float, default=1.0, help="use the generator's scale")
    ap.add_argument("--dataset", choices=("photos", "small-files"), default="photos",
                    help="the generator's --dataset (small-files: 1%% new files, 1%% rewritten, 0.5%% deleted, "
                         "one folder renamed)")
    a = ap.parse_args()
    report = mutate(a.root, a.seed, a.scale) if a.dataset == "photos" else mutate_small_files(a.root, a.seed)
    json.dump(report, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
