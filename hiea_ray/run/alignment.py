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
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from hiea_ray.core.export import Calibration, expected_precision_threshold, links_table, ntriples
from hiea_ray.core.metrics import matching_metrics, precision_threshold
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
    ``api.Run.export`` take. The steps: the decoder's answers, the user's seed links as facts,
    a confidence per answer, the threshold, then the links, the unmatched sources and the summary."""
    cfg = ctx.cfg
    decoder, protocol = output_decoder(cfg), output_protocol(cfg)
    if not (ctx.run / "decode" / "manifest.json").is_file():
        raise UserError(f"{ctx.run}: the run has not decoded yet (no decode stage): finish `hiea-ray align` first")
    a = _answers(ctx, decoder, protocol)
    seeds = seed_links(ctx.pair())
    seed_src, seed_tgt = seeds["src"].to_numpy(), seeds["tgt"].to_numpy()
    known, contradicts = _against_seeds(seed_src, seed_tgt, a.ms, a.mt)
    own = ~known & ~contradicts
    c = _confidence(ctx, decoder, protocol, a, own)
    threshold, estimated = _threshold(c, cfg.output.min_confidence, cfg.output.target_precision)
    keep = ((np.nan_to_num(c.conf, nan=-np.inf) >= threshold) | (threshold == -np.inf)) & own
    tier = np.array(["llm" if int(s) in a.routed else "small" for s in a.ms], object)
    ents = ctx.pair().entities.select(["id", "uri", "name"])
    given = np.ones(len(seed_src), np.float32)
    links = pa.concat_tables([
        links_table(seed_src, seed_tgt, given, given, np.array(["seed"] * len(seed_src), object),
                    np.full(len(seed_src), np.nan, np.float32), "seed", ents),
        links_table(a.ms[keep], a.mt[keep], a.pair_score[keep], c.conf[keep], tier[keep], a.margin[a.rows][keep],
                    decoder, ents)])
    left, un = _unmatched(a, c, links, decoder, ents)
    summary = {"decoder": decoder, "protocol": protocol, "sources": int(len(a.q)), "links": int(links.num_rows),
               "unmatched": int(len(left)), "confidence": c.kind,
               "threshold": threshold if np.isfinite(threshold) else None,
               "target_precision": cfg.output.target_precision, "estimated_precision": estimated,
               "tiers": {t: int((links["tier"].to_numpy(zero_copy_only=False) == t).sum()) for t in ("seed", "small", "llm")},
               "seed_links": int(len(seed_src)), "predictions_contradicting_a_seed_dropped": int(contradicts.sum())}
    test = ctx.pair().links_of("test")
    if test.num_rows:
        # as metrics.json counts a decoder's output: its links of test sources against the gold links
        summary["measured"] = {"gold_test_links": int(test.num_rows), **matching_metrics(
            links["src"].to_numpy(), links["tgt"].to_numpy(), test["src"].to_numpy(), test["tgt"].to_numpy())}
    else:
        summary["measured"] = None  # no gold test links: label-free
    return links, un, summary


@dataclass
class _Answers:
    """A decoder's answers on a protocol: lists (q, cand, score), the match (ms -> mt), the rows of
    the matched sources, the routed sources (the LLM tier's), each pair's score in the primary
    list (nan if absent) and each source's margin to its second candidate."""

    q: np.ndarray
    cand: np.ndarray
    score: np.ndarray
    ms: np.ndarray
    mt: np.ndarray
    rows: np.ndarray
    routed: set
    pair_score: np.ndarray
    margin: np.ndarray
    router: bool


def _answers(ctx: RunContext, decoder: str, protocol: str) -> _Answers:
    cfg = ctx.cfg
    # the router's probability is the confidence of the decoder it routes (and of hiea's merge);
    # any other decoder's is its score calibrated on the labelled seed sources
    router = has_router(cfg) and decoder in ("hiea", primary_decoder(cfg.route.primary, cfg.decode.decoders))
    if decoder == "hiea":
        h = hiea_merged(ctx, protocol)
        q, cand, score, ms, mt = h.q, h.merged.cand, h.score, h.merged.match_src, h.merged.match_tgt
        routed = set(h.uncertain.tolist())
        prim_cand = h.cand  # a pair's score: the primary decoder's score of that target in the source's list
    else:
        d = ctx.run / "decode" / protocol
        q, cand, score = read_lists(d / f"{decoder}.parquet")
        match = pq.read_table(d / f"{decoder}.match.parquet")
        ms, mt, routed, prim_cand = match["src"].to_numpy(), match["tgt"].to_numpy(), set(), cand
    rows = rows_of(q, ms)
    hit = prim_cand[rows] == mt[:, None]
    pair_score = np.where(hit.any(1), score[rows, np.argmax(hit, 1)], np.nan).astype(np.float32)
    second = score[:, 1] if score.shape[1] > 1 else np.full(len(score), np.nan)
    margin = (score[:, 0] - second).astype(np.float32)
    return _Answers(q, cand, score, ms, mt, rows, routed, pair_score, margin, router)


def _against_seeds(seed_src: np.ndarray, seed_tgt: np.ndarray, ms: np.ndarray, mt: np.ndarray):
    """The user's seed links are facts, handed back as given (tier "seed"): (known: the answer's
    source is a seed source; contradicts: it gives a seed source another target, or a seed's target
    to another source — not the output's to make)."""
    order = np.argsort(seed_src, kind="stable")
    pos = np.minimum(np.searchsorted(seed_src[order], ms), max(len(order) - 1, 0))
    known = np.isin(ms, seed_src)
    as_given = known & (seed_tgt[order][pos] == mt) if len(order) else known
    return known, (known & ~as_given) | (~known & np.isin(mt, seed_tgt))


@dataclass
class _Confidence:
    """Per source of the lists (conf_all) and per answer (conf), what it is (kind), and the labelled
    sources the threshold is chosen on (lab_conf; lab_right None: the expected precision of the
    output's own links) or why there are none (why)."""

    conf_all: np.ndarray
    conf: np.ndarray
    lab_conf: np.ndarray | None
    lab_right: np.ndarray | None
    kind: str
    why: str | None


def _confidence(ctx: RunContext, decoder: str, protocol: str, a: _Answers, own: np.ndarray) -> _Confidence:
    if a.router:
        route = pq.read_table(ctx.run / "route" / protocol / "route.parquet")
        conf_all = np.full(len(a.q), np.nan, np.float32)
        conf_all[rows_of(a.q, route["src"].to_numpy())] = route["prob"].to_numpy()
        lab = pq.read_table(ctx.run / "route" / protocol / "labelled.parquet")
        return _Confidence(conf_all, conf_all[a.rows], lab["prob"].to_numpy(), lab["right"].to_numpy(zero_copy_only=False),
                           "router probability", None)
    calibration, why = calibration_of(ctx, protocol, decoder)
    if calibration is None:
        return _Confidence(np.asarray(a.score[:, 0], np.float32), a.pair_score, None, None, "decoder score", why)
    conf_all, conf = calibration(a.score[:, 0]), calibration(a.pair_score)
    lab = pq.read_table(ctx.run / "calibrate" / protocol / "labelled.parquet")
    lab = lab.filter(pc.greater_equal(lab[f"answer.{decoder}"], 0))  # the labelled sources it links
    lab_conf, lab_right = lab[f"conf.{decoder}"].to_numpy(), lab[f"right.{decoder}"].to_numpy(zero_copy_only=False)
    pm = matchable(ctx, protocol, a.q)
    if pm is None:
        return _Confidence(conf_all, conf, lab_conf, lab_right, "calibrated decoder score", why)
    # P(has a counterpart) x P(right | has one); precision on the output's own links
    conf_all, conf = conf_all * pm, conf * pm[a.rows]
    return _Confidence(conf_all, conf, conf[own], None, "calibrated decoder score x P(has a counterpart)", why)


def _threshold(c: _Confidence, min_confidence: float | None, target_precision: float | None):
    """(threshold, estimated precision): ``output.target_precision``'s cut on the labelled sources
    (or on the expected precision of the output's own links), else ``min_confidence`` and the
    precision the labelled sources have above it."""
    threshold, estimated = (-np.inf if min_confidence is None else float(min_confidence)), None
    if target_precision is not None:
        if c.lab_conf is None:
            raise UserError(f"output.target_precision needs labelled seed sources to choose its threshold on ({c.why}); "
                            "use output.min_confidence")
        return (expected_precision_threshold(c.lab_conf, target_precision) if c.lab_right is None
                else precision_threshold(c.lab_conf, c.lab_right, target_precision))
    if c.lab_conf is not None:
        kept = c.lab_conf >= threshold  # every labelled source when no threshold
        estimated = (float((c.lab_conf if c.lab_right is None else c.lab_right)[kept].mean()) if kept.any() else None)
    return threshold, estimated


def _unmatched(a: _Answers, c: _Confidence, links: pa.Table, decoder: str, ents: pa.Table):
    """The sources without a link, each with its best candidate (tier "-"): (their ids, the table)."""
    linked = set(links["src"].to_pylist())
    left = np.array([s for s in a.q.tolist() if s not in linked], np.int64)
    lr = rows_of(a.q, left)
    best = a.cand[lr, 0] if len(lr) else np.zeros(0, np.int64)
    has = best >= 0
    return left, links_table(left[has], best[has], a.score[lr, 0][has], c.conf_all[lr][has],
                             np.array(["-"] * int(has.sum()), object), a.margin[lr][has], decoder, ents)


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
