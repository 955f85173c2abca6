"""The ``rerank`` section of the config: its fields (a comment on each: its help) and ``rules``, the checks
between its fields and the rest of the config (``Config.validate`` runs every section's)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from hiea_ray.config.fields import ActorPool, TokenizedPool, TrainScaling, bounded, hashed_if_set, runtime
from hiea_ray.errors import UserError


@dataclass
class RerankConfig(TokenizedPool):
    # Cross-encoder reranking of each source's retrieved candidates (DERA stage 3). Off by default.
    enabled: bool = False
    # Initial weights: "default" = the packaged all-MiniLM-L6-v2 with a fresh scoring head; or any
    # HF model id / folder (a sequence-classification head with one label is added when missing).
    model: str = "default"
    # Train the cross-encoder on the train links (else model must already be a trained reranker).
    train: bool = True
    # Candidates reranked per source: the top k (<= retrieve.k) of the retriever's list
    # ("retrieve", cosine order, as DERA) or of the sparse Sinkhorn decoder's list ("sinkhorn":
    # optimal transport over the retrieved lists with decode.sinkhorn_*; its top-k holds the gold
    # more often, so a smaller k costs fewer cross-encoder passes for the same recall).
    candidates: Literal["retrieve", "sinkhorn"] = "retrieve"
    k: int = bounded(10, ge=1)
    # Tokens of the (source text, candidate text) pair; truncated longest-first.
    max_length: int = bounded(128, ge=1)
    # Training: per train link, 1 positive + `negatives` sampled from the retriever's top
    # `negative_depth` over all KG2 entities (gold excluded); listwise softmax cross-entropy.
    negatives: int = bounded(7, ge=1)
    negative_depth: int = 50
    # Train links used per epoch (0 = all): the cross-encoder costs (1 + negatives) passes per link.
    max_train_links: int = bounded(0, ge=0)
    epochs: int = bounded(1, ge=1)
    batch_size: int = bounded(8, ge=1)  # links per optimizer step (global, split over workers)
    lr: float = bounded(3.0e-5, gt=0)
    warmup_steps: int = bounded(10, ge=0)
    # Validate (Hits@1 / MRR of the reranked top-k of validation links) every N steps; best kept.
    eval_every: int = bounded(50, ge=1)
    valid_links: int = bounded(300, ge=1)
    # Training workers, devices, precision, ZeRO, failures, seed (the seed also samples the data).
    scaling: TrainScaling = field(default_factory=TrainScaling)
    # Batch reranking on the actor pool over the candidate Parquet (ActorPool; a batch is
    # rows_per_batch sources): (source, candidate) pairs per forward pass.
    infer_batch_size: int = runtime(64, ge=1)
    # bf16 autocast in the rerank actors on GPU (ignored on CPU).
    amp: bool = True
    # Inference on CPU: "torch" or "torch-bf16" (bf16 autocast, as embed.backend; fast on CPUs with
    # native bf16), "auto" (torch-bf16 where the CPU has native bf16, else torch). On GPU, amp applies.
    backend: Literal["auto", "torch", "torch-bf16"] = hashed_if_set(default="auto")

    def rules(self, cfg) -> None:
        if self.enabled and self.k > cfg.retrieve.k:
            raise UserError("config field rerank.k: must be in [1, retrieve.k]")
        if self.negative_depth < self.negatives + 1:
            raise UserError("config fields rerank.negatives/negative_depth: need 1 <= negatives < negative_depth")
