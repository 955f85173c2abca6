"""route (driver; ``route.enabled`` or ``llm.enabled``): HIEA's certainty router.

Per protocol, each test source's confidence features (``core.router.confidence_features``: every
decoder's top-1 score and margin, agreement with the primary decoder, mutual best, neighbour
consistency of the primary match, degree) come from the decode stage's lists. The classifier's
labelled sources are the calibrate stage's (``hiea_ray.run.labelled``): the seed links no small model
trained on (``route.labelled``: with retriever or reranker training, the validation links), in
``route.folds`` folds: fold j is decoded (the protocol's pool plus fold j's links, all decoders)
with every other seed link as a structure anchor, so its features are made as the test sources'
are and its answers are not trivially right. Out-of-fold probabilities choose the threshold (``route.target_precision`` / ``route.max_llm_fraction``);
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

import json
import logging
import pickle
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from hiea_ray.core.router import (Router, certain_set_report, choose_threshold, coverage_curve, primary_decoder)
from hiea_ray.core.structure import SeedGraphs
from hiea_ray.io import column_to_numpy
from hiea_ray.run.labelled import decoded_lists, features
from hiea_ray.run import RunContext
from hiea_ray.stages.base import StageDef

log = logging.getLogger(__name__)


def route_enabled(cfg) -> bool:
    return cfg.route.enabled or cfg.llm.enabled


def run(ctx: RunContext, tmp: Path) -> dict:
    cfg, rc = ctx.cfg, ctx.cfg.route
    primary = primary_decoder(rc.primary, cfg.decode.decoders)
    pair = ctx.pair()
    anchors = cfg.decode.structure_anchors or ["train", "valid"]
    graphs = SeedGraphs.of(pair, [*anchors, "pseudo"])  # pseudo: a collaboration round's
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
        # the labelled seed sources, decoded out of fold by the calibrate stage
        lab = pq.read_table(ctx.run / "calibrate" / protocol / "labelled.parquet")
        if "dangling" in lab.column_names:  # sources decoded without their counterpart: not the router's
            lab = lab.filter(pc.invert(lab["dangling"]))
        X_lab, right = column_to_numpy(lab["features"]), lab["right_list"].to_numpy(zero_copy_only=False)
        lab_src, lab_tgt = lab["src"].to_numpy(), lab["tgt"].to_numpy()
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
        pq.write_table(pa.table({
            "src": lab_src, "tgt": lab_tgt, "prob": oof.astype(np.float32), "routed": oof < threshold, "right": right,
            "cand": lab["cand"].combine_chunks(), "score": lab["score"].combine_chunks()}),
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
    reads=("decode", "calibrate"),
    config=("route", "decode", "retrieve", "evaluate.protocols"),  # train / rerank: through embed / decode
    enabled=route_enabled,
)
