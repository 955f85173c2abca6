"""Decoding over row shards (``core.sharded``) gives the single process's lists and matchings:
top1, CSLS and Sinkhorn with the seed links as facts, any number of shards, ties included."""

from __future__ import annotations

import numpy as np
import pytest

from hiea_ray.core import decode as dec
from hiea_ray.core.candidates import known_out_of_pool
from hiea_ray.core.sharded import Facts, ListShard, decode_sharded, greedy_sharded, sinkhorn_sharded
from hiea_ray.io import ids_or_pad, read_dir, read_lists, write_lists


class Cfg:
    csls_k, sinkhorn_tau, sinkhorn_iters, match_threshold = 3, 0.05, 30, None


def pair_lists(tmp_path, n=57, m=49, k=6, seed=0, ties=False):
    """Random sorted ids q / b, both directions' top-k lists (padding included) written as the
    retrieve stage writes them, and a few seed links."""
    rng = np.random.default_rng(seed)
    q = np.sort(rng.choice(10_000, n, replace=False)).astype(np.int64)
    b = np.sort(rng.choice(10_000, m, replace=False) + 20_000).astype(np.int64)
    cos = rng.uniform(-0.2, 1.0, (n, m)).astype(np.float32)
    if ties:
        cos = np.round(cos * 4) / 4  # many equal scores
    s2t = np.argsort(-cos, 1, kind="stable")[:, :k]
    t2s = np.argsort(-cos.T, 1, kind="stable")[:, :k]
    s2t_s, t2s_s = np.take_along_axis(cos, s2t, 1), np.take_along_axis(cos.T, t2s, 1)
    s2t[::7, -2:], s2t_s[::7, -2:] = -1, -np.inf  # short lists
    write_lists(tmp_path / "s2t.parquet", q, ids_or_pad(b, s2t), s2t_s)
    write_lists(tmp_path / "t2s.parquet", b, ids_or_pad(q, t2s), t2s_s)
    seeds = (q[[3, 10, 11]], b[[5, 2, 40]])
    return q, b, (s2t, s2t_s, t2s, t2s_s), seeds


def single_process(lists, q, b, seeds, c):
    s2t, s2t_s, t2s, t2s_s = known_out_of_pool(*lists, q, b, *seeds) if seeds else lists
    out = {"top1": (s2t, s2t_s), "csls": dec.csls(s2t, s2t_s, t2s, t2s_s, c.csls_k),
           "sinkhorn": dec.sinkhorn(s2t, s2t_s, t2s, t2s_s, len(b), tau=c.sinkhorn_tau, iters=c.sinkhorn_iters)}
    return {k: (v, dec.greedy_match(*v, c.match_threshold)) for k, v in out.items()}


def shards_of(tmp_path, q, b, seeds, bounds, c, batch_rows=10):
    facts = Facts(q, b, *seeds) if seeds else None
    shards = [ListShard(str(tmp_path / "s2t.parquet"), str(tmp_path / "t2s.parquet"), q, b, lo, hi, c.csls_k, facts,
                        batch_rows=batch_rows) for lo, hi in zip(bounds[:-1], bounds[1:])]
    return lambda method, *args: [getattr(s, method)(*args) for s in shards]


@pytest.mark.parametrize("bounds, with_seeds, ties, k", [([0, 57], True, False, 6), ([0, 16, 24, 57], True, False, 6),
                                                         ([0, 8, 32, 40, 57], False, True, 6), ([0, 32, 57], True, True, 6),
                                                         ([0, 16, 24, 57], False, False, 40)])
def test_shards_give_the_single_process_lists_and_matchings(tmp_path, monkeypatch, bounds, with_seeds, ties, k):
    """Bit for bit: Sinkhorn's column sums in blocks of 8 rows (``decode.SUM_ROWS``), shards on block
    bounds (k = 40 of 49 targets: every column has a share in most blocks)."""
    monkeypatch.setattr(dec, "SUM_ROWS", 8)
    q, b, lists, seeds = pair_lists(tmp_path, ties=ties, k=k)
    c = Cfg()
    want = single_process(lists, q, b, seeds if with_seeds else None, c)
    call = shards_of(tmp_path, q, b, seeds if with_seeds else None, bounds, c)
    got = dict(decode_sharded(call, ["top1", "csls", "sinkhorn"], len(b), c))
    for name, ((idx, score), (r, col, w)) in want.items():
        call("write", name, str(tmp_path / name))
        t = read_dir(tmp_path / name).sort_by("src")
        assert np.array_equal(t["src"].to_numpy(), q)
        got_idx, got_score = read_lists(tmp_path / name / "part-000000000000.parquet")[1:] if len(bounds) == 2 else \
            (np.stack(t["cand"].to_numpy(zero_copy_only=False)), np.stack(t["score"].to_numpy(zero_copy_only=False)))
        assert np.array_equal(got_idx, ids_or_pad(b, idx)), name
        assert np.array_equal(got_score, score.astype(np.float32)), name
        gr, gc, gw = got[name]
        assert np.array_equal(gr, r) and np.array_equal(gc, col) and np.array_equal(gw, w), name


def test_sharded_greedy_keeps_the_threshold_and_the_single_process_order(tmp_path):
    q, b, lists, seeds = pair_lists(tmp_path, n=80, m=80, k=8, seed=3, ties=True)
    c = Cfg()
    c.match_threshold = 0.5
    call = shards_of(tmp_path, q, b, None, [0, 13, 50, 80], c)
    call("decode", "top1", c.csls_k)
    call("match_begin", "top1", c.match_threshold)
    r, col, w = greedy_sharded(call, len(b))
    want = dec.greedy_match(lists[0], lists[1], 0.5)
    assert len(r) and all(np.array_equal(x, y) for x, y in zip((r, col, w), want))
    assert w.min() >= 0.5 and len(set(col)) == len(col) and len(set(r)) == len(r)


def test_a_shard_refuses_a_list_file_without_its_rows(tmp_path):
    q, b, *_ = pair_lists(tmp_path)
    with pytest.raises(RuntimeError, match="holds 7 of the rows 50..60"):
        ListShard(str(tmp_path / "s2t.parquet"), str(tmp_path / "t2s.parquet"), q, b, 50, 60, 3)


def test_shard_bounds_start_on_the_column_sum_blocks():
    from hiea_ray.core.sharded import shard_bounds

    assert shard_bounds(57, 3, rows=8) == [0, 24, 40, 57]
    assert shard_bounds(57, 20, rows=8) == [0, 8, 16, 24, 32, 40, 48, 56, 57]  # no more shards than blocks
    assert shard_bounds(5, 4, rows=8) == [0, 5]
    assert shard_bounds(1_000_000, 4) == [0, 262144, 524288, 786432, 1_000_000]


def test_sharded_sinkhorn_ends_with_the_single_process_scaling_bit_for_bit(tmp_path, monkeypatch):
    """The target scaling v after every iteration's column sums: the same float64 bits as one process."""
    monkeypatch.setattr(dec, "SUM_ROWS", 8)
    q, b, lists, _ = pair_lists(tmp_path, k=40)
    state: dict = {}
    dec.sinkhorn(*lists, len(b), tau=0.05, iters=30, state=state)
    v = sinkhorn_sharded(shards_of(tmp_path, q, b, None, [0, 16, 24, 57], Cfg()), len(b), 0.05, 30)
    assert np.array_equal(v, state["v"])
