"""FAISS nearest-neighbour retrieval over unit vectors (inner product = cosine); Ray-free.

``knn(queries, base, k, ...)`` builds an index over ``base`` (flat, IVF-Flat or HNSW; moved to
all GPUs when faiss has them and the config allows) and searches ``queries`` in batches, so the
memory beyond the index is O(query_batch * k). Returns (scores float32 (n, k), indices int64
(n, k)) with -1 / -inf padding where the base has fewer than k rows.
"""

from __future__ import annotations

import logging

import faiss
import numpy as np

from hiea_ray.config import RetrieveConfig

log = logging.getLogger(__name__)


def use_gpu(setting: str) -> bool:
    """The one place that decides whether FAISS runs on GPU."""
    n = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
    if setting == "yes" and n == 0:
        log.warning("retrieve.gpu=yes but faiss sees no GPU (faiss-cpu installed?); using CPU")
    return setting != "no" and n > 0


def build_index(base: np.ndarray, cfg: RetrieveConfig) -> faiss.Index:
    base = np.ascontiguousarray(base, dtype=np.float32)
    n, d = base.shape
    if cfg.index == "flat" or n < 2000:
        index = faiss.IndexFlatIP(d)
    elif cfg.index == "ivf":
        nlist = max(1, min(cfg.ivf_nlist, n // 39))
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
        index.train(base)
        index.nprobe = min(cfg.ivf_nprobe, nlist)
    else:
        index = faiss.IndexHNSWFlat(d, cfg.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efSearch = max(cfg.hnsw_ef_search, cfg.k)
    if use_gpu(cfg.gpu) and not isinstance(index, faiss.IndexHNSWFlat):
        index = faiss.index_cpu_to_all_gpus(index)
    index.add(base)
    return index


def knn(queries: np.ndarray, base: np.ndarray, k: int, cfg: RetrieveConfig, progress=None):
    """Top-k of each query row among base rows by inner product."""
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    n = queries.shape[0]
    scores = np.full((n, k), -np.inf, dtype=np.float32)
    idx = np.full((n, k), -1, dtype=np.int64)
    if n == 0 or base.shape[0] == 0:
        return scores, idx
    index = build_index(base, cfg)
    kk = min(k, base.shape[0])
    for start in range(0, n, cfg.query_batch):
        d, i = index.search(queries[start : start + cfg.query_batch], kk)
        scores[start : start + len(d), :kk] = d
        idx[start : start + len(d), :kk] = i
        if progress is not None:
            progress(len(d))
    idx[idx < 0] = -1
    scores[idx < 0] = -np.inf
    return scores, idx
