"""Structure-aware re-ranking of candidate lists by neighbour consistency; Ray-free, memory O(n * k).

Local indices as in ``decode``: n sources, m targets; ``A_s`` (n, n) and ``A_t`` (m, m) are the
two KGs' undirected, unweighted adjacency (CSR, no self loops, built by ``adjacency``).

Given a current best target ``best_t[s]`` of every source and best source ``best_s[t]`` of every
target (-1: none), the consistency of a candidate pair (s, t) is

    c(s, t) = 1/2 * ( |{s' in N(s) : best_t[s'] in N(t)}| / max(1, |N(s)|)
                    + |{t' in N(t) : best_s[t'] in N(s)}| / max(1, |N(t)|) )

i.e. the share of s's neighbours already matched into t's neighbourhood, and the reverse. The
forward count is (A_s M A_t)[s, t] with M the (n, m) one-hot of ``best_t``; it is computed only at
the n * k candidate edges as a row dot product <(A_s M)[s], A_t[t]> (A_t symmetric), in chunks of
edges, so nothing n x m (nor the full A_s M A_t) is ever built: time and memory
O(sum over candidate edges of |N(s)| + |N(t)|), memory per chunk bounded by ``budget``.

``structure_sinkhorn`` iterates: best matches of the current transport plan -> consistency of
every candidate edge -> sparse Sinkhorn on similarity + beta * consistency (the base similarity
stays fixed; only the best matches move). Folding the signal into the similarity lets the
one-to-one competition of Sinkhorn use it; on zh_en validation links this beat re-ranking the
Sinkhorn lists by score + consistency afterwards (README, "structure-aware decoding").

Anchors. The adjacencies may span more entities than the candidate lists (the whole KGs while
the lists hold only the test sources and targets): ``src_rows`` / ``tgt_rows`` place the lists'
rows and local targets in them, and ``anchors`` are (adj_s row, adj_t row) pairs known to match
(the seed links) whose best match is held fixed. A test entity's neighbours are often seed
entities; without anchors they could never vouch for a candidate.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import scipy.sparse as sp

from hiea_ray.core.decode import sinkhorn


def adjacency(sorted_ids: np.ndarray, head: np.ndarray, tail: np.ndarray) -> sp.csr_matrix:
    """(n, n) undirected 0/1 CSR adjacency over ``sorted_ids`` from triples (head, tail) given as
    entity ids; triples with an end outside ``sorted_ids`` and self loops are dropped."""
    n = len(sorted_ids)
    head, tail = np.asarray(head, dtype=np.int64), np.asarray(tail, dtype=np.int64)
    if n == 0:
        return sp.csr_matrix((0, 0), dtype=np.float32)
    h = np.minimum(np.searchsorted(sorted_ids, head), n - 1)
    t = np.minimum(np.searchsorted(sorted_ids, tail), n - 1)
    ok = (sorted_ids[h] == head) & (sorted_ids[t] == tail) & (h != t)
    h, t = h[ok], t[ok]
    key = np.unique(np.concatenate([h * n + t, t * n + h]))  # both directions, no duplicates
    ones = np.ones(len(key), dtype=np.float32)
    return sp.csr_matrix((ones, (key // n, key % n)), shape=(n, n))


@dataclass
class SeedGraphs:
    """Both KGs' whole adjacency (rows: each KG's sorted entity ids) and the seed links as
    (adj_s row, adj_t row) anchors: what ``structure_sinkhorn`` needs besides the lists."""

    ids_s: np.ndarray
    ids_t: np.ndarray
    adj_s: sp.csr_matrix
    adj_t: sp.csr_matrix
    anchors: np.ndarray

    @classmethod
    def of(cls, pair, anchor_splits: list[str]) -> "SeedGraphs":
        """From a ``KGPair``; the links of ``anchor_splits`` (e.g. train, valid) are the anchors."""
        ent = pair.entities
        ids_s, ids_t = (np.sort(ent.filter(pc.equal(ent["kg"], g))["id"].to_numpy()) for g in (1, 2))
        head, tail = pair.rel_triples["head"].to_numpy(), pair.rel_triples["tail"].to_numpy()
        seed = pair.links.filter(pc.is_in(pair.links["split"], pa.array(anchor_splits, pa.string())))
        anchors = np.stack([np.searchsorted(ids_s, seed["src"].to_numpy()), np.searchsorted(ids_t, seed["tgt"].to_numpy())], 1)
        return cls(ids_s, ids_t, adjacency(ids_s, head, tail), adjacency(ids_t, head, tail), anchors)

    def rows(self, q: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """adj_s rows of source ids q and adj_t rows of target ids b (src_rows, tgt_rows)."""
        return np.searchsorted(self.ids_s, q), np.searchsorted(self.ids_t, b)


def best_targets(idx: np.ndarray, score: np.ndarray) -> np.ndarray:
    """(n,) each source's highest-scoring candidate target (-1 when it has none)."""
    s = np.where(idx >= 0, score, -np.inf)
    j = np.argmax(s, axis=1)
    best = idx[np.arange(len(idx)), j]
    return np.where(np.isfinite(s[np.arange(len(idx)), j]), best, -1)


def best_sources(idx: np.ndarray, score: np.ndarray, m: int) -> np.ndarray:
    """(m,) each target's highest-scoring source over the candidate edges (-1: in no list);
    ties go to the lowest source row."""
    n, k = idx.shape
    r = np.repeat(np.arange(n, dtype=np.int64), k)
    c, w = idx.ravel(), score.ravel()
    ok = (c >= 0) & np.isfinite(w)
    r, c, w = r[ok], c[ok], w[ok].astype(np.float64)
    out = np.full(m, -1, dtype=np.int64)
    if not len(r):
        return out
    # targets as rows of a CSR (a counting sort, columns = source rows ascending); shifted to > 0 so
    # the row argmax never picks an implicit zero; the first maximum = the lowest source row
    t = sp.csr_matrix((w - w.min() + 1.0, (c, r)), shape=(m, n))
    if t.nnz < len(r):  # a list repeats a target (not a retriever's): its best score counts, not their sum
        order = np.lexsort((-w, r, c))  # per (target, source) pair its best score first
        keep = np.r_[True, (c[order][1:] != c[order][:-1]) | (r[order][1:] != r[order][:-1])]
        r, c, w = r[order][keep], c[order][keep], w[order][keep]
        t = sp.csr_matrix((w - w.min() + 1.0, (c, r)), shape=(m, n))
    t.sort_indices()
    has = np.diff(t.indptr) > 0
    out[has] = np.asarray(t.argmax(axis=1)).ravel()[has]
    return out


def _one_hot(best: np.ndarray, n_cols: int) -> sp.csr_matrix:
    rows = np.flatnonzero(best >= 0)
    ones = np.ones(len(rows), dtype=np.float32)
    return sp.csr_matrix((ones, (rows, best[rows])), shape=(len(best), n_cols))


def _edge_dot(left: sp.csr_matrix, right: sp.csr_matrix, li: np.ndarray, ri: np.ndarray, budget: int) -> np.ndarray:
    """out[e] = <left[li[e]], right[ri[e]]> for every edge e, in chunks of edges whose gathered
    rows hold about ``budget`` entries (a hub listed by many sources cannot blow a chunk up)."""
    out = np.zeros(len(li), dtype=np.float32)
    if len(li) == 0:
        return out
    cost = np.cumsum(np.diff(left.indptr)[li] + np.diff(right.indptr)[ri] + 1)
    cuts = np.searchsorted(cost, np.arange(1, cost[-1] // budget + 1) * budget, side="right")
    bounds = np.unique(np.r_[0, cuts, len(li)])
    for a, b in zip(bounds[:-1], bounds[1:]):
        x, y = left[li[a:b]], right[ri[a:b]]
        out[a:b] = np.asarray(x.multiply(y).sum(axis=1)).ravel()
    return out


def consistency(
    idx: np.ndarray,
    best_t: np.ndarray,
    best_s: np.ndarray,
    adj_s: sp.csr_matrix,
    adj_t: sp.csr_matrix,
    budget: int = 1 << 22,
    src_rows: np.ndarray | None = None,
) -> np.ndarray:
    """(n, k) neighbour consistency c(s, idx[s, j]) of every candidate edge (0 at padding);
    idx, best_t and best_s index the adjacencies' rows; list row i is adj_s row ``src_rows[i]``
    (default i); ``budget``: sparse entries gathered per chunk of edges (bounds the working memory)."""
    n, k = idx.shape
    m = adj_t.shape[0]
    adj_s, adj_t = sp.csr_matrix(adj_s, dtype=np.float32), sp.csr_matrix(adj_t, dtype=np.float32)
    src = np.arange(n, dtype=np.int64) if src_rows is None else np.asarray(src_rows, dtype=np.int64)
    rows = np.repeat(src, k)
    cols = idx.ravel()
    ok = cols >= 0
    rows, cols = rows[ok], cols[ok]
    fwd = _edge_dot(adj_s @ _one_hot(best_t, m), adj_t, rows, cols, budget)  # s' in N(s), best in N(t)
    rev = _edge_dot(adj_t @ _one_hot(best_s, adj_s.shape[0]), adj_s, cols, rows, budget)  # t' in N(t), best in N(s)
    deg_s = np.maximum(np.diff(adj_s.indptr), 1)
    deg_t = np.maximum(np.diff(adj_t.indptr), 1)
    out = np.zeros(n * k, dtype=np.float32)
    out[ok] = 0.5 * (fwd / deg_s[rows] + rev / deg_t[cols])
    return out.reshape(n, k)


def best_matches(idx, score, m, src, tgt, n_s, n_t, anchors):
    """Best target of every adj_s row and best source of every adj_t row (-1: none) from the
    lists (local targets) mapped through src / tgt, the anchors held fixed."""
    bt, bs = best_targets(idx, score), best_sources(idx, score, m)
    best_t = np.full(n_s, -1, dtype=np.int64)
    best_t[src] = np.where(bt >= 0, tgt[np.maximum(bt, 0)], -1)
    best_s = np.full(n_t, -1, dtype=np.int64)
    best_s[tgt] = np.where(bs >= 0, src[np.maximum(bs, 0)], -1)
    best_t[anchors[:, 0]] = anchors[:, 1]
    best_s[anchors[:, 1]] = anchors[:, 0]
    return best_t, best_s


def structure_sinkhorn(
    s2t: np.ndarray,
    s2t_score: np.ndarray,
    t2s: np.ndarray,
    t2s_score: np.ndarray,
    adj_s: sp.csr_matrix,
    adj_t: sp.csr_matrix,
    rounds: int = 2,
    beta: float = 0.2,
    tau: float = 0.03,
    iters: int = 100,
    src_rows: np.ndarray | None = None,
    tgt_rows: np.ndarray | None = None,
    anchors: np.ndarray | None = None,
    start: tuple[np.ndarray, np.ndarray] | None = None,
    state: dict | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Sparse Sinkhorn with neighbour consistency folded into the similarity, ``rounds`` rounds:
    best matches of the current plan -> consistency of every edge of both candidate lists ->
    Sinkhorn on similarity + beta * consistency. Returns the last plan's (n, k) lists.

    s2t (n, k) / t2s (m, k'): the candidate lists in local indices with their similarities, as
    for ``decode.sinkhorn``; ``src_rows`` (n,) / ``tgt_rows`` (m,): their adj_s / adj_t rows
    (default: the identity); ``anchors`` (a, 2): fixed (adj_s row, adj_t row) matches, e.g. the
    seed links; ``start``: the plain Sinkhorn lists when already computed. ``state`` (when given)
    receives the last round's inputs: ``best_t`` / ``best_s`` (the matches its consistency read) and
    its Sinkhorn's target scaling ``v`` — what decodes one more source row exactly (``core.online``)."""
    n, m = len(s2t), len(t2s)
    cur = start if start is not None else sinkhorn(s2t, s2t_score, t2s, t2s_score, m, tau=tau, iters=iters)
    if rounds <= 0:
        return cur
    src = np.arange(n, dtype=np.int64) if src_rows is None else np.asarray(src_rows, dtype=np.int64)
    tgt = np.arange(m, dtype=np.int64) if tgt_rows is None else np.asarray(tgt_rows, dtype=np.int64)
    anchors = np.zeros((0, 2), dtype=np.int64) if anchors is None else np.asarray(anchors, dtype=np.int64)
    g_s2t = np.where(s2t >= 0, tgt[np.maximum(s2t, 0)], -1)  # the lists in adjacency rows
    g_t2s = np.where(t2s >= 0, src[np.maximum(t2s, 0)], -1)
    b = np.float32(beta)
    for _ in range(rounds):
        best_t, best_s = best_matches(*cur, m, src, tgt, adj_s.shape[0], adj_t.shape[0], anchors)
        c_s = consistency(g_s2t, best_t, best_s, adj_s, adj_t, src_rows=src)
        c_t = consistency(g_t2s, best_s, best_t, adj_t, adj_s, src_rows=tgt)  # c is symmetric
        f_s = np.where(s2t >= 0, s2t_score + b * c_s, -np.inf).astype(np.float32)
        f_t = np.where(t2s >= 0, t2s_score + b * c_t, -np.inf).astype(np.float32)
        cur = sinkhorn(s2t, f_s, t2s, f_t, m, tau=tau, iters=iters, state=state)
        if state is not None:
            state["best_t"], state["best_s"] = best_t, best_s
    return cur
