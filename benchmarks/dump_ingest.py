"""Dump ingestion throughput and memory: generated dumps -> `hiea-ray align --until ingest`.

    .venv/bin/python benchmarks/dump_ingest.py --entities 100000 --workers 1 2
    .venv/bin/python benchmarks/dump_ingest.py --entities 1000000 --workers 2

For each size, a synthetic world (``hiea_ray.kg.synthetic``; each view keeps ~95% of it) is written
as dumps with ``hiea_ray.kg.dump_fixtures`` (gzip, --shards files per side, owl:sameAs links): both
sides Wikidata JSON, and both sides N-Triples, so each format is measured on its own. Each
ingest runs the real CLI in a fresh process (its own local Ray) with data.dump_workers=W; the
driver's RSS and the RSS summed over the driver and all its Ray processes are sampled every
0.2 s. Results are merged into benchmarks/results/dump_ingest.json (one row per format, size and
worker count) and plotted to dump_ingest.png.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hiea_ray.kg.dump_fixtures import write_dumps  # noqa: E402
from hiea_ray.kg.synthetic import generate  # noqa: E402

FORMATS = ("wikidata-json", "ntriples")


def sample_tree(proc: subprocess.Popen, interval: float = 0.2) -> tuple[int, int, int]:
    """Run until ``proc`` exits; (peak driver RSS, peak driver private memory = RSS less shared
    mappings such as Ray's object store pages, peak RSS of the driver + its descendants)."""
    me = psutil.Process(proc.pid)
    peak_driver = peak_private = peak_total = 0
    while proc.poll() is None:
        try:
            m = me.memory_info()
            d = m.rss
            peak_private = max(peak_private, m.rss - m.shared)
            total = d
            for c in me.children(recursive=True):
                try:
                    total += c.memory_info().rss
                except psutil.Error:
                    pass
        except psutil.Error:
            break
        peak_driver, peak_total = max(peak_driver, d), max(peak_total, total)
        time.sleep(interval)
    return peak_driver, peak_private, peak_total


def dumps_for(base: Path, n: int, fmt: str, shards: int) -> Path:
    data = base / "data"
    if not (data / "ent_links").is_file():
        generate(data, n, seed=0)
    out = base / f"dumps-{fmt}"
    if not (out / "pair.yaml").is_file():
        shutil.rmtree(out, ignore_errors=True)
        write_dumps(data, out, fmt, fmt, "gz", seed=0, shards=shards)
    return out / "pair.yaml"


def run_one(spec: Path, run: Path, workers: int, block_mb: float) -> dict:
    shutil.rmtree(run, ignore_errors=True)
    cmd = [str(ROOT / ".venv" / "bin" / "hiea-ray"), "align", "--data", str(spec), "--out", str(run), "--until", "ingest",
           "-q", "--set", f"data.dump_workers={workers}", "--set", f"ray.num_cpus={max(2, workers)}",
           "--set", f"data.block_mb={block_mb}"]
    t0 = time.time()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    driver, private, total = sample_tree(proc)
    out = proc.stdout.read()
    wall = time.time() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{out[-3000:]}")
    rep = json.loads((run / "ingest" / "report.json").read_text())
    ents = rep["entities"]["kg1"] + rep["entities"]["kg2"]
    return {
        "entities": rep["entities"], "rel_triples": rep["rel_triples"], "attr_triples": rep["attr_triples"],
        "links": rep["links"], "input_mb": round(rep["input_bytes"] / 1e6, 1), "chunks": rep["chunks"],
        "parse_s": rep["parse_s"], "ingest_s": rep["wall_s"], "process_s": round(wall, 1),
        "entities_per_s": round(ents / rep["wall_s"], 1), "parse_entities_per_s": round(ents / rep["parse_s"], 1),
        "mb_per_s": round(rep["input_bytes"] / 1e6 / rep["wall_s"], 2),
        "parse_mb_per_s": round(rep["input_bytes"] / 1e6 / rep["parse_s"], 2),
        "driver_peak_rss_gib": round(driver / 2**30, 3), "driver_peak_private_gib": round(private / 2**30, 3),
        "total_peak_rss_gib": round(total / 2**30, 3),
        "phases_s": {k: rep[f"{k}_s"] for k in ("parse", "ids", "join", "write")},
        "driver_rss_after_gib": rep["driver_rss_gib"],
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--entities", type=int, nargs="+", default=[100_000])
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--formats", nargs="+", default=list(FORMATS), choices=FORMATS)
    ap.add_argument("--shards", type=int, default=4, help="dump files per side")
    ap.add_argument("--block-mb", type=float, default=32.0, help="data.block_mb (Ray Data block size while ingesting)")
    ap.add_argument("--out", default=str(ROOT / "runs" / "dump-ingest"))
    ap.add_argument("--result", default=str(ROOT / "benchmarks" / "results" / "dump_ingest.json"))
    args = ap.parse_args(argv)
    result_path = Path(args.result)
    res = json.loads(result_path.read_text()) if result_path.is_file() else {"runs": []}
    res["machine"] = f"{os.cpu_count()} CPU cores, {psutil.virtual_memory().total / 2**30:.0f} GiB"
    for n in args.entities:
        base = Path(args.out) / str(n)
        for fmt in args.formats:
            t0 = time.time()
            spec = dumps_for(base, n, fmt, args.shards)
            print(f"{fmt} n={n}: dumps ready ({time.time() - t0:.0f} s)", flush=True)
            for w in args.workers:
                row = {"format": fmt, "world_entities": n, "workers": w, "shards_per_side": args.shards,
                       "block_mb": args.block_mb, **run_one(spec, base / f"run-{fmt}-{w}", w, args.block_mb)}
                key = lambda r: (r["format"], r["world_entities"], r["workers"], r.get("block_mb", 32.0))  # noqa: E731
                res["runs"] = [r for r in res["runs"] if key(r) != key(row)]
                res["runs"].append(row)
                res["runs"].sort(key=key)
                result_path.write_text(json.dumps(res, indent=2))
                print(json.dumps(row), flush=True)
    plot(res, result_path.with_suffix(".png"))
    return 0


def plot(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.8))
    for fmt, color in zip(FORMATS, ("tab:blue", "tab:green")):
        for w, style in ((1, "--"), (2, "-")):
            rows = [r for r in res["runs"] if r["format"] == fmt and r["workers"] == w and r.get("block_mb", 32.0) == 32.0]
            if not rows:
                continue
            x = [r["entities"]["kg1"] + r["entities"]["kg2"] for r in rows]
            a.plot(x, [r["entities_per_s"] for r in rows], style, marker="o", color=color, label=f"{fmt}, {w} worker(s)")
        rows = [r for r in res["runs"] if r["format"] == fmt and r.get("block_mb", 32.0) == 32.0
                and r["workers"] == max(x["workers"] for x in res["runs"])]
        x = [r["entities"]["kg1"] + r["entities"]["kg2"] for r in rows]
        b.plot(x, [r["driver_peak_rss_gib"] for r in rows], "-", marker="o", color=color, label=f"{fmt}: driver")
        b.plot(x, [r.get("driver_peak_private_gib", 0) for r in rows], "-.", marker="^", color=color,
               label=f"{fmt}: driver, private")
        b.plot(x, [r["total_peak_rss_gib"] for r in rows], ":", marker="s", color=color, label=f"{fmt}: driver + Ray")
    a.set(xscale="log", xlabel="entities (both sides)", ylabel="entities / s (whole ingest)", title="throughput")
    b.set(xscale="log", xlabel="entities (both sides)", ylabel="peak RSS (GiB)", title="memory")
    for ax in (a, b):
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.suptitle(f"dump ingestion, {res['machine']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
