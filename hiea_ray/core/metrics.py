"""Alignment metrics on ranked candidate lists; Ray-free.

- ``ranking_metrics``: Hits@k and MRR of the gold target in each test source's ranked list. A gold
  target outside the list counts as a miss (reciprocal rank 0), so the numbers are lower bounds of
  the full-ranking ones and exact whenever the gold target is within the list.
- ``matching_metrics``: precision, recall and F1 of a one-to-one alignment against the test links.
  With ``dangling_src`` (sources known to have no counterpart), a pair predicted for one of them
  is a false positive and abstaining on it is right; without it such pairs are out of scope.
- ``threshold_sweep``: P/R/F1 of a scored alignment kept at score >= each threshold (for the
  greedy matcher this equals re-matching with that ``match_threshold``: greedy takes edges in
  descending score order, so a threshold only cuts the tail).
"""

from __future__ import annotations

import numpy as np

from hiea_ray.io import rows_of


def gold_ranks(cand: np.ndarray, gold: np.ndarray) -> np.ndarray:
    """cand (n, k) ids, gold (n,) ids -> 1-based rank of gold in each row, 0 if absent."""
    hit = cand == gold[:, None]
    found = hit.any(axis=1)
    return np.where(found, hit.argmax(axis=1) + 1, 0)


def ranking_metrics(cand: np.ndarray, gold: np.ndarray, hits_at=(1, 5, 10)) -> dict:
    ranks = gold_ranks(cand, gold)
    n = max(len(ranks), 1)
    out = {f"hits@{h}": float(((ranks > 0) & (ranks <= h)).sum() / n) for h in hits_at}
    out["mrr"] = float(np.where(ranks > 0, 1.0 / np.maximum(ranks, 1), 0.0).sum() / n)
    out["recall@k"] = float((ranks > 0).sum() / n)
    out["n"] = int(len(ranks))
    return out


def matching_metrics(
    pred_src: np.ndarray,
    pred_tgt: np.ndarray,
    gold_src: np.ndarray,
    gold_tgt: np.ndarray,
    dangling_src: np.ndarray | None = None,
) -> dict:
    """P/R/F1 of predicted pairs restricted to the gold sources (the test links) and, when given,
    the dangling sources (no counterpart: any pair predicted for one is wrong)."""
    gold = dict(zip(gold_src.tolist(), gold_tgt.tolist()))
    dangling = set() if dangling_src is None else set(dangling_src.tolist()) - gold.keys()
    in_scope = np.array([s in gold or s in dangling for s in pred_src.tolist()], dtype=bool)
    ps, pt = pred_src[in_scope], pred_tgt[in_scope]
    correct = int(sum(gold.get(s) == t for s, t in zip(ps.tolist(), pt.tolist())))
    p = correct / len(ps) if len(ps) else 0.0
    r = correct / len(gold) if gold else 0.0
    f1 = 2 * p * r / (p + r) if p + r else 0.0
    out = {"precision": p, "recall": r, "f1": f1, "predicted": int(len(ps)), "correct": correct}
    if dangling_src is not None:
        wrongly = len(dangling & set(ps.tolist()))
        out["dangling"] = len(dangling)
        out["dangling_abstained"] = (len(dangling) - wrongly) / len(dangling) if dangling else 0.0
    return out


def threshold_sweep(
    scores: np.ndarray, correct: np.ndarray, gold_count: int, thresholds: np.ndarray | None = None
) -> dict:
    """P/R/F1 when only the pairs with score >= t are kept, for each threshold t.

    scores, correct (bool): the in-scope predicted pairs' scores and whether each is right;
    gold_count: the number of gold links (the recall denominator); thresholds: default every
    distinct score, descending. Returns arrays threshold, predicted, correct, precision, recall, f1.
    """
    scores = np.asarray(scores, dtype=np.float64)
    correct = np.asarray(correct, dtype=bool)
    t = np.unique(scores)[::-1] if thresholds is None else np.asarray(thresholds, dtype=np.float64)
    order = np.argsort(-scores, kind="stable")
    s_desc = scores[order]
    hits = np.concatenate([[0], np.cumsum(correct[order])])
    kept = np.searchsorted(-s_desc, -t, side="right")  # number of scores >= t
    good = hits[kept]
    p = np.divide(good, kept, out=np.zeros(len(t)), where=kept > 0)
    r = good / gold_count if gold_count else np.zeros(len(t))
    f1 = np.divide(2 * p * r, p + r, out=np.zeros(len(t)), where=(p + r) > 0)
    return {"threshold": t, "predicted": kept, "correct": good, "precision": p, "recall": r, "f1": f1}


# -- evaluation protocols ------------------------------------------------------------------------
PROTOCOLS = {
    "standard": "rank among the test links' target entities",
    "all-targets": "rank among every KG2 entity; 1-to-1 matching over all KG1 x KG2 entities",
}


def protocol_sets(protocol: str, test_src: np.ndarray, test_tgt: np.ndarray, ids: np.ndarray, kg: np.ndarray):
    """(sources, targets), both sorted, of a protocol: the test links' ends (standard) or every
    KG1 / KG2 entity (all-targets); ids / kg are every embedded entity and its side."""
    if protocol == "standard":
        q, b = test_src, np.unique(test_tgt)
    elif protocol == "all-targets":
        q, b = ids[kg == 1], ids[kg == 2]
    else:
        raise ValueError(f"unknown protocol {protocol!r}")
    return np.sort(q), np.sort(b)


def decoder_metrics(q: np.ndarray, cand: np.ndarray, match_src: np.ndarray, match_tgt: np.ndarray,
                    gold_src: np.ndarray, gold_tgt: np.ndarray, hits_at) -> dict:
    """Ranking metrics of one decoder's lists (sources q sorted, cand (len(q), k) ids) at the
    gold links' sources, plus P/R/F1 of its one-to-one output."""
    m = ranking_metrics(cand[rows_of(q, gold_src)], gold_tgt, hits_at)
    m.update(matching_metrics(match_src, match_tgt, gold_src, gold_tgt))
    return m


def label_free_metrics(q: np.ndarray, match_src: np.ndarray, match_score: np.ndarray | None = None,
                       bins: int = 10) -> dict:
    """What a run without gold test links can say of a decoder's one-to-one output: how many of
    its sources q got a match, and the histogram of the matches' scores."""
    out = {"gold_test_links": 0, "sources": int(len(q)), "matched": int(len(match_src)),
           "share_matched": float(len(match_src) / max(len(q), 1))}
    if match_score is not None and len(match_score):
        finite = match_score[np.isfinite(match_score)]
        counts, edges = np.histogram(finite, bins=bins)
        out["score_histogram"] = {"edges": [round(float(e), 6) for e in edges], "counts": counts.tolist()}
    return out


def metrics_document(metrics: dict, k: int, decoders: list[str], protocols: list[str]) -> dict:
    """The run's metrics.json: decoder -> metrics of the primary (first) protocol, the protocol's
    name, and every protocol in full under ``all_protocols``."""
    primary = protocols[0]
    flat = {name: metrics[primary][name] for name in decoders}
    flat["protocol"] = primary
    flat["all_protocols"] = {
        "protocols": dict(PROTOCOLS),
        "note": "ranks beyond the top-k candidate list count as misses (reciprocal rank 0)",
        "k": k,
        "metrics": metrics,
    }
    return flat


def precision_threshold(prob: np.ndarray, right: np.ndarray, target: float) -> tuple[float, float | None]:
    """(threshold, estimated precision): the lowest confidence whose kept labelled sources (prob >=
    threshold) are right at rate >= target — the most links at that precision; (inf, None) when no
    threshold reaches it."""
    order = np.argsort(-prob, kind="stable")
    p, r = prob[order], right[order].astype(np.float64)
    prec = np.cumsum(r) / np.arange(1, len(r) + 1)
    boundary = np.append(p[:-1] > p[1:], True) if len(p) else np.zeros(0, bool)  # a cut between distinct values
    ok = np.flatnonzero((prec >= target) & boundary)
    if not len(ok):
        return float("inf"), None
    i = int(ok.max())
    return float(p[i]), float(prec[i])
