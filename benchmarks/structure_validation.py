"""Choose the structure decoder's settings on validation links, never on test links.

    .venv/bin/python benchmarks/structure_validation.py --run runs/zh_en-round0

Reads a finished run's all-targets candidate lists (every KG1 entity against every KG2 entity,
so the validation sources are in them), holds the *valid* links out (anchors: the train links
only) and reports validation Hits@1 of:

    sinkhorn            the plain sparse Sinkhorn lists
    post-hoc            the Sinkhorn lists re-ranked by score + beta * consistency (the earlier
                        design of the structure decoder)
    in-similarity       structure_sinkhorn: consistency added to the similarity, Sinkhorn again
                        (the current design), for beta x rounds, with and without anchors

Writes benchmarks/results/structure_validation_<run name>.json.
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

from hiea_ray.config import load_config  # noqa: E402
from hiea_ray.core import decode as dec  # noqa: E402
from hiea_ray.core.structure import SeedGraphs, best_matches, consistency, structure_sinkhorn  # noqa: E402
from hiea_ray.kg.model import KGPair  # noqa: E402
from hiea_ray.io import read_lists, to_local  # noqa: E402


def post_hoc(lists, adj_s, adj_t, beta, rounds, src, tgt, anchors):
    """The earlier design: re-rank the Sinkhorn lists by score + beta * consistency."""
    idx, base = lists
    fused = base
    g = np.where(idx >= 0, tgt[np.maximum(idx, 0)], -1)
    for _ in range(rounds):
        best_t, best_s = best_matches(idx, fused, len(tgt), src, tgt, adj_s.shape[0], adj_t.shape[0], anchors)
        c = consistency(g, best_t, best_s, adj_s, adj_t, src_rows=src)
        fused = np.where(idx >= 0, base + np.float32(beta) * c, -np.inf).astype(np.float32)
    return dec.sort_rows(idx, fused)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", required=True)
    ap.add_argument("--config", default=str(ROOT / "benchmarks" / "configs" / "dbp15k-retriever.yaml"))
    ap.add_argument("--betas", nargs="+", type=float, default=[0.1, 0.2, 0.3])
    ap.add_argument("--rounds", nargs="+", type=int, default=[1, 2, 3])
    args = ap.parse_args(argv)
    run = Path(args.run)
    c = load_config(args.config).decode
    d = run / "retrieve" / "all-targets"
    if not (d / "s2t.parquet").is_file():
        print(f"{d}: no all-targets lists (run with evaluate.protocols containing all-targets)", file=sys.stderr)
        return 2
    q, s2t_ids, s2t_score = read_lists(d / "s2t.parquet")
    b, t2s_ids, t2s_score = read_lists(d / "t2s.parquet")
    s2t, t2s = to_local(b, s2t_ids), to_local(q, t2s_ids)
    pair = KGPair.read(run / "ingest")
    valid = pair.links_of("valid")
    rows = np.searchsorted(q, valid["src"].to_numpy())
    gold = np.searchsorted(b, valid["tgt"].to_numpy())
    g = SeedGraphs.of(pair, ["train"])  # valid held out
    adj_s, adj_t, anchors = g.adj_s, g.adj_t, g.anchors
    src, tgt = g.rows(q, b)

    def h1(lists) -> float:
        return round(float((lists[0][rows, 0] == gold).mean()), 4)

    sink = dec.sinkhorn(s2t, s2t_score, t2s, t2s_score, len(b), tau=c.sinkhorn_tau, iters=c.sinkhorn_iters)
    res = {"run": str(run), "valid_links": len(rows), "anchors": "train links (valid held out)",
           "top1": h1((s2t, s2t_score)), "sinkhorn": h1(sink), "post-hoc": {}, "in-similarity": {}}
    print(f"{len(rows)} validation links; top1 {res['top1']}, sinkhorn {res['sinkhorn']}", flush=True)
    for name, a in (("no anchors", None), ("anchors", anchors)):
        for beta in (0.5, 1.0):
            got = h1(post_hoc(sink, adj_s, adj_t, beta, 2, src, tgt, np.zeros((0, 2), np.int64) if a is None else a))
            res["post-hoc"][f"{name}, beta={beta}, rounds=2"] = got
            print(f"post-hoc       {name:10s} beta={beta} rounds=2: {got}", flush=True)
        for beta in args.betas:
            for r in args.rounds:
                t0 = time.time()
                got = h1(structure_sinkhorn(s2t, s2t_score, t2s, t2s_score, adj_s, adj_t, r, beta, c.sinkhorn_tau,
                                            c.sinkhorn_iters, src, tgt, a, start=sink))
                res["in-similarity"][f"{name}, beta={beta}, rounds={r}"] = got
                print(f"in-similarity  {name:10s} beta={beta} rounds={r}: {got} ({time.time() - t0:.0f} s)", flush=True)
    out = ROOT / "benchmarks" / "results" / f"structure_validation_{run.name}.json"
    out.write_text(json.dumps(res, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
