"""Decoders at 10^5 and 10^6 source entities with k = 50: wall time and peak memory.

    .venv/bin/python benchmarks/decode_scale.py --sizes 100000 1000000 --k 50

Candidate lists are synthetic (n sources, n targets; each source's true target is planted in its
list with a higher score, the rest are random), in both directions as retrieval would give them.
Runs CSLS, sparse Sinkhorn, the structure decoder (structure_sinkhorn from the Sinkhorn lists,
the config's default rounds and beta, over two synthetic KGs of average degree 6 that share 80%
of their edges under the true alignment, 10% of the pairs as anchors), greedy and Hungarian-on-
blocks one-to-one matching, and reports time, the peak RSS (driver process) and Hits@1, next to
what a dense n x n float32 matrix would need.
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
from hiea_ray.config import DecodeConfig  # noqa: E402
from hiea_ray.core import decode as dec  # noqa: E402
from hiea_ray.core.structure import adjacency, structure_sinkhorn  # noqa: E402


def lists(n: int, k: int, rng) -> tuple[np.ndarray, np.ndarray]:
    idx = rng.integers(0, n, size=(n, k), dtype=np.int64)
    score = np.sort(rng.uniform(0.2, 0.8, size=(n, k)).astype(np.float32), axis=1)[:, ::-1]
    planted = rng.random(n) < 0.8  # 80% of sources have their true target (same index) in the list
    idx[planted, rng.integers(0, k, planted.sum())] = np.flatnonzero(planted)
    true = idx == np.arange(n)[:, None]
    score = np.where(true, score + 0.15 * rng.random((n, k)).astype(np.float32), score)
    order = np.argsort(-score, axis=1, kind="stable")
    return np.take_along_axis(idx, order, 1), np.take_along_axis(score, order, 1).astype(np.float32)


def graphs(n: int, rng, degree: int = 6, shared: float = 0.8):
    """Two KGs over n entities each (entity i of one <-> i of the other): ``shared`` of the
    edges are the same on both sides, the rest rewired at random."""
    e = n * degree // 2
    h, t = rng.integers(0, n, e), rng.integers(0, n, e)
    keep = rng.random(e) < shared
    h2 = np.where(keep, h, rng.integers(0, n, e))
    t2 = np.where(keep, t, rng.integers(0, n, e))
    ids = np.arange(n)
    return adjacency(ids, h, t), adjacency(ids, h2, t2)


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
        adj_s, adj_t = graphs(n, rng)
        seeds = np.flatnonzero(rng.random(n) < 0.1)
        anchors = np.stack([seeds, seeds], 1)
        dc = DecodeConfig()
        row = {"n": n, "k": args.k, "dense_matrix_gib": round(n * n * 4 / 2**30, 1)}
        for name in ("csls", "sinkhorn", "structure", "greedy", "hungarian"):
            t0 = time.time()
            with PeakRSS(0.05) as mem:
                if name == "csls":
                    idx, sc = dec.csls(s2t_idx, s2t, t2s_idx, t2s, 10)
                elif name == "sinkhorn":
                    idx, sc = dec.sinkhorn(s2t_idx, s2t, t2s_idx, t2s, n, tau=0.03, iters=args.iters)
                    sink = idx, sc
                elif name == "structure":  # its rounds, from the Sinkhorn lists above
                    idx, sc = structure_sinkhorn(s2t_idx, s2t, t2s_idx, t2s, adj_s, adj_t, dc.structure_rounds,
                                                 dc.structure_beta, 0.03, args.iters, anchors=anchors, start=sink)
                elif name == "greedy":
                    r, c, w = dec.greedy_match(s2t_idx, s2t)
                else:
                    r, c, w = dec.hungarian_blocks(s2t_idx, s2t, None, dc.hungarian_max_block)
            row[name] = {"wall_s": round(time.time() - t0, 2), "peak_rss_gib": mem.peak_gib}
            if name not in ("greedy", "hungarian"):
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
