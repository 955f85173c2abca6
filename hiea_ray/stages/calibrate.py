"""calibrate (driver; ``output.calibrate`` or a router): how far to trust each decoder's answer.

The labelled seed sources (``hiea_ray.run.labelled``: the seed links no small model trained on, in
``route.folds`` folds, each fold decoded by every decoder with the other folds as structure
anchors, so its answers are made as a test source's are) and, per decoder, an isotonic map from
the score of the decoder's one-to-one match to the probability that the match is right (``core.export.Calibration``),
with each labelled source's out-of-fold calibrated score.

The route stage fits the certainty classifier on these sources' features; export gives every link
of a decoder without a router (or of a decoder other than the router's) its calibrated score as
confidence, and picks ``output.target_precision``'s threshold on the out-of-fold ones.

Outputs per protocol: ``labelled.parquet`` (src, tgt, the primary decoder's features and top-32
list, ``right_list``: its head is the gold; per decoder its one-to-one match ``answer.<d>`` (-1:
none), the pair's ``score.<d>``, ``right.<d>`` and out-of-fold ``conf.<d>``) and
``calibration.json`` (feature names, the primary decoder, per decoder its map and the precision of
its matches on the labelled sources). Without labelled seed links (no seeds, or all trained on) and without a router, each
protocol's ``calibration.json`` only says why: confidence is then the decoder's score.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from hiea_ray.core.export import calibrate_out_of_fold, matchable_prior
from hiea_ray.core.router import Router, primary_decoder
from hiea_ray.errors import UserError
from hiea_ray.io import embeddings_column
from hiea_ray.run.labelled import decoded_lists, features, labelled_decode, seeds_of
from hiea_ray.run import RunContext
from hiea_ray.stages.base import StageDef

log = logging.getLogger(__name__)


def calibrate_enabled(cfg) -> bool:
    return cfg.output.calibrate or cfg.route.enabled or cfg.llm.enabled


def run(ctx: RunContext, tmp: Path) -> dict:
    cfg, rc = ctx.cfg, ctx.cfg.route
    primary = primary_decoder(rc.primary, cfg.decode.decoders)
    t0 = time.time()
    try:
        seeds = seeds_of(ctx)
    except UserError as e:
        if cfg.route.enabled or cfg.llm.enabled:
            raise
        for protocol in cfg.evaluate.protocols:
            (tmp / protocol).mkdir(parents=True)
            (tmp / protocol / "calibration.json").write_text(json.dumps({"labelled": 0, "reason": str(e)}, indent=2))
        log.info("calibrate: no labelled sources (%s); confidence is the decoder's score", e)
        return {"labelled": 0}
    vectors = ctx.embeddings()
    stats: dict = {}
    for protocol in cfg.evaluate.protocols:
        out = tmp / protocol
        out.mkdir(parents=True)
        hide = cfg.output.dangling_share if protocol == "all-targets" else 0.0
        lab = labelled_decode(ctx, protocol, seeds, primary, vectors, hide=hide, seed=rc.seed)
        has = ~lab.dangling  # the sources whose counterpart was there: what P(right | matchable) is fit on
        cols = {"src": lab.src, "tgt": lab.tgt, "features": embeddings_column(lab.X),
                "cand": embeddings_column(lab.cand.astype(np.int64)), "score": embeddings_column(lab.score),
                "right_list": lab.list_right(), "dangling": lab.dangling}
        decoders = {}
        for d in cfg.decode.decoders:
            right = lab.right(d)
            cal, oof = calibrate_out_of_fold(lab.answer_score[d][has], right[has], rc.cv_folds, rc.seed)
            conf = cal(lab.answer_score[d])
            conf[has] = oof
            cols.update({f"answer.{d}": lab.answer[d], f"score.{d}": lab.answer_score[d], f"right.{d}": right,
                         f"conf.{d}": conf})
            matched = has & (lab.answer[d] >= 0)
            decoders[d] = {"matched": int(matched.sum()),
                           "precision": round(float(right[matched].mean()), 4) if matched.any() else None,
                           **cal.to_json()}
        doc = {"labelled": int(len(lab.src)), "splits": seeds.splits, "primary": primary, "features": lab.names,
               "decoders": decoders}
        if lab.dangling.any():
            doc["dangling"], cols["matchable"] = matchable_model(ctx, protocol, lab, seeds, primary, out, rc)
        pq.write_table(pa.table(cols), out / "labelled.parquet")
        (out / "calibration.json").write_text(json.dumps(doc, indent=2))
        stats[protocol] = {d: v["precision"] for d, v in decoders.items()}
        log.info("calibrate %s: %d labelled sources; precision of each decoder's matches on them: %s", protocol, len(lab.src),
                 ", ".join(f"{d} {v}" for d, v in stats[protocol].items()))
    return {"labelled": int(len(lab.src)), "wall_s_calibrate": round(time.time() - t0, 2), "labelled_precision": stats}


def matchable_model(ctx: RunContext, protocol: str, lab, seeds, primary: str, out: Path, rc) -> tuple[dict, np.ndarray]:
    """P(a source has a counterpart), learnt on the labelled sources (the hidden ones: no) from the
    primary decoder's confidence features; applied to the run's own sources, with the share of
    matchable ones among the non-seed sources estimated by EM (``core.export.matchable_prior``).
    Writes ``matchable.parquet`` (src, p_matchable; 1 for seed sources). -> (report, the labelled
    sources' out-of-fold probabilities)."""
    from sklearn.metrics import roc_auc_score

    has = ~lab.dangling
    model = Router(seed=rc.seed)
    oof = model.cross_fit(lab.X, has, rc.cv_folds)
    model.fit(lab.X, has)
    q, b, lists, t2s, t2s_score = decoded_lists(ctx, protocol)
    X, _, _ = features(lists, t2s, t2s_score, q, b, seeds.graphs, primary)
    raw = model.predict(X)
    seed_src = np.isin(q, seeds.links["src"].to_numpy())
    post, share, iters = matchable_prior(raw[~seed_src], float(has.mean()))
    p = np.ones(len(q), np.float32)
    p[~seed_src] = post
    pq.write_table(pa.table({"src": q, "p_matchable": p}), out / "matchable.parquet")
    rep = {"hidden_share": round(float(lab.dangling.mean()), 4), "hidden": int(lab.dangling.sum()),
           "auc_out_of_fold": round(float(roc_auc_score(has, oof)), 4),
           "sources": int((~seed_src).sum()), "estimated_matchable_share": round(share, 4), "em_iterations": iters,
           "mean_probability_before_em": round(float(raw[~seed_src].mean()), 4)}
    log.info("calibrate %s: P(has a counterpart) AUC %.3f out of fold on %d labelled sources (%d hidden); "
             "estimated share with a counterpart among %d sources: %.3f", protocol, rep["auc_out_of_fold"],
             len(has), rep["hidden"], rep["sources"], share)
    return rep, oof.astype(np.float32)


STAGE = StageDef(
    name="calibrate",
    body=run,
    reads=("decode", "embed"),
    config=("decode", "retrieve", "evaluate.protocols", "route.primary", "route.folds", "route.labelled",
            "route.cv_folds", "route.seed", "train.enabled", "rerank.enabled", "output.dangling_share"),
    enabled=calibrate_enabled,
)
