"""Fixtures: a synthetic pair (OpenEA folder, ``hiea_ray.kg.synthetic``) written again as dumps.

    write_dumps(openea_folder, out, kg1="wikidata-json", kg2="ntriples", compress="gz")

writes ``kg1.json.gz`` (a Wikidata JSON dump: items with an ``en`` label, ``wikibase-item`` claims
and ``string`` claims, plus one property entity per relation/attribute, labelled with the OpenEA
IRI's last segment) or ``kgN.nt.gz`` (N-Triples: an rdfs:label per entity, the relation and
attribute triples as in the folder), ``links.nt`` (owl:sameAs, KG1 IRI first) and ``pair.yaml``.
Every entity the OpenEA reader sees (in a relation or attribute triple) gets a label, so the dump
path and the folder path must read the same entities, triples and links (tests/test_dumps.py).
Returns {kg: {openea uri: dump iri}}.
"""

from __future__ import annotations

import bz2
import gzip
import json
from pathlib import Path

import numpy as np

from hiea_ray.kg.pairspec import LABEL_PREDICATES, OWL_SAMEAS, WIKIDATA_ENTITY
from hiea_ray.kg.readers import uri_name

KG_FORMATS = ("wikidata-json", "ntriples")


def _open(path: Path, compress: str):
    if compress == "gz":
        return gzip.open(path, "wt", encoding="utf-8", compresslevel=6)
    if compress == "bz2":
        return bz2.open(path, "wt", encoding="utf-8")
    return open(path, "w", encoding="utf-8")


def _tsv(path: Path):
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.rstrip("\n")
            if line:
                yield line.split("\t")


def nt_literal(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r") + '"'


class _Shards:
    """Lines dealt round-robin over ``n`` files; a Wikidata shard is a JSON array of its own."""

    def __init__(self, out: Path, stem: str, ext: str, n: int, compress: str, json_array: bool):
        self.names = [f"{stem}{ext}" if n == 1 else f"{stem}-{i:05d}{ext}" for i in range(n)]
        self.files = [_open(out / name, compress) for name in self.names]
        self.json_array = json_array
        self.count = [0] * n
        self.i = 0
        if json_array:
            for f in self.files:
                f.write("[\n")

    def write(self, line: str) -> None:
        k = self.i % len(self.files)
        self.i += 1
        if self.json_array:
            line = ("" if self.count[k] == 0 else ",\n") + line
        elif not line.endswith("\n"):
            line += "\n"
        self.files[k].write(line)
        self.count[k] += 1

    def close(self) -> str:
        for f in self.files:
            f.write("\n]\n" if self.json_array else "")
            f.close()
        return self.names[0] if len(self.names) == 1 else self.names[0].replace("-00000", "-*")


def write_dumps(folder: str | Path, out: str | Path, kg1: str = "wikidata-json", kg2: str = "ntriples",
                compress: str = "gz", seed: int = 0, shards: int = 1) -> dict:
    folder, out = Path(folder), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    suffix = {"gz": ".gz", "bz2": ".bz2", "": ""}[compress]
    maps, names = {}, {}
    for kg, fmt in ((1, kg1), (2, kg2)):
        rel = list(_tsv(folder / f"rel_triples_{kg}"))
        attr = [(r[0], r[1], "\t".join(r[2:])) for r in _tsv(folder / f"attr_triples_{kg}")] \
            if (folder / f"attr_triples_{kg}").is_file() else []
        ents: dict[str, None] = {}
        for h, _, t in rel:
            ents.setdefault(h)
            ents.setdefault(t)
        for e, _, _ in attr:
            ents.setdefault(e)
        uris = list(ents)
        if fmt == "ntriples":
            maps[kg] = {u: u for u in uris}
            f = _Shards(out, f"kg{kg}", f".nt{suffix}", shards, compress, json_array=False)
            for u in uris:
                f.write(f"<{u}> <{LABEL_PREDICATES[0]}> {nt_literal(uri_name(u))}@en .")
            for h, r, t in rel:
                f.write(f"<{h}> <{r}> <{t}> .")
            for e, a, v in attr:
                f.write(f"<{e}> <{a}> {nt_literal(v)} .")
            names[kg] = f.close()
        else:
            order = np.random.default_rng(seed + kg).permutation(len(uris))
            qid = {uris[i]: f"Q{k + 1}" for k, i in enumerate(order)}
            maps[kg] = {u: WIKIDATA_ENTITY + q for u, q in qid.items()}
            props: dict[str, str] = {}
            for _, r, _ in rel:
                props.setdefault(r, f"P{len(props) + 1}")
            for _, a, _ in attr:
                props.setdefault(a, f"P{len(props) + 1}")
            claims: dict[str, dict] = {u: {} for u in uris}
            for h, r, t in rel:
                claims[h].setdefault(props[r], []).append({
                    "mainsnak": {"snaktype": "value", "property": props[r], "datatype": "wikibase-item",
                                 "datavalue": {"type": "wikibase-entityid",
                                               "value": {"entity-type": "item", "numeric-id": int(qid[t][1:]), "id": qid[t]}}},
                    "type": "statement", "rank": "normal"})
            for e, a, v in attr:
                claims[e].setdefault(props[a], []).append({
                    "mainsnak": {"snaktype": "value", "property": props[a], "datatype": "string",
                                 "datavalue": {"type": "string", "value": v}},
                    "type": "statement", "rank": "normal"})
            f = _Shards(out, f"kg{kg}", f".json{suffix}", shards, compress, json_array=True)
            for iri, pid in props.items():
                f.write(json.dumps({"type": "property", "id": pid, "datatype": "wikibase-item",
                                    "labels": {"en": {"language": "en", "value": uri_name(iri)}}, "claims": {}},
                                   ensure_ascii=False))
            for i in order:
                u = uris[i]
                f.write(json.dumps({"type": "item", "id": qid[u], "labels": {"en": {"language": "en", "value": uri_name(u)}},
                                    "descriptions": {}, "aliases": {}, "sitelinks": {}, "claims": claims.pop(u)},
                                   ensure_ascii=False))
            names[kg] = f.close()
    with open(out / "links.nt", "w", encoding="utf-8") as f:
        for a, b in _tsv(folder / "ent_links"):
            f.write(f"<{maps[1][a]}> <{OWL_SAMEAS}> <{maps[2][b]}> .\n")
    (out / "pair.yaml").write_text(
        f"# Written by hiea-ray synth --dumps from {folder.name}/ (the same pair as that OpenEA folder).\n"
        f"kg1:\n  format: {kg1}\n  path: {names[1]}\n  languages: [en]\n"
        f"kg2:\n  format: {kg2}\n  path: {names[2]}\n  languages: [en]\n"
        "links:\n  format: sameas\n  path: links.nt\n"
        "split: {train: 0.2, valid: 0.1}\n"
    )
    return maps
