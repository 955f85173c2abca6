"""The Ray-free batch functions of dump ingestion: each maps one Arrow batch (parse a chunk's
rows, bucket entities by a seeded hash, resolve one entity's rows, assign ids, rename keys to ids,
count, split links). ``hiea_ray.ops.dump_ingest`` chains them on Ray Data; tests call them directly.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from hiea_ray.kg import dumps as D
from hiea_ray.kg.pairspec import PairSpec
from hiea_ray.kg.readers import uri_name


ENTITY_ROWS = pa.schema([("kg", pa.int8()), ("key", pa.string()), ("name", pa.string()), ("bucket", pa.int64()),
                         ("rank", pa.int64())])


def key_hash(kg, keys, seed: int) -> np.ndarray:
    """Seeded 64-bit SipHash of (kg, key) (pandas' vectorized ``hash_array``), as uint64."""
    from pandas.util import hash_array

    kg = np.asarray(kg).astype(str).astype(object)
    text = np.asarray(kg + "\x00" + np.asarray(keys, dtype=object), dtype=object)
    return hash_array(text, hash_key=f"hiea{seed:012d}"[-16:].rjust(16, "0"))


def range_bucket(h: np.ndarray, buckets: int) -> np.ndarray:
    """Bucket of a hash by its high bits: buckets are contiguous hash ranges, so (bucket, hash)
    order is hash order whatever the number of buckets."""
    return ((h >> np.uint64(32)).astype(np.float64) * buckets / 2.0**32).astype(np.int64).clip(0, buckets - 1)


def parse_batch(batch: dict, spec: PairSpec, skip_bad: bool) -> pa.Table:
    """Chunk descriptions (one per row) -> their statement rows."""
    wd = spec.wikidata_side()
    prefixes = tuple(s.entity_prefix if s.format == "wikidata-json" else "" for s in (spec.kg1, spec.kg2))
    tables = []
    for i in range(len(batch["path"])):
        c = D.Chunk(int(batch["kg"][i]), str(batch["path"][i]), int(batch["start"][i]), int(batch["end"][i]),
                    int(batch["size"][i]), int(batch["prev"][i]))
        side = {1: spec.kg1, 2: spec.kg2}.get(c.kg)
        links = spec.links if c.kg == 0 or c.kg == wd else None
        tables.append(D.parse_chunk(c, side, links, skip_bad, link_kg=c.kg, prefixes=prefixes))
    return pa.concat_tables(tables) if tables else D.STATEMENTS.empty_table()


def select(batch: pa.Table, kinds: tuple[int, ...], columns: tuple[str, ...]) -> pa.Table:
    t = batch.filter(pc.is_in(batch["kind"], value_set=pa.array(kinds, pa.int8())))
    return t.select(list(columns))


def with_bucket(batch: pa.Table, seed: int, buckets: int) -> pa.Table:
    """ENTITY / LABEL / TYPE rows + the bucket of their (kg, key)."""
    t = select(batch, (D.ENTITY, D.LABEL, D.TYPE), ("kind", "kg", "s", "o", "rank"))
    h = key_hash(t["kg"].to_numpy(), t["s"].to_numpy(zero_copy_only=False), seed)
    return t.append_column("bucket", pa.array(range_bucket(h, buckets)))


def resolve_entities(t: pa.Table, seed: int, type_filters: dict) -> pa.Table:
    """One bucket's rows -> one row per entity: kept by its side's type filter, named by its
    best-ranked label (else the last URI segment), ranked by hash inside the bucket."""
    import pandas as pd

    filters = {int(k): set(v) for k, v in type_filters.items() if v}
    df = t.to_pandas()
    ents = df[df["kind"] == D.ENTITY][["kg", "s"]].drop_duplicates()
    for kg, allowed in filters.items():
        typed = df[(df["kind"] == D.TYPE) & (df["kg"] == kg) & df["o"].isin(allowed)]["s"]
        ents = ents[(ents["kg"] != kg) | ents["s"].isin(set(typed))]
    labels = df[df["kind"] == D.LABEL].sort_values(["rank", "o"], kind="stable")
    labels = labels.drop_duplicates(["kg", "s"])[["kg", "s", "o"]]
    ents = ents.merge(labels, on=["kg", "s"], how="left")
    missing = ents["o"].isna()
    ents.loc[missing, "o"] = [uri_name(s) for s in ents.loc[missing, "s"]]
    h = key_hash(ents["kg"].to_numpy(), ents["s"].to_numpy(), seed)
    ents = ents.assign(h=h).sort_values(["h", "kg", "s"], kind="stable")
    bucket = int(t["bucket"][0].as_py()) if t.num_rows else 0
    return pa.Table.from_pandas(
        pd.DataFrame({"kg": ents["kg"].astype(np.int8), "key": ents["s"], "name": ents["o"],
                      "bucket": np.full(len(ents), bucket, np.int64), "rank": np.arange(len(ents), dtype=np.int64)}),
        schema=ENTITY_ROWS, preserve_index=False,
    )


def assign_ids(batch: pa.Table, offsets: dict) -> pa.Table:
    off = np.array([offsets[int(b)] for b in batch["bucket"].to_numpy()], dtype=np.int64)
    return pa.table({"kg": batch["kg"], "key": batch["key"], "name": batch["name"],
                     "id": pa.array(off + batch["rank"].to_numpy())})


def rename(batch: pa.Table, mapping: dict, columns: dict) -> pa.Table:
    """Rename / drop columns; relation and attribute names of Wikidata sides (P-ids) -> labels."""
    out = {}
    for src, dst in columns.items():
        col = batch[src]
        if src == "p" and mapping:
            col = pa.array([mapping.get(x, x) for x in col.to_pylist()], pa.string())
        out[dst] = col
    return pa.table(out)


def subjects(batch: pa.Table) -> pa.Table:
    """REL / ATTR / LINK rows keyed by their subject: (kg, s); a link's source is on KG1."""
    t = select(batch, (D.REL, D.ATTR, D.LINK), ("kind", "kg", "s", "p", "o", "where"))
    kg = pc.if_else(pc.equal(t["kind"], D.LINK), pa.scalar(1, pa.int8()), t["kg"])
    return t.set_column(1, "kg", kg)


def attributes(batch: pa.Table, props: dict) -> pa.Table:
    t = batch.filter(pc.equal(batch["kind"], D.ATTR))
    return rename(t, props, {"kg": "kg", "id": "entity", "p": "attribute", "o": "value"})


def objects(batch: pa.Table) -> pa.Table:
    """Joined REL / LINK rows keyed by their object: (kg, o); a link's target is on KG2."""
    t = batch.filter(pc.not_equal(batch["kind"], D.ATTR))
    kg = pc.if_else(pc.equal(t["kind"], D.LINK), pa.scalar(2, pa.int8()), t["kg"])
    return pa.table({"kind": t["kind"], "kg": kg, "s": t["s"], "p": t["p"], "o": t["o"], "where": t["where"],
                     "head": t["id"]})


def relations(batch: pa.Table, props: dict) -> pa.Table:
    t = batch.filter(pc.equal(batch["kind"], D.REL))
    return rename(t, props, {"kg": "kg", "head": "head", "p": "relation", "id": "tail"})


def link_ids(batch: pa.Table) -> pa.Table:
    t = batch.filter(pc.equal(batch["kind"], D.LINK))
    return pa.table({"s": t["s"], "where": t["where"], "src": t["head"], "tgt": t["id"]})


def count_by(batch: pa.Table, column: str, size: int) -> pa.Table:
    """Counts of the values 0..size-1 of an integer column in one block (summed by the driver)."""
    n = np.bincount(batch[column].to_numpy().astype(np.int64), minlength=size)[:size]
    return pa.table({"value": np.arange(size), "n": n})


def split_links(batch: pa.Table, seed: int, train: float, valid: float) -> pa.Table:
    """Seeded train/valid/test split by a hash of the link (order-free), and a random output order."""
    u = key_hash(np.zeros(batch.num_rows, np.int64), batch["s"].to_numpy(zero_copy_only=False), seed + 1)
    frac = (u >> np.uint64(11)).astype(np.float64) / 2.0**53
    split = np.where(frac < train, "train", np.where(frac < train + valid, "valid", "test"))
    order = key_hash(np.zeros(batch.num_rows, np.int64), batch["s"].to_numpy(zero_copy_only=False), seed + 2)
    return pa.table({"src": batch["src"], "tgt": batch["tgt"], "split": pa.array(split, pa.string()),
                     "order": pa.array(order.view(np.int64))})
