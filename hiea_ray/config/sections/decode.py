"""The ``decode`` section of the config: its fields (a comment on each: its help) and ``rules``, the checks
between its fields and the rest of the config (``Config.validate`` runs every section's)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from hiea_ray.config.fields import bounded, hashed_if_set, runtime
from hiea_ray.config.fields import unique_and_not_empty
from hiea_ray.errors import UserError


@dataclass
class DecodeConfig:
    # Decoders to run and evaluate: top1, csls, sinkhorn, structure (the sinkhorn lists re-ranked
    # by neighbour consistency, see structure_rounds).
    decoders: list[Literal["top1", "csls", "sinkhorn", "structure"]] = field(default_factory=lambda: ["top1", "csls", "sinkhorn"])
    # CSLS neighbourhood size (<= retrieve.k).
    csls_k: int = bounded(10, ge=1)
    # Sparse Sinkhorn: entropic temperature and iterations.
    sinkhorn_tau: float = bounded(0.03, gt=0)
    sinkhorn_iters: int = bounded(100, ge=1)
    # Sinkhorn's column sums add the partial sums of blocks of this many source rows, in order: the
    # same floating-point additions in one process and over decode shards (engine ray: a shard
    # starts on a block, so there are at most n / sinkhorn_block_rows shards).
    sinkhorn_block_rows: int = hashed_if_set(default=65536, ge=1)
    # One-to-one output: a matched pair whose decoder score is below this is dropped (abstention);
    # null keeps every greedy match.
    match_threshold: float | None = None
    # One-to-one matcher writing <decoder>.match.parquet: greedy (by descending score) or
    # hungarian (maximum total score per connected component of the candidate graph).
    matcher: Literal["greedy", "hungarian"] = "greedy"
    # hungarian: a component of r sources x c targets is solved exactly only when
    # r * c <= hungarian_max_block ** 2 (a dense block); larger ones are matched greedily.
    hungarian_max_block: int = bounded(2000, ge=1)
    # structure decoder: rounds of (best matches of the current Sinkhorn plan -> neighbour
    # consistency of every candidate edge -> Sinkhorn on similarity + structure_beta *
    # consistency); 0 = off (the sinkhorn lists unchanged).
    structure_rounds: int = bounded(2, ge=0)
    # Weight of the neighbour consistency (a share in [0, 1]) added to the similarity (cosine
    # units). The defaults were chosen on validation links
    # (docs/results/reranking-and-structure-aware-decoding-on-dbp15k.md).
    structure_beta: float = bounded(0.2, ge=0)
    # Link splits whose pairs are known matches for the structure decoder (the seed alignment:
    # held fixed as the best match of their entities, so a test entity's seed neighbours vouch
    # for its candidates); [] = none. Never "test".
    structure_anchors: list[str] = field(default_factory=lambda: ["train", "valid"])
    # The user's seed links (train and valid) are facts: a seed source's list is its seed target
    # alone, and no other source is offered a seed target (nor a target a seed source), so the
    # one-to-one decoders never give a seed's target to anyone else. false: seeds compete as any
    # entity does. (The standard protocol's pool holds no seed: it changes nothing there.)
    seeds_as_facts: bool = True
    # With reranking (rerank.enabled): the decoders' score of a candidate edge, in cosine units,
    #   score = (1 - fusion_weight) * retriever_cosine + fusion_weight * score_scale * reranker_logit
    fusion_weight: float = bounded(0.5, ge=0, le=1)
    score_scale: float = bounded(0.05, gt=0)

    # Where the decoders run: "driver" (this process, or a Ray task with ray.offload) or "ray"
    # (``hiea_ray.ops.decode``: top1, csls and sinkhorn over ``shards`` actors, each holding a block
    # of source rows, only O(targets) state passing through the driver; structure in one Ray task).
    # Both give the same lists and matchings.
    engine: Literal["driver", "ray"] = runtime("driver")
    # engine ray: shard actors, the CPUs of each, and the memory each reserves (GiB; null: none).
    shards: int = runtime(4, ge=1)
    shard_cpus: float = runtime(1.0, gt=0)
    shard_memory_gib: float | None = runtime(None, gt=0)

    def rules(self, cfg) -> None:
        unique_and_not_empty("decode.decoders", self.decoders)
        if self.engine == "ray" and self.matcher != "greedy":
            raise UserError("config field decode.engine: ray matches greedily; decode.matcher hungarian needs engine driver")
        if self.engine == "ray" and "decode" in cfg.ray.offload:
            raise UserError("config field ray.offload: decode.engine ray already runs decode as Ray work; leave decode out")
        if self.engine == "ray" and cfg.rerank.enabled:
            raise UserError("config field decode.engine: ray does not fuse reranker scores (rerank.enabled); use engine driver")
        if self.csls_k > cfg.retrieve.k:
            raise UserError("config field decode.csls_k: must be <= retrieve.k")
        if not math.isfinite(self.structure_beta):
            raise UserError("config field decode.structure_beta: must be a finite number >= 0")
        for split in self.structure_anchors:
            if split not in ("train", "valid"):
                raise UserError(
                    f"config field decode.structure_anchors: {split!r} is not a seed split (train, valid); "
                    "test links are what is evaluated"
                )
