"""The pipeline's stages, one module each, in run order (the registry).

    ingest -> [verbalize_train] -> verbalize -> [train] -> embed -> retrieve -> [rerank_train -> rerank] -> decode
           -> [route -> llm_train -> llm] -> evaluate

Each module defines ``STAGE`` (a ``base.StageDef``: name, the stages it reads, the config it
hashes, when it is enabled, its body) and, for Ray Data stages, the plain callable class Ray
maps over blocks (``Verbalizer``, ``Embedder``, ``Reranker``: no Ray import, tested directly).
The runner is ``hiea_ray.pipeline``.
"""

from __future__ import annotations

from hiea_ray.stages import (decode, embed, evaluate, ingest, llm, rerank, retrieve, route, train_llm, train_reranker,
                             train_retriever, verbalize, verbalize_train)
from hiea_ray.stages.base import RunContext, StageDef

REGISTRY: dict[str, StageDef] = {
    m.STAGE.name: m.STAGE
    for m in (ingest, verbalize_train, verbalize, train_retriever, embed, retrieve, train_reranker, rerank, decode, route,
              train_llm, llm, evaluate)
}
STAGES: list[str] = list(REGISTRY)

__all__ = ["REGISTRY", "STAGES", "RunContext", "StageDef"]
