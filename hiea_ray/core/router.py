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
links that served as structure anchors have trivially right answers (``anchor_folds``: each fold
of the seed links is labelled from a decode whose anchors are the other folds). ``choose_threshold`` picks the lowest
probability that keeps the certain set's precision at ``target_precision`` on labelled sources
(out-of-fold predictions, ``Router.cross_fit``), optionally capped so that at most
``max_llm_fraction`` of the sources go to the LLM.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def top2(idx: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
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
    mutual: np.ndarray | None = None,
) -> tuple[np.ndarray, list[str], np.ndarray]:
    """-> (X (n, f) float32, feature names, the primary decoder's top-1 per source (local target)).

    lists: decoder -> (idx (n, k) local targets, -1 padded; score (n, k)); t2s / t2s_score: each
    target's ranked sources (local rows), for the mutual-best feature."""
    best, cols, names = {}, [], []
    for name, (idx, score) in lists.items():
        b, s1, m = top2(idx, score)
        best[name] = b
        cols += [s1, m]
        names += [f"{name}_top1", f"{name}_margin"]
    p = best[primary]
    for name in lists:
        if name != primary:
            cols.append((best[name] == p).astype(np.float64))
            names.append(f"{name}_agrees")
    if t2s is not None:
        tb, _, _ = top2(t2s, t2s_score)
        mutual = np.where(p >= 0, tb[np.maximum(p, 0)] == np.arange(len(p)), False)
    if mutual is not None:
        cols.append(np.asarray(mutual).astype(np.float64))
        names.append("mutual_best")
    for name, extra in (("consistency", consistency), ("log_degree", None if degree is None else np.log1p(degree)),
                        ("name_similarity", name_similarity)):
        if extra is not None:
            cols.append(np.asarray(extra, np.float64))
            names.append(name)
    return np.stack(cols, axis=1).astype(np.float32), names, p


def anchor_folds(n: int, folds: int, seed: int) -> np.ndarray:
    """Fold (0..folds-1) of each of n seed links, seeded: fold j's sources are labelled from a
    decode whose anchors are the other folds' links, so their features are made as the test
    sources' are (a test link is never an anchor; an anchor's own answer is trivially right)."""
    f = np.arange(n) % max(1, folds)
    return np.random.default_rng(seed).permutation(f)


def primary_decoder(primary: str, decoders: list[str]) -> str:
    """``route.primary``: "auto" = structure, else sinkhorn, else the last decoder."""
    if primary != "auto":
        return primary
    for name in ("structure", "sinkhorn"):
        if name in decoders:
            return name
    return decoders[-1]


def neighbour_consistency(best: np.ndarray, src_rows: np.ndarray, adj_s, adj_t, anchors: np.ndarray) -> np.ndarray:
    """Per source: the share of its neighbours whose own match (anchors, else the sources' best
    targets ``best``, -1 = none; rows of adj_t) is a neighbour of its best target; NaN when it has
    no matched neighbour. Sparse: O(edges)."""
    import scipy.sparse as sp

    n_s, n_t = adj_s.shape[0], adj_t.shape[0]
    m_row = np.concatenate([src_rows[best >= 0], anchors[:, 0]]) if len(anchors) else src_rows[best >= 0]
    m_col = np.concatenate([best[best >= 0], anchors[:, 1]]) if len(anchors) else best[best >= 0]
    m_row, keep = np.unique(m_row, return_index=True)  # one match per source row (anchors win ties last)
    M = sp.csr_matrix((np.ones(len(m_row)), (m_row, m_col[keep])), shape=(n_s, n_t))
    nb = (adj_s[src_rows] > 0).astype(np.float64)
    mapped = nb @ M  # (n, n_t): the matches of each source's neighbours
    matched = np.asarray(mapped.sum(1)).ravel()
    tgt = adj_t[np.maximum(best, 0)] > 0
    agree = np.asarray(mapped.multiply(tgt).sum(1)).ravel()
    out = np.where(matched > 0, agree / np.maximum(matched, 1), np.nan)
    return np.where(best >= 0, out, np.nan)


def certain_set_report(prob: np.ndarray, right: np.ndarray, threshold: float) -> dict:
    """Share certain, and precision / recall of the certain set (recall: of the right answers)."""
    c = prob >= threshold
    y = np.asarray(right, bool)
    return {"sources": int(len(y)), "certain": int(c.sum()), "certain_fraction": round(float(c.mean()), 4) if len(y) else 0.0,
            "precision": round(float(y[c].mean()), 4) if c.any() else None,
            "recall": round(float((c & y).sum() / max(y.sum(), 1)), 4),
            "small_model_hits@1": round(float(y.mean()), 4) if len(y) else None}


def coverage_curve(prob: np.ndarray, right: np.ndarray, points: int = 21) -> list[dict]:
    """Precision of the certain set when the top share s of sources (by P) is certain, s = 0..1."""
    order = np.argsort(-prob, kind="stable")
    y = np.asarray(right, np.float64)[order]
    out = []
    for s in np.linspace(0, 1, points):
        m = int(round(s * len(y)))
        out.append({"certain_fraction": round(float(s), 3), "precision": round(float(y[:m].mean()), 4) if m else None})
    return out


def choose_threshold(prob: np.ndarray, right: np.ndarray, target_precision: float,
                     max_llm_fraction: float | None = None) -> float:
    """The router's cut: ``metrics.precision_threshold`` (the lowest probability whose kept labelled
    sources are right at ``target_precision``; inf: none is certain), lowered where needed so that
    at most ``max_llm_fraction`` of the sources fall below it."""
    from hiea_ray.core.metrics import precision_threshold

    t, _ = precision_threshold(prob, right, target_precision)
    if max_llm_fraction is not None and len(prob):
        p = np.sort(np.asarray(prob))[::-1]
        need = int(np.ceil(len(p) * (1.0 - max_llm_fraction))) - 1  # at least need + 1 certain
        if need >= 0 and int((p >= t).sum()) <= need:
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
        if len(np.unique(y)) < 2:  # the small model is always right (or always wrong) on them
            from sklearn.dummy import DummyClassifier

            self.model = DummyClassifier(strategy="constant", constant=int(y[0])).fit(X, y)
            return self
        self.model = self._new().fit(X, y)
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        p = self.model.predict_proba(X)
        return p[:, list(self.model.classes_).index(1)] if 1 in self.model.classes_ else np.zeros(len(X))

    def cross_fit(self, X: np.ndarray, right: np.ndarray, folds: int = 5) -> np.ndarray:
        """Out-of-fold probabilities of the labelled sources (what the threshold is chosen on)."""
        from sklearn.model_selection import StratifiedKFold

        y = np.asarray(right, dtype=int)
        if len(np.unique(y)) < 2:
            return np.full(len(y), float(y[0]) if len(y) else 0.0)
        out = np.zeros(len(y), np.float64)
        k = max(2, min(folds, int(np.bincount(y, minlength=2).min())))
        for tr, te in StratifiedKFold(k, shuffle=True, random_state=self.seed).split(X, y):
            out[te] = self._new().fit(X[tr], y[tr]).predict_proba(X[te])[:, 1]
        return out
