"""Sparse decoders against dense numpy references; greedy matching against a brute-force greedy."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from hiea_ray.core.decode import candidate_graph, csls, csr_topk, greedy_match, sinkhorn


def unit(rng, n, d):
    x = rng.standard_normal((n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def lists(cos: np.ndarray, k: int):
    """Best-first top-k lists of both directions from a dense cosine matrix (the retrieval output)."""
    s2t = np.argsort(-cos, axis=1, kind="stable")[:, :k]
    t2s = np.argsort(-cos.T, axis=1, kind="stable")[:, :k]
    return s2t, np.take_along_axis(cos, s2t, 1), t2s, np.take_along_axis(cos.T, t2s, 1)


def dense_sinkhorn(cos: np.ndarray, tau: float, iters: int) -> np.ndarray:
    K = np.exp((cos.astype(np.float64) - 1.0) / tau)
    v = np.ones(K.shape[1])
    for _ in range(iters):
        u = 1.0 / (K @ v)
        v = 1.0 / (K.T @ u)
    u = 1.0 / (K @ v)
    return u[:, None] * K * v[None, :]


def dense_csls(cos: np.ndarray, k: int) -> np.ndarray:
    c = cos.astype(np.float64)
    r_t = np.sort(c, axis=1)[:, ::-1][:, :k].mean(1)  # each source's k nearest targets
    r_s = np.sort(c, axis=0)[::-1, :][:k, :].mean(0)  # each target's k nearest sources
    return 2 * c - r_t[:, None] - r_s[None, :]


@pytest.mark.parametrize("n, m, tau, iters", [(60, 60, 0.05, 50), (40, 70, 0.1, 30), (70, 45, 0.03, 100)])
def test_sinkhorn_matches_dense_on_complete_graph(n, m, tau, iters):
    rng = np.random.default_rng(n + m)
    cos = unit(rng, n, 16) @ unit(rng, m, 16).T
    s2t, s2t_s, t2s, t2s_s = lists(cos, max(n, m))  # k >= m: the candidate graph is complete
    s2t, s2t_s = s2t[:, :m], s2t_s[:, :m]
    t2s, t2s_s = t2s[:, :n], t2s_s[:, :n]
    idx, score = sinkhorn(s2t, s2t_s, t2s, t2s_s, m, tau=tau, iters=iters)
    assert idx.shape == (n, m) and score.shape == (n, m)
    plan = dense_sinkhorn(cos, tau, iters)
    want_idx = np.argsort(-plan, axis=1, kind="stable")
    want_score = np.take_along_axis(plan, want_idx, 1)
    np.testing.assert_array_equal(idx, want_idx)
    np.testing.assert_allclose(score, want_score, rtol=1e-4, atol=1e-12)
    np.testing.assert_allclose(score.sum(1), 1.0, rtol=1e-4)  # rows end normalized


def test_sinkhorn_with_short_lists():
    rng = np.random.default_rng(1)
    n, m, k = 80, 90, 5
    cos = unit(rng, n, 8) @ unit(rng, m, 8).T
    idx, score = sinkhorn(*lists(cos, k), m, tau=0.05, iters=20)
    assert idx.shape == (n, k) and score.shape == (n, k)
    assert idx.dtype == np.int64 and score.dtype == np.float32
    assert ((idx >= 0) & (idx < m)).all()
    assert np.all(np.diff(score, axis=1) <= 0)
    assert np.all(score.sum(1) <= 1 + 1e-5) and np.all(score > 0)
    # every row's candidates are edges of the union candidate graph
    g = candidate_graph(*lists(cos, k), m).toarray()
    assert np.all(g[np.arange(n)[:, None], idx] != 0)
    # the k argument
    idx3, score3 = sinkhorn(*lists(cos, k), m, tau=0.05, iters=20, k=3)
    assert idx3.shape == (n, 3)
    np.testing.assert_array_equal(idx3, idx[:, :3])


def test_sinkhorn_padding():
    rng = np.random.default_rng(2)
    n, m, k = 6, 5, 4
    cos = unit(rng, n, 4) @ unit(rng, m, 4).T
    s2t, s2t_s, t2s, t2s_s = lists(cos, k)
    s2t[0, 2:], s2t_s[0, 2:] = -1, -np.inf  # short list
    s2t[1, :], s2t_s[1, :] = -1, -np.inf  # no candidates at all
    t2s[t2s == 1] = -1  # and no target lists back to row 1
    t2s_s[t2s == -1] = -np.inf
    idx, score = sinkhorn(s2t, s2t_s, t2s, t2s_s, m, tau=0.1, iters=10)
    assert (idx[1] == -1).all() and np.isneginf(score[1]).all()
    assert (idx[0] >= 0).sum() >= 2
    valid = idx >= 0
    assert np.isfinite(score[valid]).all() and np.isneginf(score[~valid]).all()


def test_candidate_graph_union_without_duplicates():
    s2t = np.array([[0, 1], [1, -1]])
    s2t_s = np.array([[0.9, 0.5], [0.8, -np.inf]], dtype=np.float32)
    t2s = np.array([[0, 1], [1, 0], [0, -1]])
    t2s_s = np.array([[0.9, 0.2], [0.8, 0.5], [0.1, -np.inf]], dtype=np.float32)
    g = candidate_graph(s2t, s2t_s, t2s, t2s_s, 3)
    assert g.shape == (2, 3) and g.nnz == 5
    np.testing.assert_allclose(g.toarray(), [[0.9, 0.5, 0.1], [0.2, 0.8, 0.0]], rtol=1e-6)


@pytest.mark.parametrize("n, m, csls_k", [(50, 50, 10), (40, 65, 5), (30, 20, 1)])
def test_csls_matches_dense(n, m, csls_k):
    rng = np.random.default_rng(n * m)
    cos = unit(rng, n, 12) @ unit(rng, m, 12).T
    s2t, s2t_s, t2s, t2s_s = lists(cos, max(n, m))
    idx, score = csls(s2t[:, :m], s2t_s[:, :m], t2s[:, :n], t2s_s[:, :n], k=csls_k)
    ref = dense_csls(cos, csls_k)
    want = np.argsort(-ref, axis=1, kind="stable")
    np.testing.assert_array_equal(idx, want)
    np.testing.assert_allclose(score, np.take_along_axis(ref, want, 1), atol=1e-5)


def test_csls_padding():
    s2t = np.array([[1, 0, -1], [-1, -1, -1]])
    s2t_s = np.array([[0.9, 0.1, -np.inf], [-np.inf, -np.inf, -np.inf]], dtype=np.float32)
    t2s = np.array([[0, -1, -1], [0, -1, -1]])
    t2s_s = np.array([[0.1, -np.inf, -np.inf], [0.9, -np.inf, -np.inf]], dtype=np.float32)
    idx, score = csls(s2t, s2t_s, t2s, t2s_s, k=2)
    # r_T(0) = mean(0.9, 0.1) = 0.5; r_S(t1) = 0.9, r_S(t0) = 0.1
    np.testing.assert_array_equal(idx, [[1, 0, -1], [-1, -1, -1]])
    np.testing.assert_allclose(score[0, :2], [2 * 0.9 - 0.5 - 0.9, 2 * 0.1 - 0.5 - 0.1], atol=1e-6)
    assert np.isneginf(score[0, 2]) and np.isneginf(score[1]).all()


def brute_greedy(idx, score, threshold=None):
    """Sort all edges by score desc (ties: row, then column), take an edge if both ends are free."""
    edges = []
    for r in range(idx.shape[0]):
        for j in range(idx.shape[1]):
            c, w = int(idx[r, j]), float(score[r, j])
            if c < 0 or not np.isfinite(w) or (threshold is not None and w < threshold):
                continue
            edges.append((-w, r, c))
    edges.sort()
    used_r, used_c, out = set(), set(), []
    for nw, r, c in edges:
        if r in used_r or c in used_c:
            continue
        used_r.add(r)
        used_c.add(c)
        out.append((r, c, -nw))
    return sorted(out)


def _as_set(r, c, w):
    assert len(set(r.tolist())) == len(r) and len(set(c.tolist())) == len(c)  # one-to-one
    return sorted(zip(r.tolist(), c.tolist(), w.tolist()))


def random_lists(rng, n, m, k, levels=None, pad=0.0):
    idx = np.stack([rng.choice(m, size=k, replace=False) for _ in range(n)]).astype(np.int64)
    score = rng.random((n, k))
    if levels:
        score = np.round(score * levels) / levels  # many exact ties
    score = score.astype(np.float32)
    if pad:
        cut = rng.random((n, k)) < pad
        idx[cut], score[cut] = -1, -np.inf
    return idx, score


@pytest.mark.parametrize("seed", range(6))
def test_greedy_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    n, m, k = int(rng.integers(5, 60)), int(rng.integers(5, 60)), int(rng.integers(1, 6))
    k = min(k, m)
    idx, score = random_lists(rng, n, m, k, levels=[None, 3, 10][seed % 3], pad=0.15 * (seed % 2))
    assert _as_set(*greedy_match(idx, score)) == brute_greedy(idx, score)


def test_greedy_all_ties():
    rng = np.random.default_rng(7)
    idx, _ = random_lists(rng, 30, 20, 4)
    score = np.full(idx.shape, 0.5, dtype=np.float32)
    assert _as_set(*greedy_match(idx, score)) == brute_greedy(idx, score)


def test_greedy_threshold_abstains():
    rng = np.random.default_rng(8)
    idx, score = random_lists(rng, 40, 30, 4)
    r, c, w = greedy_match(idx, score, threshold=0.6)
    assert (w >= 0.6).all()
    assert _as_set(r, c, w) == brute_greedy(idx, score, threshold=0.6)
    assert len(r) < len(greedy_match(idx, score)[0])
    r, c, w = greedy_match(idx, score, threshold=2.0)  # everyone abstains
    assert len(r) == len(c) == len(w) == 0


def test_greedy_padding_and_empty():
    idx = np.array([[-1, -1], [0, -1], [0, 1]])
    score = np.array([[-np.inf, -np.inf], [0.9, -np.inf], [0.95, 0.1]], dtype=np.float32)
    # row 0 has no candidate; row 2 takes t0 first, so row 1 (only t0) is left unmatched
    assert _as_set(*greedy_match(idx, score)) == [(2, 0, pytest.approx(0.95))]
    idx[2, 0] = -1
    assert _as_set(*greedy_match(idx, score)) == [(1, 0, pytest.approx(0.9)), (2, 1, pytest.approx(0.1))]
    r, c, w = greedy_match(np.full((3, 2), -1), np.full((3, 2), -np.inf, dtype=np.float32))
    assert len(r) == 0 and r.dtype == np.int64 and w.dtype == np.float64


def test_greedy_simple_example():
    # row 0 prefers t0 (0.9), row 1 also prefers t0 (0.8) and falls back to t1
    idx = np.array([[0, 1], [0, 1]])
    score = np.array([[0.9, 0.1], [0.8, 0.7]], dtype=np.float32)
    r, c, w = greedy_match(idx, score)
    assert _as_set(r, c, w) == [(0, 0, pytest.approx(0.9)), (1, 1, pytest.approx(0.7))]


def brute_topk(dense_rows: list[dict], k: int):
    n = len(dense_rows)
    idx = np.full((n, k), -1, dtype=np.int64)
    score = np.full((n, k), -np.inf, dtype=np.float32)
    for i, row in enumerate(dense_rows):
        best = sorted(row.items(), key=lambda cv: (-cv[1], cv[0]))[:k]
        for j, (c, v) in enumerate(best):
            idx[i, j], score[i, j] = c, v
    return idx, score


@pytest.mark.parametrize("k", [1, 3, 8])
def test_csr_topk(k):
    rng = np.random.default_rng(k)
    n, m = 25, 12
    rows, cols, vals = [], [], []
    dense_rows = [dict() for _ in range(n)]
    for i in range(n):
        if i % 5 == 0:
            continue  # empty rows
        cs = rng.choice(m, size=int(rng.integers(1, m)), replace=False)
        for c in cs:
            v = float(np.round(rng.random() * 4) / 4)  # ties, zeros excluded below
            v = v or 0.125
            rows.append(i)
            cols.append(int(c))
            vals.append(v)
            dense_rows[i][int(c)] = v
    order = rng.permutation(len(rows))  # unsorted column indices within rows
    mat = sp.csr_matrix((np.array(vals)[order], (np.array(rows)[order], np.array(cols)[order])), shape=(n, m))
    idx, score = csr_topk(mat, k)
    want_idx, want_score = brute_topk(dense_rows, k)
    np.testing.assert_array_equal(idx, want_idx)
    np.testing.assert_array_equal(score, want_score)
    assert (idx[0] == -1).all() and np.isneginf(score[0]).all()
