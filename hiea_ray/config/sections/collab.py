"""The ``collab`` section of the config: its fields (a comment on each: its help) and ``rules``, the checks
between its fields and the rest of the config (``Config.validate`` runs every section's)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from hiea_ray.config.fields import bounded
from hiea_ray.errors import UserError


@dataclass
class CollabConfig:
    """Collaboration rounds (``hiea_ray.collab``): the small models' certain answers of round r
    become pseudo-seeds of round r+1, run in ``RUN/round<r+1>/`` (a full run folder): the retriever
    fine-tunes on seed + pseudo-seed links from round r's model (train.enabled), and embed,
    retrieve, decode (pseudo-seeds as extra structure anchors), calibrate and route run again; the
    router's labelled sources stay the seed links. The LLM tier runs in the last round only."""
    # Rounds in all; 1 = no collaboration (the run is exactly the pipeline's).
    rounds: int = bounded(1, ge=1)
    # Which answers become pseudo-seeds: "certain" (the router's certain sources' answers), "mutual"
    # (the primary decoder's mutual best pairs), "both" (certain and mutual best). At most one per
    # KG1 and KG2 entity; never a seed source or target.
    pseudo_seeds: Literal["both", "certain", "mutual"] = "both"
    # At most this many pseudo-seeds per train seed link (the most confident first); null = all.
    max_per_seed: float | None = bounded(None, gt=0)

    def rules(self, cfg) -> None:
        if self.rounds > 1 and "all-targets" not in cfg.evaluate.protocols:
            raise UserError("config field collab.rounds: pseudo-seeds come from the all-targets decode (the standard "
                            "protocol ranks against the gold test targets): add all-targets to evaluate.protocols")
        if self.rounds > 1 and self.pseudo_seeds != "mutual" and not (cfg.route.enabled or cfg.llm.enabled):
            raise UserError(f"config field collab.pseudo_seeds: {self.pseudo_seeds!r} needs the router's certain "
                            "answers: set route.enabled (or pseudo_seeds: mutual)")
