"""What of a config enters a stage's key: every field but the ``runtime`` ones and the
``hashed_if_set`` ones left at their default (or unused by their section), hashed per selector."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any

from hiea_ray.config.schema import Config


def hashed_fields(obj) -> Any:
    """A config value as hashed by stage keys: dataclasses without their ``runtime`` fields."""
    if dataclasses.is_dataclass(obj):
        return {f.name: hashed_fields(getattr(obj, f.name)) for f in dataclasses.fields(obj)
                if not f.metadata.get("runtime") and not _omitted(obj, f)}
    return obj


def _omitted(obj, f: dataclasses.Field) -> bool:
    if not f.metadata.get("omit_default"):
        return False
    used = f.metadata.get("used_when")
    return _is_default(obj, f) or (used is not None and not used(obj))


def _is_default(obj, f: dataclasses.Field) -> bool:
    default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
    return getattr(obj, f.name) == default


def select(cfg: Config, selector: str) -> Any:
    """``"embed"`` (a whole section) or ``"embed.model"`` (one field) -> its hashed value."""
    node: Any = cfg
    for part in selector.split("."):
        if not dataclasses.is_dataclass(node) or part not in {f.name for f in dataclasses.fields(node)}:
            raise KeyError(f"no config field {selector!r}")
        node = getattr(node, part)
    return hashed_fields(node)


def section_hash(cfg: Config, *selectors: str, extra: Any = None) -> str:
    """Stable hash of config sections / fields (``select``) plus anything extra a stage depends on."""
    payload = {s: select(cfg, s) for s in selectors}
    if extra is not None:
        payload["extra"] = extra
    blob = json.dumps(payload, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]
