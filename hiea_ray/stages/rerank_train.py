"""rerank_train (Ray Train; ``rerank.enabled`` and ``rerank.train``): the cross-encoder reranker.

Listwise training rows from the retriever's candidates over all KG2 entities
(``hiea_ray.train.reranker``), the training contract of ``rerank.scaling``; the best checkpoint
by validation MRR becomes ``model/``, with ``history.json`` and ``curve.png``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from hiea_ray.run import RunContext
from hiea_ray.stages.base import StageDef


def run(ctx: RunContext, tmp: Path) -> dict:
    from hiea_ray.ops.data import init_ray
    from hiea_ray.train.reranker import train_reranker

    init_ray(ctx.cfg)
    ids, kg, vecs = ctx.embeddings()
    res = train_reranker(ctx.cfg, ctx.texts(), ctx.pair().links, ids, kg, vecs, tmp)
    shutil.rmtree(tmp / "ray", ignore_errors=True)  # Ray Train's checkpoints: only the best model is kept
    return {"retriever_valid": res["retriever_valid"], "best": res["best"], "train_links": res["train_links"]}


STAGE = StageDef(
    resumable=True,
    name="rerank_train",
    body=run,
    reads=("embed", "verbalize"),
    config=("rerank", "retrieve"),
    enabled=lambda cfg: cfg.rerank.enabled and cfg.rerank.train,
    external=lambda ctx: {"base_model": ctx.model_fingerprint(ctx.cfg.rerank.model)},
)
