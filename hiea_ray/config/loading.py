"""Loading a config: YAML files merged in order, ``--set`` overrides, renamed keys migrated, every
value coerced to its field's type (``Literal`` choices included) with errors naming the field and
the file; then ``Config.validate``."""

from __future__ import annotations

import dataclasses
import logging
import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml

from hiea_ray.config.schema import Config
from hiea_ray.errors import UserError

log = logging.getLogger(__name__)


def _hints(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check/convert a YAML or --set value against a field's annotation."""
    origin = typing.get_origin(tp)
    if origin is Literal:  # converted to the choices' type here; the choice itself is checked by validate
        return _coerce(value, type(typing.get_args(tp)[0]), where)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in {"null", "none"}):
            return None
        for a in args[:-1]:  # float | str: the first type the value fits
            try:
                return _coerce(value, a, where)
            except UserError:
                pass
        return _coerce(value, args[-1], where)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise UserError(f"config field {where}: expected a mapping, got {value!r}")
        return _build(tp, value, where)
    if origin is list:
        (item,) = typing.get_args(tp)
        if isinstance(value, str):
            value = [v.strip() for v in value.strip("[]").split(",") if v.strip()]
        if not isinstance(value, list):
            raise UserError(f"config field {where}: expected a list, got {value!r}")
        return [_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    try:
        if tp is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in {"true", "false", "yes", "no", "1", "0"}:
                return value.lower() in {"true", "yes", "1"}
            raise ValueError
        if tp is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value)
        if tp is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if tp is str:
            if not isinstance(value, (str, int, float)) or isinstance(value, bool):
                raise ValueError
            return str(value)
    except (TypeError, ValueError):
        raise UserError(f"config field {where}: {value!r} is not a valid {tp.__name__}") from None
    return value


def _build(cls, values: dict[str, Any], prefix: str = ""):
    hints = _hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        where = f"{prefix}." if prefix else ""
        raise UserError(
            f"unknown config key(s): {', '.join(where + u for u in unknown)} "
            f"(known: {', '.join(sorted(known))})"
        )
    kwargs = {}
    for name, value in values.items():
        kwargs[name] = _coerce(value, hints[name], f"{prefix}.{name}" if prefix else name)
    return cls(**kwargs)


def section_from_dict(cls, values: dict[str, Any]):
    """A config section (nested sections included) back from ``dataclasses.asdict`` output: what
    Ray actors are given, as plain dicts, and rebuild."""
    return _build(cls, values, cls.__name__)


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``["embed.batch_size=64", ...]`` -> nested dict (values parsed as YAML scalars)."""
    tree: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise UserError(f"--set {item!r}: expected key=value, e.g. retrieve.k=20")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        node = tree
        parts = key.strip().split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise UserError(f"--set {item!r}: {p} is not a section")
        node[parts[-1]] = value
    return tree


# Keys renamed since earlier releases: old key -> new key (read with a warning).
MOVED = {
    **{f"train.{k}": f"train.scaling.{k}" for k in (
        "num_workers", "use_gpu", "cpus_per_worker", "torch_threads", "amp", "gradient_checkpointing", "zero_stage",
        "max_failures", "seed")},
    **{f"rerank.{k}": f"rerank.scaling.{k}" for k in (
        "num_workers", "use_gpu", "cpus_per_worker", "zero_stage", "max_failures", "seed")},
    "rerank.fusion_weight": "decode.fusion_weight",
    "rerank.score_scale": "decode.score_scale",
}


def migrate(values: dict[str, Any], source: str) -> dict[str, Any]:
    """Moves renamed keys (``MOVED``) to their new place, warning once per key."""
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in values.items()}
    for old, new in MOVED.items():
        sec, key = old.split(".")
        if isinstance(out.get(sec), dict) and key in out[sec]:
            value = out[sec].pop(key)
            log.warning("%s: config key %s is now %s", source, old, new)
            node = out
            parts = new.split(".")
            for part in parts[:-1]:
                node[part] = dict(node.get(part) or {})
                node = node[part]
            node.setdefault(parts[-1], value)
    return out


def load_config(path: str | Path | list | tuple | None = None, overrides: list[str] | None = None) -> Config:
    """Defaults <- YAML file(s), merged in order <- --set overrides; unknown keys and bad values are
    user errors (naming the file, or the files joined by " + ")."""
    paths = [Path(x) for x in path] if isinstance(path, (list, tuple)) else [] if path is None else [Path(path)]
    values: dict[str, Any] = {}
    for p in paths:
        values = _merge(values, _read_yaml(p))
    if overrides:
        values = _merge(values, migrate(parse_overrides(overrides), "--set"))
    try:
        return _build(Config, values).validate()
    except UserError as e:
        if paths:
            raise UserError(f"{' + '.join(map(str, paths))}: {e}") from None
        raise


def _read_yaml(p: Path) -> dict[str, Any]:
    """One config file's sections (renamed keys migrated); its defects are user errors naming it."""
    if not p.is_file():
        raise UserError(f"{p}: config file not found")
    try:
        loaded = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError as e:
        raise UserError(f"{p}: not UTF-8 text (byte {e.start})") from None
    except OSError as e:
        raise UserError(f"{p}: cannot read ({e.strerror})") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        raise UserError(f"{p}{line}: not valid YAML ({getattr(e, 'problem', e)})") from None
    if not isinstance(loaded, dict):
        raise UserError(f"{p}: the config must be a mapping of sections")
    return migrate(loaded, str(p))


def config_from_dict(values: dict[str, Any], source: str = "config", overrides: list[str] | None = None) -> Config:
    """A config from a plain dict (e.g. a run's config.resolved.json), checked as a YAML file is;
    ``overrides``: ``--set`` items applied on top."""
    try:
        values = migrate(values, source)
        if overrides:
            values = _merge(values, migrate(parse_overrides(overrides), "--set"))
        return _build(Config, values).validate()
    except UserError as e:
        raise UserError(f"{source}: {e}") from None
