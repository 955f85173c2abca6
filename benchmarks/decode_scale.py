"""Decoders at 10^5 and 10^6 source entities with k = 50: wall time and peak memory.

    .venv/bin/python benchmarks/decode_scale.py --sizes 100000 1000000 --k 50

Candidate lists are synthetic (n sources, n targets; each source's true target is planted in its
list with a higher score, the rest are random), in both directions as retrieval would give them.
Runs CSLS, sparse Sinkhorn and greedy one-to-one matching, and reports time, the peak RSS
(driver process) and Hits@1, next to what a dense n x n float32 matrix would need.
Writes benchmarks/results/decode_scale.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from benchmarks.common import PeakRSS  # noqa: E402
from hiea_ray.core import decode as dec  # noqa: E402


def lists(n: int, k: int, rng) -> tuple[np.ndarray, np.ndarray]:
    idx = rng.integers(0, n, size=(n, k), dtype=np.int64)
    score = np.sort(rng.uniform(0.2, 0.8, size=(n, k)).astype(np.float32), axis=1)[:, ::-1]
    planted = rng.random(n) < 0.8  # 80% of sources have their true target (same index) in the list
    idx[planted, rng.integers(0, k, planted.sum())] = np.flatnonzero(planted)
    true = idx == np.arange(n)[:, None]
    score = np.where(true, score + 0.15 * rng.random((n, k)).astype(np.float32), score)
    order = np.argsort(-score, axis=1, kind="stable")
    return np.take_along_axis(idx, order, 1), np.take_along_axis(score, order, 1).astype(np.float32)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", nargs="+", type=int, default=[100_000, 1_000_000])
    ap.add_argument("--k", type=int, default=50)
    ap.add_argument("--iters", type=int, default=100)
    ap.add_argument("--result", default=str(ROOT / "benchmarks" / "results" / "decode_scale.json"))
    args = ap.parse_args(argv)
    rng = np.random.default_rng(0)
    out = {}
    for n in args.sizes:
        s2t_idx, s2t = lists(n, args.k, rng)
        t2s_idx, t2s = lists(n, args.k, rng)
        row = {"n": n, "k": args.k, "dense_matrix_gib": round(n * n * 4 / 2**30, 1)}
        for name in ("csls", "sinkhorn", "greedy"):
            t0 = time.time()
            with PeakRSS(0.05) as mem:
                if name == "csls":
                    idx, sc = dec.csls(s2t_idx, s2t, t2s_idx, t2s, 10)
                elif name == "sinkhorn":
                    idx, sc = dec.sinkhorn(s2t_idx, s2t, t2s_idx, t2s, n, tau=0.03, iters=args.iters)
                else:
                    r, c, w = dec.greedy_match(s2t_idx, s2t)
            row[name] = {"wall_s": round(time.time() - t0, 2), "peak_rss_gib": mem.peak_gib}
            if name != "greedy":
                row[name]["hits@1"] = round(float((idx[:, 0] == np.arange(n)).mean()), 4)
            else:
                row[name]["matched"] = int(len(r))
            print(n, name, row[name], flush=True)
        out[str(n)] = row
    Path(args.result).write_text(json.dumps(out, indent=2))
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
