"""The pair spec: a YAML file that says where two dumps are and how to read them.

    hiea-ray align --data PAIR.yaml --out RUN

    kg1:
      format: wikidata-json            # wikidata-json | ntriples | turtle
      path: dumps/latest-all.json.gz   # a file, a glob or a folder of shards (.gz / .bz2 read as such)
      languages: [zh, en]              # label languages in order of preference (then aliases, then the id)
      instance_of: [Q5]                # optional entity filter: P31 values (Wikidata) / rdf:type IRIs
      properties: []                   # optional whitelist of relation/attribute properties
    kg2:
      format: ntriples
      path: dbpedia/*.nt.bz2
      languages: [en]
    links:
      format: sameas                   # sameas (owl:sameAs N-Triples) | tsv | wikidata-sitelink | wikidata-property
      path: links/sameas.nt
    split: {train: 0.2, valid: 0.1}    # seeded by data.seed; the rest are test links

Paths are relative to the spec's folder. Every mistake is a ``UserError`` naming the spec file and
the field (``pair.yaml: kg1.format: ...``). Ray-free.
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass, field, fields
from pathlib import Path

import yaml

from hiea_ray.errors import UserError

FORMATS = ("wikidata-json", "ntriples", "turtle")
RELEASES = ("dbp15k", "srprs", "openea")
LINK_FORMATS = ("sameas", "tsv", "wikidata-sitelink", "wikidata-property")
WIKIDATA_ENTITY = "http://www.wikidata.org/entity/"
RDF_TYPE = "http://www.w3.org/1999/02/22-rdf-syntax-ns#type"
OWL_SAMEAS = "http://www.w3.org/2002/07/owl#sameAs"
LABEL_PREDICATES = [
    "http://www.w3.org/2000/01/rdf-schema#label",
    "http://www.w3.org/2004/02/skos/core#prefLabel",
    "http://xmlns.com/foaf/0.1/name",
]
COMPRESSED = (".gz", ".bz2")


@dataclass
class SideSpec:
    """One KG's dump."""

    # wikidata-json | ntriples | turtle (Turtle: rdflib, a whole file per task; same rules as ntriples)
    format: str
    # Files of the dump (globs and folders expanded, sorted); filled from `path` (one or a list).
    files: list[str]
    # Label languages in order of preference; "" matches an N-Triples literal without a language tag.
    languages: list[str] = field(default_factory=lambda: ["en"])
    # Wikidata: fall back to aliases (in the same language order) when no label is found.
    aliases: bool = True
    # Wikidata: which entity types become entities (items; properties too if listed).
    entity_types: list[str] = field(default_factory=lambda: ["item"])
    # Keep only entities with one of these types: P31 values (Q-ids) / rdf:type IRIs. Empty: all.
    instance_of: list[str] = field(default_factory=list)
    # Keep only these properties (P-ids / predicate IRIs) as relations and attributes. Empty: all.
    properties: list[str] = field(default_factory=list)
    # N-Triples / Turtle: predicates whose literals name an entity, in order of preference.
    label_predicates: list[str] = field(default_factory=lambda: list(LABEL_PREDICATES))
    # Entity IRI prefix of a Wikidata dump (keys are full IRIs, as in owl:sameAs files).
    entity_prefix: str = WIKIDATA_ENTITY


@dataclass
class LinkSpec:
    """Where the gold links come from."""

    # sameas | tsv | wikidata-sitelink | wikidata-property
    format: str
    # sameas / tsv: the links file(s). A sameas line <a> owl:sameAs <b> links a (KG1) to b (KG2).
    files: list[str] = field(default_factory=list)
    # sameas: the first IRI of a line is on KG2 (and the second on KG1).
    reverse: bool = False
    # wikidata-sitelink: the site whose page titles name the other KG's entities (e.g. enwiki).
    site: str = ""
    # wikidata-property: the external-id property (e.g. P1566) whose value names the other entity.
    property: str = ""
    # wikidata-sitelink / -property: the other KG's IRI made from the title / value ("{}").
    template: str = "{}"


@dataclass
class PairSpec:
    path: Path
    kg1: SideSpec | None = None
    kg2: SideSpec | None = None
    links: LinkSpec | None = None
    train: float = 0.2
    valid: float = 0.1
    # A benchmark release instead of two dumps: format + folder (read by hiea_ray.kg.readers).
    release: str = ""
    release_path: str = ""

    def all_files(self) -> list[str]:
        out = []
        for side in (self.kg1, self.kg2):
            out += side.files if side else []
        return out + (self.links.files if self.links else [])

    def wikidata_side(self) -> int:
        sides = [kg for kg, s in ((1, self.kg1), (2, self.kg2)) if s.format == "wikidata-json"]
        return sides[0] if len(sides) == 1 else 0


def is_spec(path: str | Path) -> bool:
    return Path(path).suffix in (".yaml", ".yml") and Path(path).is_file()


class _Fields:
    def __init__(self, spec: Path, values: dict, where: str):
        if not isinstance(values, dict):
            raise UserError(f"{spec}: {where}: expected a mapping, found {type(values).__name__}")
        self.spec, self.values, self.where = spec, values, where

    def err(self, key: str, message: str) -> UserError:
        return UserError(f"{self.spec}: {self.where}.{key}: {message}" if self.where else f"{self.spec}: {key}: {message}")

    def unknown(self, allowed) -> None:
        extra = sorted(set(self.values) - set(allowed))
        if extra:
            raise self.err(extra[0], f"unknown field (allowed: {', '.join(sorted(allowed))})")

    def get(self, key: str, kind, default=None, choices=None):
        v = self.values.get(key, default)
        if v is None:
            raise self.err(key, "is required")
        if kind is list:
            v = [v] if isinstance(v, str) else v
            if not isinstance(v, list) or not all(isinstance(x, (str, int)) for x in v):
                raise self.err(key, f"expected a list of strings, found {v!r}")
            return [str(x) for x in v]
        if kind is float:
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise self.err(key, f"expected a number, found {v!r}")
            return float(v)
        if not isinstance(v, kind):
            raise self.err(key, f"expected {kind.__name__}, found {v!r}")
        if choices and v not in choices:
            raise self.err(key, f"{v!r} is not one of {', '.join(choices)}")
        return v

    def files(self, key: str, required: bool = True) -> list[str]:
        pats = self.get(key, list, default=None if required else [])
        out: list[str] = []
        for pat in pats:
            full = pat if os.path.isabs(pat) else str(self.spec.parent / pat)
            if os.path.isdir(full):
                found = sorted(str(p) for p in Path(full).iterdir() if p.is_file() and not p.name.startswith("."))
            else:
                found = sorted(glob.glob(full))
            if not found:
                raise self.err(key, f"no file matches {pat!r} (relative to {self.spec.parent})")
            out += found
        return out


def load_pair_spec(path: str | Path) -> PairSpec:
    path = Path(path)
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise UserError(f"{where}: not valid YAML ({getattr(e, 'problem', e)})") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: cannot read ({e})") from None
    top = _Fields(path, values, "")
    top.unknown({"kg1", "kg2", "links", "split", "release"})
    spec = PairSpec(path=path)
    if "release" in values:
        rel = _Fields(path, values["release"], "release")
        rel.unknown({"format", "path"})
        spec.release = rel.get("format", str, choices=RELEASES)
        folder = rel.get("path", str)
        spec.release_path = folder if os.path.isabs(folder) else str(path.parent / folder)
        if not os.path.isdir(spec.release_path):
            raise rel.err("path", f"{spec.release_path} is not a folder")
        return spec
    for kg in ("kg1", "kg2"):
        if kg not in values:
            raise top.err(kg, "is required (or give a `release:` folder instead of two dumps)")
        setattr(spec, kg, _side(path, values[kg], kg))
    if "links" not in values:
        raise top.err("links", "is required: where the gold links are (sameas | tsv | wikidata-sitelink | wikidata-property)")
    spec.links = _links(path, values["links"], spec)
    split = _Fields(path, values.get("split", {}), "split")
    split.unknown({"train", "valid"})
    spec.train = split.get("train", float, 0.2)
    spec.valid = split.get("valid", float, 0.1)
    if spec.train < 0 or spec.valid < 0 or spec.train + spec.valid >= 1:
        raise split.err("train", f"train {spec.train} + valid {spec.valid} must be in [0, 1) to leave test links")
    return spec


def _side(path: Path, values: dict, where: str) -> SideSpec:
    f = _Fields(path, values, where)
    f.unknown({x.name for x in fields(SideSpec) if x.name != "files"} | {"path"})
    fmt = f.get("format", str, choices=FORMATS)
    side = SideSpec(format=fmt, files=f.files("path"))
    for name in ("languages", "entity_types", "instance_of", "properties", "label_predicates"):
        if name in values:
            setattr(side, name, f.get(name, list))
    if "aliases" in values:
        side.aliases = f.get("aliases", bool)
    if "entity_prefix" in values:
        side.entity_prefix = f.get("entity_prefix", str)
    if not side.languages:
        raise f.err("languages", "needs at least one language")
    bad = [t for t in side.entity_types if t not in ("item", "property")]
    if bad:
        raise f.err("entity_types", f"{bad[0]!r} is not one of item, property")
    return side


def _links(path: Path, values: dict, spec: PairSpec) -> LinkSpec:
    f = _Fields(path, values, "links")
    f.unknown({"format", "path", "reverse", "site", "property", "template"})
    links = LinkSpec(format=f.get("format", str, choices=LINK_FORMATS))
    if links.format in ("sameas", "tsv"):
        links.files = f.files("path")
        links.reverse = f.get("reverse", bool, False)
    else:
        if spec.wikidata_side() == 0:
            raise f.err("format", f"{links.format} needs exactly one wikidata-json side")
        if links.format == "wikidata-sitelink":
            links.site = f.get("site", str)
        else:
            links.property = f.get("property", str)
        links.template = f.get("template", str, "{}")
        if "{}" not in links.template:
            raise f.err("template", f"{links.template!r} has no {{}} for the title / value")
    return links
