"""Scaling curves: every stage's wall time and peak memory at n = 10^4, 10^5, 10^6 entities per
side, and Ray Data / Ray Train worker scaling (1 vs 2 workers).

    .venv/bin/python benchmarks/scaling.py --sizes 10000 100000 1000000
    .venv/bin/python benchmarks/scaling.py --workers-only

Sizes: each n is one `benchmarks/scale_synthetic.py` run in a fresh process (synthetic pair,
tiny 64-dim encoder, all-targets protocol, k = 50, `retrieve.index: auto`), result in
runs/scale-<n>/result.json (kept: a size already measured is read back, not re-run unless
--rerun). Workers: (a) the embed stage (Ray Data actor pool) on the 10^5 pair with 1 actor of 2
torch threads against 2 actors of 1 thread; (b) retriever training (Ray Train, DDP over gloo)
on the 10^4 pair, 1 worker of 2 threads against 2 workers of 1 thread, same global batch and
steps. Writes benchmarks/results/scaling.json and scaling.png (log-log time and memory per stage
against n; a flat time-per-entity line is linear scaling). The same script runs unchanged on a
cluster: --embed-actors / --train-workers take other counts (GPU: add --set embed.gpus_per_actor=1).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
PY = sys.executable

from benchmarks.common import load_result  # noqa: E402


def size_run(n: int, rerun: bool, data: Path | None = None) -> dict:
    out = ROOT / "runs" / f"scale-{n}"
    result = out / "result.json"
    if rerun or not result.is_file() or "metrics" not in json.loads(result.read_text()):
        out.mkdir(parents=True, exist_ok=True)
        cmd = [PY, str(ROOT / "benchmarks" / "scale_synthetic.py"), "--entities", str(n), "--out", str(out),
               "--result", str(result)]
        if data is not None:
            cmd += ["--data", str(data)]
        print(" ".join(cmd), flush=True)
        with open(out / "log.txt", "a") as log:
            subprocess.run(cmd, check=True, stdout=log, stderr=subprocess.STDOUT)
    return json.loads(result.read_text())


def embed_workers(actors: list[int], data: Path) -> dict:
    """The embed stage alone (after ingest + verbalize, reused) with 1 and 2 encoder actors."""
    res = {}
    for a in actors:
        out = ROOT / "runs" / f"scale-workers-embed-{a}"
        result = out / "result.json"
        threads = max(1, 2 // a)
        sets = [f"embed.num_actors={a}", f"embed.torch_threads={threads}", f"embed.cpus_per_actor={min(1.0, 1.0 / a)}"]
        cmd = [PY, str(ROOT / "benchmarks" / "scale_synthetic.py"), "--data", str(data), "--out", str(out),
               "--result", str(result), "--until", "embed"] + [x for s in sets for x in ("--set", s)]
        out.mkdir(parents=True, exist_ok=True)
        with open(out / "log.txt", "a") as log:
            subprocess.run(cmd, check=True, stdout=log, stderr=subprocess.STDOUT)
        st = json.loads(result.read_text())["stages"]["embed"]
        res[str(a)] = {"actors": a, "torch_threads_per_actor": threads, "wall_s": st["wall_s"],
                       "rows_per_s": st["rows_per_s"], "peak_rss_gib": st["peak_rss_gib"]}
        print("embed", res[str(a)], flush=True)
    return res


def train_workers(workers: list[int], data: Path) -> dict:
    """Retriever training (Ray Train) on the same pair with 1 and 2 workers."""
    res = {}
    enc = ROOT / "runs" / "scale-10000" / "tiny-encoder"
    for w in workers:
        out = ROOT / "runs" / f"scale-workers-train-{w}"
        threads = max(1, 2 // w)
        sets = ["train.enabled=true", "train.rounds=1", "train.epochs_per_round=1", "train.batch_size=64",
                "train.eval_every=1000", "train.hard_negatives=0", f"train.scaling.num_workers={w}",
                f"train.scaling.torch_threads={threads}", f"train.scaling.cpus_per_worker={min(1.0, 1.0 / w)}",
                f"embed.model={enc}", "verbalize.mode=template", "embed.max_length=64"]
        cmd = [PY, "-m", "hiea_ray.cli", "align", "--data", str(data), "--out", str(out), "--until", "train", "-q"]
        cmd += [x for s in sets for x in ("--set", s)]
        t0 = time.time()
        subprocess.run(cmd, check=True, cwd=ROOT)
        wall = time.time() - t0
        m = json.loads((out / "train" / "manifest.json").read_text())
        rounds = m["stats"]["rounds"]
        last = rounds[-1]["last"]
        res[str(w)] = {"workers": w, "torch_threads_per_worker": threads, "train_stage_wall_s": m["wall_s"],
                       "command_wall_s": round(wall, 1), "pairs_per_s": last["pairs_per_s"], "steps": last["step"],
                       "valid_mrr": last["valid_mrr"], "rounds": rounds}
        print("train", res[str(w)], flush=True)
    return res


def plot(sizes: dict, workers: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b, c) = plt.subplots(1, 3, figsize=(15, 4.2))
    ns = sorted(int(n) for n in sizes)
    stages = [s for s in sizes[str(ns[-1])]["stages"]]
    for st in stages:
        xs = [n for n in ns if st in sizes[str(n)]["stages"]]
        ts = [sizes[str(n)]["stages"][st]["wall_s"] for n in xs]
        a.plot(xs, ts, marker="o", label=st)
        b.plot(xs, [t / n * 1e6 for t, n in zip(ts, xs)], marker="o", label=st)
    c.plot(ns, [sizes[str(n)]["peak_rss_gib"] for n in ns], marker="o", color="black", label="peak (any stage)")
    for ax in (a, b, c):
        ax.set_xscale("log")
        ax.set_xlabel("entities per side (synthetic world size)")
    a.set_yscale("log")
    b.set_yscale("log")
    a.set_ylabel("wall time (s)")
    b.set_ylabel("wall time per entity (us); flat = linear")
    c.set_ylabel("peak RSS, driver + Ray processes (GiB)")
    c.axhline(24, color="red", lw=0.7, ls="--", label="machine RAM (24 GiB)")
    a.legend(fontsize=7)
    c.legend(fontsize=7)
    title = "pipeline scaling on 2 CPU cores (tiny 64-dim encoder, all-targets, k=50)"
    if workers.get("embed") and workers.get("train"):
        e, t = workers["embed"], workers["train"]
        title += (f"; embed 1 vs 2 actors: {e['1']['rows_per_s']:,.0f} vs {e['2']['rows_per_s']:,.0f} rows/s; "
                  f"train 1 vs 2 workers: {t['1']['pairs_per_s']:.0f} vs {t['2']['pairs_per_s']:.0f} pairs/s")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", nargs="*", type=int, default=[10_000, 100_000, 1_000_000])
    ap.add_argument("--data-1e6", default=str(ROOT / "runs" / "dump-ingest" / "1000000" / "data"),
                    help="an already generated 10^6 world (hiea-ray synth) to reuse")
    ap.add_argument("--workers-only", action="store_true")
    ap.add_argument("--no-workers", action="store_true")
    ap.add_argument("--embed-actors", nargs="+", type=int, default=[1, 2])
    ap.add_argument("--train-workers", nargs="+", type=int, default=[1, 2])
    ap.add_argument("--rerun", action="store_true")
    ap.add_argument("--result", default=str(ROOT / "benchmarks" / "results" / "scaling.json"))
    args = ap.parse_args(argv)
    result, res = load_result(args.result, "sizes", "workers")
    if not args.workers_only:
        for n in args.sizes:
            data = Path(args.data_1e6) if n == 1_000_000 and Path(args.data_1e6, "ent_links").is_file() else None
            r = size_run(n, args.rerun, data)
            res["sizes"][str(n)] = {k: r[k] for k in ("entities", "stages", "total_wall_s", "peak_rss_gib", "metrics")
                                    if k in r}
            result.write_text(json.dumps(res, indent=2))
    if not args.no_workers:
        size_run(10_000, False)
        size_run(100_000, False)
        res["workers"]["embed"] = embed_workers(args.embed_actors, ROOT / "runs" / "scale-100000" / "data")
        result.write_text(json.dumps(res, indent=2))
        res["workers"]["train"] = train_workers(args.train_workers, ROOT / "runs" / "scale-10000" / "data")
        result.write_text(json.dumps(res, indent=2))
    if res["sizes"]:
        plot(res["sizes"], res["workers"], result.with_suffix(".png"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
