#!/usr/bin/env python3
"""Repository maintenance benchmark: forget + prune, check and check with data reads,
for coffer and (when installed) restic and borg, on the same data in the same run.

    python3 benches/e2e/maint.py --scale 1.0 --install-peers

Generates the synthetic photo library (generate.py), then makes ten snapshots with
every tool: before each backup after the first, a new folder `Incoming/batch-NN` of a
few new photo-like files appears and the previous batch is deleted, so that every
snapshot differs from the one before and forgetting old snapshots leaves data to
reclaim. Then, per tool, it times:

  forget   keep the last 3 snapshots and reclaim the space of the others
           (coffer forget --keep-last 3 --prune; restic forget --keep-last 3 --prune;
           borg prune --keep-last 3 followed by borg compact)
  check    structure: every snapshot, every tree, every referenced object present
  read     check that also reads and verifies all data (coffer/restic --read-data,
           borg --verify-data)

with wall time and peak RSS (GNU time), and the repository size before and after.
Results go to stdout and to SCRATCH/maint.md (and maint.json). The measuring
helpers and tool settings are bench.py's, so both scripts measure the same way.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.dont_write_bytecode = True
sys.path.insert(0, str(HERE))

import bench  # noqa: E402
import generate  # noqa: E402

MiB = bench.MiB
SNAPSHOTS = 10
KEEP = 3
BATCH_FILES = 4
BATCH_FILE_SIZE = (2 * MiB, 6 * MiB)

PHASES = [
    ("forget", f"forget --keep-last {KEEP} + prune"),
    ("check", "check"),
    ("read", "check, reading all data"),
]


def maint_cmds(tool: bench.Tool) -> dict[str, list[str]]:
    """The three timed commands of each tool."""
    repo = str(tool.repo)
    if tool.name == "coffer":
        base = [tool.bin, "-r", repo]
        return {
            "forget": [*base, "forget", "--keep-last", str(KEEP), "--prune"],
            "check": [*base, "check"],
            "read": [*base, "check", "--read-data"],
        }
    if tool.name == "restic":
        base = ["restic", "-r", repo]
        return {
            "forget": [*base, "forget", "--keep-last", str(KEEP), "--prune"],
            "check": [*base, "check"],
            "read": [*base, "check", "--read-data"],
        }
    # borg 1.2 frees space only in `compact`; prune alone would leave it on disk.
    return {
        "forget": ["sh", "-c", f'borg prune --keep-last {KEEP} "$0" && borg compact "$0"', repo],
        "check": ["borg", "check", repo],
        "read": ["borg", "check", "--verify-data", repo],
    }


def write_batch(data: Path, seed: int, n: int) -> int:
    """Replaces the previous incoming batch with batch n; returns the bytes written."""
    incoming = data / "Incoming"
    if incoming.exists():
        shutil.rmtree(incoming)
    folder = incoming / f"batch-{n:02d}"
    folder.mkdir(parents=True)
    rng = random.Random(f"maint:{seed}:{n}")
    written = 0
    for i in range(BATCH_FILES):
        size = rng.randint(*BATCH_FILE_SIZE)
        (folder / f"IMG_{n:02d}{i:02d}.jpg").write_bytes(generate.jpeg_bytes(rng, size))
        written += size
    return written


def render(ctx: dict) -> str:
    tools, res = ctx["tools"], ctx["results"]
    L = [f"# coffer maintenance benchmark ({time.strftime('%Y-%m-%d %H:%M:%S %Z')})", ""]
    L.append(f"Scale {ctx['scale']} (seed {ctx['seed']}): library of {ctx['gen']['files']} files, "
             f"{bench.fmt_mib(ctx['gen']['bytes'])} MiB; {SNAPSHOTS} snapshots per tool, each after a new "
             f"incoming batch of {BATCH_FILES} photos replaced the previous one. Page cache warm. "
             f"Tools run one after another in the order {', '.join(tools)}.")
    L.append("")
    head = ["step"]
    for t in tools:
        head += [f"{t} s", f"{t} RSS MiB"]
    if "coffer" in tools and len(tools) > 1:
        head.append("coffer ÷ fastest peer (time)")
    L.append("| " + " | ".join(head) + " |")
    L.append("|" + "|".join(["---"] + ["--:"] * (len(head) - 1)) + "|")
    for key, label in PHASES:
        row = [label]
        for t in tools:
            r = res[key].get(t)
            if r is None:
                row += ["–", "–"]
            elif not r["ok"]:
                row += [f"FAILED rc={r['rc']}", f"{r['rss_mib']:.0f}"]
            else:
                row += [f"{r['secs']:.2f}", f"{r['rss_mib']:.0f}"]
        if "coffer" in tools and len(tools) > 1:
            row.append(ratio(res, key, tools))
        L.append("| " + " | ".join(row) + " |")
    L.append("")
    L.append("| repository MiB | " + " | ".join(tools) + " |")
    L.append("|---|" + "|".join(["--:"] * len(tools)) + "|")
    for when in ("before", "after"):
        L.append(f"| {when} forget | " + " | ".join(bench.fmt_mib(ctx["repo"][t].get(when)) for t in tools) + " |")
    L.append("")
    if "coffer" in tools and len(tools) > 1:
        L.append("## Targets")
        L.append("")
        L.append("| target | measured | met |")
        L.append("|---|---|---|")
        for key, label in PHASES:
            c = res[key].get("coffer")
            peers = [res[key][t] for t in tools if t != "coffer" and res[key].get(t) and res[key][t]["ok"]]
            if not c or not c["ok"] or not peers:
                L.append(f"| {label}: at least as fast as the fastest peer, lower peak RSS | – | – |")
                continue
            best = min(p["secs"] for p in peers)
            low = min(p["rss_mib"] for p in peers)
            met = c["secs"] <= best and c["rss_mib"] < low
            L.append(f"| {label}: at least as fast as the fastest peer, lower peak RSS | "
                     f"{c['secs']:.2f} s vs {best:.2f} s; {c['rss_mib']:.0f} vs {low:.0f} MiB | "
                     f"{'yes' if met else '**no**'} |")
        L.append("")
    if ctx["notes"]:
        L.append("## Notes")
        L.append("")
        L += [f"- {n}" for n in ctx["notes"]]
        L.append("")
    L.append("## Machine and versions")
    L.append("")
    L += [f"- {k}: {v}" for k, v in ctx["machine"].items()]
    L += [f"- {k}: {v}" for k, v in ctx["versions"].items()]
    return "\n".join(L)


def ratio(res: dict, key: str, tools: list[str]) -> str:
    c = res[key].get("coffer")
    peers = [res[key][t]["secs"] for t in tools if t != "coffer" and res[key].get(t) and res[key][t]["ok"]]
    if not c or not c["ok"] or not peers or min(peers) <= 0:
        return "–"
    return f"{c['secs'] / min(peers):.2f}×"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", type=float, default=1.0, help="library size; 1.0 is about 1.5 GiB (default 1.0)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--scratch", type=Path, default=Path("/var/tmp/coffer-bench-maint"))
    ap.add_argument("--tools", default="coffer,restic,borg")
    ap.add_argument("--install-peers", action="store_true")
    ap.add_argument("--coffer-bin", type=Path, default=None)
    ap.add_argument("--borg-compression", default="lz4")
    ap.add_argument("--borg-encryption", default="auto")
    ap.add_argument("--check-read-data", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--jobs", type=int, default=None)
    args = ap.parse_args()

    scratch = args.scratch.resolve()
    wanted = [t.strip() for t in args.tools.split(",") if t.strip()]
    notes: list[str] = []
    if args.install_peers:
        bench.install_peers()
    bench.ensure_gnu_time()
    coffer_bin = None
    if "coffer" in wanted:
        coffer_bin = args.coffer_bin.resolve() if args.coffer_bin else bench.build_coffer(HERE.parent.parent)
    bench.prepare_scratch(scratch)

    tools: list[bench.Tool] = []
    for t in wanted:
        if t == "coffer":
            tools.append(bench.Coffer(scratch, args, coffer_bin))
        elif shutil.which(t):
            tools.append(bench.Restic(scratch, args) if t == "restic" else bench.Borg(scratch, args))
        else:
            notes.append(f"{t} is not installed: skipped (`--install-peers` installs restic and borgbackup)")
    names = [t.name for t in tools]
    ctx = {"scale": args.scale, "seed": args.seed, "tools": names, "notes": notes,
           "results": {k: {} for k, _ in PHASES}, "repo": {t: {} for t in names},
           "machine": bench.machine_info(scratch), "versions": {t.name: t.version() for t in tools}}
    logs = scratch / "logs"
    data = scratch / "data" / "Pictures"
    out_md = scratch / "maint.md"
    try:
        bench.log(f"generating the library (scale {args.scale}) in {data}")
        ctx["gen"] = generate.generate(str(data), args.seed, args.scale, args.jobs)
        for t in tools:
            t.repo.parent.mkdir(parents=True, exist_ok=True)
            r = bench.run_measured(t.init_cmd()[0], t.env, logs / f"init-{t.name}")
            if not r.ok:
                sys.exit(f"maint: {t.name} init failed: {r.stderr_tail()}")
        for n in range(1, SNAPSHOTS + 1):
            if n > 1:
                write_batch(data, args.seed, n)
            bench.sync()
            for t in tools:
                cmd, cwd = t.backup_cmd(data, f"snap{n:02d}")
                r = bench.run_measured(cmd, t.env, logs / f"backup{n:02d}-{t.name}", cwd)
                if not r.ok:
                    sys.exit(f"maint: {t.name} backup {n} failed: {r.stderr_tail()}")
            bench.log(f"snapshot {n} of {SNAPSHOTS} made by {', '.join(names)}")
        for t in tools:
            ctx["repo"][t.name]["before"] = bench.tree_size(t.repo)[0]
        for key, label in PHASES:
            for t in tools:
                bench.sync()
                bench.log(f"{label}: {t.name}")
                bench.settle_after_deletes()
                r = bench.run_measured(maint_cmds(t)[key], t.env, logs / f"{key}-{t.name}")
                ctx["results"][key][t.name] = {"ok": r.ok, "rc": r.rc, "secs": r.secs, "rss_mib": r.rss_kib / 1024}
                if not r.ok:
                    notes.append(f"{t.name} {key} failed (exit {r.rc}): " + r.stderr_tail(5).replace("\n", " ⏎ "))
                if key == "forget":
                    ctx["repo"][t.name]["after"] = bench.tree_size(t.repo)[0]
    except KeyboardInterrupt:
        notes.append("interrupted")
    finally:
        if ctx.get("gen"):
            text = render(ctx)
            out_md.write_text(text)
            out_md.with_suffix(".json").write_text(json.dumps(ctx, indent=2, default=str))
            print(text)
        if not args.keep:
            bench.cleanup(scratch)
    failed = any(not r["ok"] for p in ctx["results"].values() for r in p.values())
    return 1 if failed else 0


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    sys.exit(main())
