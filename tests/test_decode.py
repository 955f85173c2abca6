"""Sparse decoders against dense numpy references; greedy matching against a brute-force greedy."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from scipy.optimize import linear_sum_assignment

from hiea_ray.core.decode import candidate_graph, csls, csr_topk, greedy_match, hungarian_blocks, sinkhorn
from hiea_ray.core.metrics import matching_metrics, threshold_sweep


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


@pytest.mark.parametrize("repeats", [False, True])
@pytest.mark.parametrize("block", [1 << 16, 7])
def test_candidate_graph_keeps_the_first_score_of_a_pair(repeats, block):
    """Each pair once with its first score in the order s2t then t2s — also when a list repeats a
    target (random lists; a retriever's never do), against a sort-based reference; built in one
    block of source rows or in several."""
    rng = np.random.default_rng(3)
    n, m, k = 60, 50, 8
    s2t = rng.integers(0, m, (n, k)) if repeats else np.stack([rng.permutation(m)[:k] for _ in range(n)])
    t2s = rng.integers(0, n, (m, k)) if repeats else np.stack([rng.permutation(n)[:k] for _ in range(m)])
    s2t_s, t2s_s = rng.random((n, k)).astype(np.float32), rng.random((m, k)).astype(np.float32)
    s2t[0, -1], s2t_s[1, -1] = -1, -np.inf  # padding
    t2s[2, 0], t2s_s[3, 1] = -1, -np.inf
    r = np.concatenate([np.repeat(np.arange(n), k), t2s.ravel()])
    c = np.concatenate([s2t.ravel(), np.repeat(np.arange(m), k)])
    v = np.concatenate([s2t_s.ravel(), t2s_s.ravel()])
    ok = (r >= 0) & (c >= 0) & np.isfinite(v)
    key, first = np.unique((r * m + c)[ok], return_index=True)
    want = np.zeros((n, m))
    want[key // m, key % m] = v[ok][first]
    g = candidate_graph(s2t, s2t_s, t2s, t2s_s, m, block=block)
    assert g.nnz == len(key) and g.has_sorted_indices
    assert all(np.all(np.diff(g.indices[a:b]) > 0) for a, b in zip(g.indptr[:-1], g.indptr[1:]))
    np.testing.assert_array_equal(g.toarray(), want)


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


# -- hungarian_blocks ------------------------------------------------------------------------------
def dense_max_weight(idx, score, m, threshold=None):
    """Total score of a maximum-weight matching: LSA on the whole zero-filled (n, m) matrix
    (valid for positive scores; a pair on a non-edge contributes nothing)."""
    w = np.zeros((idx.shape[0], m))
    for r in range(idx.shape[0]):
        for c, v in zip(idx[r], score[r]):
            if c >= 0 and np.isfinite(v) and (threshold is None or v >= threshold):
                w[r, c] = max(w[r, c], v)
    br, bc = linear_sum_assignment(w, maximize=True)
    return w[br, bc].sum()


def _check_matching(idx, score, r, c, w):
    assert len(set(r.tolist())) == len(r) and len(set(c.tolist())) == len(c)  # one-to-one
    for a, b, v in zip(r.tolist(), c.tolist(), w.tolist()):  # every pair is a candidate edge
        j = np.flatnonzero(idx[a] == b)
        assert len(j) and v == pytest.approx(float(score[a, j].max()))


@pytest.mark.parametrize("n, m", [(7, 7), (6, 9), (9, 5)])
def test_hungarian_equals_lsa_on_one_dense_block(n, m):
    rng = np.random.default_rng(n * 10 + m)
    dense = rng.random((n, m)).astype(np.float32) + 0.01
    idx = np.argsort(-dense, axis=1)  # every source lists every target: one complete block
    score = np.take_along_axis(dense, idx, 1)
    r, c, w = hungarian_blocks(idx, score)
    br, bc = linear_sum_assignment(dense, maximize=True)
    assert sorted(zip(r.tolist(), c.tolist())) == sorted(zip(br.tolist(), bc.tolist()))
    assert w.sum() == pytest.approx(dense[br, bc].sum())
    np.testing.assert_array_equal(r, np.sort(r))
    assert w.sum() > greedy_match(idx, score)[2].sum() - 1e-9


@pytest.mark.parametrize("seed", range(8))
def test_hungarian_optimal_and_beats_greedy(seed):
    rng = np.random.default_rng(100 + seed)
    n, m, k = int(rng.integers(10, 50)), int(rng.integers(10, 50)), int(rng.integers(1, 5))
    idx, score = random_lists(rng, n, m, min(k, m), levels=[None, 4][seed % 2], pad=0.2 * (seed % 3 == 0))
    score = score + np.float32(0.01)  # positive scores
    thr = 0.5 if seed % 4 == 3 else None
    r, c, w = hungarian_blocks(idx, score, threshold=thr)
    _check_matching(idx, score, r, c, w)
    if thr is not None:
        assert (w >= thr).all()
    assert w.sum() == pytest.approx(dense_max_weight(idx, score, m, thr), rel=1e-9)
    g = greedy_match(idx, score, thr)
    assert w.sum() >= g[2].sum() - 1e-9
    # max_block=1: no block is solved exactly -> stars take their best edge, the rest is greedy
    assert _as_set(*hungarian_blocks(idx, score, thr, max_block=1)) == _as_set(*g)


def test_hungarian_beats_greedy_where_greedy_is_myopic():
    # greedy takes (0, t0) = 0.9 and leaves 0.1; the assignment takes 0.8 + 0.8
    idx = np.array([[0, 1], [0, -1]])
    score = np.array([[0.9, 0.8], [0.8, -np.inf]], dtype=np.float32)
    assert _as_set(*greedy_match(idx, score)) == [(0, 0, pytest.approx(0.9))]
    assert _as_set(*hungarian_blocks(idx, score)) == [(0, 1, pytest.approx(0.8)), (1, 0, pytest.approx(0.8))]


def test_hungarian_negative_scores_still_maximal():
    """csls-like scores <= 0: no implicit abstention, every source with a free candidate is matched."""
    rng = np.random.default_rng(3)
    n, m = 40, 30
    idx, score = random_lists(rng, n, m, 3)
    score = score - np.float32(0.7)
    r, c, w = hungarian_blocks(idx, score)
    _check_matching(idx, score, r, c, w)
    free_c = np.ones(m, dtype=bool)
    free_c[c] = False
    unmatched = np.setdiff1d(np.arange(n), r)
    assert not free_c[idx[unmatched]].any()  # maximal: no edge between two unmatched ends
    assert (w < 0).any()


def test_hungarian_padding_and_empty():
    idx = np.array([[-1, -1], [0, -1], [0, 1]])
    score = np.array([[-np.inf, -np.inf], [0.9, -np.inf], [0.95, 0.1]], dtype=np.float32)
    assert _as_set(*hungarian_blocks(idx, score)) == [(1, 0, pytest.approx(0.9)), (2, 1, pytest.approx(0.1))]
    r, c, w = hungarian_blocks(idx, score, threshold=5.0)
    assert len(r) == 0 and r.dtype == np.int64 and w.dtype == np.float64
    dup = np.array([[0, 0, 1]])  # a target listed twice keeps its best score
    dup_score = np.array([[0.2, 0.7, 0.5]], dtype=np.float32)
    assert _as_set(*hungarian_blocks(dup, dup_score)) == [(0, 0, pytest.approx(0.7))]


# -- abstention on dangling sources -------------------------------------------------------------
def dangling_case(rng, n=100, frac=0.2, k=5):
    """Sources 0..n-1; the first 80% have gold target = their row (score ~ U(0.7, 1)); the rest
    are dangling (their true target is absent) and only see wrong targets at ~ U(0.1, 0.4): other
    sources' gold targets and a private decoy target (so that, without a threshold, each of them
    is matched). Other candidates of linked sources score below 0.4 as well."""
    n_link = int(n * (1 - frac))
    idx = np.stack([rng.choice(np.setdiff1d(np.arange(n_link), [i]), size=k, replace=False) for i in range(n)])
    score = (0.1 + 0.3 * rng.random((n, k))).astype(np.float32)
    idx[:n_link, 0] = np.arange(n_link)
    score[:n_link, 0] = 0.7 + 0.3 * rng.random(n_link)
    idx[n_link:, 0] = np.arange(n_link, n)  # the decoys: targets n_link..n-1, in no gold link
    order = np.argsort(-score, axis=1)
    return np.take_along_axis(idx, order, 1), np.take_along_axis(score, order, 1), n_link


@pytest.mark.parametrize("matcher", [greedy_match, hungarian_blocks])
def test_abstention_drops_dangling_sources(matcher):
    rng = np.random.default_rng(11)
    idx, score, n_link = dangling_case(rng)
    gold = np.arange(n_link)
    dangling = np.arange(n_link, idx.shape[0])
    r, c, _ = matcher(idx, score)  # no threshold: every dangling source gets some target
    m0 = matching_metrics(r, c, gold, gold, dangling_src=dangling)
    assert m0["recall"] == 1.0 and m0["precision"] == pytest.approx(n_link / idx.shape[0])
    assert m0["predicted"] == idx.shape[0] and m0["dangling"] == 20 and m0["dangling_abstained"] == 0.0
    # without dangling labels, pairs of dangling sources are out of scope (the old behaviour)
    assert matching_metrics(r, c, gold, gold)["precision"] == 1.0
    r, c, _ = matcher(idx, score, 0.5)
    m1 = matching_metrics(r, c, gold, gold, dangling_src=dangling)
    assert (m1["precision"], m1["recall"], m1["f1"]) == (1.0, 1.0, 1.0)
    assert m1["dangling_abstained"] == 1.0 and m1["predicted"] == n_link


def test_threshold_sweep_equals_rematching_with_greedy():
    """Greedy takes edges in descending order, so cutting its output at t equals re-matching at t."""
    rng = np.random.default_rng(12)
    idx, score, n_link = dangling_case(rng)
    score[:10, 1] = 0.6 + 0.4 * rng.random(10)  # confident errors, some above the gold score
    gold = np.arange(n_link)
    dangling = np.arange(n_link, idx.shape[0])
    r, c, w = greedy_match(idx, score)
    assert 0 < ((c != r) & (r < n_link)).sum()
    sweep = threshold_sweep(w, (c == r) & (r < n_link), n_link)  # all sources in scope: linked or dangling
    assert np.all(np.diff(sweep["threshold"]) < 0) and np.all(np.diff(sweep["predicted"]) >= 0)
    for t in [0.95, 0.8, 0.62, 0.5, 0.3, float(np.median(w)), 0.0]:
        j = int(np.argmin(np.abs(sweep["threshold"] - t)))
        thr = sweep["threshold"][j]
        rr, cc, _ = greedy_match(idx, score, thr)
        want = matching_metrics(rr, cc, gold, gold, dangling_src=dangling)
        assert sweep["predicted"][j] == want["predicted"] and sweep["correct"][j] == want["correct"]
        for key in ("precision", "recall", "f1"):
            assert sweep[key][j] == pytest.approx(want[key])
    # explicit thresholds; above every score nothing is kept
    s2 = threshold_sweep(w, (c == r) & (r < n_link), n_link, thresholds=[2.0, 0.5])
    assert s2["predicted"][0] == 0 and s2["precision"][0] == 0.0 and s2["f1"][0] == 0.0
    assert s2["recall"][1] == pytest.approx(sweep["recall"][sweep["threshold"] >= 0.5][-1])
