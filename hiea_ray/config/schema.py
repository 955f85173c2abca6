"""The config's schema: ``Config``, one field per section. Each section is a module of
``hiea_ray.config.sections`` (its dataclass, a comment on every field — its help: ``hiea-ray config
show``, docs/configuration.md —, allowed values as ``Literal`` types, numeric bounds in the field
metadata) with its own ``rules`` between fields; the field kinds and ``check_fields`` are
``hiea_ray.config.fields``. ``Config.validate`` checks every field, then runs every section's rules. Loading, merging and overrides are ``hiea_ray.config.loading``;
what enters a stage's key is ``hiea_ray.config.keys``.

Field kinds (metadata): ``runtime`` fields only place work (actor counts, CPUs, batch rows) and never
change an output, so they are left out of every stage key; ``hashed_if_set`` fields enter a key only
when set to something other than their default (or, with ``used_when``, only while their section
uses them), so adding such a field keeps the keys of existing runs.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from hiea_ray.config.fields import check_fields
from hiea_ray.config.sections.collab import CollabConfig
from hiea_ray.config.sections.data import DataConfig
from hiea_ray.config.sections.decode import DecodeConfig
from hiea_ray.config.sections.embed import EmbedConfig
from hiea_ray.config.sections.evaluate import EvalConfig
from hiea_ray.config.sections.llm import LLMConfig
from hiea_ray.config.sections.output import OutputConfig
from hiea_ray.config.sections.ray import RayConfig
from hiea_ray.config.sections.rerank import RerankConfig
from hiea_ray.config.sections.retrieve import RetrieveConfig
from hiea_ray.config.sections.route import RouteConfig
from hiea_ray.config.sections.serve import ServeConfig
from hiea_ray.config.sections.train import TrainRetrieverConfig
from hiea_ray.config.sections.verbalize import VerbalizeConfig


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    verbalize: VerbalizeConfig = field(default_factory=VerbalizeConfig)
    embed: EmbedConfig = field(default_factory=EmbedConfig)
    retrieve: RetrieveConfig = field(default_factory=RetrieveConfig)
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    evaluate: EvalConfig = field(default_factory=EvalConfig)
    train: TrainRetrieverConfig = field(default_factory=TrainRetrieverConfig)
    rerank: RerankConfig = field(default_factory=RerankConfig)
    route: RouteConfig = field(default_factory=RouteConfig)
    llm: LLMConfig = field(default_factory=LLMConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    collab: CollabConfig = field(default_factory=CollabConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    serve: ServeConfig = field(default_factory=ServeConfig)

    def validate(self) -> Config:
        """Every field's choices and bounds (``check_fields``), then each section's rules between
        fields (``rules``: its own module), in the order of the sections."""
        check_fields(self)
        for f in dataclasses.fields(self):
            section = getattr(self, f.name)
            if hasattr(section, "rules"):
                section.rules(self)
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
