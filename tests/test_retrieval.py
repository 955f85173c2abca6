"""FAISS retrieval against numpy brute force; approximate indexes on a clustered set; padding."""

from __future__ import annotations

import faiss
import numpy as np
import pytest

from hiea_ray.config import RetrieveConfig
from hiea_ray.core.retrieval import build_index, knn, use_gpu


def unit(x):
    x = np.asarray(x, dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def brute(q, b, k):
    s = q @ b.T
    i = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(s, i, 1), i


def test_flat_matches_brute_force():
    rng = np.random.default_rng(0)
    q, b = unit(rng.standard_normal((57, 16))), unit(rng.standard_normal((90, 16)))
    seen = []
    s, i = knn(q, b, 10, RetrieveConfig(index="flat", gpu="no", query_batch=7), progress=seen.append)
    ws, wi = brute(q, b, 10)
    np.testing.assert_array_equal(i, wi)
    np.testing.assert_allclose(s, ws, atol=1e-5)
    assert s.dtype == np.float32 and i.dtype == np.int64
    assert sum(seen) == 57 and max(seen) == 7  # searched in batches of query_batch


def clustered(rng, n_base=2400, n_query=200, d=16, clusters=40):
    centers = unit(rng.standard_normal((clusters, d)))
    base = unit(centers[rng.integers(0, clusters, n_base)] + 0.25 * rng.standard_normal((n_base, d)))
    pick = rng.choice(n_base, n_query, replace=False)
    queries = unit(base[pick] + 0.05 * rng.standard_normal((n_query, d)))
    return queries, base


@pytest.mark.parametrize("index, cls", [("ivf", faiss.IndexIVFFlat), ("hnsw", faiss.IndexHNSWFlat)])
def test_approximate_indexes_agree_on_top1(index, cls):
    rng = np.random.default_rng(1)
    q, b = clustered(rng)
    cfg = RetrieveConfig(index=index, gpu="no", k=10, ivf_nlist=64, ivf_nprobe=16, hnsw_m=16, hnsw_ef_search=64)
    assert isinstance(build_index(b, cfg), cls)
    s, i = knn(q, b, 10, cfg)
    _, exact = brute(q, b, 1)
    assert np.mean(i[:, 0] == exact[:, 0]) >= 0.9
    assert (i >= 0).all() and np.all(np.diff(s, axis=1) <= 1e-6)


def test_small_base_uses_exact_index():
    rng = np.random.default_rng(2)
    q, b = unit(rng.standard_normal((20, 8))), unit(rng.standard_normal((100, 8)))
    for index in ("ivf", "hnsw"):
        cfg = RetrieveConfig(index=index, gpu="no")
        index = build_index(b, cfg)
        assert isinstance(index, faiss.IndexFlat) and index.metric_type == faiss.METRIC_INNER_PRODUCT
        np.testing.assert_array_equal(knn(q, b, 5, cfg)[1], brute(q, b, 5)[1])


def test_fewer_base_rows_than_k_pads():
    rng = np.random.default_rng(3)
    q, b = unit(rng.standard_normal((4, 8))), unit(rng.standard_normal((3, 8)))
    s, i = knn(q, b, 5, RetrieveConfig(gpu="no"))
    assert i.shape == (4, 5) and s.shape == (4, 5)
    assert (i[:, 3:] == -1).all() and np.isneginf(s[:, 3:]).all()
    assert all(sorted(row) == [0, 1, 2] for row in i[:, :3].tolist())
    np.testing.assert_array_equal(i[:, :3], brute(q, b, 3)[1])


def test_empty_inputs():
    s, i = knn(np.zeros((0, 8), np.float32), unit(np.ones((3, 8))), 4, RetrieveConfig(gpu="no"))
    assert s.shape == (0, 4) and i.shape == (0, 4)
    s, i = knn(unit(np.ones((2, 8))), np.zeros((0, 8), np.float32), 4, RetrieveConfig(gpu="no"))
    assert (i == -1).all() and np.isneginf(s).all()


def test_use_gpu_decides_from_the_setting_and_the_gpus_faiss_sees(monkeypatch):
    """The one GPU decision: with GPUs visible, auto/yes use them and no does not; without, none does."""
    import hiea_ray.core.retrieval as r

    monkeypatch.setattr(r.faiss, "get_num_gpus", lambda: 2, raising=False)
    assert r.use_gpu("auto") is True and r.use_gpu("yes") is True and r.use_gpu("no") is False
    monkeypatch.setattr(r.faiss, "get_num_gpus", lambda: 0, raising=False)
    assert r.use_gpu("auto") is False and r.use_gpu("yes") is False and r.use_gpu("no") is False


def test_build_index_moves_to_gpu_only_when_use_gpu_says_so(monkeypatch):
    import hiea_ray.core.retrieval as r

    moved = []
    monkeypatch.setattr(r.faiss, "get_num_gpus", lambda: 1, raising=False)
    monkeypatch.setattr(r.faiss, "index_cpu_to_all_gpus", lambda idx: moved.append(idx) or idx, raising=False)
    b = unit(np.random.default_rng(0).standard_normal((50, 8)))
    r.build_index(b, RetrieveConfig(gpu="auto"))
    r.build_index(b, RetrieveConfig(gpu="no"))
    assert len(moved) == 1


@pytest.mark.parametrize("spec", ["Flat", "IVF16,Flat", "HNSW8", "IVF16,PQ4", "IVF16,SQ8"])
def test_index_factory_strings(spec):
    """Any faiss index_factory string works with no code; approximate ones still find near copies."""
    rng = np.random.default_rng(4)
    q, b = clustered(rng)
    cfg = RetrieveConfig(index=spec, gpu="no", ivf_nprobe=16)
    s, i = knn(q, b, 10, cfg)
    _, exact = brute(q, b, 1)
    assert np.mean(i[:, 0] == exact[:, 0]) >= 0.8, spec
    assert (i >= 0).all()


def test_bad_index_string_is_a_user_error():
    from hiea_ray.errors import UserError

    b = unit(np.random.default_rng(5).standard_normal((3000, 30)))
    with pytest.raises(UserError, match="retrieve.index"):  # PQ8 needs a dimension divisible by 8
        build_index(b, RetrieveConfig(index="IVF16,PQ8", gpu="no"))


def test_auto_index_is_exact_up_to_the_threshold_then_ivf_sized_by_n(monkeypatch):
    from hiea_ray.config import RetrieveConfig
    from hiea_ray.core.retrieval import factory_string

    c = RetrieveConfig(gpu="no")
    assert c.index == "auto"
    assert factory_string(c, 10_000) == "Flat" and factory_string(c, 1_000_000) == "Flat"
    assert factory_string(c, 2_000_000) == "Flat" and factory_string(c, 3_000_000) == "IVF8192,Flat"
    assert factory_string(c, 10_000_000) == "IVF16384,Flat"
    small = RetrieveConfig(exact_max_targets=0, gpu="no")
    assert factory_string(small, 100_000) == "IVF1024,Flat" and factory_string(small, 1500) == "Flat"
    assert factory_string(small, 20_000) == f"IVF{20_000 // 39},Flat"  # >= 39 training points per list
    # with a GPU (faiss-gpu), auto searches exactly at any size
    import hiea_ray.core.retrieval as retrieval

    monkeypatch.setattr(retrieval, "use_gpu", lambda setting: setting != "no")
    assert factory_string(RetrieveConfig(), 10_000_000) == "Flat"
    assert factory_string(RetrieveConfig(gpu="no"), 10_000_000) == "IVF16384,Flat"


def test_a_querys_list_is_the_same_bits_whatever_batch_it_is_searched_in():
    """FAISS's BLAS sums depend on the batch's shape; the rescored lists (``search(..., base=)``) do
    not: a query alone, in a batch of 7 or among all gives the same list, exact ties by lower row."""
    from hiea_ray.core.retrieval import search

    rng = np.random.default_rng(5)
    base = rng.standard_normal((3000, 48)).astype(np.float32)
    base[1000] = base[17]  # an exact tie: row 17 must come first
    queries = np.vstack([base[17] + 0.01, rng.standard_normal((999, 48))]).astype(np.float32)
    index = build_index(base, RetrieveConfig(index="flat"))
    s_all, i_all = search(index, queries, len(base), 10, 1000, base=base)
    for batch in (1, 7, 333):
        s, i = search(index, queries, len(base), 10, batch, base=base)
        assert np.array_equal(s, s_all) and np.array_equal(i, i_all), batch
    assert list(i_all[0, :2]) == [17, 1000] and s_all[0, 0] == s_all[0, 1]
    ref = np.sort(queries.astype(np.float64) @ base.T.astype(np.float64), axis=1)[:, ::-1][:, :10]
    np.testing.assert_allclose(s_all, ref, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("shards", [2, 3])
def test_index_shards_merged_per_query_give_the_unsharded_lists(shards):
    """retrieve.index_shards: each shard (target rows j::shards) searched alone, the lists merged by
    score then id (``ops.retrieve.merge_shards``): the unsharded exact lists, ties included."""
    from hiea_ray.core.retrieval import search
    from hiea_ray.ops.retrieve import merge_shards

    rng = np.random.default_rng(9)
    base = rng.standard_normal((900, 24)).astype(np.float32)
    base[500], base[801] = base[4], base[4]  # a three-way tie across shards
    ids = np.arange(900, dtype=np.int64) * 3 + 7
    queries = np.vstack([base[4] * 2, rng.standard_normal((199, 24))]).astype(np.float32)
    cfg = RetrieveConfig(index="flat")
    s, i = search(build_index(base, cfg), queries, len(base), 12, 64, base=base)
    cands, scores = [], []
    for j in range(shards):
        part = base[j::shards]
        ss, ii = search(build_index(part, cfg), queries, len(part), 12, 64, base=part)
        cands.append(np.where(ii >= 0, ids[j::shards][np.maximum(ii, 0)], -1))
        scores.append(ss)
    c, sc = merge_shards(cands, scores, 12)
    assert np.array_equal(c, ids[i]) and np.array_equal(sc, s)
    assert list(c[0, :3]) == [ids[4], ids[500], ids[801]]
