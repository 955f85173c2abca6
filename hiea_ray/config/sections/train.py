"""The ``train`` section of the config: its fields (a comment on each: its help) and ``rules``, the checks
between its fields and the rest of the config (``Config.validate`` runs every section's)."""

from __future__ import annotations

from dataclasses import dataclass, field

from hiea_ray.config.fields import TrainScaling, bounded
from hiea_ray.errors import UserError


@dataclass
class TrainRetrieverConfig:
    # Fine-tune the bi-encoder on the train links before embedding (DERA's retriever training).
    # The encoder, its pooling and max_length are embed.model / embed.pooling / embed.max_length.
    enabled: bool = False
    # Rounds of (mine hard negatives with the current model -> train epochs_per_round epochs).
    rounds: int = bounded(2, ge=1)
    epochs_per_round: int = bounded(1, ge=1)
    # Global batch of train links per step (split evenly over the workers).
    batch_size: int = bounded(32, ge=1)
    lr: float = bounded(3e-5, gt=0)
    warmup_steps: int = bounded(20, ge=0)
    # InfoNCE temperature.
    temperature: float = bounded(0.05, gt=0)
    # Negatives: other links' targets in the batch; also those of the other workers (all-gather).
    in_batch: bool = True
    cross_device: bool = True
    # Hard negatives per source, sampled from ranks hard_rank_from..hard_rank_to of the current
    # model's retrieval over all KG2 entities (0 disables them).
    hard_negatives: int = bounded(4, ge=0)
    hard_rank_from: int = bounded(2, ge=1)
    hard_rank_to: int = 200
    # Also train target -> source.
    symmetric: bool = False
    # Validate (valid links: MRR, Hits@1) and checkpoint every N steps; the best checkpoint is kept.
    eval_every: int = bounded(50, ge=1)
    # Workers, devices, precision, ZeRO, failures, seed.
    scaling: TrainScaling = field(default_factory=TrainScaling)

    def rules(self, cfg) -> None:
        if self.hard_rank_to < self.hard_rank_from:
            raise UserError("config fields train.hard_rank_from/to: need 1 <= from <= to")
