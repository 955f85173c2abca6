"""FAISS nearest-neighbour retrieval over unit vectors (inner product = cosine); Ray-free.

``knn(queries, base, k, ...)`` builds an index over ``base`` from a ``faiss.index_factory``
string (``retrieve.index``: "Flat", "IVF4096,Flat", "HNSW32", "IVF65536,PQ32", ...; the aliases
auto / flat / ivf / hnsw; moved to all GPUs when faiss has them and the config allows) and searches ``queries`` in batches, so the
memory beyond the index is O(query_batch * k). Returns (scores float32 (n, k), indices int64
(n, k)) with -1 / -inf padding where the base has fewer than k rows.
"""

from __future__ import annotations

import logging

import faiss
import numpy as np

from hiea_ray.config import RetrieveConfig
from hiea_ray.errors import UserError

log = logging.getLogger(__name__)


def use_gpu(setting: str) -> bool:
    """The one place that decides whether FAISS runs on GPU."""
    n = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
    if setting == "yes" and n == 0:
        log.warning("retrieve.gpu=yes but faiss sees no GPU (faiss-cpu installed?); using CPU")
    return setting != "no" and n > 0


def factory_string(cfg: RetrieveConfig, n: int) -> str:
    """The index_factory string of ``retrieve.index`` for n base rows (aliases expanded; exact
    search below 2000 rows, where training a quantizer is pointless). ``auto`` is exact on a GPU
    at any size and on CPU up to ``exact_max_targets`` rows: on real sentence vectors at 10^6 the
    approximate indexes lose candidates exact search keeps (docs/results/approximate-retrieval-at-10-5-and-10-6.md)."""
    name = cfg.index
    if name.lower() == "flat" or n < 2000:
        return "Flat"
    if name.lower() == "auto" and (n <= cfg.exact_max_targets or use_gpu(cfg.gpu)):
        return "Flat"
    if name.lower() == "auto":  # nlist ~ 4 sqrt(n), a power of two (benchmarks/ann.py)
        return f"IVF{min(1 << int(round(np.log2(4 * np.sqrt(n)))), n // 39)},Flat"
    if name.lower() == "ivf":
        return f"IVF{max(1, min(cfg.ivf_nlist, n // 39))},Flat"
    if name.lower() == "hnsw":
        return f"HNSW{cfg.hnsw_m}"
    return name


def build_index(base: np.ndarray, cfg: RetrieveConfig) -> faiss.Index:
    base = np.ascontiguousarray(base, dtype=np.float32)
    n, d = base.shape
    spec = factory_string(cfg, n)
    try:
        index = faiss.index_factory(d, spec, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as e:
        msg = str(e).strip().splitlines()[-1] if str(e).strip() else repr(e)
        raise UserError(f"config field retrieve.index: {cfg.index!r} is not a faiss index_factory string for "
                        f"{d}-dim vectors ({msg})") from None
    if spec != "Flat" and cfg.index.lower() == "auto":
        log.warning("retrieve: %s targets > retrieve.exact_max_targets (%d) on CPU: approximate search (%s) loses "
                    "candidates exact search keeps (on real 384-dim vectors at 10^6, 54 %% of the exact top-100 "
                    "found); set retrieve.index=flat to search exactly", f"{n:,}", cfg.exact_max_targets, spec)
    if not index.is_trained:
        if n < 39 * _nlist(index):
            log.warning("retrieve.index %s: %d training vectors for %d lists (faiss wants >= 39 per list)", spec, n,
                        _nlist(index))
        index.train(base)
    ivf = _ivf(index)
    if ivf is not None:
        ivf.nprobe = min(cfg.ivf_nprobe, ivf.nlist)
    hnsw = getattr(faiss.downcast_index(index), "hnsw", None)
    if hnsw is not None:
        hnsw.efSearch = max(cfg.hnsw_ef_search, cfg.k)
    if use_gpu(cfg.gpu) and hnsw is None:  # faiss has no GPU HNSW
        index = faiss.index_cpu_to_all_gpus(index)
    index.add(base)
    return index


def _ivf(index: faiss.Index):
    try:
        return faiss.extract_index_ivf(index)
    except RuntimeError:
        return None


def _nlist(index: faiss.Index) -> int:
    ivf = _ivf(index)
    return ivf.nlist if ivf is not None else 1


def knn(queries: np.ndarray, base: np.ndarray, k: int, cfg: RetrieveConfig, progress=None):
    """Top-k of each query row among base rows by inner product (``search``, rescored on ``base``)."""
    if queries.shape[0] == 0 or base.shape[0] == 0:
        return np.full((queries.shape[0], k), -np.inf, np.float32), np.full((queries.shape[0], k), -1, np.int64)
    return search(build_index(base, cfg), queries, base.shape[0], k, cfg.query_batch, progress, base=base)


def search(index: faiss.Index, queries: np.ndarray, n_base: int, k: int, query_batch: int, progress=None,
           base: np.ndarray | None = None):
    """(scores (n, k), indices (n, k)) of the query rows in an index of ``n_base`` rows, searched in
    batches of ``query_batch``; -1 / -inf padded. With ``base`` (the indexed vectors) each found
    candidate's score is recomputed alone (``rescore``) and the list ranked by score, then row: a
    query's list is then the same bits whatever batch it came in and whoever searched it (FAISS's
    BLAS sums depend on the batch's shape), so the driver and the Ray engine write the same lists."""
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    n = queries.shape[0]
    scores = np.full((n, k), -np.inf, dtype=np.float32)
    idx = np.full((n, k), -1, dtype=np.int64)
    kk = min(k, n_base)
    if n == 0 or kk == 0:
        return scores, idx
    # rescored: RESCORE_MARGIN more found, so a candidate FAISS ranked just past k by a last-bit
    # difference is still in the set the exact scores cut to k
    wide = min(k + RESCORE_MARGIN, n_base) if base is not None else kk
    for start in range(0, n, query_batch):
        d, i = index.search(queries[start : start + query_batch], wide)
        if base is not None:
            d, i = rescore(queries[start : start + query_batch], base, i)
            d, i = d[:, :kk], i[:, :kk]
        scores[start : start + len(d), :kk] = d
        idx[start : start + len(d), :kk] = i
        if progress is not None:
            progress(len(d))
    idx[idx < 0] = -1
    scores[idx < 0] = -np.inf
    return scores, idx


RESCORE_MARGIN = 8


def rescore(queries: np.ndarray, base: np.ndarray, idx: np.ndarray, budget: int = 1 << 22) -> tuple[np.ndarray, np.ndarray]:
    """Each candidate's inner product recomputed alone (numpy's einsum loop over the d products of
    one pair, the same for a pair whatever the block: not BLAS, whose sums depend on the shapes),
    the lists sorted by score, ties by lower row; -> (scores float32, rows). Work in blocks of
    ``budget`` gathered numbers (~9 s per 10^5 queries at d = 384, k = 150 on 2 cores)."""
    n, k = idx.shape
    out = np.full((n, k), -np.inf, np.float32)
    step = max(1, budget // max(1, k * base.shape[1]))
    for lo in range(0, n, step):
        i = idx[lo:lo + step]
        q = np.ascontiguousarray(queries[lo:lo + step], dtype=np.float32)
        b = np.asarray(base[np.maximum(i, 0)], dtype=np.float32)
        s = np.einsum("nkd,nd->nk", b, q, optimize=False)
        out[lo:lo + step] = np.where(i >= 0, s, -np.inf)
    by_row = np.argsort(np.where(idx >= 0, idx, np.iinfo(np.int64).max), axis=1, kind="stable")
    i, s = np.take_along_axis(idx, by_row, 1), np.take_along_axis(out, by_row, 1)
    by_score = np.argsort(-s, axis=1, kind="stable")
    return np.take_along_axis(s, by_score, 1), np.take_along_axis(i, by_score, 1)
