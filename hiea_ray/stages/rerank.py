"""rerank (Ray Data actor pool, resumable; ``rerank.enabled``): cross-encoder scores of each
source's top ``rerank.k`` candidates.

Candidates: the retriever's lists, or the sparse Sinkhorn decoder's top-k with the pairs' cosines
(``rerank.candidates: sinkhorn``, written to ``<protocol>/candidates.parquet``). ``Reranker`` is
the callable class (the cross-encoder loaded once per actor); output
``<protocol>/parts/*.parquet`` (src, cand[k], retr[k], rerank[k]); finished parts are kept when a
run is killed.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from hiea_ray.config import RerankConfig
from hiea_ray.core.encoder import set_threads
from hiea_ray.core.fusion import sinkhorn_candidates
from hiea_ray.data import MapSpec, resolve
from hiea_ray.io import (TextLookup, column_to_numpy, embeddings_column, finished_ids, ids_or_pad, read_lists,
                         to_local, write_lists)
from hiea_ray.stages.base import RunContext, StageDef

log = logging.getLogger("hiea_ray")


class Reranker:
    """Candidate rows (src, cand[K], score[K]) -> (src, cand[k], retr[k], rerank[k]) for the top k.

    Scores each (source text, candidate text) pair of a source's top-k candidates with the
    cross-encoder (loaded once per actor). ``texts`` (id, text) is a table or an object ref
    (shared read-only through the object store on a cluster). Padded candidates (-1) score -inf."""

    def __init__(self, cfg: dict, model: str, texts):
        import torch

        from hiea_ray.core.cross_encoder import load_reranker

        self.cfg = RerankConfig(**cfg)
        set_threads(self.cfg.torch_threads or os.cpu_count())  # as the embed stage: 0 = all cores
        self.device = torch.device("cuda" if self.cfg.gpus_per_actor > 0 and torch.cuda.is_available() else "cpu")
        self.amp = torch.bfloat16 if (self.device.type == "cuda" and self.cfg.amp) else None
        if self.device.type == "cpu" and self.cfg.backend == "torch-bf16":
            self.amp = torch.bfloat16  # oneDNN bf16 on CPU (core.encoder.cpu_has_bf16)
        self.model, self.tokenizer = load_reranker(model)
        self.model.to(self.device)
        self._texts = TextLookup(resolve(texts))

    def __call__(self, batch: pa.Table) -> pa.Table:
        from hiea_ray.core.cross_encoder import score_pairs

        k = self.cfg.k
        src = batch["src"].to_numpy()
        cand = column_to_numpy(batch["cand"])[:, :k]
        retr = column_to_numpy(batch["score"])[:, :k]
        ok = cand >= 0
        rows, cols = np.nonzero(ok)
        logits = score_pairs(
            self.model, self.tokenizer, self._texts(src[rows]), self._texts(cand[rows, cols]), self.cfg.max_length,
            self.device, self.cfg.infer_batch_size, self.amp,
        )
        rerank = np.full(cand.shape, -np.inf, np.float32)
        rerank[rows, cols] = logits
        return pa.table({"src": batch["src"], "cand": embeddings_column(cand.astype(np.int64)), "retr": embeddings_column(retr),
                         "rerank": embeddings_column(rerank)})


def rerank_spec(cfg: RerankConfig, model: str, texts) -> MapSpec:
    return MapSpec(
        Reranker,
        {"cfg": asdict(cfg), "model": model, "texts": texts},
        {"batch_size": cfg.rows_per_batch, "batch_format": "pyarrow", "num_cpus": cfg.cpus_per_actor,
         "num_gpus": cfg.gpus_per_actor},
    )


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

    from hiea_ray.data import init_ray, map_parquet

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
