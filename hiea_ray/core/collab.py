"""Pseudo-seeds for collaboration rounds (``collab``): which of a round's answers the next one
trains on and anchors with. Numpy only; ``hiea_ray.collab`` reads the run folders and runs rounds.
"""

from __future__ import annotations

import numpy as np


def mutual_best(q: np.ndarray, cand: np.ndarray, score: np.ndarray) -> np.ndarray:
    """(n,) per source row of a decoder's ranked lists (ids ``cand``, -1 = padding), its top target
    when the source is also that target's best-scoring source over all lists, else -1."""
    n, k = cand.shape
    top = cand[:, 0] if k else np.full(n, -1, np.int64)
    s = np.repeat(np.arange(n), k)
    t, w = cand.ravel(), score.ravel()
    ok = (t >= 0) & np.isfinite(w)
    s, t, w = s[ok], t[ok], w[ok]
    order = np.lexsort((s, -w, t))  # per target: highest score first, ties to the lowest row
    t, s = t[order], s[order]
    first = np.r_[True, t[1:] != t[:-1]]
    best_src = dict(zip(t[first].tolist(), s[first].tolist()))
    return np.array([tt if tt >= 0 and best_src.get(int(tt)) == i else -1 for i, tt in enumerate(top.tolist())],
                    dtype=np.int64)


def select(src: np.ndarray, answer: np.ndarray, conf: np.ndarray, keep: np.ndarray, seed_src: np.ndarray,
           seed_tgt: np.ndarray, cap: int | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(src, tgt, conf) of the pseudo-seeds: the kept answers (``keep``: certain / mutual best), never
    a seed's source or target, at most one per source and per target (the most confident wins), the
    ``cap`` most confident at most; sorted by source."""
    ok = keep & (answer >= 0) & ~np.isin(src, seed_src) & ~np.isin(answer, seed_tgt)
    s, a, c = src[ok], answer[ok], conf[ok]
    order = np.lexsort((s, -c))
    s, a, c = s[order], a[order], c[order]
    _, first_s = np.unique(s, return_index=True)
    mask = np.zeros(len(s), bool)
    mask[first_s] = True
    s, a, c = s[mask], a[mask], c[mask]  # still in confidence order
    _, first_t = np.unique(a, return_index=True)
    first_t = np.sort(first_t)
    s, a, c = s[first_t], a[first_t], c[first_t]
    if cap is not None:
        s, a, c = s[:cap], a[:cap], c[:cap]
    order = np.argsort(s, kind="stable")
    return s[order], a[order], c[order]
