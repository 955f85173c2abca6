"""route (driver; ``route.enabled`` or ``llm.enabled``): HIEA's certainty router.

Per protocol, each test source's confidence features (``core.router.confidence_features``: every
decoder's top-1 score and margin, agreement with the primary decoder, mutual best, neighbour
consistency of the primary match, degree) come from the decode stage's lists. The classifier's
labelled sources are the seed links no small model trained on (``route.labelled``: with retriever
or reranker training, the validation links), in ``route.folds`` folds: fold j is decoded (the
protocol's pool plus fold j's links, all decoders) with every other seed link as a structure
anchor, so its features are made as the test sources' are and its answers are not trivially
right. Out-of-fold probabilities choose the threshold (``route.target_precision`` / ``route.max_llm_fraction``);
the classifier refit on all labelled sources scores the test sources.

Outputs per protocol: ``route.parquet`` (src, answer = the primary decoder's top-1, prob,
certain), ``labelled.parquet`` (the seed sources out of fold: gold, probability, routed or not,
right or not, the primary decoder's top-32 list and scores — the LLM tier's validation set), ``router.pkl`` + ``router.json`` (the fitted classifier, threshold, feature names: what
the Serve tier loads); ``report.json`` (share routed; precision / recall of the certain set on the
labelled sources and, for evaluation only, on the test links) and ``route.png``.

With reranking on, the labelled folds are decoded from the retriever's lists (the reranker scores
only the protocol's own sources): their features then differ slightly from the test sources'.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import pickle
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from hiea_ray.core.decoders import run_decoders
from hiea_ray.core.metrics import protocol_sets
from hiea_ray.core.retrieval import knn
from hiea_ray.core.router import (Router, anchor_folds, certain_set_report, choose_threshold, confidence_features,
                                  coverage_curve, neighbour_consistency, primary_decoder)
from hiea_ray.core.structure import SeedGraphs
from hiea_ray.errors import UserError
from hiea_ray.io import embeddings_column, read_lists, rows_of, to_local
from hiea_ray.run import RunContext
from hiea_ray.stages.base import StageDef

log = logging.getLogger(__name__)


def route_enabled(cfg) -> bool:
    return cfg.route.enabled or cfg.llm.enabled


def labelled_splits(cfg, anchors: list[str]) -> list[str]:
    """``route.labelled``, "auto" ([]) resolved: the anchor splits no small model trained on."""
    if cfg.route.labelled:
        bad = sorted(set(cfg.route.labelled) - set(anchors))
        if bad:
            raise UserError(f"config field route.labelled: {', '.join(bad)} not among the structure anchors "
                            f"(decode.structure_anchors: {', '.join(anchors)})")
        return list(cfg.route.labelled)
    trained = {"train"} if cfg.train.enabled or cfg.rerank.enabled else set()
    splits = [s for s in anchors if s not in trained]
    if not splits:
        raise UserError(f"route: every anchor split ({', '.join(anchors)}) trained a small model, so none can label "
                        "the certainty classifier; add validation links (data.valid_fraction) or set route.labelled")
    return splits


def features(lists: dict, t2s, t2s_score, q: np.ndarray, b: np.ndarray, graphs: SeedGraphs, primary: str):
    """(X, names, best local target of the primary decoder) for sources q against targets b."""
    src_rows, tgt_rows = graphs.rows(q, b)
    idx, score = lists[primary]
    p_best = idx[np.arange(len(idx)), np.argmax(np.where(idx >= 0, score, -np.inf), axis=1)]
    best_rows = np.where(p_best >= 0, tgt_rows[np.maximum(p_best, 0)], -1)
    cons = neighbour_consistency(best_rows, src_rows, graphs.adj_s, graphs.adj_t, graphs.anchors)
    degree = np.diff(graphs.adj_s.indptr)[src_rows]
    return confidence_features(lists, primary, t2s=t2s, t2s_score=t2s_score, consistency=cons, degree=degree)


def decoded_lists(ctx: RunContext, protocol: str):
    """The decode stage's lists of a protocol in local indices: (q, b, {decoder: (idx, score)}, t2s, t2s_score)."""
    r = ctx.run / "retrieve" / protocol
    q, _, _ = read_lists(r / "s2t.parquet")
    b, t2s_ids, t2s_score = read_lists(r / "t2s.parquet")
    lists = {}
    for name in ctx.cfg.decode.decoders:
        path = ctx.run / "decode" / protocol / f"{name}.parquet"
        if not path.is_file():
            raise UserError(f"{path}: the run has no decoded lists (run the decode stage first)")
        dq, ids, score = read_lists(path)
        if not np.array_equal(dq, q):
            raise RuntimeError(f"{path}: its sources differ from the retrieved ones")
        lists[name] = (to_local(b, ids), score)
    return q, b, lists, to_local(q, t2s_ids), t2s_score


# how much of each labelled source's primary list ``labelled.parquet`` keeps (the LLM tier shows <= 25)
LABELLED_LIST = 32


def labelled_features(ctx: RunContext, protocol: str, graphs: SeedGraphs, seeds: pa.Table, fold: np.ndarray,
                      primary: str, vectors) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(X, right, src, cand, score) of the seed links, each fold decoded without its own links as
    anchors; cand / score: the primary decoder's list of each (global ids, -1 padded), as a test
    source's list is made."""
    cfg = ctx.cfg
    ids, kg, vecs = vectors
    test = ctx.pair().links_of("test")
    t_src, t_tgt = test["src"].to_numpy(), test["tgt"].to_numpy()
    s_src, s_tgt = seeds["src"].to_numpy(), seeds["tgt"].to_numpy()
    Xs, rights, srcs, cands, scores = [], [], [], [], []
    for j in range(int(fold.max()) + 1 if len(fold) else 0):
        f_src, f_tgt = s_src[fold == j], s_tgt[fold == j]
        # the protocol's pool with fold j's links in it (all-targets: the pool already holds them)
        q, b = protocol_sets(protocol, np.concatenate([t_src, f_src]), np.concatenate([t_tgt, f_tgt]), ids, kg)
        Q, B = vecs[rows_of(ids, q)], vecs[rows_of(ids, b)]
        s2t_score, s2t = knn(Q, B, cfg.retrieve.k, cfg.retrieve)
        t2s_score, t2s = knn(B, Q, cfg.retrieve.k, cfg.retrieve)
        g = dataclasses.replace(graphs, anchors=graphs.anchors[fold != j])
        lists = {d.name: (d.idx, d.score)
                 for d in run_decoders(cfg.decode.decoders, s2t, s2t_score, t2s, t2s_score, q, b, cfg.decode, lambda: g)}
        X, _, best = features(lists, t2s, t2s_score, q, b, g, primary)
        rows = rows_of(q, f_src)
        Xs.append(X[rows])
        rights.append((best[rows] >= 0) & (b[np.maximum(best[rows], 0)] == f_tgt))
        srcs.append(f_src)
        idx, score = lists[primary]
        keep = min(LABELLED_LIST, idx.shape[1])
        top = np.argsort(-np.where(idx[rows] >= 0, score[rows], -np.inf), axis=1, kind="stable")[:, :keep]
        li = np.take_along_axis(idx[rows], top, 1)
        cands.append(np.where(li >= 0, b[np.maximum(li, 0)], -1))
        scores.append(np.take_along_axis(score[rows], top, 1).astype(np.float32))
    return (np.concatenate(Xs), np.concatenate(rights), np.concatenate(srcs), np.concatenate(cands),
            np.concatenate(scores))


def run(ctx: RunContext, tmp: Path) -> dict:
    cfg, rc = ctx.cfg, ctx.cfg.route
    primary = primary_decoder(rc.primary, cfg.decode.decoders)
    pair = ctx.pair()
    anchors = cfg.decode.structure_anchors or ["train", "valid"]
    graphs = SeedGraphs.of(pair, anchors)
    seeds = pair.links.filter(pc.is_in(pair.links["split"], pa.array(anchors, pa.string())))
    splits = labelled_splits(cfg, anchors)
    is_lab = pc.is_in(seeds["split"], pa.array(splits, pa.string())).to_numpy(zero_copy_only=False)
    n_lab = int(is_lab.sum())
    if n_lab < 2 * rc.folds:
        raise UserError(f"route: {n_lab} seed links ({', '.join(splits)}) are too few to label "
                        f"{rc.folds} folds for the certainty classifier")
    # fold of each seed link; -1: an anchor in every fold's decode, never labelled
    fold = np.full(seeds.num_rows, -1, np.int64)
    fold[is_lab] = anchor_folds(n_lab, rc.folds, rc.seed)
    vectors = ctx.embeddings()
    test = pair.links_of("test")
    gold = dict(zip(test["src"].to_pylist(), test["tgt"].to_pylist()))
    t0 = time.time()
    report: dict = {"primary": primary, "target_precision": rc.target_precision,
                    "max_llm_fraction": rc.max_llm_fraction, "protocols": {}}
    for protocol in cfg.evaluate.protocols:
        out = tmp / protocol
        out.mkdir(parents=True)
        q, b, lists, t2s, t2s_score = decoded_lists(ctx, protocol)
        X, names, best = features(lists, t2s, t2s_score, q, b, graphs, primary)
        X_lab, right, lab_src, lab_cand, lab_score = labelled_features(ctx, protocol, graphs, seeds, fold, primary,
                                                                       vectors)
        router = Router(seed=rc.seed)
        oof = router.cross_fit(X_lab, right, rc.cv_folds)
        threshold = choose_threshold(oof, right, rc.target_precision, rc.max_llm_fraction)
        router.fit(X_lab, right)
        prob = router.predict(X)
        certain = prob >= threshold
        answer = np.where(best >= 0, b[np.maximum(best, 0)], -1)
        pq.write_table(pa.table({"src": q, "answer": answer, "prob": prob.astype(np.float32), "certain": certain}),
                       out / "route.parquet")
        # the labelled sources as the router sees them out of fold: which it would route, and their
        # primary lists (the LLM tier validates, and tunes llm.fusion, on the routed ones)
        gold_of = dict(zip(seeds["src"].to_pylist(), seeds["tgt"].to_pylist()))
        pq.write_table(pa.table({
            "src": lab_src, "tgt": np.array([gold_of[int(x)] for x in lab_src], np.int64),
            "prob": oof.astype(np.float32), "routed": oof < threshold, "right": right,
            "cand": embeddings_column(lab_cand.astype(np.int64)), "score": embeddings_column(lab_score)}),
            out / "labelled.parquet")
        (out / "router.pkl").write_bytes(pickle.dumps(router.model))
        (out / "router.json").write_text(json.dumps(
            {"threshold": threshold, "features": names, "primary": primary, "labelled": int(len(right))}, indent=2))
        t_right = np.array([gold.get(int(s), -2) == int(a) for s, a in zip(q, answer)])
        is_test = np.isin(q, test["src"].to_numpy())
        rep = {
            "sources": int(len(q)), "routed_to_llm": int((~certain).sum()),
            "llm_fraction": round(float((~certain).mean()), 4), "threshold": threshold,
            "labelled": certain_set_report(oof, right, threshold),
            "test": certain_set_report(prob[is_test], t_right[is_test], threshold),  # evaluation only
            "labelled_curve": coverage_curve(oof, right),
            "test_curve": coverage_curve(prob[is_test], t_right[is_test]),
        }
        report["protocols"][protocol] = rep
        log.info("route %s: %d of %d sources to the LLM (%.1f%%); certain-set precision %.4f (labelled, out-of-fold), "
                 "%s (test)", protocol, rep["routed_to_llm"], len(q), 100 * rep["llm_fraction"],
                 rep["labelled"]["precision"] or float("nan"), rep["test"]["precision"])
    (tmp / "report.json").write_text(json.dumps(report, indent=2))
    from hiea_ray.plots import plot_route

    plot_route(report, tmp / "route.png")
    first = report["protocols"][cfg.evaluate.protocols[0]]
    return {"wall_s_route": round(time.time() - t0, 2), "llm_fraction": first["llm_fraction"],
            "routed_to_llm": first["routed_to_llm"], "test_precision": first["test"]["precision"],
            "labelled_precision": first["labelled"]["precision"]}


STAGE = StageDef(
    name="route",
    body=run,
    reads=("decode", "embed"),
    config=("route", "decode", "retrieve", "evaluate.protocols"),  # train / rerank: through embed / decode
    enabled=route_enabled,
)
