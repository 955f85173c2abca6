"""A first look at HIEA's certainty router on real lists: trained on a finished run's validation
sources, its certain set measured on the test sources (evaluation only, nothing is tuned on them).

    .venv/bin/python benchmarks/router_check.py --run runs/zh_en-template [--target 0.99]

Uses the run's all-targets lists (every KG1 entity ranked against every KG2 entity) for both: the
validation sources' lists are made exactly as the test sources' (the decoders here, top1 / CSLS /
Sinkhorn, use no anchors; with the structure decoder the validation links must be decoded without
themselves as anchors, ``router.heldout_split``). Features: ``core.router.confidence_features``
(every decoder's top-1 score and margin, agreement with the primary decoder, mutual best) plus the
source's degree. The threshold is chosen on out-of-fold predictions of the validation sources for
``--target`` precision. Writes benchmarks/results/router_check_<run name>.json.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from hiea_ray.core.router import Router, choose_threshold, confidence_features  # noqa: E402
from hiea_ray.core.structure import SeedGraphs  # noqa: E402
from hiea_ray.io import read_lists, rows_of, to_local  # noqa: E402
from hiea_ray.kg.model import KGPair  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", required=True)
    ap.add_argument("--primary", default="sinkhorn")
    ap.add_argument("--target", type=float, default=0.99)
    args = ap.parse_args(argv)
    run = Path(args.run)
    cfg = json.loads((run / "config.resolved.json").read_text())
    decoders = cfg["decode"]["decoders"]
    d = run / "decode" / "all-targets"
    lists = {}
    for name in decoders:
        q, cand, score = read_lists(d / f"{name}.parquet")
        lists[name] = (cand, score)
    b, t2s_ids, t2s_score = read_lists(run / "retrieve" / "all-targets" / "t2s.parquet")
    local = {n: (to_local(b, c), s) for n, (c, s) in lists.items()}
    pair = KGPair.read(run / "ingest")
    g = SeedGraphs.of(pair, [])
    degree = np.asarray(g.adj_s.sum(axis=1)).ravel()[np.searchsorted(g.ids_s, q)]
    X, names, best = confidence_features(local, args.primary, to_local(q, t2s_ids), t2s_score, degree=degree)
    gold_of = {}
    for split in ("valid", "test"):
        links = pair.links_of(split)
        rows = rows_of(q, links["src"].to_numpy())
        right = b[np.maximum(best[rows], 0)] == links["tgt"].to_numpy()
        gold_of[split] = (rows, right & (best[rows] >= 0))
    vr, vy = gold_of["valid"]
    tr, ty = gold_of["test"]
    router = Router(seed=0)
    oof = router.cross_fit(X[vr], vy)
    t = choose_threshold(oof, vy, args.target)
    router.fit(X[vr], vy)
    p_test = router.predict(X[tr])
    certain = p_test >= t
    res = {
        "run": str(run), "protocol": "all-targets", "primary": args.primary, "features": names,
        "target_precision": args.target, "threshold": t,
        "valid": {"sources": len(vr), "small_model_hits@1": round(float(vy.mean()), 4),
                  "certain_share_oof": round(float((oof >= t).mean()), 4),
                  "certain_precision_oof": round(float(vy[oof >= t].mean()), 4) if (oof >= t).any() else None},
        "test": {"sources": len(tr), "small_model_hits@1": round(float(ty.mean()), 4),
                 "certain_share": round(float(certain.mean()), 4),
                 "certain_precision": round(float(ty[certain].mean()), 4) if certain.any() else None,
                 "uncertain_small_model_hits@1": round(float(ty[~certain].mean()), 4) if (~certain).any() else None},
    }
    out = ROOT / "benchmarks" / "results" / f"router_check_{run.name}.json"
    out.write_text(json.dumps(res, indent=2))
    print(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
