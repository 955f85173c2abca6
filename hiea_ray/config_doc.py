"""The config explained: every field with its value and its help, as YAML or as Markdown.

The help of a field is the comment block written above it in its section's module
(``hiea_ray/config/sections/``, or ``fields.py`` for the shared pieces; and a
section's, its class docstring; a field a section shares with others, e.g. ``ActorPool``'s, has the
help written where it is declared): the one place a field is explained. ``hiea-ray config show``
prints a resolved config with that help; ``hiea-ray config show --defaults --markdown`` writes
``docs/configuration.md`` (``tests/test_docs.py`` fails when that file is stale).
"""

from __future__ import annotations

import ast
import dataclasses
import json
import typing
from functools import lru_cache
from pathlib import Path

from hiea_ray import config as C
from hiea_ray.config import fields as schema_fields


@lru_cache(maxsize=1)
def field_help() -> dict[str, dict[str, str]]:
    """class name -> {field name: help text, "": the class docstring}, from the sources of the
    section modules (``hiea_ray.config.sections``) and the shared field kinds (``fields``)."""
    from hiea_ray.config import sections

    out: dict[str, dict[str, str]] = {}
    for path in [Path(schema_fields.__file__), *sorted(Path(sections.__file__).parent.glob("*.py"))]:
        out.update(_class_help(path.read_text(encoding="utf-8")))
    return out


def _class_help(src: str) -> dict[str, dict[str, str]]:
    lines = src.splitlines()
    out: dict[str, dict[str, str]] = {}
    for node in ast.parse(src).body:
        if not isinstance(node, ast.ClassDef):
            continue
        helps = {"": (ast.get_docstring(node) or "").replace("\n", " ")}
        for item in node.body:
            if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
                block, i = [], item.lineno - 2
                while i >= 0 and lines[i].strip().startswith("#"):
                    block.insert(0, lines[i].strip().lstrip("#").strip())
                    i -= 1
                trailing = lines[item.lineno - 1].split("#", 1)
                if len(trailing) == 2 and not block:
                    block = [trailing[1].strip()]
                helps[item.target.id] = " ".join(block)
        out[node.name] = helps
    return out


def _fields(obj, prefix: str = ""):
    """(dotted name, value, help, runtime, nested section or None) of a config dataclass: the
    section's own fields in their order, then those it inherits (the actor pool's)."""
    mro = [c for c in type(obj).__mro__ if dataclasses.is_dataclass(c)]
    own = list(type(obj).__dict__.get("__annotations__", {}))
    fields = sorted(dataclasses.fields(obj), key=lambda f: (f.name not in own, own.index(f.name) if f.name in own else 0))
    hints = typing.get_type_hints(type(obj))
    for f in fields:
        v = getattr(obj, f.name)
        text = next((h for c in mro if (h := field_help().get(c.__name__, {}).get(f.name))), "")
        text += _allowed(hints[f.name], f)
        yield (prefix + f.name, v, text, bool(f.metadata.get("runtime")), v if dataclasses.is_dataclass(v) else None)


def _allowed(tp, f: dataclasses.Field) -> str:
    """" One of: a, b." / " Bounds: >= 1." from the field's Literal type and bounds metadata."""
    item = typing.get_args(tp)[0] if typing.get_origin(tp) is list else tp
    choices = schema_fields.literal_choices(item)
    if choices is not None:
        return " One of: " + ", ".join(map(str, choices)) + "."
    bounds = {k: f.metadata[k] for k in ("ge", "gt", "le", "lt") if k in f.metadata}
    return f" Bounds: {schema_fields.bound_rule(bounds)}." if bounds else ""


def _scalar(v) -> str:
    """A value as a YAML scalar that reads back as the same value."""
    import yaml

    if v is None:
        return "null"
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, str):
        plain = v and "#" not in v and ": " not in v and v == v.strip() and yaml.safe_load(v) == v
        return v if plain else json.dumps(v, ensure_ascii=False)
    return json.dumps(v, ensure_ascii=False)


def _wrap(text: str, indent: str, width: int = 100) -> list[str]:
    words, lines, cur = text.split(), [], ""
    for w in words:
        if cur and len(indent) + 2 + len(cur) + 1 + len(w) > width:
            lines.append(cur)
            cur = w
        else:
            cur = f"{cur} {w}".strip()
    if cur:
        lines.append(cur)
    return [f"{indent}# {ln}" for ln in lines]


def to_yaml(cfg: C.Config) -> str:
    """The config as YAML a ``--config`` file takes, each field preceded by its help."""
    out: list[str] = []

    def walk(obj, indent: str) -> None:
        for name, v, help_, runtime, nested in _fields(obj):
            leaf = name.rsplit(".", 1)[-1]
            if nested is not None:
                doc = field_help().get(type(nested).__name__, {}).get("") or help_
                out.extend(_wrap(doc, indent) if doc else [])
                out.append(f"{indent}{leaf}:")
                walk(nested, indent + "  ")
                continue
            text = help_ + (" [runtime: places work, never changes an output]" if runtime else "")
            out.extend(_wrap(text, indent) if text.strip() else [])
            out.append(f"{indent}{leaf}: {_scalar(v)}")

    for section, obj, help_, _, _ in _fields(cfg):
        doc = field_help().get(type(obj).__name__, {}).get("") or help_
        out.append("")
        out.extend(_wrap(doc, "") if doc else [])
        out.append(f"{section}:")
        walk(obj, "  ")
    return "\n".join(out).lstrip("\n") + "\n"


def to_markdown(cfg: C.Config) -> str:
    """docs/configuration.md: one table per section (field, default, help)."""
    out = ["# Configuration", "",
           "Every field of the one typed config (`hiea_ray/config/sections/`, one module per section), its default, its help and its allowed values. YAML files",
           "given with `--config` (repeatable, merged in order) override the defaults, `--set section.field=value`",
           "overrides the files; unknown keys, wrong types and out-of-range values are one clear error. *runtime*",
           "fields only place work (actors, CPUs, threads, batch rows): they are left out of every stage key, so",
           "changing one never re-runs a finished stage.", "",
           "    hiea-ray config show [--defaults] [--config FILE ...] [--set key=value ...]   # a resolved config, with help",
           "", "This page is generated: `hiea-ray config show --defaults --markdown > docs/configuration.md`.", ""]

    def rows(obj, prefix: str):
        for name, v, help_, runtime, nested in _fields(obj, prefix):
            if nested is not None:
                yield from rows(nested, name + ".")
                continue
            val = json.dumps(v) if not isinstance(v, str) else f'"{v}"'
            yield f"| `{name}` | `{val}` | {'*runtime.* ' if runtime else ''}{help_.replace('|', '/')} |"

    for section, obj, _, _, _ in _fields(cfg):
        out += [f"## {section}", ""]
        doc = field_help().get(type(obj).__name__, {}).get("")
        if doc:
            out += [doc, ""]
        out += ["| field | default | help |", "|---|---|---|", *rows(obj, section + "."), ""]
    return "\n".join(out)
