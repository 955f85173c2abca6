"""The ``route`` section of the config: its fields (a comment on each: its help) and ``rules``, the checks
between its fields and the rest of the config (``Config.validate`` runs every section's)."""

from __future__ import annotations

from dataclasses import dataclass, field

from hiea_ray.config.fields import bounded, hashed_if_set
from hiea_ray.errors import UserError


@dataclass
class RouteConfig:
    """HIEA's certainty router (the ``route`` stage): which sources the small models answer alone."""

    # Route the decoded sources (needed by the LLM tier; on when llm.enabled).
    enabled: bool = False
    # The decoder whose answer a certain source keeps and whose lists give the LLM its candidates:
    # "auto" = structure when decoded, else sinkhorn, else the last of decode.decoders.
    primary: str = "auto"
    # Precision of the *certain set*: the sources the small models answer alone, the rest going to
    # the LLM tier (not the exported links' precision: that is output.target_precision). The cut
    # (core.metrics.precision_threshold, the export's too) is chosen on held-out labelled sources.
    target_precision: float = bounded(0.99, gt=0, le=1)
    # Optional budget: at most this share of the sources goes to the LLM (lowers the precision
    # when the target would route more); null = no cap.
    max_llm_fraction: float | None = bounded(None, ge=0, le=1)
    # Labelled sources: the seed links (decode.structure_anchors) in this many folds, each decoded
    # with the other folds as anchors, so its features are made as a test source's are.
    folds: int = bounded(5, ge=1)
    # Splits of the labelled sources, a subset of decode.structure_anchors; [] = auto: the anchor
    # splits no small model trained on (the retriever and the reranker fine-tune on "train", and a
    # source a model learned is answered better than a test source: its features are not a test
    # source's). Without training: all the anchors.
    labelled: list[str] = hashed_if_set(default_factory=list)
    # Folds of the classifier's out-of-fold probabilities (what the threshold is chosen on).
    cv_folds: int = bounded(5, ge=2)
    seed: int = 0

    def rules(self, cfg) -> None:
        if self.primary not in ("auto", *cfg.decode.decoders):
            raise UserError(f"config field route.primary: {self.primary!r} is not auto or one of decode.decoders "
                            f"{cfg.decode.decoders}")
