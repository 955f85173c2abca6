"""Structural candidates and the seed links as facts (``hiea_ray.core.candidates``), without Ray."""

import numpy as np

from hiea_ray.core.candidates import known_out_of_pool, merge, structural, with_structural
from hiea_ray.core.decode import greedy_match, sinkhorn
from hiea_ray.core.structure import SeedGraphs, adjacency


def _unit(x):
    x = np.asarray(x, np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _graphs():
    """KG1 rows 0..3, KG2 rows 0..4. Source 0's neighbours 1 and 2 are anchored to targets 1 and 2;
    target 1's neighbours are 0 and 3, target 2's 0 and 4: target 0 is vouched for twice."""
    a_s = adjacency(np.arange(4), np.array([0, 0, 3]), np.array([1, 2, 1]))
    a_t = adjacency(np.arange(5), np.array([1, 1, 2, 2]), np.array([0, 3, 0, 4]))
    return a_s, a_t, np.array([[1, 1], [2, 2]])


def test_structural_candidates_are_the_anchored_neighbours_counterparts_neighbours_by_support_then_cosine():
    a_s, a_t, anchors = _graphs()
    vec_s = _unit(np.eye(5)[[0, 1, 2, 3]])
    vec_t = _unit([[0.2, 0, 0, 0, 1], [0, 1, 0, 0, 0], [0, 0, 1, 0, 0], [1, 0, 0, 0, 0.1], [0.5, 0, 0, 0, 1]])
    idx, cos, sup = structural(np.array([0]), a_s, a_t, anchors, np.arange(5), vec_s[[0]], vec_t, cap=3)
    # target 0 (support 2) first although target 3 is closer by cosine; then 3 before 4 by cosine
    assert idx[0].tolist() == [0, 3, 4] and sup[0].tolist() == [2, 1, 1]
    assert np.allclose(cos[0], vec_t[[0, 3, 4]] @ vec_s[0])
    # capped per source; targets outside the pool (to_local -1) are never candidates
    idx, _, _ = structural(np.array([0]), a_s, a_t, anchors, np.array([-1, 0, 1, 2, -1]), vec_s[[0]], vec_t[[1, 2, 3]], cap=2)
    assert idx[0].tolist() == [2, -1]  # KG2 row 3 is local target 2; rows 0 and 4 are not in the pool
    # a hub: an anchor whose counterpart has more neighbours than hub_degree vouches for none of them
    idx, _, _ = structural(np.array([0]), a_s, a_t, anchors, np.arange(5), vec_s[[0]], vec_t, cap=3, hub_degree=1)
    assert (idx == -1).all()
    # source 3: its neighbour 1 is anchored to target 1, whose neighbours are 0 and 3
    idx, _, sup = structural(np.array([3]), a_s, a_t, anchors, np.arange(5), vec_s[[3]], vec_t, cap=5)
    assert sorted(idx[0][idx[0] >= 0].tolist()) == [0, 3] and sup[0][:2].tolist() == [1, 1]


def test_structural_candidates_are_computed_in_blocks_with_the_same_result():
    rng = np.random.default_rng(0)
    n, m = 300, 320
    a_s = adjacency(np.arange(n), rng.integers(0, n, 900), rng.integers(0, n, 900))
    a_t = adjacency(np.arange(m), rng.integers(0, m, 1000), rng.integers(0, m, 1000))
    anchors = np.stack([rng.permutation(n)[:90], rng.permutation(m)[:90]], 1)
    vs, vt = _unit(rng.normal(size=(n, 16))), _unit(rng.normal(size=(m, 16)))
    whole = structural(np.arange(n), a_s, a_t, anchors, np.arange(m), vs, vt, cap=7, block=10_000)
    blocks = structural(np.arange(n), a_s, a_t, anchors, np.arange(m), vs, vt, cap=7, block=13)
    for a, b in zip(whole, blocks):
        assert np.array_equal(a, b)
    # the reference: each source's support per target by brute force over its anchored neighbours
    amap = dict(anchors.tolist())
    for s in rng.choice(n, 20, replace=False):
        count = {}
        for s2 in a_s[s].indices:
            if s2 in amap:
                for t in a_t[amap[s2]].indices:
                    count[t] = count.get(t, 0) + 1
        ref = sorted(count, key=lambda t: (-count[t], -float(vs[s] @ vt[t]), t))[:7]
        assert whole[0][s][: len(ref)].tolist() == ref


def test_merge_keeps_each_target_once_ranked_by_score_with_padding_last():
    idx, score = merge(np.array([[3, 1, -1]]), np.array([[0.9, 0.5, -np.inf]]), np.array([[1, 7]]), np.array([[0.5, 0.2]]))
    assert idx.tolist() == [[3, 1, 7, -1, -1]] and np.allclose(score[0, :3], [0.9, 0.5, 0.2])


def test_with_structural_adds_a_gold_target_the_dense_lists_missed():
    a_s, a_t, anchors = _graphs()
    graphs = SeedGraphs(np.arange(4) + 100, np.arange(5) + 200, a_s, a_t, anchors)
    q, b = np.array([100, 103]), np.arange(5) + 200
    Q, B = _unit(np.eye(5)[[0, 3]]), _unit(np.eye(5) + 0.01)
    s2t, s2t_score = np.array([[3], [3]]), np.array([[0.9], [0.95]], np.float32)  # dense k = 1: never target 0
    t2s, t2s_score = np.full((5, 1), -1), np.full((5, 1), -np.inf, np.float32)
    s2t2, _, t2s2, _, (si, _) = with_structural(graphs, q, b, Q, B, s2t, s2t_score, t2s, t2s_score, cap=3, hub_degree=None)
    assert 0 in s2t2[0].tolist() and si[0, 0] == 0 and s2t2.shape == (2, 4)
    assert t2s2.shape == (5, 4) and 0 in t2s2[0].tolist()  # target 0's anchored neighbours 1, 2 -> source row 0


def test_seed_links_are_facts_no_other_source_is_offered_a_seed_target():
    rng = np.random.default_rng(1)
    n = m = 40
    q, b = np.arange(n) + 1000, np.arange(m) + 5000
    sim = rng.random((n, m)).astype(np.float32)
    k = 8
    s2t = np.argsort(-sim, 1)[:, :k]
    s2t_score = np.take_along_axis(sim, s2t, 1)
    t2s = np.argsort(-sim.T, 1)[:, :k]
    t2s_score = np.take_along_axis(sim.T, t2s, 1)
    seed_rows, seed_cols = np.arange(10), rng.permutation(m)[:10]
    a, a_s, t, t_s = known_out_of_pool(s2t, s2t_score, t2s, t2s_score, q, b, q[seed_rows], b[seed_cols])
    assert a[seed_rows, 0].tolist() == seed_cols.tolist() and (a[seed_rows, 1:] == -1).all()
    others = np.setdiff1d(np.arange(n), seed_rows)
    assert not np.isin(a[others], seed_cols).any() and not np.isin(t[np.setdiff1d(np.arange(m), seed_cols)], seed_rows).any()
    assert (np.diff(np.where(a >= 0, a_s, -9), axis=1) <= 0).all()  # still best first, padding last
    for idx, score in ((a, a_s), sinkhorn(a, a_s, t, t_s, m)):
        r, c, _ = greedy_match(idx, score)
        given = dict(zip(seed_rows.tolist(), seed_cols.tolist()))
        for row, col in zip(r.tolist(), c.tolist()):
            assert given.get(row, col) == col and (row in given or col not in given.values())
    # the switch off (no known links): the lists unchanged
    a0, s0, t0, ts0 = known_out_of_pool(s2t, s2t_score, t2s, t2s_score, q, b, np.zeros(0, np.int64), np.zeros(0, np.int64))
    assert np.array_equal(a0, s2t) and np.array_equal(t0, t2s)
    # links with an end outside the pool are ignored
    a1, _, _, _ = known_out_of_pool(s2t, s2t_score, t2s, t2s_score, q, b, np.array([q[0]]), np.array([99]))
    assert np.array_equal(a1, s2t)
