"""Candidate lists beyond the dense top-k, and the user's known links as facts; Ray-free, O(n * k).

Structural candidates (``structural``). Name similarity is what near-homonyms defeat: as the KG2
pool grows, the gold target of a source falls out of its dense top-k behind entities of almost the
same name. The graph does not grow that way around a source: for a source s, the KG2 neighbours of
the counterparts of s's anchored neighbours (seed links, a collaboration round's pseudo-seeds) are
candidates found by facts, not by name. Per source they are ranked by how many anchored
neighbours vouch for them (their support), then by cosine, and the best ``cap`` kept; an anchor
whose counterpart has more than ``hub_degree`` neighbours vouches for none (a hub's neighbours say
nothing about one source). Computed per block of source rows as sparse products
(rows of A_s) @ anchors @ A_t, so nothing n x m is built. ``merge`` unites them with the dense
lists (each target once, ranked by cosine): the decoders score both channels alike.

Known links (``known_out_of_pool``). A seed link is a fact, and under the one-to-one assumption
its target is nobody else's counterpart: each known source keeps its own target alone, every other
source loses the known targets from its list, and the reverse lists likewise. The decoders then
never hand a seed target to another source, and the seed pairs stand apart in Sinkhorn's transport.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from hiea_ray.core.decode import dedupe_rows, sort_rows


def anchor_map(anchors: np.ndarray, n_from: int, n_to: int, adj_to: sp.csr_matrix, hub_degree: int | None) -> sp.csr_matrix:
    """(n_from, n_to) 0/1 CSR: row a has a one at its counterpart for each anchor (from row, to row)
    whose counterpart has at most ``hub_degree`` neighbours (None: any)."""
    a = np.asarray(anchors, np.int64).reshape(-1, 2)
    if hub_degree is not None and len(a):
        a = a[np.diff(adj_to.indptr)[a[:, 1]] <= hub_degree]
    return sp.csr_matrix((np.ones(len(a), np.float32), (a[:, 0], a[:, 1])), shape=(n_from, n_to))


def structural(
    rows: np.ndarray,
    adj_from: sp.csr_matrix,
    adj_to: sp.csr_matrix,
    anchors: np.ndarray,
    to_local: np.ndarray,
    vec_from: np.ndarray,
    vec_to: np.ndarray,
    cap: int,
    hub_degree: int | None = 200,
    block: int = 4096,
    progress=None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each source's structural candidates: (idx (n, cap) local targets, -1 padded; cosine (n, cap);
    support (n, cap), the anchored neighbours vouching for each).

    ``rows`` (n,): the sources' rows in ``adj_from``; ``anchors`` (a, 2): (adj_from row, adj_to row)
    known matches; ``to_local`` (adj_to rows,): each adj_to row's local target index, -1 when it
    is not a target of these lists (the pool); ``vec_from`` (n, d) the sources' vectors, ``vec_to``
    (m, d) the local targets' (normalized: the dot product is the cosine)."""
    n = len(rows)
    idx = np.full((n, cap), -1, np.int64)
    cos = np.full((n, cap), -np.inf, np.float32)
    sup = np.zeros((n, cap), np.int32)
    if n == 0 or cap == 0 or len(anchors) == 0:
        return idx, cos, sup
    hop = (adj_from @ anchor_map(anchors, adj_from.shape[0], adj_to.shape[0], adj_to, hub_degree)).tocsr()
    adj_to = sp.csr_matrix(adj_to, dtype=np.float32)
    for lo in range(0, n, block):
        hi = min(n, lo + block)
        p = (hop[rows[lo:hi]] @ adj_to).tocoo()  # support of every reachable KG2 row
        loc = to_local[p.col]
        ok = loc >= 0
        r, c, s = p.row[ok].astype(np.int64), loc[ok], p.data[ok].astype(np.int32)
        if not len(r):
            if progress:
                progress(hi - lo)
            continue
        w = np.concatenate([np.einsum("ij,ij->i", vec_from[lo + r[a:a + (1 << 18)]], vec_to[c[a:a + (1 << 18)]])
                            for a in range(0, len(r), 1 << 18)]).astype(np.float32)
        order = np.lexsort((c, -w, -s, r))  # per row: support, then cosine, then the lower target
        r, c, s, w = r[order], c[order], s[order], w[order]
        start = np.searchsorted(r, np.arange(hi - lo))
        rank = np.arange(len(r)) - start[r]
        keep = rank < cap
        idx[lo + r[keep], rank[keep]] = c[keep]
        cos[lo + r[keep], rank[keep]] = w[keep]
        sup[lo + r[keep], rank[keep]] = s[keep]
        if progress:
            progress(hi - lo)
    return idx, cos, sup


def merge(idx_a: np.ndarray, score_a: np.ndarray, idx_b: np.ndarray, score_b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two channels' lists (same rows, local targets) as one: each target once (its first entry:
    channel a's), ranked by score, padding last; width ka + kb."""
    idx = np.concatenate([idx_a, idx_b], axis=1)
    score = np.concatenate([np.where(idx_a >= 0, score_a, -np.inf), np.where(idx_b >= 0, score_b, -np.inf)],
                           axis=1).astype(np.float32)
    idx, score = dedupe_rows(idx, score)
    return sort_rows(np.where(np.isfinite(score), idx, -1), score)


def known_rows(q: np.ndarray, b: np.ndarray, known_src, known_tgt) -> tuple[np.ndarray, np.ndarray]:
    """The known links (ids) with both ends in the sorted ids q / b, as (source rows, target rows)."""
    known_src, known_tgt = np.asarray(known_src, np.int64), np.asarray(known_tgt, np.int64)
    qi, bi = np.searchsorted(q, known_src), np.searchsorted(b, known_tgt)
    inside = (qi < len(q)) & (bi < len(b))
    inside[inside] &= (q[qi[inside]] == known_src[inside]) & (b[bi[inside]] == known_tgt[inside])
    return qi[inside], bi[inside]


def known_out_of_pool(
    s2t: np.ndarray, s2t_score: np.ndarray, t2s: np.ndarray, t2s_score: np.ndarray,
    q: np.ndarray, b: np.ndarray, known_src: np.ndarray, known_tgt: np.ndarray, score: float = 1.0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The lists (local indices of the sorted ids q / b) with the known links (ids) as facts:
    a known source's list is its known target alone (``score``), every other source's list loses
    the known targets; the same for the targets' lists. Links with an end outside q or b are
    ignored (a pool without them)."""
    qi, bi = known_rows(q, b, known_src, known_tgt)

    def facts(idx, score_, own_rows, own_cols, other_n):
        taken = np.zeros(other_n, bool)
        taken[own_cols] = True
        own = np.full(len(idx), -1, np.int64)
        own[own_rows] = own_cols
        return facts_rows(idx, score_, own, taken, score)

    a, a_s = facts(s2t, s2t_score, qi, bi, len(b))
    t, t_s = facts(t2s, t2s_score, bi, qi, len(q))
    return a, a_s, t, t_s


def facts_rows(idx: np.ndarray, score: np.ndarray, own: np.ndarray, taken: np.ndarray, fact_score: float = 1.0):
    """Rows (local targets) with known links as facts: a row whose ``own`` target is >= 0 keeps it
    alone (``fact_score``); every other row loses the ``taken`` targets (a mask over the targets);
    best first, padding last."""
    drop = (idx >= 0) & taken[np.maximum(idx, 0)]
    idx = np.where(drop, -1, idx)
    sc = np.where(drop, -np.inf, score).astype(np.float32)
    mine = np.flatnonzero(own >= 0)
    idx[mine] = -1
    sc[mine] = -np.inf
    idx[mine, 0] = own[mine]
    sc[mine, 0] = fact_score
    return sort_rows(idx, sc)


def with_structural(graphs, q: np.ndarray, b: np.ndarray, Q: np.ndarray, B: np.ndarray, s2t, s2t_score, t2s, t2s_score,
                    cap: int, hub_degree: int | None, progress=None):
    """Both directions' dense lists (local indices of the sorted ids q / b, vectors Q / B) with
    their structural candidates merged in (``graphs``: a ``core.structure.SeedGraphs``, its anchors
    the known matches). -> (s2t, s2t_score, t2s, t2s_score, (the s2t structural channel alone))."""
    src_rows, tgt_rows = graphs.rows(q, b)
    tgt_local = np.full(graphs.adj_t.shape[0], -1, np.int64)
    tgt_local[tgt_rows] = np.arange(len(b))
    src_local = np.full(graphs.adj_s.shape[0], -1, np.int64)
    src_local[src_rows] = np.arange(len(q))
    anchors = np.asarray(graphs.anchors, np.int64).reshape(-1, 2)
    si, sc, _ = structural(src_rows, graphs.adj_s, graphs.adj_t, anchors, tgt_local, Q, B, cap, hub_degree, progress=progress)
    ti, tc, _ = structural(tgt_rows, graphs.adj_t, graphs.adj_s, anchors[:, ::-1], src_local, B, Q, cap, hub_degree,
                           progress=progress)
    return (*merge(s2t, s2t_score, si, sc), *merge(t2s, t2s_score, ti, tc), (si, sc))
