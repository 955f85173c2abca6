"""The ``evaluate`` section of the config: its fields (a comment on each: its help) and ``rules``, the checks
between its fields and the rest of the config (``Config.validate`` runs every section's)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from hiea_ray.config.fields import unique_and_not_empty
from hiea_ray.errors import UserError


@dataclass
class EvalConfig:
    # "standard": rank among the test links' targets; "all-targets": rank among every KG2 entity.
    protocols: list[Literal["standard", "all-targets"]] = field(default_factory=lambda: ["standard", "all-targets"])
    # Hits@k cut-offs reported.
    hits_at: list[int] = field(default_factory=lambda: [1, 5, 10])

    def rules(self, cfg) -> None:
        for name, values in (("evaluate.protocols", self.protocols), ("evaluate.hits_at", self.hits_at)):
            unique_and_not_empty(name, values)
        for h in self.hits_at:
            if h < 1:
                raise UserError(f"config field evaluate.hits_at: {h} must be >= 1")
        if cfg.data.test_links == "none" and list(self.protocols) != ["all-targets"]:
            raise UserError("config field evaluate.protocols: a label-free run (data.test_links: none) has no test "
                            "links to rank among; set evaluate.protocols to [all-targets]")
