"""The alignment a run hands over, read from its decoded outputs (a run reader, like ``hiea_ray.run``).

``alignment``: one decoder's one-to-one output on one protocol, in the graphs' own identifiers,
thresholded on confidence, with what a user needs beside the links (unmatched sources, a summary
with estimated and measured precision); ``write``: its files. The ``export`` stage writes them into
the run (RUN/alignment/); ``hiea-ray export`` and ``hiea_ray.api.Run.links`` make them again with
other settings without re-running the pipeline.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from hiea_ray.core.export import Calibration, expected_precision_threshold, links_table, ntriples
from hiea_ray.core.metrics import precision_threshold
from hiea_ray.core.metrics import matching_metrics
from hiea_ray.core.router import primary_decoder
from hiea_ray.errors import UserError
from hiea_ray.io import read_lists, rows_of
from hiea_ray.run import RunContext, hiea_merged, seed_links


FILES = ("links.parquet", "links.tsv", "links.nt", "unmatched.tsv", "summary.json")


def output_decoder(cfg) -> str:
    if cfg.output.decoder != "auto":
        return cfg.output.decoder
    if cfg.llm.enabled:
        return "hiea"
    for name in ("structure", "sinkhorn"):
        if name in cfg.decode.decoders:
            return name
    return cfg.decode.decoders[0]


def output_protocol(cfg) -> str:
    if cfg.output.protocol != "auto":
        return cfg.output.protocol
    return "all-targets" if "all-targets" in cfg.evaluate.protocols else cfg.evaluate.protocols[0]


def has_router(cfg) -> bool:
    return bool(cfg.route.enabled or cfg.llm.enabled)


def alignment(ctx: RunContext) -> tuple[pa.Table, pa.Table, dict]:
    """(links, unmatched, summary) of a finished run as its ``output`` config asks (decoder,
    protocol, min_confidence or target_precision): the one path the export stage and
    ``api.Run.export`` take."""
    cfg = ctx.cfg
    decoder, protocol = output_decoder(cfg), output_protocol(cfg)
    min_confidence, target_precision = cfg.output.min_confidence, cfg.output.target_precision
    d = ctx.run / "decode" / protocol
    if not (ctx.run / "decode" / "manifest.json").is_file():
        raise UserError(f"{ctx.run}: the run has not decoded yet (no decode stage): finish `hiea-ray align` first")
    # the router's probability is the confidence of the decoder it routes (and of hiea's merge);
    # any other decoder's is its score calibrated on the labelled seed sources
    router = has_router(cfg) and decoder in ("hiea", primary_decoder(cfg.route.primary, cfg.decode.decoders))
    if decoder == "hiea":
        h = hiea_merged(ctx, protocol)
        q, cand, score, ms, mt = h.q, h.merged.cand, h.score, h.merged.match_src, h.merged.match_tgt
        routed = set(h.uncertain.tolist())
        # a pair's score: the primary decoder's score of that target in the source's list (nan if absent)
        prim_cand = h.cand
    else:
        q, cand, score = read_lists(d / f"{decoder}.parquet")
        match = pq.read_table(d / f"{decoder}.match.parquet")
        ms, mt, routed, prim_cand = match["src"].to_numpy(), match["tgt"].to_numpy(), set(), cand
    rows = rows_of(q, ms)
    # the user's seed links are facts: handed back as given (tier "seed"); a prediction for a seed
    # source, or of a seed's target for another source, is not the output's to make
    seeds = seed_links(ctx.pair())
    seed_src, seed_tgt = seeds["src"].to_numpy(), seeds["tgt"].to_numpy()
    order = np.argsort(seed_src, kind="stable")
    pos = np.minimum(np.searchsorted(seed_src[order], ms), max(len(order) - 1, 0))
    known = np.isin(ms, seed_src)
    as_given = known & (seed_tgt[order][pos] == mt) if len(order) else known
    contradicts = (known & ~as_given) | (~known & np.isin(mt, seed_tgt))
    own = ~known & ~contradicts
    hit = prim_cand[rows] == mt[:, None]
    pair_score = np.where(hit.any(1), score[rows, np.argmax(hit, 1)], np.nan).astype(np.float32)
    second = score[:, 1] if score.shape[1] > 1 else np.full(len(score), np.nan)
    margin = (score[:, 0] - second).astype(np.float32)
    calibration, why = (None, None) if router else calibration_of(ctx, protocol, decoder)
    if router:
        route = pq.read_table(ctx.run / "route" / protocol / "route.parquet")
        conf_all = np.full(len(q), np.nan, np.float32)
        conf_all[rows_of(q, route["src"].to_numpy())] = route["prob"].to_numpy()
        conf = conf_all[rows]
        lab = pq.read_table(ctx.run / "route" / protocol / "labelled.parquet")
        lab_conf, lab_right = lab["prob"].to_numpy(), lab["right"].to_numpy(zero_copy_only=False)
        kind = "router probability"
    elif calibration is not None:
        conf_all, conf = calibration(score[:, 0]), calibration(pair_score)
        lab = pq.read_table(ctx.run / "calibrate" / protocol / "labelled.parquet")
        lab = lab.filter(pc.greater_equal(lab[f"answer.{decoder}"], 0))  # the labelled sources it links
        lab_conf, lab_right = lab[f"conf.{decoder}"].to_numpy(), lab[f"right.{decoder}"].to_numpy(zero_copy_only=False)
        kind = "calibrated decoder score"
        pm = matchable(ctx, protocol, q)
        if pm is not None:  # P(has a counterpart) x P(right | has one); precision on the output's own links
            conf_all, conf = conf_all * pm, conf * pm[rows]
            lab_conf, lab_right, kind = conf[own], None, "calibrated decoder score x P(has a counterpart)"
    else:
        conf_all, conf, lab_conf, lab_right = np.asarray(score[:, 0], np.float32), pair_score, None, None
        kind = "decoder score"
    threshold, estimated = (-np.inf if min_confidence is None else float(min_confidence)), None
    if target_precision is not None:
        if lab_conf is None:
            raise UserError(f"output.target_precision needs labelled seed sources to choose its threshold on ({why}); "
                            "use output.min_confidence")
        threshold, estimated = (expected_precision_threshold(lab_conf, target_precision) if lab_right is None
                                else precision_threshold(lab_conf, lab_right, target_precision))
    elif lab_conf is not None:
        kept = lab_conf >= threshold  # every labelled source when no threshold
        estimated = (float((lab_conf if lab_right is None else lab_right)[kept].mean()) if kept.any() else None)
    keep = ((np.nan_to_num(conf, nan=-np.inf) >= threshold) | (threshold == -np.inf)) & own
    tier = np.array(["llm" if int(s) in routed else "small" for s in ms], object)
    ents = ctx.pair().entities.select(["id", "uri", "name"])
    given = np.ones(len(seed_src), np.float32)
    links = pa.concat_tables([
        links_table(seed_src, seed_tgt, given, given, np.array(["seed"] * len(seed_src), object),
                    np.full(len(seed_src), np.nan, np.float32), "seed", ents),
        links_table(ms[keep], mt[keep], pair_score[keep], conf[keep], tier[keep], margin[rows][keep], decoder, ents)])
    linked = set(links["src"].to_pylist())
    left = np.array([s for s in q.tolist() if s not in linked], np.int64)
    lr = rows_of(q, left)
    best = cand[lr, 0] if len(lr) else np.zeros(0, np.int64)
    has = best >= 0
    un = links_table(left[has], best[has], score[lr, 0][has], conf_all[lr][has], np.array(["-"] * int(has.sum()), object),
                     margin[lr][has], decoder, ents)
    summary = {"decoder": decoder, "protocol": protocol, "sources": int(len(q)), "links": int(links.num_rows),
               "unmatched": int(len(left)), "confidence": kind,
               "threshold": threshold if np.isfinite(threshold) else None, "target_precision": target_precision,
               "estimated_precision": estimated, "tiers": {t: int((links["tier"].to_numpy(zero_copy_only=False) == t).sum())
                                                         for t in ("seed", "small", "llm")},
               "seed_links": int(len(seed_src)), "predictions_contradicting_a_seed_dropped": int(contradicts.sum())}
    test = ctx.pair().links_of("test")
    if test.num_rows:
        # as metrics.json counts a decoder's output: its links of test sources against the gold links
        summary["measured"] = {"gold_test_links": int(test.num_rows), **matching_metrics(
            links["src"].to_numpy(), links["tgt"].to_numpy(), test["src"].to_numpy(), test["tgt"].to_numpy())}
    else:
        summary["measured"] = None  # no gold test links: label-free
    return links, un, summary


def matchable(ctx: RunContext, protocol: str, q: np.ndarray) -> np.ndarray | None:
    """P(each source of q has a counterpart) from the calibrate stage (``output.dangling_share``), or None."""
    path = ctx.run / "calibrate" / protocol / "matchable.parquet"
    if not ctx.cfg.output.dangling_share or not path.is_file():
        return None
    t = pq.read_table(path)
    return t["p_matchable"].to_numpy()[rows_of(t["src"].to_numpy(), q)].astype(np.float32)


def calibration_of(ctx: RunContext, protocol: str, decoder: str) -> tuple[Calibration | None, str | None]:
    """(the calibrate stage's map of a decoder's score, None) or (None, why there is none)."""
    path = ctx.run / "calibrate" / protocol / "calibration.json"
    if not path.is_file():
        return None, "the run has no calibrate stage: output.calibrate is false"
    cal = json.loads(path.read_text())
    if decoder not in cal.get("decoders", {}):
        return None, cal.get("reason", f"the calibrate stage did not calibrate {decoder}")
    return Calibration.from_json(cal["decoders"][decoder]), None


def write(links: pa.Table, unmatched: pa.Table, summary: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    pq.write_table(links, out / "links.parquet")
    cols = [c for c in links.column_names if c not in ("src", "tgt")]
    for table, name in ((links, "links.tsv"), (unmatched, "unmatched.tsv")):
        with open(out / name, "w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh, delimiter="\t", lineterminator="\n")
            w.writerow(cols)
            w.writerows(zip(*(table[c].to_pylist() for c in cols)))
    (out / "links.nt").write_text(ntriples(links), encoding="utf-8")
    (out / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True))
