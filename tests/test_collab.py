"""Pseudo-seeds of collaboration rounds (``hiea_ray.core.collab``), without Ray."""

import numpy as np

from hiea_ray.core.collab import mutual_best, select


def test_mutual_best_keeps_a_source_only_when_its_top_target_ranks_it_first():
    q = np.array([10, 11, 12])
    cand = np.array([[100, 101], [100, 102], [103, -1]])
    score = np.array([[0.9, 0.1], [0.8, 0.7], [0.5, -np.inf]])
    # 10 -> 100 and 100's best source is 10 (0.9 > 0.8); 11 -> 100 but 100 prefers 10; 12 -> 103 alone
    assert mutual_best(q, cand, score).tolist() == [100, -1, 103]
    # a tie goes to the lowest row
    assert mutual_best(q[:2], np.array([[100], [100]]), np.array([[0.5], [0.5]])).tolist() == [100, -1]


def test_pseudo_seeds_are_one_to_one_most_confident_first_never_a_seed_and_capped():
    src = np.array([1, 2, 3, 4, 5, 6])
    ans = np.array([10, 10, 30, 40, 50, -1])
    conf = np.array([0.6, 0.9, 0.8, 0.99, 0.7, 0.95])
    keep = np.array([True, True, True, True, False, True])
    s, t, c = select(src, ans, conf, keep, seed_src=np.array([4]), seed_tgt=np.array([30]), cap=None)
    # 4 is a seed source, 3's answer a seed target, 5 not kept, 6 has no answer; 10 goes to 2 (0.9 > 0.6)
    assert s.tolist() == [2] and t.tolist() == [10] and c.tolist() == [0.9]
    s, t, _ = select(src, np.array([10, 20, 30, 40, 50, 60]), conf, np.ones(6, bool), np.array([], np.int64),
                     np.array([], np.int64), cap=3)
    assert s.tolist() == [2, 4, 6] and t.tolist() == [20, 40, 60]  # the 3 most confident, sorted by source
    assert len(set(s.tolist())) == len(s) and len(set(t.tolist())) == len(t)
