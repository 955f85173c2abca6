"""Verbalization: an entity's triples -> one text (DERA's entity verbalization, template variant).

Two steps, both Ray-free:
- ``build_contexts(pair)``: columnar (pyarrow joins and group-bys, no Python loop over triples)
  gathering for every entity its name, its outgoing and incoming (relation, neighbour name,
  neighbour degree) lists and its attribute pairs. Output: one row per entity (``CONTEXT`` schema).
- ``verbalize_table(contexts, cfg)``: formats each row into text within a word budget;
  deterministic (sorted by neighbour degree, then relation, then name). The Ray Data verbalize
  stage maps this over batches of context rows.

Template: ``<name>. <rel>: <n1>, <n2>; <rel2>: <n3>. <in-rel> of: <n4>. <attr>: <value>.``
"""

from __future__ import annotations

import re

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from hiea_ray.config import VerbalizeConfig
from hiea_ray.kg.model import KGPair
from hiea_ray.kg.readers import uri_name

TEXTS = pa.schema([("id", pa.int64()), ("kg", pa.int8()), ("name", pa.string()), ("text", pa.string())])

_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")


def relation_label(uri: str) -> str:
    """``http://dbpedia.org/ontology/birthPlace`` -> ``birth place``."""
    return _CAMEL.sub(" ", uri_name(uri)).lower()


def _labels(col: pa.ChunkedArray) -> pa.Array:
    """Map a string column of URIs to labels, computing each distinct label once."""
    uniq = pc.unique(col)
    labels = pa.array([relation_label(u) for u in uniq.to_pylist()], pa.string())
    return pc.take(labels, pc.index_in(col, value_set=uniq))


def build_contexts(pair: KGPair) -> pa.Table:
    """One row per entity: id, kg, name, out_*/in_* neighbour lists, attr_key/attr_val lists."""
    ents = pair.entities.select(["id", "kg", "name"])
    tr = pair.rel_triples
    heads, tails = tr["head"], tr["tail"]
    deg = (
        pa.table({"id": pa.chunked_array(heads.chunks + tails.chunks, pa.int64())})
        .group_by("id", use_threads=False)
        .aggregate([("id", "count")])
        .rename_columns({"id_count": "deg"})
    )
    nodes = ents.select(["id", "name"]).join(deg, "id", join_type="left outer")
    nodes = pa.table({"id": nodes["id"], "nbr": nodes["name"], "nbr_deg": pc.fill_null(nodes["deg"], 0)})
    rel = _labels(tr["relation"]) if tr.num_rows else pa.array([], pa.string())
    base = pa.table({"head": heads, "rel": rel, "tail": tails})

    def side(key: str, other: str, prefix: str) -> pa.Table:
        joined = base.join(nodes, keys=other, right_keys="id", join_type="inner")
        grouped = joined.group_by(key, use_threads=False).aggregate(
            [("rel", "list"), ("nbr", "list"), ("nbr_deg", "list")]
        )
        return grouped.rename_columns(
            {key: "id", "rel_list": f"{prefix}_rel", "nbr_list": f"{prefix}_nbr", "nbr_deg_list": f"{prefix}_deg"}
        )

    out = side("head", "tail", "out")
    inc = side("tail", "head", "in")
    at = pair.attr_triples
    attrs = (
        pa.table({"id": at["entity"], "attr_key": _labels(at["attribute"]), "attr_val": at["value"]})
        .group_by("id", use_threads=False)
        .aggregate([("attr_key", "list"), ("attr_val", "list")])
        .rename_columns({"attr_key_list": "attr_key", "attr_val_list": "attr_val"})
        if at.num_rows
        else None
    )
    ents = ents.sort_by("id")
    ctx = ents
    for grouped in (out, inc, attrs):
        if grouped is None:  # no attribute triples: empty lists
            empty = pa.nulls(ents.num_rows, pa.list_(pa.string()))
            ctx = ctx.append_column("attr_key", empty).append_column("attr_val", empty)
            continue
        # Acero joins carry no list columns: align by position instead (index_in + take).
        pos = pc.index_in(ents["id"], value_set=grouped["id"])
        for col in grouped.column_names:
            if col != "id":
                ctx = ctx.append_column(col, pc.take(grouped[col], pos))
    return ctx.combine_chunks()


def _pick(rels, nbrs, degs, limit: int) -> list[tuple[str, str]]:
    if not nbrs:
        return []
    rows = sorted(zip(degs, rels, nbrs), key=lambda x: (-x[0], x[1], x[2]))
    seen, picked = set(), []
    for _, r, n in rows:
        if (r, n) in seen:
            continue
        seen.add((r, n))
        picked.append((r, n))
        if len(picked) >= limit:
            break
    return picked


def _grouped(pairs: list[tuple[str, str]], with_rel: bool, suffix: str) -> list[str]:
    """[(rel, nbr)] -> segments 'rel: n1, n2' keeping first-seen relation order."""
    if not with_rel:
        return [n for _, n in pairs]
    groups: dict[str, list[str]] = {}
    for r, n in pairs:
        groups.setdefault(r, []).append(n)
    return [f"{r}{suffix}: {', '.join(ns)}" for r, ns in groups.items()]


def entity_facts(row: dict, cfg: VerbalizeConfig) -> list[str]:
    """A context row's facts as segments, in the template's order: ``rel: n1, n2`` (outgoing),
    ``rel of: n3`` (incoming), ``attr: value``. The template joins them within its word budget;
    the LLM verbalizer's prompt (``core.describe``) lists them within its token budget."""
    out = _pick(row["out_rel"] or [], row["out_nbr"] or [], row["out_deg"] or [], cfg.max_neighbors)
    segments = _grouped(out, cfg.include_relations, "")
    if cfg.include_incoming:
        inc = _pick(row["in_rel"] or [], row["in_nbr"] or [], row["in_deg"] or [], cfg.max_neighbors)
        segments += _grouped(inc, cfg.include_relations, " of")
    if cfg.include_attributes and row.get("attr_key"):
        for k, v in sorted(zip(row["attr_key"], row["attr_val"])):
            v = " ".join((v or "").split()[:8])
            segments.append(f"{k}: {v}" if v else k)
    return segments


def verbalize_row(row: dict, cfg: VerbalizeConfig) -> str:
    """The template text: ``<name>. <fact>. <fact>...`` within ``cfg.max_words`` words (the last
    fact cut to fit); "name" mode: the name only."""
    name = row["name"] or ""
    if cfg.mode == "name":
        return name
    budget = cfg.max_words - len(name.split())
    parts: list[str] = []
    for seg in entity_facts(row, cfg):
        words = seg.split()
        if not words:
            continue
        if len(words) > budget:
            if budget > 0:
                parts.append(" ".join(words[:budget]))
            break
        parts.append(seg)
        budget -= len(words)
    return ". ".join([name] + parts) if parts else name


def verbalize_table(contexts: pa.Table, cfg: VerbalizeConfig) -> pa.Table:
    """Context rows -> ``TEXTS`` rows (id, kg, name, text)."""
    rows = contexts.to_pylist()
    texts = [verbalize_row(r, cfg) for r in rows]
    return pa.table(
        {"id": contexts["id"], "kg": contexts["kg"], "name": contexts["name"], "text": texts}, schema=TEXTS
    )


def word_count_stats(texts: list[str]) -> dict:
    n = np.array([len(t.split()) for t in texts]) if texts else np.zeros(1)
    return {"mean_words": float(n.mean()), "max_words": int(n.max())}
