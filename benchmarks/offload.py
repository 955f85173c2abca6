"""The driver's memory with the O(n k) stages offloaded to Ray workers (``ray.offload``), against
the single-process path, on a synthetic pair (tiny 64-dim encoder: time and memory, not accuracy).

    .venv/bin/python benchmarks/offload.py --entities 110000
    .venv/bin/python benchmarks/offload.py --entities 1050000 --vectors random   # 10^6 per side

Runs ``benchmarks/scale_synthetic.py`` twice on the same pair: ``driver`` (every stage body in the
driver process) and ``offload`` (retrieve, decode, calibrate, route, export and evaluate as Ray
tasks with ``ray.offload_cpus`` CPUs; its ingest, verbalize and embed are the driver run's,
hard-linked). Per stage: wall time, the driver's own peak RSS, the peak of the driver and all its
Ray processes, the offloaded task's worker peak; and whether every list and the metrics are equal.
``--vectors random`` (``scale_synthetic.py --vectors random``): the embed stage's parts are random
unit vectors written beforehand (a linked pair's two close), for sizes whose embedding would take
hours on this machine; the stages measured are those after embed. Rows are kept per size and mode in
benchmarks/results/offload.json (command, commit, date, machine), a later size added beside them.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import provenance  # noqa: E402

OFFLOADED = ["retrieve", "decode", "calibrate", "route", "export", "evaluate"]
OFFLOAD = f"ray.offload=[{','.join(OFFLOADED)}]"
# distributed: retrieve and decode as the ray engines (2 searcher actors of half a CPU: one FAISS thread each, and a
# CPU left for Ray Data; 2 decode shards of a CPU each), the rest offloaded
DISTRIBUTED = ["retrieve.engine=ray", "retrieve.search_actors=2", "retrieve.search_cpus=0.5", "decode.engine=ray",
               "decode.shards=2", "decode.shard_cpus=1", f"ray.offload=[{','.join(OFFLOADED[2:])}]"]


def table(doc: dict) -> str:
    """Per size: each mode's driver peak in the n k stages, the offloaded tasks' peak, and the wall
    time of retrieve and decode (median of the runs; over the driver mode's as a ratio)."""
    import numpy as np

    out = ["| entities per side | vectors | mode | driver peak RSS, n k stages (GiB) | retrieve: wall s / worker peak GiB | "
           "decode: wall s / worker peak GiB | wall / driver's (retrieve, decode) |", "|---|---|---|---|---|---|---|"]
    rows = doc.get("rows", {})
    for key in sorted(rows, key=lambda k: (int(k.split("/")[0]), k.split("/")[1])):
        r = rows[key]
        n, mode = key.split("/")
        st = r["stages"]

        def wall(row, stage):  # the median of the alternating runs when there are several
            runs = (row.get("wall_s_nk_stages_runs") or {}).get(stage)
            return float(np.median(runs)) if runs else row["stages"][stage]["wall_s"]

        def cell(stage):
            s = st.get(stage)
            if not s:
                return "–"
            peak = s.get("worker_peak_rss_gib")
            return f"{wall(r, stage):.1f} / {peak:.2f}" if peak else f"{wall(r, stage):.1f} / (driver)"
        other = rows.get(f"{n}/driver")
        ratio = "–"
        if mode != "driver" and other:
            ratio = ", ".join(f"{wall(r, x) / wall(other, x):.2f}" for x in ("retrieve", "decode")
                              if x in st and x in other["stages"])
        out.append(f"| {int(n):,} | {r.get('vectors', 'encoder')} | {mode} | {r['driver_peak_rss_gib_nk_stages']:.2f} | "
                   f"{cell('retrieve')} | {cell('decode')} | {ratio} |")
    return "\n".join(out)


def same_table(a: Path, b: Path) -> bool | str:
    """Equal tables; or "ids equal, scores within 1e-6": the same ids and matches, the float32
    scores apart by a rounding (a sum over shards, a BLAS block); else False."""
    import numpy as np
    import pyarrow.parquet as pq

    x, y = pq.read_table(a), pq.read_table(b)
    if x.equals(y):
        return True
    if x.column_names != y.column_names or x.num_rows != y.num_rows:
        return False
    for col in x.column_names:
        u, v = (t[col].combine_chunks() for t in (x, y))
        if hasattr(u, "flatten"):
            u, v = u.flatten(), v.flatten()
        u, v = u.to_numpy(zero_copy_only=False), v.to_numpy(zero_copy_only=False)
        if col != "score" and not np.array_equal(u, v):
            return False
        if col == "score" and not np.allclose(u, v, rtol=1e-6, atol=0):
            return False
    return "ids equal, scores within 1e-6"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--entities", type=int, default=110_000)
    ap.add_argument("--cpus", type=float, default=2.0, help="ray.offload_cpus (the whole node here)")
    ap.add_argument("--runs", default=str(ROOT / "runs" / "offload"))
    ap.add_argument("--vectors", choices=["encoder", "random"], default="encoder")
    ap.add_argument("--until", help="run each mode up to this stage (scale_synthetic.py --until): e.g. decode, the "
                    "stages whose cost grows with n k; the lists compared are those written by then")
    ap.add_argument("--modes", nargs="+", choices=["offload", "driver", "distributed"], default=["driver", "offload"],
                    help="the first one runs ingest / verbalize / embed, the other reuses them")
    ap.add_argument("--reuse-from", choices=["offload", "driver", "distributed"],
                    help="take ingest / verbalize / embed (and the tiny encoder) from this mode's earlier run instead of "
                    "the first mode's")
    ap.add_argument("--repeat", type=int, default=1, help="run the modes' n k stages this many times, alternating "
                    "modes (the wall times of each kept; the table compares medians)")
    ap.add_argument("--table", action="store_true", help="print the results page's table from the JSON and exit")
    args = ap.parse_args(argv)
    if args.table:
        print(table(json.loads((ROOT / "benchmarks" / "results" / "offload.json").read_text())))
        return 0
    runs = Path(args.runs)
    data = runs / f"data-{args.entities}"
    out = {m: runs / f"{args.entities}-{m}" for m in ("driver", "offload", "distributed")}
    first = out[args.reuse_from or args.modes[0]]
    enc = first / "tiny-encoder"
    path = ROOT / "benchmarks" / "results" / "offload.json"
    doc = json.loads(path.read_text()) if path.is_file() else {}
    rows, walls = {}, {m: {} for m in args.modes}
    for rep, mode in [(r, m) for r in range(args.repeat) for m in args.modes]:  # alternating: driver, offload, ...
        if rep:  # again: the n k stages of this mode's run removed, the stages before them reused
            for stage in OFFLOADED:
                shutil.rmtree(out[mode] / stage, ignore_errors=True)
                shutil.rmtree(out[mode] / f".{stage}.tmp", ignore_errors=True)
        sets = [f"embed.model={enc}"]
        if out[mode] != first:
            out[mode].mkdir(parents=True, exist_ok=True)
            for stage in ("ingest", "verbalize", "embed"):
                if not (out[mode] / stage).exists() and (first / stage).exists():
                    shutil.copytree(first / stage, out[mode] / stage, copy_function=os.link)
        if mode == "offload":
            sets += [OFFLOAD, f"ray.offload_cpus={args.cpus}"]
        if mode == "distributed":
            sets += [*DISTRIBUTED, f"ray.offload_cpus={args.cpus}"]
        result = runs / f"{args.entities}-{mode}.json"
        cmd = [sys.executable, str(ROOT / "benchmarks" / "scale_synthetic.py"), "--entities", str(args.entities),
               "--data", str(data), "--out", str(out[mode]), "--result", str(result), "--vectors", args.vectors]
        cmd += [x for s in sets for x in ("--set", s)] + (["--until", args.until] if args.until else [])
        print(" ".join(cmd), flush=True)
        if subprocess.run(cmd, stdout=subprocess.DEVNULL).returncode:
            return 1
        r = json.loads(result.read_text())
        rows[mode] = {"entities_per_side": r["entities_per_side"], "driver_peak_rss_gib": r["driver_peak_rss_gib"],
                      "peak_rss_gib_driver_and_ray": r["peak_rss_gib"], "stages": r["stages"], "overrides": sets,
                      "vectors": args.vectors, "until": args.until or "evaluate", "run_provenance": r.get("provenance"),
                      # the stages that hold n x d vectors or n x k lists (the driver's peak there; the
                      # benchmark process also generated the pair and, with --vectors random, wrote the vectors)
                      "driver_peak_rss_gib_nk_stages": max(v["driver_peak_rss_gib"] for k, v in r["stages"].items()
                                                           if k in OFFLOADED),
                      "wall_s_nk_stages": {k: v["wall_s"] for k, v in r["stages"].items() if k in OFFLOADED},
                      # the stages' own records (per decoder wall times, the ray engines' tasks and actors)
                      "stage_stats": {k: json.loads((out[mode] / k / "manifest.json").read_text())["stats"]
                                      for k in ("retrieve", "decode") if (out[mode] / k / "manifest.json").is_file()}}
        for k, v in rows[mode]["wall_s_nk_stages"].items():
            walls[mode].setdefault(k, []).append(v)
        if args.repeat > 1:  # every run's wall time, alternating modes (the machine is noisy: compare medians)
            rows[mode]["wall_s_nk_stages_runs"] = walls[mode]
        doc.setdefault("rows", {})[f"{r['entities_per_side']}/{mode}"] = rows[mode]
        doc.update(provenance())
        path.write_text(json.dumps(doc, indent=2) + "\n")  # after every mode: a stopped benchmark keeps it
    if "driver" not in rows or len(rows) < 2:
        return 0
    import pyarrow.parquet as pq

    for mode in [m for m in rows if m != "driver"]:
        same = {}
        for f in ["retrieve/all-targets/s2t.parquet", "retrieve/all-targets/t2s.parquet",
                  *(f"decode/all-targets/{d}.parquet" for d in ("top1", "csls", "sinkhorn", "structure")),
                  *(f"decode/all-targets/{d}.match.parquet" for d in ("top1", "csls", "sinkhorn", "structure"))]:
            same[f] = same_table(out["driver"] / f, out[mode] / f)
        if all((out[x] / "metrics.json").is_file() for x in ("driver", mode)) and not args.until:
            m = [json.loads((out[x] / "metrics.json").read_text())["all_protocols"]["metrics"] for x in ("driver", mode)]
            same["metrics.json"] = m[0] == m[1]
        n = rows["driver"]["entities_per_side"]
        key = (str(n) if not args.until else f"{n} (until {args.until})") + ("" if mode == "offload" else f" {mode}")
        doc.setdefault("equal", {})[key] = same
        print(mode, "equal:", all(same.values()), same)
    doc["offloaded_stages"] = OFFLOADED
    doc.update(provenance())
    path.write_text(json.dumps(doc, indent=2) + "\n")
    print(json.dumps({m: {k: v for k, v in r.items() if k != "stages"} for m, r in rows.items()}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
