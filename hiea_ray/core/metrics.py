"""Alignment metrics on ranked candidate lists; Ray-free.

- ``ranking_metrics``: Hits@k and MRR of the gold target in each test source's ranked list. A gold
  target outside the list counts as a miss (reciprocal rank 0), so the numbers are lower bounds of
  the full-ranking ones and exact whenever the gold target is within the list.
- ``matching_metrics``: precision, recall and F1 of a one-to-one alignment against the test links.
"""

from __future__ import annotations

import numpy as np


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


def matching_metrics(pred_src: np.ndarray, pred_tgt: np.ndarray, gold_src: np.ndarray, gold_tgt: np.ndarray) -> dict:
    """P/R/F1 of predicted pairs restricted to the gold sources (the test links)."""
    gold = dict(zip(gold_src.tolist(), gold_tgt.tolist()))
    in_scope = np.array([s in gold for s in pred_src.tolist()], dtype=bool) if len(pred_src) else np.zeros(0, bool)
    ps, pt = pred_src[in_scope], pred_tgt[in_scope]
    correct = int(sum(gold[s] == t for s, t in zip(ps.tolist(), pt.tolist())))
    p = correct / len(ps) if len(ps) else 0.0
    r = correct / len(gold) if gold else 0.0
    f1 = 2 * p * r / (p + r) if p + r else 0.0
    return {"precision": p, "recall": r, "f1": f1, "predicted": int(len(ps)), "correct": correct}
