"""Readers for the KG-pair releases users have, normalized into a ``KGPair``.

Formats (auto-detected by ``detect_format``):
- ``dbp15k``: JAPE / BERT-INT id release: ent_ids_{1,2}, rel_ids_{1,2}, triples_{1,2},
  sup_pairs, ref_pairs, optional ent_names_translated_{1,2}.
- ``srprs``: GCN-Align / CEA release: the same id files plus ref_ent_ids (all links),
  sup_ent_ids (train links), optional training_attrs_{1,2} (attribute names, no values) and
  ent_names_translated_{1,2}.
- ``openea``: rel_triples_{1,2}, attr_triples_{1,2} (URIs), ent_links and
  721_5fold/N/{train,valid,test}_links.

Every malformed line, unknown id or missing file is a ``UserError`` naming the file and line;
with ``skip_bad_lines`` bad lines are skipped and counted in the report instead.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pyarrow as pa

from hiea_ray.config import DataConfig
from hiea_ray.errors import UserError, line_error
from hiea_ray.kg.model import ATTR_TRIPLES, ENTITIES, LINKS, REL_TRIPLES, KGPair


def uri_name(uri: str) -> str:
    """Human-readable name from a URI: last path segment, percent-decoded, '_' -> ' '."""
    tail = uri.rstrip("/")
    for sep in ("#", "/"):
        if sep in tail:
            tail = tail.rsplit(sep, 1)[1]
    return unquote(tail).replace("_", " ").strip()


def detect_format(folder: Path) -> str:
    if not folder.is_dir():
        raise UserError(f"{folder}: data folder not found")
    names = set(os.listdir(folder))
    if {"sup_pairs", "ref_pairs"} & names and "ent_ids_1" in names:
        return "dbp15k"
    if "ref_ent_ids" in names and "ent_ids_1" in names:
        return "srprs"
    if "rel_triples_1" in names and "ent_links" in names:
        return "openea"
    raise UserError(
        f"{folder}: cannot tell the format. Expected a DBP15K release (ent_ids_1, triples_1, "
        "sup_pairs, ref_pairs), an SRPRS release (ent_ids_1, triples_1, ref_ent_ids, sup_ent_ids) "
        "or an OpenEA release (rel_triples_1, attr_triples_1, ent_links, 721_5fold/)"
    )


class _Lines:
    """Tab-separated lines of one file, with file:line errors and optional skipping."""

    def __init__(self, skip_bad: bool, skipped: Counter):
        self.skip_bad = skip_bad
        self.skipped = skipped

    def need(self, path: Path) -> Path:
        if not self.optional(path):
            raise UserError(f"{path}: required file is missing")
        return path

    @staticmethod
    def optional(path: Path) -> bool:
        """An optional file: absent is fine, present must be a file."""
        if path.exists() and not path.is_file():
            raise UserError(f"{path}: is a directory, expected a file")
        return path.is_file()

    def rows(self, path: Path, min_fields: int, max_fields: int | None = None):
        """Yield (lineno, fields) for each non-empty line with an allowed number of fields.
        A UTF-8 byte order mark at the top of the file is not part of the first field."""
        self.need(path)
        try:
            text = path.read_text(encoding="utf-8-sig")
        except UnicodeDecodeError as e:
            raise UserError(f"{path}: not UTF-8 text ({e})") from None
        except OSError as e:
            raise UserError(f"{path}: cannot read ({e.strerror})") from None
        for lineno, line in enumerate(text.split("\n"), 1):
            line = line.rstrip("\r")
            if not line.strip():
                continue
            fields = line.split("\t")
            if len(fields) < min_fields or (max_fields is not None and len(fields) > max_fields):
                want = str(min_fields) if max_fields == min_fields else f"{min_fields}+"
                self.bad(path, lineno, f"expected {want} tab-separated fields, found {len(fields)}")
                continue
            yield lineno, fields

    def bad(self, path: Path, lineno: int, message: str) -> None:
        if not self.skip_bad:
            raise line_error(path, lineno, message + " (set data.skip_bad_lines=true to skip such lines)")
        self.skipped[str(path.name)] += 1


class _RawPair:
    """Entities keyed per KG by their raw key (an id string or a URI) before normalization."""

    def __init__(self):
        self.keys = {1: {}, 2: {}}  # kg -> raw key -> index in the lists below
        self.uris = {1: [], 2: []}
        self.names = {1: [], 2: []}
        self.triples = {1: [], 2: []}  # (head idx, relation, tail idx)
        self.attrs = {1: [], 2: []}  # (entity idx, attribute, value)
        self.links = []  # (kg1 idx, kg2 idx, split)
        self.one_to_many = 0  # links kept although their source or target was linked already

    def add_entity(self, kg: int, key: str, uri: str) -> int:
        idx = self.keys[kg].get(key)
        if idx is None:
            idx = self.keys[kg][key] = len(self.uris[kg])
            self.uris[kg].append(uri)
            self.names[kg].append(uri_name(uri))
        return idx


class _Links:
    """One-to-one check of the gold links: a source linked to two targets (or a target to two
    sources) is an error naming both lines, unless ``data.one_to_many`` allows it (then counted)."""

    def __init__(self, lines: _Lines, cfg: DataConfig):
        self.lines = lines
        self.allow = cfg.one_to_many
        self.by_src: dict[str, tuple[str, str]] = {}  # src -> (tgt, "file:line")
        self.by_tgt: dict[str, tuple[str, str]] = {}
        self.extra = 0

    def add(self, a: str, b: str, path: Path, lineno: int) -> bool:
        for key, other, index, side in ((a, b, self.by_src, "source"), (b, a, self.by_tgt, "target")):
            prev = index.get(key)
            if prev is not None and prev[0] != other:
                if not self.allow:
                    self.lines.bad(path, lineno, f"{side} {key} is already linked to {prev[0]} ({prev[1]}); links must be "
                                   "one-to-one (set data.one_to_many=true to keep such links)")
                    return False
                self.extra += 1
        self.by_src.setdefault(a, (b, f"{path.name}:{lineno}"))
        self.by_tgt.setdefault(b, (a, f"{path.name}:{lineno}"))
        return True


def _read_id_release(folder: Path, cfg: DataConfig, fmt: str) -> tuple[_RawPair, Counter]:
    """A DBP15K / SRPRS release (id files): entities, relation triples, translated names, links and
    (SRPRS) attributes, each bad line named by file and line."""
    skipped: Counter = Counter()
    lines = _Lines(cfg.skip_bad_lines, skipped)
    raw = _RawPair()
    owner = _id_entities(folder, lines, raw)
    _id_triples(folder, lines, raw)
    if cfg.names == "translated":
        _id_names(folder, lines, raw)
    _id_links(folder, lines, raw, owner, cfg, fmt)
    if fmt == "srprs":
        _id_attributes(folder, lines, raw)
    return raw, skipped


def _id_entities(folder: Path, lines: _Lines, raw: _RawPair) -> dict[str, int]:
    """ent_ids_1/2 into ``raw``; -> raw id -> kg (to check the sides of links)."""
    owner: dict[str, int] = {}
    for kg in (1, 2):
        path = folder / f"ent_ids_{kg}"
        for lineno, (eid, uri) in lines.rows(path, 2, 2):
            if eid in owner:
                lines.bad(path, lineno, f"entity id {eid} appears twice")
                continue
            owner[eid] = kg
            raw.add_entity(kg, eid, uri)
    return owner


def _id_triples(folder: Path, lines: _Lines, raw: _RawPair) -> None:
    relations: dict[str, str] = {}
    for kg in (1, 2):
        for lineno, (rid, ruri) in lines.rows(folder / f"rel_ids_{kg}", 2, 2):
            relations[rid] = ruri
    for kg in (1, 2):
        path = folder / f"triples_{kg}"
        ids = raw.keys[kg]
        for lineno, (h, r, t) in lines.rows(path, 3, 3):
            if h not in ids or t not in ids:
                bad = h if h not in ids else t
                lines.bad(path, lineno, f"entity id {bad} is not in ent_ids_{kg}")
                continue
            if r not in relations:
                lines.bad(path, lineno, f"relation id {r} is not in rel_ids_1/rel_ids_2")
                continue
            raw.triples[kg].append((ids[h], relations[r], ids[t]))
        if not raw.triples[kg]:
            raise UserError(f"{path}: no relation triples (KG{kg} would have no structure)")


def _id_names(folder: Path, lines: _Lines, raw: _RawPair) -> None:
    for kg in (1, 2):
        path = folder / f"ent_names_translated_{kg}"
        if not lines.optional(path):
            continue
        ids = raw.keys[kg]
        for lineno, fields in lines.rows(path, 1, 2):
            eid = fields[0]
            name = fields[1].strip() if len(fields) > 1 else ""
            if eid not in ids:
                lines.bad(path, lineno, f"entity id {eid} is not in ent_ids_{kg}")
                continue
            if name:  # an empty translated name keeps the URI name
                raw.names[kg][ids[eid]] = name


def _id_links(folder: Path, lines: _Lines, raw: _RawPair, owner: dict[str, int], cfg: DataConfig, fmt: str) -> None:
    """The seed and test links (DBP15K: sup_pairs / ref_pairs; SRPRS: sup_ent_ids / ref_ent_ids, the
    latter listing all links, train ones included) into ``raw.links``."""
    if fmt == "dbp15k":
        link_files = [("sup_pairs", "train"), ("ref_pairs", "test")]
    else:
        link_files = [("sup_ent_ids", "train"), ("ref_ent_ids", "all")]
    seen: dict[tuple[str, str], tuple[str, str]] = {}  # link -> (split, file)
    links = _Links(lines, cfg)
    label_free = cfg.test_links == "none"
    for fname, split in link_files:
        path = folder / fname
        n_read = 0
        if label_free and split in ("test", "all") and not lines.optional(path):
            continue  # a label-free pair: no test links file
        for lineno, (a, b) in lines.rows(path, 2, 2):
            if owner.get(a) != 1 or owner.get(b) != 2:
                bad = a if owner.get(a) != 1 else b
                side = "ent_ids_1" if bad == a else "ent_ids_2"
                lines.bad(path, lineno, f"link entity id {bad} is not in {side}")
                continue
            n_read += 1
            if (a, b) in seen:
                first_split, first_file = seen[(a, b)]
                if first_file == fname:
                    lines.bad(path, lineno, f"link {a} {b} appears twice in {fname}")
                elif fmt == "dbp15k":
                    lines.bad(path, lineno, f"link {a} {b} is in both {first_file} ({first_split}) and {fname} ({split})")
                continue  # SRPRS: ref_ent_ids lists all links, the train ones included; they stay train
            if not links.add(a, b, path, lineno):
                continue
            seen[(a, b)] = ("test" if split == "all" else split, fname)
        if n_read == 0 and not (label_free and split in ("test", "all")):
            raise UserError(f"{path}: no alignment links")
    raw.links = [(raw.keys[1][a], raw.keys[2][b], s) for (a, b), (s, _) in seen.items()
                 if not (label_free and s == "test")]
    raw.one_to_many = links.extra


def _id_attributes(folder: Path, lines: _Lines, raw: _RawPair) -> None:
    """SRPRS's training_attrs_1/2: an entity URI and its attribute names."""
    for kg in (1, 2):
        path = folder / f"training_attrs_{kg}"
        if not lines.optional(path):
            continue
        by_uri = {uri: i for i, uri in enumerate(raw.uris[kg])}
        for lineno, fields in lines.rows(path, 1):
            idx = by_uri.get(fields[0])
            if idx is None:
                lines.bad(path, lineno, f"entity {fields[0]!r} is not in ent_ids_{kg}")
                continue
            raw.attrs[kg].extend((idx, a, "") for a in fields[1:] if a)


def _read_openea(folder: Path, cfg: DataConfig) -> tuple[_RawPair, Counter]:
    skipped: Counter = Counter()
    lines = _Lines(cfg.skip_bad_lines, skipped)
    raw = _RawPair()
    for kg in (1, 2):
        path = folder / f"rel_triples_{kg}"
        for lineno, (h, r, t) in lines.rows(path, 3, 3):
            raw.triples[kg].append((raw.add_entity(kg, h, h), r, raw.add_entity(kg, t, t)))
        if not raw.triples[kg]:
            raise UserError(f"{path}: no relation triples (KG{kg} would have no entities)")
        path = folder / f"attr_triples_{kg}"
        if lines.optional(path):
            for lineno, fields in lines.rows(path, 3):
                e, a, v = fields[0], fields[1], "\t".join(fields[2:])
                raw.attrs[kg].append((raw.add_entity(kg, e, e), a, v))
    fold = folder / "721_5fold" / str(cfg.openea_fold)
    split_files = [(fold / f"{s}_links", s) for s in ("train", "valid", "test")]
    if not fold.is_dir():
        raise UserError(f"{fold}: split folder missing (set data.openea_fold to an existing fold)")
    seen: dict[tuple[str, str], str] = {}  # link -> the file it was first read from
    links = _Links(lines, cfg)
    label_free = cfg.test_links == "none"
    for path, split in split_files:
        n_read = 0
        if label_free and split == "test" and not lines.optional(path):
            continue  # a label-free pair: no test links file
        for lineno, (a, b) in lines.rows(path, 2, 2):
            if a not in raw.keys[1] or b not in raw.keys[2]:
                bad = a if a not in raw.keys[1] else b
                lines.bad(path, lineno, f"link entity {bad!r} appears in no triple of its KG")
                continue
            n_read += 1
            if (a, b) in seen:
                where = f"twice in {path.name}" if seen[(a, b)] == path.name else f"in both {seen[(a, b)]} and {path.name}"
                lines.bad(path, lineno, f"link {a} {b} appears {where}")
                continue
            if not links.add(a, b, path, lineno):
                continue
            seen[(a, b)] = path.name
            if not (label_free and split == "test"):
                raw.links.append((raw.keys[1][a], raw.keys[2][b], split))
        if n_read == 0 and (split == "train" or (split == "test" and not label_free)):
            raise UserError(f"{path}: no alignment links")
    raw.one_to_many = links.extra
    # ent_links must be readable even though the fold files carry the split.
    for _ in lines.rows(folder / "ent_links", 2, 2):
        pass
    return raw, skipped


def normalize(raw: _RawPair, cfg: DataConfig, carve_valid: bool) -> KGPair:
    """Assign shuffled int64 ids over both KGs, carve a validation split, build Arrow tables."""
    n1, n2 = len(raw.uris[1]), len(raw.uris[2])
    rng = np.random.default_rng(cfg.seed)
    perm = rng.permutation(n1 + n2).astype(np.int64)
    new1, new2 = perm[:n1], perm[n1:]
    entities = pa.table(
        {
            "id": np.concatenate([new1, new2]),
            "kg": np.concatenate([np.full(n1, 1, np.int8), np.full(n2, 2, np.int8)]),
            "uri": raw.uris[1] + raw.uris[2],
            "name": raw.names[1] + raw.names[2],
        },
        schema=ENTITIES,
    )

    def triples(kg, new):
        t = raw.triples[kg]
        h = np.fromiter((x[0] for x in t), np.int64, len(t))
        tl = np.fromiter((x[2] for x in t), np.int64, len(t))
        return pa.table(
            {"kg": np.full(len(t), kg, np.int8), "head": new[h], "relation": [x[1] for x in t], "tail": new[tl]},
            schema=REL_TRIPLES,
        )

    def attrs(kg, new):
        a = raw.attrs[kg]
        e = np.fromiter((x[0] for x in a), np.int64, len(a))
        return pa.table(
            {
                "kg": np.full(len(a), kg, np.int8),
                "entity": new[e],
                "attribute": [x[1] for x in a],
                "value": [x[2] for x in a],
            },
            schema=ATTR_TRIPLES,
        )

    links = raw.links
    src = np.fromiter((x[0] for x in links), np.int64, len(links))
    tgt = np.fromiter((x[1] for x in links), np.int64, len(links))
    split = np.array([x[2] for x in links], dtype=object)
    if carve_valid and cfg.valid_fraction > 0:
        train = np.flatnonzero(split == "train")
        # Seeded and independent of file order: sort train links by their source URI first.
        train = train[np.argsort([raw.uris[1][src[i]] for i in train], kind="stable")]
        pick = np.random.default_rng(cfg.seed + 1).permutation(len(train))
        n_valid = int(round(cfg.valid_fraction * len(train)))
        split[train[pick[:n_valid]]] = "valid"
    order = np.random.default_rng(cfg.seed + 2).permutation(len(links))
    links_t = pa.table(
        {"src": new1[src][order], "tgt": new2[tgt][order], "split": list(split[order])}, schema=LINKS
    )
    # Rows in order of the new ids, not of the input files: releases list aligned entities (and
    # their triples) at the same positions in both KGs' files, so file order would leak links.
    return KGPair(
        entities=entities.sort_by("id"),
        rel_triples=pa.concat_tables([triples(1, new1), triples(2, new2)]).sort_by(
            [("head", "ascending"), ("tail", "ascending"), ("relation", "ascending")]
        ),
        attr_triples=pa.concat_tables([attrs(1, new1), attrs(2, new2)]).sort_by(
            [("entity", "ascending"), ("attribute", "ascending"), ("value", "ascending")]
        ),
        links=links_t,
    )


def read_pair(folder: str | Path, cfg: DataConfig | None = None) -> KGPair:
    """Read any supported release in ``folder`` into a normalized ``KGPair``."""
    cfg = cfg or DataConfig()
    folder = Path(folder)
    fmt = detect_format(folder) if cfg.format == "auto" else cfg.format
    if fmt in ("dbp15k", "srprs"):
        raw, skipped = _read_id_release(folder, cfg, fmt)
    else:
        raw, skipped = _read_openea(folder, cfg)
    pair = normalize(raw, cfg, carve_valid=fmt != "openea")
    if pair.links.num_rows == 0:
        raise UserError(f"{folder}: no alignment links were read")
    splits = Counter(pair.links["split"].to_pylist())
    pair.report = {
        "format": fmt,
        "folder": str(folder),
        "entities": {"kg1": len(raw.uris[1]), "kg2": len(raw.uris[2])},
        "rel_triples": {"kg1": len(raw.triples[1]), "kg2": len(raw.triples[2])},
        "attr_triples": {"kg1": len(raw.attrs[1]), "kg2": len(raw.attrs[2])},
        "links": dict(sorted(splits.items())),
        "skipped_lines": dict(sorted(skipped.items())),
        **({"one_to_many_links": raw.one_to_many} if cfg.one_to_many else {}),
        "names": cfg.names,
    }
    return pair
