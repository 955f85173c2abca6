"""Dump ingestion on Ray Data: two dumps + gold links -> the four tables the ingest stage writes.

The chain of the batch functions in ``hiea_ray.kg.dump_batches`` (Ray-free, tested directly):

    chunks (files / byte ranges) --parse (tasks, data.dump_workers at once)--> statement rows (Parquet)
    ENTITY/LABEL/TYPE rows --range-bucketed by a seeded 64-bit hash of the key--> map_groups: one
        row per entity (filters, best label), ranked by the hash in its bucket
    per-bucket counts (B numbers on the driver) --> id = the entity's global rank in hash order
    REL / ATTR / LINK rows --Dataset.join on (kg, key)--> int64 head / tail / entity / src / tgt
    each table --sort--> streamed batch by batch into one Parquet file

The ids are a seeded random permutation of all entities (the hash), independent of file order,
of the number of workers and of the number of buckets; the driver holds per-bucket counts, the
property labels of a Wikidata dump and one batch at a time, never the dump. Dangling relation
targets (filtered out or absent from the dump) and links to unknown entities are dropped and
counted in the report.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import time
from collections import Counter
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from hiea_ray.config import DataConfig
from hiea_ray.errors import UserError
from hiea_ray.kg import dumps as D
from hiea_ray.kg.model import ATTR_TRIPLES, ENTITIES, LINKS, REL_TRIPLES
from hiea_ray.kg.dump_batches import (assign_ids, attributes, count_by, link_ids, objects, parse_batch, relations,
                                      resolve_entities, split_links, subjects, with_bucket)
from hiea_ray.kg.pairspec import PairSpec

log = logging.getLogger(__name__)


# --- the callables Ray Data runs (plain Python, tested without Ray) --------------------------------


# --- the driver ------------------------------------------------------------------------------------


def ingest_dumps(spec: PairSpec, cfg: DataConfig, out: Path) -> dict:
    """Read the spec's dumps with Ray Data into ``out`` (entities / rel_triples / attr_triples /
    links .parquet); returns the report. Ray must be initialized."""
    import ray

    ctx = ray.data.DataContext.get_current()
    saved = ctx.target_max_block_size
    ctx.target_max_block_size = int(cfg.block_mb * 2**20)
    try:
        return _ingest(spec, cfg, out)
    finally:
        ctx.target_max_block_size = saved


def _ingest(spec: PairSpec, cfg: DataConfig, out: Path) -> dict:
    """The steps: parse the dumps' chunks into staged statement rows, give every entity its id, join
    the facts and links to ids, write the four sorted tables, then the report."""
    import ray

    t0 = time.time()
    stage = out / "_statements"
    chunks = _parse(spec, cfg, stage)
    in_bytes = sum(c.size for c in chunks)
    t_parse = time.time() - t0
    rss = {"parse": _rss()}
    log.info("ingest: parsed in %.1f s (%.1f MB/s)", t_parse, in_bytes / 1e6 / max(t_parse, 1e-9))
    counts_in = np.zeros(8, np.int64)
    for batch in _scan(stage, None, ["kind"]):
        counts_in += np.bincount(batch.column(0).to_numpy(), minlength=8)[:8]
    props = {}
    for batch in _scan(stage, (D.PROP,), ["s", "o"]):
        props.update(zip(batch.column(0).to_pylist(), batch.column(1).to_pylist()))
    st = ray.data.read_parquet(str(stage))
    keyed, per_kg, total = _entity_ids(st, spec, cfg)
    t_ids = time.time()
    rss["ids"] = _rss()
    log.info("ingest: %d entities given ids in %.1f s", total, t_ids - t0 - t_parse)
    rel, attr, links, one_to_many = _joins(st, keyed.select_columns(["kg", "key", "id"]), props, spec, cfg,
                                           int(counts_in[D.LINK]))
    rel_kg, attr_kg, n_links = _kg_counts(rel), _kg_counts(attr), links.count()
    links = links.map_batches(split_links, fn_kwargs={"seed": cfg.seed, "train": spec.train, "valid": spec.valid},
                              batch_format="pyarrow")
    t_join = time.time()
    rss["join"] = _rss()
    log.info("ingest: %d relation and %d attribute triples and %d links joined to ids in %.1f s; writing the tables",
             sum(rel_kg.values()), sum(attr_kg.values()), n_links, t_join - t_ids)
    n_ent = _write_tables(out, keyed, rel, attr, links)
    rss["write"] = _rss()
    skipped, examples = _skipped_lines(stage)
    shutil.rmtree(stage, ignore_errors=True)
    split_counts = Counter()
    for b in pq.ParquetFile(out / "links.parquet").iter_batches(columns=["split"]):
        split_counts.update(b.column(0).to_pylist())
    wall = time.time() - t0
    log.info("ingest: tables written in %.1f s; %.1f s in all", time.time() - t_join, wall)
    report = {
        "format": "dumps",
        "spec": str(spec.path),
        "sources": {"kg1": spec.kg1.format, "kg2": spec.kg2.format, "links": spec.links.format},
        "entities": {"kg1": int(per_kg[1]), "kg2": int(per_kg[2])},
        "rel_triples": {"kg1": rel_kg.get(1, 0), "kg2": rel_kg.get(2, 0)},
        "attr_triples": {"kg1": attr_kg.get(1, 0), "kg2": attr_kg.get(2, 0)},
        "links": dict(sorted(split_counts.items())),
        "dropped": {"rel_triples": int(counts_in[D.REL]) - sum(rel_kg.values()),
                    "attr_triples": int(counts_in[D.ATTR]) - sum(attr_kg.values()),
                    "links": int(counts_in[D.LINK]) - n_links},
        "skipped_lines": dict(sorted(skipped.items())),
        **({"skipped_examples": examples} if examples else {}),
        **({"one_to_many_links": one_to_many} if cfg.one_to_many else {}),
        "property_labels": len(props),
        "chunks": len(chunks),
        "input_bytes": in_bytes,
        "parse_s": round(t_parse, 2),
        "ids_s": round(t_ids - t0 - t_parse, 2),
        "join_s": round(t_join - t_ids, 2),
        "write_s": round(wall - (t_join - t0), 2),
        "wall_s": round(wall, 2),
        "driver_rss_gib": rss,
        "entities_per_s": round(n_ent / max(wall, 1e-9), 1),
        "mb_per_s": round(in_bytes / 1e6 / max(wall, 1e-9), 2),
    }
    (out / "report.json").write_text(json.dumps(report, indent=2, sort_keys=True))
    return report


def _parse(spec: PairSpec, cfg: DataConfig, stage: Path) -> list:
    """The dumps cut into chunks, parsed by ``data.dump_workers`` Ray Data tasks into statement rows
    (Parquet under ``stage``); -> the chunks."""
    import ray

    chunk_bytes = max(1, int(cfg.chunk_mb * 2**20))
    chunks = (D.plan_chunks(1, spec.kg1.files, chunk_bytes, spec.kg1.format == "turtle")
              + D.plan_chunks(2, spec.kg2.files, chunk_bytes, spec.kg2.format == "turtle")
              + (D.plan_chunks(0, spec.links.files, chunk_bytes) if spec.links.files else []))
    log.info("ingest: %d dump files in %d chunks (%.1f MB), %d parse workers", len(spec.all_files()), len(chunks),
             sum(c.size for c in chunks) / 1e6, cfg.dump_workers)
    shutil.rmtree(stage, ignore_errors=True)  # parts of an interrupted attempt
    # Largest chunks first: the long ones start early.
    items = [asdict(c) for c in sorted(chunks, key=lambda c: -c.size)]
    try:
        ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
            parse_batch, fn_kwargs={"spec": spec, "skip_bad": cfg.skip_bad_lines}, batch_size=1,
            batch_format="numpy", compute=ray.data.TaskPoolStrategy(size=max(1, cfg.dump_workers)), num_cpus=1,
        ).write_parquet(str(stage))
    except Exception as e:  # noqa: BLE001 - a bad line in a worker is the user's: one line, exit 2
        raise _user_error(e) or e
    return chunks


def _entity_ids(st, spec: PairSpec, cfg: DataConfig):
    """Every entity (after the type filters of non-Wikidata sides) its id: hash buckets, each bucket's
    entities resolved and numbered from the bucket's offset; -> (keyed entities, count per kg, total)."""
    B, seed = cfg.partitions, cfg.seed  # buckets of the id assignment = partitions of the joins
    filters = {kg: s.instance_of for kg, s in ((1, spec.kg1), (2, spec.kg2)) if s.format != "wikidata-json"}
    ents = (st.map_batches(with_bucket, fn_kwargs={"seed": seed, "buckets": B}, batch_format="pyarrow")
            .groupby("bucket", num_partitions=B)
            .map_groups(resolve_entities, fn_kwargs={"seed": seed, "type_filters": filters}, batch_format="pyarrow")
            .materialize())
    per_bucket, per_kg = _counts(ents, "bucket", B), _counts(ents, "kg", 3)
    offsets = {b: int(o) for b, o in enumerate(np.concatenate([[0], np.cumsum(per_bucket)[:-1]]))}
    keyed = ents.map_batches(assign_ids, fn_kwargs={"offsets": offsets}, batch_format="pyarrow").materialize()
    return keyed, per_kg, int(per_bucket.sum())


def _joins(st, keys, props: dict, spec: PairSpec, cfg: DataConfig, n_links_in: int):
    """Two joins for all three tables: subjects (relation heads, attribute entities, link sources),
    then objects (relation tails, link targets); -> (relation, attribute, link datasets, one-to-many count)."""
    P = cfg.partitions
    facts = st.map_batches(subjects, batch_format="pyarrow")
    facts = facts.join(keys, join_type="inner", num_partitions=P, on=("kg", "s"), right_on=("kg", "key"))
    attr = facts.map_batches(attributes, fn_kwargs={"props": props}, batch_format="pyarrow").materialize()
    objs = facts.map_batches(objects, batch_format="pyarrow")
    objs = objs.join(keys, join_type="inner", num_partitions=P, on=("kg", "o"), right_on=("kg", "key")).materialize()
    rel = objs.map_batches(relations, fn_kwargs={"props": props}, batch_format="pyarrow").materialize()
    links = objs.map_batches(link_ids, batch_format="pyarrow").materialize()
    if links.count() == 0:
        raise UserError(f"{spec.path}: links: no gold link joins two entities of the dumps "
                        f"({n_links_in} read; check the links' keys against the entities' IRIs)")
    return rel, attr, links, _check_one_to_one(links, spec, cfg)


def _write_tables(out: Path, keyed, rel, attr, links) -> int:
    """The four ingest tables, each sorted, streamed into its file; -> entities written."""
    n_ent = _write_sorted(keyed, ["id"], out / "entities.parquet", ENTITIES,
                          lambda b: {"id": b["id"], "kg": b["kg"], "uri": b["key"], "name": b["name"]})
    _write_sorted(rel, ["head", "tail", "relation"], out / "rel_triples.parquet", REL_TRIPLES,
                  lambda b: {c: b[c] for c in REL_TRIPLES.names})
    _write_sorted(attr, ["entity", "attribute", "value"], out / "attr_triples.parquet", ATTR_TRIPLES,
                  lambda b: {c: b[c] for c in ATTR_TRIPLES.names})
    _write_sorted(links, ["order"], out / "links.parquet", LINKS, lambda b: {c: b[c] for c in LINKS.names})
    return n_ent


def _skipped_lines(stage: Path) -> tuple[Counter, list[str]]:
    """Lines skipped as bad (``data.skip_bad_lines``) per file, and up to five of them (where: why)."""
    skipped = Counter()
    examples = []
    for b in _scan(stage, (D.BAD,), ["s", "where", "o"]):
        skipped.update(Path(p).name for p in b.column(0).to_pylist())
        if len(examples) < 5:
            examples += [f"{w}: {m}" for w, m in zip(b.column(1).to_pylist(), b.column(2).to_pylist())][: 5 - len(examples)]
    return skipped, examples


def _scan(stage: Path, kinds, columns: list[str]):
    """Batches of the staged statement rows of these kinds (all when None), read here in the
    driver one batch at a time (no Ray job for a small read; memory O(batch))."""
    import pyarrow.dataset as ds

    flt = None if kinds is None else ds.field("kind").isin(list(kinds))
    yield from ds.dataset(str(stage), format="parquet").to_batches(columns=columns, filter=flt, batch_readahead=0,
                                                                   fragment_readahead=0)


def _rss() -> dict:
    """This process's resident memory now, GiB: all of it, and the part that is shared mappings
    (Ray's object store pages the driver has read blocks from; counted in RSS while mapped)."""
    import psutil

    m = psutil.Process().memory_info()
    shared = getattr(m, "shared", 0)
    return {"rss": round(m.rss / 2**30, 3), "private": round((m.rss - shared) / 2**30, 3)}


def _counts(d, column: str, size: int) -> np.ndarray:
    """Value counts of a column, counted block by block in Ray tasks: only the small per-block
    counts reach the driver."""
    n = np.zeros(size, np.int64)
    for r in d.select_columns([column]).map_batches(count_by, fn_kwargs={"column": column, "size": size},
                                                    batch_format="pyarrow", batch_size=None).take_all():
        n[int(r["value"])] += int(r["n"])
    return n


def _kg_counts(d) -> dict:
    n = _counts(d, "kg", 3)
    return {1: int(n[1]), 2: int(n[2])}


def _check_one_to_one(links, spec: PairSpec, cfg: DataConfig) -> int:
    """Links sorted by source (then by target) and scanned for a repeated key, carrying the last
    key across batches; the first repeat is an error naming both lines unless data.one_to_many."""
    extra = 0
    for col, side in (("src", "source"), ("tgt", "target")):
        prev_key, prev_where = None, None
        for b in links.select_columns([col, "where"]).sort(col).iter_batches(batch_format="pyarrow", batch_size=65536):
            if b.num_rows == 0:
                continue
            keys = b[col].to_numpy()
            where = b["where"].to_pylist()
            first = np.concatenate([[keys[0] != prev_key if prev_key is not None else True], keys[1:] != keys[:-1]])
            dup = np.flatnonzero(~first)
            if len(dup) and not cfg.one_to_many:
                i = int(dup[0])
                other = where[i - 1] if i > 0 else prev_where
                raise UserError(f"{where[i]}: a gold link {side} is linked twice (also at {other}); links must be "
                                "one-to-one (set data.one_to_many=true to keep such links)")
            extra += len(dup)
            if len(keys):
                prev_key, prev_where = keys[-1], where[-1]
    return extra


def _write_sorted(ds, by: list[str], path: Path, schema: pa.Schema, columns) -> int:
    """The dataset sorted by ``by``, streamed batch by batch into one Parquet file."""
    n = 0
    with pq.ParquetWriter(path, schema) as w:
        for b in ds.sort(by).iter_batches(batch_format="pyarrow", batch_size=65536):
            w.write_table(pa.table(columns(b)).cast(schema))
            n += b.num_rows
    if n == 0:
        pq.write_table(schema.empty_table(), path)
    return n


def _user_error(exc: BaseException) -> UserError | None:
    """The UserError a Ray task raised, found in the error Ray hands the driver."""
    seen, todo = set(), [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, UserError):
            return UserError(str(e))
        # Ray Data hands the driver the worker's traceback as text (the UserError object is lost
        # in UserCodeException): its last "UserError: ..." line is the message.
        found = re.findall(r"hiea_ray\.errors\.UserError: (.+)", str(e))
        if found:
            return UserError(found[-1].strip())
        todo += [getattr(e, "cause", None), e.__cause__, e.__context__]
    return None
