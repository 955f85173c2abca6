"""Reranker-score fusion and the reranker's candidate lists; Ray-free.

The cross-encoder scores only each source's top ``rerank.k`` candidates; the decoders keep the
retriever's whole candidate graph. ``fused_lists`` puts the two together (``fuse_lists``: a
reranked edge fuses its own logit, any other edge of that source its lowest reranked logit), and
``sinkhorn_candidates`` picks the candidates the reranker sees when ``rerank.candidates`` is
``sinkhorn`` (the sparse Sinkhorn decoder's top-k, with the pairs' cosines).
"""

from __future__ import annotations

import numpy as np

from hiea_ray.core import decode as dec


def fuse(retr: np.ndarray, rerank: np.ndarray, weight: float, scale: float) -> np.ndarray:
    """Fused score in cosine units: (1 - w) * cosine + w * scale * logit; NaN/-inf stay -inf."""
    with np.errstate(invalid="ignore"):  # 0 * inf where one side is off
        s = (1.0 - weight) * retr + weight * scale * rerank
    return np.where(np.isfinite(s), s, -np.inf).astype(np.float32)


def fuse_lists(
    idx: np.ndarray, score: np.ndarray, cand: np.ndarray, rerank: np.ndarray, weight: float, scale: float,
    by_target: bool = False,
) -> np.ndarray:
    """Fused scores for every edge of full-width candidate lists: the decoders keep the whole
    candidate graph, of which only the top ``rerank.k`` per source went through the cross-encoder.

    idx/score (r, k): lists in local indices, rows = sources (``by_target``: rows = targets, idx
    holds sources); cand/rerank (n, k'): each source's reranked candidates (local targets, -1
    padded) and their logits. A reranked edge fuses its own logit; any other edge of source s
    fuses s's lowest reranked logit (it ranked below all of them as a candidate); a source with no
    reranked edge keeps its retriever score."""
    r, k = idx.shape
    rows = np.repeat(np.arange(r, dtype=np.int64), k)
    s, t = (idx.ravel(), rows) if by_target else (rows, idx.ravel())
    ok_c = (cand >= 0) & np.isfinite(rerank)
    width = int(max(cand.max(initial=-1), t.max(initial=-1))) + 1
    c_rows = np.repeat(np.arange(len(cand), dtype=np.int64), cand.shape[1])
    keys = c_rows[ok_c.ravel()] * width + cand.ravel()[ok_c.ravel()]
    order = np.argsort(keys)
    keys, vals = keys[order], rerank.ravel()[ok_c.ravel()][order]
    low = np.where(ok_c, rerank, np.inf).min(axis=1) if cand.shape[1] else np.full(len(cand), np.inf)
    ok = s >= 0
    logit = np.full(r * k, np.inf, np.float32)
    logit[ok] = low[s[ok]]
    if len(keys):
        q = s[ok] * width + t[ok]
        pos = np.minimum(np.searchsorted(keys, q), len(keys) - 1)
        hit = keys[pos] == q
        logit[np.flatnonzero(ok)[hit]] = vals[pos[hit]]
    base = score.ravel().astype(np.float32)
    fused = np.where(np.isfinite(logit), fuse(base, np.where(np.isfinite(logit), logit, 0.0), weight, scale), base)
    return np.where(ok & np.isfinite(base), fused, -np.inf).astype(np.float32).reshape(r, k)


def fused_lists(s2t, s2t_score, t2s, t2s_score, cand, retr, rerank, weight: float, scale: float):
    """The decoders' lists with reranking: s2t/t2s (local rows, -1 padded) and their cosines,
    cand/retr/rerank (n, k') each source's reranked candidates (local targets), their cosines and
    logits -> (s2t, s2t_score, t2s, t2s_score) over the whole candidate graph with fused scores,
    each row sorted by score. The reranked edges (Sinkhorn candidates may lie outside the
    retriever's s2t list) are merged into the source's list first."""
    idx, score = dec.dedupe_rows(np.hstack([cand, s2t]), np.hstack([retr, s2t_score]))
    s2t, s2t_score = dec.sort_rows(idx, fuse_lists(idx, score, cand, rerank, weight, scale))
    t2s_score = fuse_lists(t2s, t2s_score, cand, rerank, weight, scale, by_target=True)
    t2s, t2s_score = dec.sort_rows(t2s, t2s_score)
    return s2t, s2t_score, t2s, t2s_score


def sinkhorn_candidates(s2t, s2t_score, t2s, t2s_score, m: int, k: int, tau: float, iters: int):
    """The sparse Sinkhorn decoder's top k per source (local targets, -1 padded) and the pairs'
    cosines (-inf on padding): what the reranker scores with ``rerank.candidates: sinkhorn``."""
    idx, _ = dec.sinkhorn(s2t, s2t_score, t2s, t2s_score, m, tau=tau, iters=iters, k=k)
    cos = dec.candidate_graph(s2t, s2t_score, t2s, t2s_score, m)
    rows = np.repeat(np.arange(len(idx)), idx.shape[1])
    ok = idx.ravel() >= 0
    score = np.full(idx.size, -np.inf, np.float32)
    score[ok] = np.asarray(cos[rows[ok], idx.ravel()[ok]]).ravel()
    return idx, score.reshape(idx.shape)
