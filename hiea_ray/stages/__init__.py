"""The pipeline's stages, one module each, named as its stage, in run order (the registry).

    ingest -> [verbalize_train] -> verbalize -> [train] -> embed -> retrieve -> [rerank_train -> rerank] -> decode
           -> [calibrate] -> [route -> llm_train -> llm] -> export -> evaluate

Each module defines ``STAGE`` (a ``base.StageDef``: name, the stages it reads, the config it
hashes, when it is enabled, its body). A stage imports the layer below it — the Ray Data pieces in
``hiea_ray.ops``, the run readers in ``hiea_ray.run``, training in ``hiea_ray.train`` — and never
another stage (``tests/test_registry.py``). The runner is ``hiea_ray.pipeline``.
"""

from __future__ import annotations

from hiea_ray.run import RunContext
from hiea_ray.stages import (calibrate, decode, embed, evaluate, export, ingest, llm, llm_train, rerank, rerank_train,
                             retrieve, route, train, verbalize, verbalize_train)
from hiea_ray.stages.base import StageDef

REGISTRY: dict[str, StageDef] = {
    m.STAGE.name: m.STAGE
    for m in (ingest, verbalize_train, verbalize, train, embed, retrieve, rerank_train, rerank, decode, calibrate, route,
              llm_train, llm, export, evaluate)
}
STAGES: list[str] = list(REGISTRY)

__all__ = ["REGISTRY", "STAGES", "RunContext", "StageDef"]
