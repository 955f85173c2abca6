"""rerank (Ray Data actor pool, resumable; ``rerank.enabled``): cross-encoder scores of each
source's top ``rerank.k`` candidates.

Candidates: the retriever's lists, or the sparse Sinkhorn decoder's top-k with the pairs' cosines
(``rerank.candidates: sinkhorn``, written to ``<protocol>/candidates.parquet``). The chain's
callable class is ``hiea_ray.ops.rerank.Reranker`` (the cross-encoder loaded once per actor); output
``<protocol>/parts/*.parquet`` (src, cand[k], retr[k], rerank[k]); finished parts are kept when a
run is killed.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from hiea_ray.core.fusion import sinkhorn_candidates
from hiea_ray.io import (finished_ids, ids_or_pad, read_lists,
                         to_local, write_lists)
from hiea_ray.ops.rerank import rerank_spec
from hiea_ray.run import RunContext
from hiea_ray.stages.base import StageDef

log = logging.getLogger(__name__)


def candidates_file(ctx: RunContext, protocol: str, out: Path) -> Path:
    """The candidate Parquet the reranker reads: the retriever's lists, or the sparse Sinkhorn
    decoder's top rerank.k with the pairs' cosines (written to out/candidates.parquet)."""
    d = ctx.run / "retrieve" / protocol
    if ctx.cfg.rerank.candidates == "retrieve":
        return d / "s2t.parquet"
    c = ctx.cfg.decode
    q, s2t_ids, s2t_score = read_lists(d / "s2t.parquet")
    b, t2s_ids, t2s_score = read_lists(d / "t2s.parquet")
    idx, score = sinkhorn_candidates(to_local(b, s2t_ids), s2t_score, to_local(q, t2s_ids), t2s_score, len(b),
                                     ctx.cfg.rerank.k, c.sinkhorn_tau, c.sinkhorn_iters)
    path = out / "candidates.parquet"
    write_lists(path, q, ids_or_pad(b, idx), score)
    return path


def run(ctx: RunContext, tmp: Path) -> dict:
    import ray

    from hiea_ray.ops.data import init_ray, map_parquet

    rc = ctx.cfg.rerank
    model = ctx.reranker_model()
    init_ray(ctx.cfg)
    texts = ray.put(ctx.texts().select(["id", "text"]))
    t0 = time.time()
    pairs = 0
    for protocol in ctx.cfg.evaluate.protocols:
        parts = tmp / protocol / "parts"
        parts.mkdir(parents=True, exist_ok=True)
        done = finished_ids(parts, "src")
        s2t = candidates_file(ctx, protocol, tmp / protocol)
        total = pq.ParquetFile(s2t).metadata.num_rows
        if len(done) < total:
            if len(done):
                log.info("rerank %s: resuming, %d of %d sources already reranked", protocol, len(done), total)
            map_parquet(s2t, parts, rerank_spec(rc, model, texts), rc.num_actors, rc.rows_per_batch, done, "src",
                        progress=(f"rerank {protocol}", total))
            c = pq.read_table(s2t, columns=["cand"])["cand"].combine_chunks().flatten().to_numpy()
            pairs += int((c.reshape(total, -1)[:, : rc.k] >= 0).sum() * (total - len(done)) / max(total, 1))
        got = finished_ids(parts, "src")
        if len(np.unique(got)) != total or len(got) != total:
            raise RuntimeError(f"rerank {protocol}: expected {total} unique sources, found {len(got)}")
    wall = time.time() - t0
    return {"pairs": pairs, "pairs_per_s": round(pairs / max(wall, 1e-9), 1), "rows_per_s": round(pairs / max(wall, 1e-9), 1)}


def _extra(cfg):
    """Sinkhorn candidates depend on the decoder's Sinkhorn settings."""
    if cfg.rerank.candidates == "sinkhorn":
        return {"sinkhorn": [cfg.decode.sinkhorn_tau, cfg.decode.sinkhorn_iters]}
    return None


def check(ctx: RunContext) -> None:
    """A missing reranker folder is a user error, reported on the driver."""
    from hiea_ray.core.encoder import resolve_model

    resolve_model(ctx.reranker_model())


STAGE = StageDef(
    resumable=True,
    name="rerank",
    check=check,
    body=run,
    reads=("retrieve", "verbalize", "rerank_train"),
    config=("rerank",),
    extra=_extra,
    enabled=lambda cfg: cfg.rerank.enabled,
    # a given (not trained here) reranker by content; a trained one through rerank_train's fingerprint
    external=lambda ctx: {} if ctx.cfg.rerank.train else {"model": ctx.model_fingerprint(ctx.cfg.rerank.model)},
)
