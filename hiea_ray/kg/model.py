"""The normalized KG-pair model: four Arrow tables with fixed schemas.

entities      id:int64, kg:int8 (1 = source KG, 2 = target KG), uri:string, name:string
rel_triples   kg:int8, head:int64, relation:string, tail:int64
attr_triples  kg:int8, entity:int64, attribute:string, value:string
links         src:int64 (a KG1 id), tgt:int64 (a KG2 id), split:string (train | valid | test)

Entity ids are a seeded random permutation over both KGs (see ``readers.normalize``): no id,
order or offset carries information about a link.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

SCHEMA_VERSION = 1

ENTITIES = pa.schema([("id", pa.int64()), ("kg", pa.int8()), ("uri", pa.string()), ("name", pa.string())])
REL_TRIPLES = pa.schema(
    [("kg", pa.int8()), ("head", pa.int64()), ("relation", pa.string()), ("tail", pa.int64())]
)
ATTR_TRIPLES = pa.schema(
    [("kg", pa.int8()), ("entity", pa.int64()), ("attribute", pa.string()), ("value", pa.string())]
)
LINKS = pa.schema([("src", pa.int64()), ("tgt", pa.int64()), ("split", pa.string())])

TABLES = {
    "entities": ENTITIES,
    "rel_triples": REL_TRIPLES,
    "attr_triples": ATTR_TRIPLES,
    "links": LINKS,
}


@dataclass
class KGPair:
    entities: pa.Table
    rel_triples: pa.Table
    attr_triples: pa.Table
    links: pa.Table
    report: dict = field(default_factory=dict)

    def write(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        for name in TABLES:
            pq.write_table(getattr(self, name), folder / f"{name}.parquet")
        (folder / "report.json").write_text(json.dumps(self.report, indent=2, sort_keys=True))

    @classmethod
    def read(cls, folder: Path) -> "KGPair":
        tables = {name: pq.read_table(folder / f"{name}.parquet") for name in TABLES}
        report = json.loads((folder / "report.json").read_text())
        return cls(report=report, **tables)

    def links_of(self, split: str) -> pa.Table:
        import pyarrow.compute as pc

        return self.links.filter(pc.equal(self.links["split"], split))
