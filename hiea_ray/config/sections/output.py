"""The ``output`` section of the config: its fields (a comment on each: its help) and ``rules``, the checks
between its fields and the rest of the config (``Config.validate`` runs every section's)."""

from __future__ import annotations

from dataclasses import dataclass, field

from hiea_ray.config.fields import bounded
from hiea_ray.errors import UserError


@dataclass
class OutputConfig:
    """The alignment a run hands over (the ``export`` stage: RUN/alignment/): which decoder's
    one-to-one output, on which protocol, and how many of its links."""
    # "auto": hiea when the LLM tier runs, else structure when decoded, else sinkhorn, else the
    # first of decode.decoders; or one of decode.decoders (or hiea).
    decoder: str = "auto"
    # "auto": all-targets when evaluated (every KG1 entity against every KG2 entity: the real use),
    # else the first of evaluate.protocols.
    protocol: str = "auto"
    # Keep the links whose confidence (the router's probability that the match is right, for the
    # decoder the router routes; else the decoder's score calibrated on the labelled seed sources)
    # is at least this; null = every link of the output.
    min_confidence: float | None = None
    # Or: precision of the *exported links* (not the router's certain set: route.target_precision):
    # the confidence threshold that reaches it on the labelled seed sources (out of fold: the
    # router's, or the calibrate stage's; core.metrics.precision_threshold), or on the output's own
    # links with dangling_share. null = use min_confidence.
    target_precision: float | None = bounded(None, gt=0, le=1)
    # Run the calibrate stage without a router: decode the labelled seed sources out of fold
    # (route.folds decodes of the pool) and map each decoder's score to P(right). false: confidence
    # is the raw decoder score and target_precision needs the router.
    calibrate: bool = True
    # Graphs with entities that have no counterpart (all-targets: every KG1 entity is a source).
    # The calibrate stage decodes this share of the labelled seed sources with their gold target
    # hidden (simulated dangling sources), learns P(a source has a counterpart) from the confidence
    # features, estimates the share of such sources among the run's own (EM over their
    # probabilities), and export's confidence becomes P(has one) x the calibrated score;
    # target_precision is then met on the output's own links (expected precision). 0 = off: every
    # source is taken to have a counterpart. The all-targets protocol only.
    dangling_share: float = bounded(0.0, ge=0, lt=1)

    def rules(self, cfg) -> None:
        decoders = set(cfg.decode.decoders) | ({"hiea"} if cfg.llm.enabled else set())
        if self.decoder != "auto" and self.decoder not in decoders:
            raise UserError(f"config field output.decoder: {self.decoder!r} is not one this run decodes "
                            f"({', '.join(sorted(decoders))}, or auto)")
        if self.protocol != "auto" and self.protocol not in cfg.evaluate.protocols:
            raise UserError(f"config field output.protocol: {self.protocol!r} is not one of evaluate.protocols "
                            f"({', '.join(cfg.evaluate.protocols)}, or auto)")
