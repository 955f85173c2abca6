"""HIEA's certainty router: confidence features of each source's decoded lists, a classifier of
P(the small model's top-1 is right), and the threshold that makes the certain set precise; Ray-free.

Features (``confidence_features``), per source, for each decoder's ranked list (top1, csls,
sinkhorn, structure, ...): the top-1 score and its margin over the top-2 (for Sinkhorn-type
decoders the score is the transport plan's mass of the best match), whether the decoder's top-1
agrees with the primary decoder's; then whether the primary top-1 is a mutual best (the target's
own list ranks the source first), and, when given, the neighbour consistency of the primary
match, the entity's degree (long tail) and its name-only similarity. Missing values are NaN
(the gradient-boosting classifier handles them).

Training labels must come from sources whose lists were made exactly as the test sources' are:
links that served as structure anchors have trivially right answers (``heldout_split``: which
split to label, and the anchors to decode it with). ``choose_threshold`` picks the lowest
probability that keeps the certain set's precision at ``target_precision`` on labelled sources
(out-of-fold predictions, ``Router.cross_fit``), optionally capped so that at most
``max_llm_fraction`` of the sources go to the LLM.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def _top2(idx: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(best target, its score, margin to the second) of each row; NaN where missing."""
    s = np.where(idx >= 0, score, -np.inf).astype(np.float64)
    order = np.argsort(-s, axis=1, kind="stable")[:, :2]
    r = np.arange(len(s))
    s1 = s[r, order[:, 0]]
    s2 = s[r, order[:, 1]] if s.shape[1] > 1 else np.full(len(s), -np.inf)
    best = np.where(np.isfinite(s1), idx[r, order[:, 0]], -1)
    margin = np.where(np.isfinite(s2), s1 - s2, np.nan)
    return best, np.where(np.isfinite(s1), s1, np.nan), np.where(np.isfinite(s1), margin, np.nan)


def confidence_features(
    lists: dict[str, tuple[np.ndarray, np.ndarray]],
    primary: str,
    t2s: np.ndarray | None = None,
    t2s_score: np.ndarray | None = None,
    consistency: np.ndarray | None = None,
    degree: np.ndarray | None = None,
    name_similarity: np.ndarray | None = None,
) -> tuple[np.ndarray, list[str], np.ndarray]:
    """-> (X (n, f) float32, feature names, the primary decoder's top-1 per source (local target)).

    lists: decoder -> (idx (n, k) local targets, -1 padded; score (n, k)); t2s / t2s_score: each
    target's ranked sources (local rows), for the mutual-best feature."""
    best, cols, names = {}, [], []
    for name, (idx, score) in lists.items():
        b, s1, m = _top2(idx, score)
        best[name] = b
        cols += [s1, m]
        names += [f"{name}_top1", f"{name}_margin"]
    p = best[primary]
    for name in lists:
        if name != primary:
            cols.append((best[name] == p).astype(np.float64))
            names.append(f"{name}_agrees")
    if t2s is not None:
        tb, _, _ = _top2(t2s, t2s_score)
        mutual = np.where(p >= 0, tb[np.maximum(p, 0)] == np.arange(len(p)), False)
        cols.append(mutual.astype(np.float64))
        names.append("mutual_best")
    for name, extra in (("consistency", consistency), ("log_degree", None if degree is None else np.log1p(degree)),
                        ("name_similarity", name_similarity)):
        if extra is not None:
            cols.append(np.asarray(extra, np.float64))
            names.append(name)
    return np.stack(cols, axis=1).astype(np.float32), names, p


def heldout_split(anchor_splits: list[str]) -> tuple[str, list[str]]:
    """(the link split whose sources label the router, the anchors to decode them with): the
    validation links, decoded without themselves as anchors, so their features are made as the
    test sources' are (test links are never anchors)."""
    return "valid", [s for s in anchor_splits if s != "valid"]


def choose_threshold(prob: np.ndarray, right: np.ndarray, target_precision: float,
                     max_llm_fraction: float | None = None) -> float:
    """The lowest probability t such that sources with P >= t are right at ``target_precision``
    on these labelled sources (inf: none is certain). With ``max_llm_fraction``, t is lowered
    where needed so that at most that share falls below it."""
    order = np.argsort(-prob, kind="stable")
    p, y = prob[order], right[order].astype(np.float64)
    prec = np.cumsum(y) / np.arange(1, len(y) + 1)
    ok = np.flatnonzero(prec >= target_precision)
    # the largest certain set at the target precision; cut only between distinct probabilities
    cut = -1
    for m in ok[::-1]:
        if m == len(p) - 1 or p[m] > p[m + 1]:
            cut = int(m)
            break
    t = float(p[cut]) if cut >= 0 else float("inf")
    if max_llm_fraction is not None and len(p):
        need = int(np.ceil(len(p) * (1.0 - max_llm_fraction))) - 1  # at least this many certain
        if need >= 0 and (cut < need):
            t = float(p[need])
    return t


@dataclass
class Router:
    """P(small model right) from confidence features, by scikit-learn's gradient boosting."""

    seed: int = 0
    model: object = None

    def _new(self):
        from sklearn.ensemble import HistGradientBoostingClassifier

        return HistGradientBoostingClassifier(max_iter=200, learning_rate=0.05, max_leaf_nodes=15,
                                              l2_regularization=1.0, random_state=self.seed)

    def fit(self, X: np.ndarray, right: np.ndarray) -> "Router":
        y = np.asarray(right, dtype=int)
        if len(np.unique(y)) < 2:
            raise ValueError("the router needs labelled sources the small model gets right and wrong")
        self.model = self._new().fit(X, y)
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        return self.model.predict_proba(X)[:, 1]

    def cross_fit(self, X: np.ndarray, right: np.ndarray, folds: int = 5) -> np.ndarray:
        """Out-of-fold probabilities of the labelled sources (what the threshold is chosen on)."""
        from sklearn.model_selection import StratifiedKFold

        y = np.asarray(right, dtype=int)
        out = np.zeros(len(y), np.float64)
        k = max(2, min(folds, int(np.bincount(y, minlength=2).min())))
        for tr, te in StratifiedKFold(k, shuffle=True, random_state=self.seed).split(X, y):
            out[te] = self._new().fit(X[tr], y[tr]).predict_proba(X[te])[:, 1]
        return out
