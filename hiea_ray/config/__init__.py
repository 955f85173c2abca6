"""One typed configuration for every stage.

- ``schema``: the sections (dataclasses, a comment on every field: its help), allowed values
  (``Literal``), bounds (field metadata), the actor-pool fields shared by every model stage
  (``ActorPool``), and the rules between fields (``Config.validate``);
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
from hiea_ray.config.schema import (
    EMBED_BACKENDS,
    ActorPool,
    CollabConfig,
    Config,
    DataConfig,
    DecodeConfig,
    EmbedConfig,
    EvalConfig,
    LLMConfig,
    OutputConfig,
    RayConfig,
    RerankConfig,
    RetrieveConfig,
    RouteConfig,
    ServeConfig,
    TokenizedPool,
    TrainRetrieverConfig,
    TrainScaling,
    VerbalizeConfig,
    VerbalizerLLMConfig,
    check_fields,
)

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
