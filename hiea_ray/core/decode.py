"""Decoders over sparse top-k candidate lists; Ray-free, memory O(n * k), never n x m.

Inputs are local indices: n source rows, m target rows.
- ``s2t_idx``/``s2t_score`` (n, k): each source's top-k targets (from retrieval), -1 padded.
- ``t2s_idx``/``t2s_score`` (m, k): each target's top-k sources (the reverse search).

Decoders return a ranked list per source, (n, k) indices and scores, best first:
- ``top1``: the retrieval order itself (cosine).
- ``csls``: CSLS(s, t) = 2 cos(s, t) - r_T(s) - r_S(t), where r_T(s) is the mean cosine of s's
  ``csls_k`` nearest targets and r_S(t) the mean cosine of t's nearest sources (both read off the
  candidate lists; Conneau et al. 2018).
- ``sinkhorn``: entropic optimal transport restricted to the union candidate graph
  (s2t edges plus reversed t2s edges) as a scipy sparse matrix: Sinkhorn scaling of
  K = exp((cos - 1) / tau); rows end normalized, so a score is the share of s's mass sent to t.

``greedy_match`` turns ranked lists into a one-to-one alignment (exactly the greedy matching by
descending score, computed as rounds of locally dominant edges, vectorized). ``hungarian_blocks``
is the exact maximum-weight matching on each connected component of the candidate graph
(scipy's ``linear_sum_assignment`` on the component's dense block), greedy on components too
large to densify.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from scipy.optimize import linear_sum_assignment
from scipy.sparse.csgraph import connected_components


def sort_rows(idx: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    order = np.argsort(-score, axis=1, kind="stable")
    return np.take_along_axis(idx, order, 1), np.take_along_axis(score, order, 1)


def dedupe_rows(idx: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Lists with a target listed twice in a row keep its first entry (the others: -1, -inf)."""
    order = np.argsort(idx, axis=1, kind="stable")
    srt = np.take_along_axis(idx, order, 1)
    dup = np.zeros(idx.shape, dtype=bool)
    dup[:, 1:] = (srt[:, 1:] == srt[:, :-1]) & (srt[:, 1:] >= 0)
    drop = np.zeros(idx.shape, dtype=bool)
    np.put_along_axis(drop, order, dup, 1)
    return np.where(drop, -1, idx), np.where(drop, -np.inf, score).astype(score.dtype)


def topk_mean(score: np.ndarray, k: int) -> np.ndarray:
    s = score[:, :k]
    ok = np.isfinite(s)
    total = np.where(ok, s, 0.0).sum(axis=1)
    return (total / np.maximum(ok.sum(axis=1), 1)).astype(np.float32)  # rows without candidates: 0


def csls(s2t_idx, s2t_score, t2s_idx, t2s_score, k: int = 10):
    """(n, k) CSLS-reranked candidate lists. Candidate lists must be sorted best-first."""
    return csls_rows(s2t_idx, s2t_score, topk_mean(t2s_score, k), k)


def csls_rows(s2t_idx, s2t_score, r_tgt: np.ndarray, k: int = 10):
    """CSLS of source rows given the targets' r_T (``topk_mean`` of their own lists): one more
    row is scored exactly as ``csls`` scores the rows of a whole protocol."""
    r_src = topk_mean(s2t_score, k)
    valid = s2t_idx >= 0
    rt = np.where(valid, r_tgt[np.where(valid, s2t_idx, 0)], 0.0)
    new = np.where(valid, 2 * s2t_score - r_src[:, None] - rt, -np.inf).astype(np.float32)
    return sort_rows(s2t_idx, new)


def candidate_graph(s2t_idx, s2t_score, t2s_idx, t2s_score, m: int, block: int = 1 << 16) -> sp.csr_matrix:
    """Union of both directions' candidate edges as an (n, m) CSR matrix of cosines, column-sorted:
    each pair once, with its first score in the order s2t lists then t2s lists (a pair in both
    directions keeps its s2t score). Built per block of ``block`` source rows (no sort of every
    edge at once: the peak beyond the result is the t2s edges' positions and one block)."""
    n, k2 = s2t_idx.shape[0], t2s_idx.shape[1]
    # the t2s edges grouped by their source row; the stable order keeps each target list's order
    src2 = t2s_idx.ravel()
    flat = t2s_score.ravel()
    pos2 = np.flatnonzero((src2 >= 0) & np.isfinite(flat))
    pos2 = pos2[np.argsort(src2[pos2], kind="stable")]
    ptr2 = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.bincount(src2[pos2], minlength=n), out=ptr2[1:])

    def reverse(lo: int, hi: int):
        p = pos2[ptr2[lo]:ptr2[hi]]
        return np.repeat(np.arange(hi - lo, dtype=np.int64), np.diff(ptr2[lo:hi + 1])), p // k2, flat[p]

    return graph_of(s2t_idx, s2t_score, m, len(pos2), reverse, block)


def graph_of(s2t_idx, s2t_score, m: int, n_reverse: int, reverse, block: int = 1 << 16) -> sp.csr_matrix:
    """``candidate_graph`` from the s2t lists and the t2s edges given per block of source rows:
    ``reverse(lo, hi)`` -> (row - lo, target, score) of the t2s edges whose source row is in [lo, hi),
    grouped by row, each target list's order kept (``n_reverse`` of them in all)."""
    n, k1 = s2t_idx.shape
    cap = int(np.count_nonzero(s2t_idx >= 0)) + n_reverse
    itype = np.int32 if max(cap, m, n) < 2**31 else np.int64
    indptr = np.zeros(n + 1, dtype=itype)
    indices = np.empty(cap, dtype=itype)
    data = np.empty(cap, dtype=np.float64)
    fill = 0
    for lo in range(0, n, block):
        hi = min(n, lo + block)
        ac, av = s2t_idx[lo:hi].ravel(), s2t_score[lo:hi].ravel()
        ok = (ac >= 0) & np.isfinite(av)
        br, bt, bv = reverse(lo, hi)
        rows = np.concatenate([np.repeat(np.arange(hi - lo, dtype=np.int64), k1)[ok], br])
        key = rows * m + np.concatenate([ac[ok], bt])
        key, first = np.unique(key, return_index=True)  # stable: each pair's first occurrence
        val = np.concatenate([av[ok], bv])[first]
        indices[fill:fill + len(key)] = key % m
        data[fill:fill + len(key)] = val
        np.cumsum(np.bincount(key // m, minlength=hi - lo), out=indptr[lo + 1:hi + 1])
        indptr[lo + 1:hi + 1] += fill
        fill += len(key)
    data.resize(fill, refcheck=False)  # shrinks in place (the pairs both directions share)
    indices.resize(fill, refcheck=False)
    g = sp.csr_matrix((data, indices, indptr), shape=(n, m))
    g.has_sorted_indices = True
    return g


def sinkhorn(s2t_idx, s2t_score, t2s_idx, t2s_score, m: int, tau: float = 0.05, iters: int = 50, k: int | None = None,
             state: dict | None = None, rows: int | None = None):
    """(n, k) candidate lists ranked by the transport plan on the sparse candidate graph.

    The solve ends on a row normalization, so a row of the plan is K[i, j] v[j] / sum_j K[i, j] v[j]
    over the row's edges: ``state`` (when given) receives the target scaling ``v`` (m,), with which
    one more source row is decoded exactly as this solve decoded its rows (``core.online``).
    ``rows``: the column sums' block (``column_blocks``; default ``SUM_ROWS``)."""
    g = kernel(candidate_graph(s2t_idx, s2t_score, t2s_idx, t2s_score, m), tau)
    v = np.ones(g.shape[1])
    blocks = column_blocks(g, 0, rows)
    for _ in range(iters):
        v = reciprocal(add_in_order(column_sums(blocks, reciprocal(g @ v)), m))
    del blocks
    if state is not None:
        state["v"] = v
    return plan_topk(g, v, k or s2t_idx.shape[1])


SUM_ROWS = 1 << 16  # the rows of one block of Sinkhorn's column sums (see column_blocks)


def column_blocks(g: sp.csr_matrix, lo: int = 0, rows: int | None = None) -> list[tuple[int, int, sp.csr_matrix]]:
    """Sinkhorn's column sums in a fixed order: the rows of ``g`` in blocks of ``rows`` (counted
    from global row ``lo``, a multiple of ``rows``), each block's transpose. A column's sum is each
    block's partial sum, added block by block from zero: the same floating-point additions whether
    one process holds every block or shards hold them (``core.sharded``)."""
    rows = rows or SUM_ROWS
    if lo % rows:
        raise ValueError(f"a shard starts at row {lo}, not at a multiple of {rows}")
    n = g.shape[0]
    return [(a, min(n, a + rows), g[a:a + rows].T.tocsr()) for a in range(0, n, rows)]


def column_sums(blocks, u: np.ndarray) -> list[np.ndarray]:
    """Each block's partial column sums of diag(u) K (``u`` over the blocks' rows, from their first)."""
    return [gt @ u[a - blocks[0][0]:z - blocks[0][0]] for a, z, gt in blocks]


def add_in_order(partials, m: int) -> np.ndarray:
    """The blocks' partial sums added from zero, in block order."""
    total = np.zeros(m)
    for p in partials:
        total += p
    return total


def kernel(g: sp.csr_matrix, tau: float) -> sp.csr_matrix:
    """The candidate graph's cosines -> exp((cos - 1) / tau) in place (cosines <= 1: no overflow;
    float64 keeps the small values)."""
    g.data = np.exp((g.data - 1.0) / tau)
    return g


def reciprocal(x: np.ndarray) -> np.ndarray:
    """1 / x where x > 0, else 0 (a row or column without edges keeps no mass)."""
    return np.divide(1.0, x, out=np.zeros_like(x), where=x > 0)


def plan_topk(g: sp.csr_matrix, v: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The plan's top k per row after a last row normalization (each source's scores sum to 1):
    diag(u) K diag(v), scaled in place (no extra copies of the edge arrays)."""
    u = reciprocal(g @ v)
    g.data *= np.repeat(u, np.diff(g.indptr))
    g.data *= v[g.indices]
    return csr_topk(g, k)


def transpose_lists(idx: np.ndarray, score: np.ndarray, m: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Source lists (n, k) -> each target's best k sources among the same edges, (m, k) best first."""
    n = idx.shape[0]
    r = np.repeat(np.arange(n, dtype=np.int64), idx.shape[1])
    c, v = idx.ravel(), score.ravel()
    ok = (c >= 0) & np.isfinite(v)
    mat = sp.csr_matrix((v[ok].astype(np.float64), (c[ok], r[ok])), shape=(m, n))
    return csr_topk(mat, k)


def csr_topk(mat: sp.csr_matrix, k: int, width: int = 256, chunk: int = 1 << 16) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the k largest entries of a CSR matrix as padded (n, k) index/score arrays; ties
    go to the lower column. Rows of at most ``width`` entries are sorted as dense blocks of
    ``chunk`` rows (a row-wise stable argsort: no global sort of every entry); longer rows (hubs)
    by one lexsort over their entries."""
    mat.sort_indices()
    n = mat.shape[0]
    counts = np.diff(mat.indptr)
    idx = np.full((n, k), -1, dtype=np.int64)
    score = np.full((n, k), -np.inf, dtype=np.float32)
    short = np.flatnonzero((counts > 0) & (counts <= width))
    for part in np.array_split(short, -(-len(short) // chunk)) if len(short) else []:
        c = counts[part]
        pos = np.arange(int(c.max()))
        valid = pos[None, :] < c[:, None]
        flat = mat.indptr[part][:, None] + np.minimum(pos[None, :], c[:, None] - 1)
        d = np.where(valid, mat.data[flat], -np.inf)
        o = np.argsort(-d, axis=1, kind="stable")[:, :k]  # stable: ties keep the column order
        ok = np.take_along_axis(valid, o, 1)
        idx[part, : o.shape[1]] = np.where(ok, mat.indices[np.take_along_axis(flat, o, 1)], -1)
        score[part, : o.shape[1]] = np.where(ok, np.take_along_axis(d, o, 1), -np.inf)
    long = np.flatnonzero(counts > width)
    if len(long):
        sub = mat[long]
        sub_counts = np.diff(sub.indptr)
        rows = np.repeat(np.arange(len(long)), sub_counts)
        order = np.lexsort((sub.indices, -sub.data, rows))
        rank = np.arange(len(order)) - sub.indptr[rows[order]]
        keep = order[rank < k]
        r = rows[keep]
        kept = np.minimum(sub_counts, k)
        pos = np.arange(len(keep)) - np.repeat(kept.cumsum() - kept, kept)
        idx[long[r], pos] = sub.indices[keep]
        score[long[r], pos] = sub.data[keep]
    return idx, score


def greedy_match(idx: np.ndarray, score: np.ndarray, threshold: float | None = None):
    """One-to-one matching: greedy by descending score over the candidate edges.

    Returns (src_rows, tgt_cols, scores) of the matched pairs. Edges below ``threshold`` are never
    matched (the source abstains: a dangling entity).
    """
    n, k = idx.shape
    r = np.repeat(np.arange(n), k)
    c = idx.ravel()
    w = score.ravel().astype(np.float64)
    ok = (c >= 0) & np.isfinite(w)
    if threshold is not None:
        ok &= w >= threshold
    r, c, w = r[ok], c[ok], w[ok]
    order = np.lexsort((c, r, -w))  # global order: score desc, ties by row then col
    r, c, w = r[order], c[order], w[order]
    alive = np.ones(len(r), dtype=bool)
    out_r, out_c, out_w = [], [], []
    while alive.any():
        pos = np.flatnonzero(alive)
        # first alive edge per row / per column in the global order = that row's / column's best
        _, fr = np.unique(r[pos], return_index=True)
        _, fc = np.unique(c[pos], return_index=True)
        row_best = np.zeros(len(pos), dtype=bool)
        row_best[fr] = True
        col_best = np.zeros(len(pos), dtype=bool)
        col_best[fc] = True
        dom = pos[row_best & col_best]
        out_r.append(r[dom])
        out_c.append(c[dom])
        out_w.append(w[dom])
        used_r = np.zeros(n, dtype=bool)
        used_r[r[dom]] = True
        used_c = np.zeros(int(c.max()) + 1, dtype=bool)
        used_c[c[dom]] = True
        alive[pos] = ~(used_r[r[pos]] | used_c[c[pos]])
    if not out_r:
        e = np.array([], dtype=np.int64)
        return e, e, np.array([], dtype=np.float64)
    return np.concatenate(out_r), np.concatenate(out_c), np.concatenate(out_w)


def hungarian_blocks(idx: np.ndarray, score: np.ndarray, threshold: float | None = None, max_block: int = 2000):
    """One-to-one matching of maximum total score, solved per connected component of the candidate
    graph (edges with a finite score >= ``threshold``; below it the source abstains, as in
    ``greedy_match``). A component of r sources x c targets with r * c <= max_block ** 2 is
    solved exactly by ``linear_sum_assignment`` on its dense block (non-edges weigh 0 and are
    dropped from the result); larger components fall back to ``greedy_match``.

    Weights are the scores, shifted up by the lowest score when some are <= 0 (csls), so every
    edge weighs > 0: like greedy, the result is then a maximal matching (no implicit abstention)
    and, for positive scores, its total score is >= greedy's. Returns (src_rows, tgt_cols,
    scores) like ``greedy_match``, sorted by source row.
    """
    n, k = idx.shape
    r = np.repeat(np.arange(n, dtype=np.int64), k)
    c = idx.ravel().astype(np.int64)
    w = score.ravel().astype(np.float64)
    ok = (c >= 0) & np.isfinite(w)
    if threshold is not None:
        ok &= w >= threshold
    r, c, w = r[ok], c[ok], w[ok]
    if len(r) == 0:
        e = np.array([], dtype=np.int64)
        return e, e, np.array([], dtype=np.float64)
    m = int(c.max()) + 1
    key = r * m + c  # a pair listed twice keeps its best score
    order = np.lexsort((-w, key))
    first = np.ones(len(key), dtype=bool)
    first[1:] = key[order][1:] != key[order][:-1]
    r, c, w = r[order][first], c[order][first], w[order][first]
    lo = w.min()
    wt = w - lo + max(1e-6, 1e-6 * (w.max() - lo)) if lo <= 0 else w

    # components of the bipartite graph: nodes 0..n-1 are sources, n.. are targets
    g = sp.csr_matrix((np.ones(len(r), dtype=np.int8), (r, n + c)), shape=(n + m, n + m))
    _, label = connected_components(g, directed=False)
    comp = label[r]
    order = np.argsort(comp, kind="stable")
    r, c, w, wt, comp = r[order], c[order], w[order], wt[order], comp[order]
    starts = np.flatnonzero(np.r_[True, comp[1:] != comp[:-1]])
    ends = np.r_[starts[1:], len(comp)]

    # a star (one source or one target) is matched by its best edge, vectorized
    n_comp = len(starts)
    comp_id = np.repeat(np.arange(n_comp), ends - starts)
    n_rows = np.bincount(np.unique(comp_id * n + r) // n, minlength=n_comp)
    n_cols = np.bincount(np.unique(comp_id * m + c) // m, minlength=n_comp)
    star = (n_rows == 1) | (n_cols == 1)
    e = np.flatnonzero(star[comp_id])
    e = e[np.lexsort((-wt[e], comp_id[e]))]
    e = e[np.r_[True, comp_id[e][1:] != comp_id[e][:-1]]] if len(e) else e
    out_r, out_c, out_w = [r[e]], [c[e]], [w[e]]
    greedy_rows = []
    for a, b in zip(starts[~star], ends[~star]):
        rs, ri = np.unique(r[a:b], return_inverse=True)
        cs, ci = np.unique(c[a:b], return_inverse=True)
        if len(rs) * len(cs) > max_block**2:
            greedy_rows.append(rs)
            continue
        block = np.zeros((len(rs), len(cs)))
        block[ri, ci] = wt[a:b]
        sel = np.full((len(rs), len(cs)), -1, dtype=np.int64)
        sel[ri, ci] = np.arange(a, b)
        br, bc = linear_sum_assignment(block, maximize=True)
        e = sel[br, bc]
        e = e[e >= 0]
        out_r.append(r[e])
        out_c.append(c[e])
        out_w.append(w[e])
    if greedy_rows:
        rows = np.concatenate(greedy_rows)
        keep = np.zeros(n, dtype=bool)
        keep[rows] = True
        gi = np.where(keep[:, None], idx, -1)
        gr, gc, gw = greedy_match(gi, score, threshold)
        out_r.append(gr)
        out_c.append(gc)
        out_w.append(gw)
    rr, cc, ww = np.concatenate(out_r), np.concatenate(out_c), np.concatenate(out_w)
    o = np.argsort(rr, kind="stable")
    return rr[o], cc[o], ww[o]
