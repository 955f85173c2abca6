"""Collaboration round, anchors only: do the small models' certain answers help as structure anchors?

    .venv/bin/python benchmarks/export_precision.py          # makes runs/precision/<pair> (if absent)
    .venv/bin/python benchmarks/collab_anchors.py --pairs zh_en fr_en

On a finished routed run (runs/precision/<pair>: dbp15k-retriever.yaml + route), the pseudo-seeds
are the router's certain sources' answers (``certain``), those that are also the structure
decoder's one-to-one match (``certain+match``), or every one-to-one match (``match``) — at most one
per KG2 entity. The Sinkhorn and structure decoders run again on the run's lists with the seed
links plus the pseudo-seeds as anchors (no retraining: the retriever's lists are the run's). Per
mode: the pseudo-seed count, their precision on the test links (information only: they are chosen
without labels), and the structure decoder's Hits@1 / MRR of the test links (standard protocol).
Writes benchmarks/results/collab_anchors.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
MODES = ("none", "certain", "certain+match", "match")


def one(run: Path, protocol: str) -> dict:
    import pyarrow.parquet as pq

    from hiea_ray.api import open_run
    from hiea_ray.core.decoders import run_decoders
    from hiea_ray.core.metrics import ranking_metrics
    from hiea_ray.core.structure import SeedGraphs
    from hiea_ray.io import rows_of
    from hiea_ray.run import RunContext, candidate_lists

    cfg = open_run(run).config
    ctx = RunContext(cfg, run / "data", run)
    pair = ctx.pair()
    test = pair.links_of("test")
    gs, gt = test["src"].to_numpy(), test["tgt"].to_numpy()
    gold = dict(zip(gs.tolist(), gt.tolist()))
    route = pq.read_table(run / "route" / protocol / "route.parquet")
    rs, ra, certain = route["src"].to_numpy(), route["answer"].to_numpy(), route["certain"].to_numpy(zero_copy_only=False)
    m = pq.read_table(run / "decode" / protocol / "structure.match.parquet")
    match = dict(zip(m["src"].to_numpy().tolist(), m["tgt"].to_numpy().tolist()))
    is_match = np.array([match.get(int(s), -1) == int(a) for s, a in zip(rs, ra)])
    q, b, s2t, s2t_score, t2s, t2s_score = candidate_lists(ctx, protocol)
    g0 = SeedGraphs.of(pair, cfg.decode.structure_anchors or ["train", "valid"])
    out = {"run": str(run.relative_to(ROOT)), "protocol": protocol, "seed_anchors": int(len(g0.anchors)), "modes": {}}
    for mode in MODES:
        sel = {"none": np.zeros(len(rs), bool), "certain": certain, "certain+match": certain & is_match, "match": is_match}[mode]
        ps, pt = rs[sel], ra[sel]
        _, first = np.unique(pt, return_index=True)  # at most one pseudo-seed per KG2 entity
        ps, pt = ps[np.sort(first)], pt[np.sort(first)]
        extra = np.stack([np.searchsorted(g0.ids_s, ps), np.searchsorted(g0.ids_t, pt)], 1).astype(g0.anchors.dtype)
        g = dataclasses.replace(g0, anchors=np.concatenate([g0.anchors, extra.reshape(-1, 2)]))
        t0 = time.time()
        (d,) = [x for x in run_decoders(["sinkhorn", "structure"], s2t, s2t_score, t2s, t2s_score, q, b, cfg.decode,
                                        lambda: g) if x.name == "structure"]
        order = np.argsort(-np.where(d.idx >= 0, d.score, -np.inf), axis=1, kind="stable")
        cand = np.take_along_axis(np.where(d.idx >= 0, b[np.maximum(d.idx, 0)], -1), order, 1)
        r = ranking_metrics(cand[rows_of(q, gs)], gt, [1, 10])
        out["modes"][mode] = {"pseudo_seeds": int(len(ps)),
                              "pseudo_seed_precision": round(float(np.mean([gold.get(int(s), -2) == int(t) for s, t in zip(ps, pt)])), 4)
                              if len(ps) else None,
                              "structure_hits@1": round(r["hits@1"], 4), "structure_mrr": round(r["mrr"], 4),
                              "wall_s": round(time.time() - t0, 1)}
        print(run.name, mode, out["modes"][mode], flush=True)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", nargs="+", default=["zh_en", "fr_en"])
    ap.add_argument("--protocol", default="standard")
    args = ap.parse_args(argv)
    doc = {"command": "benchmarks/collab_anchors.py", "date": time.strftime("%Y-%m-%d"), "pairs": {}}
    for p in args.pairs:
        run = ROOT / "runs" / "precision" / p
        if not (run / "route" / "manifest.json").is_file():
            print(f"{run}: no routed run (make it with benchmarks/export_precision.py)", file=sys.stderr)
            return 2
        doc["pairs"][p] = one(run, args.protocol)
        (ROOT / "benchmarks" / "results" / "collab_anchors.json").write_text(json.dumps(doc, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
