"""One typed configuration for every stage.

- ``sections``: one module per section (its dataclass, a comment on every field: its help,
  allowed values as ``Literal``, bounds in the field metadata) with its rules between fields;
- ``fields``: the field kinds (``bounded``, ``runtime``, ``hashed_if_set``), ``check_fields`` and
  the pieces several sections share (``ActorPool``, ``TokenizedPool``, ``TrainScaling``);
- ``schema``: ``Config``, one field per section; ``validate`` checks every field, then every
  section's rules;
- ``loading``: YAML files merged in order, ``--set`` overrides, renamed keys (``MOVED``);
- ``keys``: what enters a stage's key (``section_hash``).
"""

from hiea_ray.config.keys import hashed_fields, section_hash, select
from hiea_ray.config.loading import (
    MOVED,
    config_from_dict,
    load_config,
    migrate,
    parse_overrides,
    section_from_dict,
)
from hiea_ray.config.fields import ActorPool, TokenizedPool, TrainScaling, check_fields
from hiea_ray.config.schema import Config
from hiea_ray.config.sections.collab import CollabConfig
from hiea_ray.config.sections.data import DataConfig
from hiea_ray.config.sections.decode import DecodeConfig
from hiea_ray.config.sections.embed import EMBED_BACKENDS, EmbedConfig
from hiea_ray.config.sections.evaluate import EvalConfig
from hiea_ray.config.sections.llm import LLMConfig
from hiea_ray.config.sections.output import OutputConfig
from hiea_ray.config.sections.ray import RayConfig
from hiea_ray.config.sections.rerank import RerankConfig
from hiea_ray.config.sections.retrieve import RetrieveConfig
from hiea_ray.config.sections.route import RouteConfig
from hiea_ray.config.sections.serve import ServeConfig
from hiea_ray.config.sections.train import TrainRetrieverConfig
from hiea_ray.config.sections.verbalize import VerbalizeConfig, VerbalizerLLMConfig

__all__ = [
    "EMBED_BACKENDS",
    "MOVED",
    "ActorPool",
    "CollabConfig",
    "Config",
    "DataConfig",
    "DecodeConfig",
    "EmbedConfig",
    "EvalConfig",
    "LLMConfig",
    "OutputConfig",
    "RayConfig",
    "RerankConfig",
    "RetrieveConfig",
    "RouteConfig",
    "ServeConfig",
    "TokenizedPool",
    "TrainRetrieverConfig",
    "TrainScaling",
    "VerbalizeConfig",
    "VerbalizerLLMConfig",
    "check_fields",
    "config_from_dict",
    "hashed_fields",
    "load_config",
    "migrate",
    "parse_overrides",
    "section_from_dict",
    "section_hash",
    "select",
]
