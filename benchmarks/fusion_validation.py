"""How decoders should use the reranker: chosen on validation links, never on test links.

    .venv/bin/python benchmarks/fusion_validation.py --run runs/zh_en-full \
        --set train.enabled=false --set embed.model=runs/zh_en-round0-model

The standard protocol replayed on the 450 validation links of a finished run: their sources
retrieve among their targets with the run's embeddings (FAISS, retrieve.k), the Sinkhorn top
rerank.k go through the run's trained cross-encoder, and the decoders (top1, Sinkhorn,
structure with the train links as anchors) run on

    retrieval   the retriever's lists
    narrow      the reranked top-k only, fused (what the pipeline did first)
    full        the retriever's whole candidate graph, fused on the reranked edges
                (``cross_encoder.fuse_lists``: other edges take their source's lowest logit)

for several fusion weights. Writes benchmarks/results/fusion_validation_<run name>.json.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from hiea_ray.config import load_config  # noqa: E402
from hiea_ray.core import decode as dec  # noqa: E402
from hiea_ray.core.cross_encoder import load_reranker, score_pairs  # noqa: E402
from hiea_ray.core.fusion import fuse, fuse_lists  # noqa: E402
from hiea_ray.core.retrieval import knn  # noqa: E402
from hiea_ray.core.structure import SeedGraphs, structure_sinkhorn  # noqa: E402
from hiea_ray.io import TextLookup  # noqa: E402
from hiea_ray.stages import RunContext  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", required=True)
    ap.add_argument("--config", default=str(ROOT / "benchmarks" / "configs" / "dbp15k-full.yaml"))
    ap.add_argument("--set", action="append", default=[], dest="overrides")
    ap.add_argument("--weights", nargs="+", type=float, default=[0.25, 0.5, 0.75])
    args = ap.parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    run = Path(args.run)
    p = RunContext(cfg, run / "ingest", run)
    pair = p.pair()
    ids, _, vecs = p.embeddings()
    valid = pair.links_of("valid")
    q, b = np.sort(valid["src"].to_numpy()), np.sort(valid["tgt"].to_numpy())
    gold = np.searchsorted(b, valid["tgt"].to_numpy())
    rows = np.searchsorted(q, valid["src"].to_numpy())
    Q, B = vecs[np.searchsorted(ids, q)], vecs[np.searchsorted(ids, b)]
    k = min(cfg.retrieve.k, len(b))
    s2t_score, s2t = knn(Q, B, k, cfg.retrieve)
    t2s_score, t2s = knn(B, Q, k, cfg.retrieve)
    c, rc = cfg.decode, cfg.rerank

    # the reranked candidates: the Sinkhorn top rerank.k with their cosines, as the pipeline
    cand, _ = dec.sinkhorn(s2t, s2t_score, t2s, t2s_score, len(b), c.sinkhorn_tau, c.sinkhorn_iters, k=rc.k)
    cos = dec.candidate_graph(s2t, s2t_score, t2s, t2s_score, len(b))
    r_i, c_i = np.nonzero(cand >= 0)
    retr = np.full(cand.shape, -np.inf, np.float32)
    retr[r_i, c_i] = np.asarray(cos[r_i, cand[r_i, c_i]]).ravel()
    texts = TextLookup(p.texts().select(["id", "text"]))
    model, tok = load_reranker(p.reranker_model())
    logits = score_pairs(model, tok, texts(q[r_i]), texts(b[cand[r_i, c_i]]), rc.max_length, batch_size=rc.infer_batch_size)
    rerank = np.full(cand.shape, -np.inf, np.float32)
    rerank[r_i, c_i] = logits

    g = SeedGraphs.of(pair, ["train"])  # valid held out
    src_rows, tgt_rows = g.rows(q, b)

    def decoders(a, a_s, t, t_s) -> dict:
        sink = dec.sinkhorn(a, a_s, t, t_s, len(b), c.sinkhorn_tau, c.sinkhorn_iters)
        st = structure_sinkhorn(a, a_s, t, t_s, g.adj_s, g.adj_t, c.structure_rounds, c.structure_beta, c.sinkhorn_tau,
                                c.sinkhorn_iters, src_rows, tgt_rows, g.anchors, start=sink)
        top1 = dec.sort_rows(a, a_s)[0]
        return {name: round(float((x[rows, 0] == gold).mean()), 4) for name, x in
                (("top1", top1), ("sinkhorn", sink[0]), ("structure", st[0]))}

    res = {"run": str(run), "valid_links": len(rows), "k": k, "rerank_k": rc.k, "score_scale": c.score_scale,
           "gold_in_reranked": round(float((cand[rows] == gold[:, None]).any(axis=1).mean()), 4),
           "retrieval": decoders(s2t, s2t_score, t2s, t2s_score), "narrow": {}, "full": {}}
    print(f"{len(rows)} validation links; gold in the reranked top-{rc.k}: {res['gold_in_reranked']}")
    print("retrieval", res["retrieval"], flush=True)
    for w in args.weights:
        f = np.where(cand >= 0, fuse(retr, rerank, w, c.score_scale), -np.inf).astype(np.float32)
        a, a_s = dec.sort_rows(cand, f)
        t, t_s = dec.transpose_lists(a, a_s, len(b), cfg.retrieve.k)
        res["narrow"][str(w)] = decoders(a, a_s, t, t_s)
        f_s = fuse_lists(s2t, s2t_score, cand, rerank, w, c.score_scale)
        f_t = fuse_lists(t2s, t2s_score, cand, rerank, w, c.score_scale, by_target=True)
        a, a_s = dec.sort_rows(s2t, f_s)
        t, t_s = dec.sort_rows(t2s, f_t)
        res["full"][str(w)] = decoders(a, a_s, t, t_s)
        print(f"w={w} narrow {res['narrow'][str(w)]} full {res['full'][str(w)]}", flush=True)
    out = ROOT / "benchmarks" / "results" / f"fusion_validation_{run.name}.json"
    out.write_text(json.dumps(res, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
