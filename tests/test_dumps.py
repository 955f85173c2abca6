"""Dump ingestion: pair spec, Wikidata JSON / N-Triples parsing (Ray-free), the Ray Data ingest
against the OpenEA folder of the same content, bad input, the real Wikidata sample (slow)."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from hiea_ray.config import DataConfig
from hiea_ray.errors import UserError
from hiea_ray.kg import dumps as D
from hiea_ray.kg.dump_fixtures import write_dumps
from hiea_ray.kg.model import KGPair
from hiea_ray.kg.pairspec import SideSpec, load_pair_spec
from hiea_ray.kg.readers import read_pair, uri_name
from hiea_ray.kg.synthetic import generate

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT.parent / "shared" / "datasets" / "dumps" / "wikidata-sample-20150815.json.gz"
WD = "http://www.wikidata.org/entity/"
LABEL = "http://www.w3.org/2000/01/rdf-schema#label"


def kinds(t: pa.Table, kind: int) -> list[tuple]:
    t = t.filter(pc.equal(t["kind"], kind))
    return list(zip(t["s"].to_pylist(), t["p"].to_pylist(), t["o"].to_pylist(), t["rank"].to_pylist()))


def parse_lines(tmp_path, lines: list[str], side: SideSpec, name="d.txt", skip=False, links=None) -> pa.Table:
    p = tmp_path / name
    p.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return D.parse_chunk(D.Chunk(1, str(p)), side, links, skip)


# --- N-Triples ---------------------------------------------------------------------------------------


def test_ntriples_line_forms():
    assert D.parse_ntriple('<http://a/x> <http://p/q> <http://a/y> .') == ("http://a/x", "http://p/q", "http://a/y", False, "")
    assert D.parse_ntriple('_:b1 <http://p/q> _:b2 .') == ("_:b1", "http://p/q", "_:b2", False, "")
    assert D.parse_ntriple('<http://a/x> <http://p/l> "Tab\\there \\"q\\" \\u00e9"@FR-be .') == (
        "http://a/x", "http://p/l", 'Tab\there "q" é', True, "fr-be")
    assert D.parse_ntriple('<http://a/x> <http://p/y> "1987"^^<http://www.w3.org/2001/XMLSchema#gYear> . # c') == (
        "http://a/x", "http://p/y", "1987", True, "")
    assert D.parse_ntriple("   ") is None and D.parse_ntriple("# comment") is None
    for bad in ['<http://a/x> <http://p/q> <http://a/y>', '<a b> <p> <o> .', '"lit" <http://p> <http://o> .',
                '<http://a/x> <http://p/q> "unterminated .']:
        with pytest.raises(ValueError):
            D.parse_ntriple(bad)


def test_ntriples_side_names_types_and_properties(tmp_path):
    side = SideSpec(format="ntriples", files=[], languages=["zh", "en"], instance_of=["http://o/Person"],
                    properties=["http://p/knows", "http://p/born"])
    t = parse_lines(tmp_path, [
        f'<http://a/x> <{LABEL}> "Ex"@en .',
        f'<http://a/x> <{LABEL}> "艾克斯"@zh .',
        f'<http://a/x> <{LABEL}> "Ix"@de .',
        '<http://a/x> <http://www.w3.org/1999/02/22-rdf-syntax-ns#type> <http://o/Person> .',
        '<http://a/x> <http://p/knows> <http://a/y> .',
        '<http://a/x> <http://p/born> "1950" .',
        '<http://a/x> <http://p/other> <http://a/z> .',
        '<http://a/y> <http://p/knows> <http://a/x> .',
    ], side)
    assert [s for s, *_ in kinds(t, D.ENTITY)] == ["http://a/x", "http://a/y"]  # once per chunk
    labels = sorted((r, o) for _, _, o, r in kinds(t, D.LABEL))
    assert labels == [(0, "艾克斯"), (3, "Ex")]  # zh first; the de label is not asked for
    assert kinds(t, D.TYPE) == [("http://a/x", "", "http://o/Person", 0)]
    assert [(s, p, o) for s, p, o, _ in kinds(t, D.REL)] == [("http://a/x", "http://p/knows", "http://a/y"),
                                                             ("http://a/y", "http://p/knows", "http://a/x")]
    assert [(p, o) for _, p, o, _ in kinds(t, D.ATTR)] == [("http://p/born", "1950")]


# --- Wikidata JSON ------------------------------------------------------------------------------------


def claim(pid, dv, datatype=None):
    snak = {"snaktype": "value", "property": pid, "datavalue": dv}
    if datatype:
        snak["datatype"] = datatype
    return {"mainsnak": snak, "type": "statement", "rank": "normal"}


def item_ref(q, old=False):
    v = {"entity-type": "item", "numeric-id": int(q[1:])}
    if not old:
        v["id"] = q
    return {"type": "wikibase-entityid", "value": v}


def test_wikidata_values_are_readable():
    assert D.wikidata_value({"type": "string", "value": "abc"}) == "abc"
    assert D.wikidata_value({"type": "monolingualtext", "value": {"text": "Berlin", "language": "de"}}) == "Berlin"
    assert D.wikidata_value({"type": "quantity", "value": {"amount": "+3644826", "unit": "1"}}) == "3644826"
    assert D.wikidata_value({"type": "quantity", "value": {"amount": "-1.5", "unit": f"{WD}Q11573"}}) == "-1.5 Q11573"
    t = {"type": "time", "value": {"time": "+1952-03-11T00:00:00Z", "precision": 11}}
    assert D.wikidata_value(t) == "1952-03-11"
    t["value"]["precision"] = 9
    assert D.wikidata_value(t) == "1952"
    assert D.wikidata_value({"type": "time", "value": {"time": "-0044-03-15T00:00:00Z", "precision": 10}}) == "-0044-03"
    assert D.wikidata_value({"type": "globecoordinate", "value": {"latitude": 52.5, "longitude": 13.4}}) == "52.5, 13.4"
    assert D.entity_id({"entity-type": "property", "numeric-id": 31}) == "P31"


def test_wikidata_items_labels_claims_filters_and_old_format(tmp_path):
    q1 = {"type": "item", "id": "Q1", "labels": {"en": {"language": "en", "value": "Douglas Adams"}},
          "aliases": {"zh": [{"language": "zh", "value": "亚当斯"}]},
          "claims": {"P31": [claim("P31", item_ref("Q5"), "wikibase-item")],
                     "P69": [claim("P69", item_ref("Q2", old=True))],  # 2015 form: no id, no datatype
                     "P569": [claim("P569", {"type": "time", "value": {"time": "+1952-03-11T00:00:00Z", "precision": 11}}, "time")],
                     "P18": [{"mainsnak": {"snaktype": "somevalue", "property": "P18"}}]},
          "sitelinks": {"enwiki": {"site": "enwiki", "title": "Douglas Adams"}}}
    q2 = {"type": "item", "id": "Q2", "labels": {}, "claims": {"P31": [claim("P31", item_ref("Q3"))]}}
    p69 = {"type": "property", "id": "P69", "labels": {"en": {"value": "educated at"}}, "claims": {}}
    lines = ["[", json.dumps(q1) + ",", json.dumps(q2) + ",", json.dumps(p69), "]"]
    side = SideSpec(format="wikidata-json", files=[], languages=["zh", "en"])
    t = parse_lines(tmp_path, lines, side)
    assert [s for s, *_ in kinds(t, D.ENTITY)] == [WD + "Q1", WD + "Q2"]  # the property is not an entity
    assert sorted((r, o) for _, _, o, r in kinds(t, D.LABEL)) == [(1, "Douglas Adams"), (2, "亚当斯")]  # label en < alias zh
    assert kinds(t, D.PROP) == [("P69", "", "educated at", 0)]
    assert (WD + "Q1", "P69", WD + "Q2") in [(s, p, o) for s, p, o, _ in kinds(t, D.REL)]
    assert [(p, o) for s, p, o, _ in kinds(t, D.ATTR)] == [("P569", "1952-03-11")]  # somevalue skipped
    # filters: only humans, only P69 and P569
    side = SideSpec(format="wikidata-json", files=[], instance_of=["Q5"], properties=["P69", "P569"])
    from hiea_ray.kg.pairspec import LinkSpec

    links = LinkSpec(format="wikidata-sitelink", site="enwiki", template="http://dbpedia.org/resource/{}")
    t = D.parse_chunk(D.Chunk(2, str(tmp_path / "d.txt")), side, links, False, link_kg=2)
    assert [s for s, *_ in kinds(t, D.ENTITY)] == [WD + "Q1"]
    assert {p for _, p, _, _ in kinds(t, D.REL) + kinds(t, D.ATTR)} == {"P69", "P569"}
    # this dump is KG2: the link reads (KG1 key, KG2 key)
    assert [(s, o) for s, _, o, _ in kinds(t, D.LINK)] == [("http://dbpedia.org/resource/Douglas_Adams", WD + "Q1")]


# --- chunks, bad input ---------------------------------------------------------------------------------


def test_byte_range_chunks_read_every_line_once(tmp_path):
    p = tmp_path / "big.nt"
    rng = np.random.default_rng(0)
    lines = [f"<http://a/{i}> <http://p/x> \"{'v' * int(rng.integers(0, 40))}\" ." for i in range(500)]
    p.write_text("\n".join(lines) + "\n")
    for size in (1, 7, 64, 1000, 10**6):
        got = [raw.decode().rstrip("\n") for c in D.plan_chunks(1, [str(p)], size) for _, _, raw in D.read_lines(c)]
        assert got == lines, size


def test_bad_lines_name_file_and_line_or_are_skipped(tmp_path):
    side = SideSpec(format="ntriples", files=[])
    good = '<http://a/x> <http://p/q> <http://a/y> .'
    with pytest.raises(UserError, match=r"d.txt:2: not an N-Triples statement"):
        parse_lines(tmp_path, [good, "<http://a/x> broken", good], side)
    t = parse_lines(tmp_path, [good, "<http://a/x> broken", good], side, skip=True)
    assert [(s, w) for s, _, _, _ in kinds(t, D.BAD) for w in [t["where"][t["kind"].to_pylist().index(D.BAD)].as_py()]] \
        == [(str(tmp_path / "d.txt"), f"{tmp_path / 'd.txt'}:2")]
    wd = SideSpec(format="wikidata-json", files=[])
    with pytest.raises(UserError, match=r"d.txt:3: not a JSON entity"):
        parse_lines(tmp_path, ["[", '{"id": "Q1", "type": "item"},', '{"id": "Q2", "type": "it', "]"], wd)
    # a truncated gzip file: one line naming the file, after which line it broke
    full = gzip.compress(("\n".join([good] * 2000) + "\n").encode())
    (tmp_path / "t.nt.gz").write_bytes(full[: len(full) // 2])
    with pytest.raises(UserError, match=r"t.nt.gz: truncated compressed file after line \d+"):
        D.parse_chunk(D.Chunk(1, str(tmp_path / "t.nt.gz")), side, None, False)


def test_pair_spec_errors_name_the_field(tmp_path):
    (tmp_path / "a.nt").write_text("")

    def spec(text):
        (tmp_path / "p.yaml").write_text(text)
        return load_pair_spec(tmp_path / "p.yaml")

    base = "kg1: {format: ntriples, path: a.nt}\nkg2: {format: ntriples, path: a.nt}\n"
    with pytest.raises(UserError, match=r"p.yaml: kg1.format: 'wikidat' is not one of"):
        spec(base.replace("format: ntriples", "format: wikidat", 1) + "links: {format: sameas, path: a.nt}")
    with pytest.raises(UserError, match=r"p.yaml: kg2.path: no file matches 'b\*.nt'"):
        spec(base.replace("path: a.nt}\n", "path: b*.nt}\n").replace("kg1: {format: ntriples, path: b*.nt}", "kg1: {format: ntriples, path: a.nt}") + "links: {format: sameas, path: a.nt}")
    with pytest.raises(UserError, match=r"p.yaml: links: is required"):
        spec(base)
    with pytest.raises(UserError, match=r"p.yaml: kg1.langs: unknown field"):
        spec(base.replace("path: a.nt}", "path: a.nt, langs: [en]}", 1) + "links: {format: sameas, path: a.nt}")
    with pytest.raises(UserError, match=r"p.yaml: links.format: wikidata-sitelink needs exactly one wikidata-json side"):
        spec(base + "links: {format: wikidata-sitelink, site: enwiki}")
    with pytest.raises(UserError, match=r"p.yaml: split.train: train 0.8 \+ valid 0.3"):
        spec(base + "links: {format: sameas, path: a.nt}\nsplit: {train: 0.8, valid: 0.3}")
    s = spec(base + "links: {format: sameas, path: a.nt}")
    assert s.kg1.files == [str(tmp_path / "a.nt")] and s.train == 0.2
    # a benchmark release instead of two dumps
    generate(tmp_path / "rel", 60, seed=0)
    s = spec("release: {format: openea, path: rel}\n")
    assert s.release == "openea" and read_pair(s.release_path, DataConfig()).links.num_rows > 0
    with pytest.raises(UserError, match=r"p.yaml: release.path: .*a.nt is not a folder"):
        spec("release: {format: openea, path: a.nt}\n")


def test_ids_do_not_depend_on_the_bucket_count():
    from hiea_ray.kg.dump_batches import key_hash, range_bucket

    keys = np.array([f"http://a/{i}" for i in range(2000)], dtype=object)
    h = key_hash(np.ones(2000, np.int8), keys, seed=3)
    for b in (1, 3, 16):
        bucket = range_bucket(h, b)
        order = np.lexsort((h, bucket))
        assert np.array_equal(order, np.argsort(h, kind="stable"))
    assert not np.array_equal(h, key_hash(np.ones(2000, np.int8), keys, seed=4))


# --- the Ray Data ingest ---------------------------------------------------------------------------------


def content(pair: KGPair, maps=None):
    """Entities, triples and links by IRI (relation / attribute names by their last segment)."""
    ids = dict(zip(pair.entities["id"].to_pylist(), zip(pair.entities["kg"].to_pylist(), pair.entities["uri"].to_pylist())))
    mp = (lambda kg, u: maps[kg][u]) if maps else (lambda kg, u: u)
    ents = {(kg, mp(kg, u), n) for (kg, u), n in zip(ids.values(), pair.entities["name"].to_pylist())}
    cols = lambda t, cs: zip(*[t[c].to_pylist() for c in cs])  # noqa: E731
    rel = sorted((kg, mp(kg, ids[h][1]), uri_name(r), mp(kg, ids[t][1]))
                 for kg, h, r, t in cols(pair.rel_triples, ("kg", "head", "relation", "tail")))
    att = sorted((kg, mp(kg, ids[e][1]), uri_name(a), v)
                 for kg, e, a, v in cols(pair.attr_triples, ("kg", "entity", "attribute", "value")))
    links = {(mp(1, ids[s][1]), mp(2, ids[t][1])) for s, t in cols(pair.links, ("src", "tgt"))}
    return ents, rel, att, links


@pytest.mark.ray
def test_dumps_give_the_tables_of_the_openea_folder_and_bad_lines_exit_2(tmp_path):
    data = tmp_path / "data"
    generate(data, 400, seed=1)
    maps = write_dumps(data, tmp_path / "dumps", "wikidata-json", "ntriples", "gz", shards=2)
    # a malformed line in KG2's second shard (skipped and counted below; an error by default)
    bad = tmp_path / "dumps" / "kg2-00001.nt.gz"
    bad.write_bytes(gzip.compress(gzip.decompress(bad.read_bytes()) + b"<http://x> oops\n"))
    cli = [sys.executable, "-m", "hiea_ray.cli", "align", "--data", str(tmp_path / "dumps" / "pair.yaml"), "-q",
           "--until", "ingest", "--set", "data.partitions=2"]  # 400 entities: two hash partitions are plenty
    r = subprocess.run(cli + ["--out", str(tmp_path / "bad")], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2, r.stderr[-2000:]
    assert r.stderr.strip().splitlines()[-1].startswith(f"hiea-ray: error: {bad}: line starting at byte") or \
        f"{bad}:" in r.stderr.strip().splitlines()[-1], r.stderr[-2000:]
    assert "Traceback" not in r.stderr
    r = subprocess.run(cli + ["--out", str(tmp_path / "run"), "--set", "data.skip_bad_lines=true"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    got = KGPair.read(tmp_path / "run" / "ingest")
    ref = read_pair(data, DataConfig())
    for a, b in zip(content(ref, maps), content(got)):
        assert a == b
    rep = got.report
    assert rep["skipped_lines"] == {"kg2-00001.nt.gz": 1} and rep["dropped"]["links"] == 0
    # ids: dense, a permutation over both KGs; links split about 20 / 10 / 70
    assert sorted(got.entities["id"].to_pylist()) == list(range(got.entities.num_rows))
    assert got.entities["id"].to_pylist() == sorted(got.entities["id"].to_pylist())
    n = got.links.num_rows
    assert abs(rep["links"]["train"] / n - 0.2) < 0.06 and abs(rep["links"]["valid"] / n - 0.1) < 0.05
    # a source linked to a second target: one line naming both links, exit 2
    links = (tmp_path / "dumps" / "links.nt").read_text().splitlines()
    a, b = links[0].split(" ")[0], links[1].split(" ")[2]
    (tmp_path / "dumps" / "links.nt").write_text("\n".join(links + [f"{a} <http://www.w3.org/2002/07/owl#sameAs> {b} ."]) + "\n")
    r = subprocess.run(cli + ["--out", str(tmp_path / "dup"), "--set", "data.skip_bad_lines=true"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 2, r.stderr[-3000:]
    last = r.stderr.strip().splitlines()[-1]
    assert "links.nt:" in last and "is linked twice (also at" in last and "one_to_many" in last, last


@pytest.mark.slow
def test_the_real_wikidata_sample_parses():
    if not SAMPLE.is_file():
        pytest.skip(f"{SAMPLE} not here")
    side = SideSpec(format="wikidata-json", files=[str(SAMPLE)], entity_types=["item", "property"])
    t = D.parse_chunk(D.Chunk(1, str(SAMPLE)), side, None, skip_bad=False)
    lines = [ln.rstrip(",\n") for ln in gzip.open(SAMPLE, "rt") if ln.strip() not in ("[", "]")]
    ents = [json.loads(ln) for ln in lines]
    assert len(ents) == 101 and not kinds(t, D.BAD)
    assert len(kinds(t, D.ENTITY)) == 101
    claims = sum(len(v) for e in ents for v in e.get("claims", {}).values())
    assert claims == 149
    assert len(kinds(t, D.REL)) + len(kinds(t, D.ATTR)) == sum(
        1 for e in ents for v in e.get("claims", {}).values() for c in v if c["mainsnak"].get("snaktype") == "value")


def test_turtle_reads_as_its_ntriples(tmp_path):
    ttl = """@prefix ex: <http://a/> .
@prefix p: <http://p/> .
@prefix rdfs: <http://www.w3.org/2000/01/rdf-schema#> .
ex:x rdfs:label "Ex"@en , "Ix"@de ;
     p:knows ex:y , ex:z ;
     p:note \"\"\"two
lines\"\"\" .
ex:y p:born "1950" .
"""
    nt = [f'<http://a/x> <{LABEL}> "Ex"@en .', f'<http://a/x> <{LABEL}> "Ix"@de .',
          '<http://a/x> <http://p/knows> <http://a/y> .', '<http://a/x> <http://p/knows> <http://a/z> .',
          '<http://a/x> <http://p/note> "two\\nlines" .', '<http://a/y> <http://p/born> "1950" .']
    (tmp_path / "k.ttl").write_text(ttl)
    rows = lambda t: sorted(zip(*[t[c].to_pylist() for c in ("kind", "s", "p", "o", "rank")]))  # noqa: E731
    got = D.parse_chunk(D.Chunk(1, str(tmp_path / "k.ttl")), SideSpec(format="turtle", files=[]), None, False)
    want = parse_lines(tmp_path, nt, SideSpec(format="ntriples", files=[]))
    assert rows(got) == rows(want) and len(rows(got)) == 7
    (tmp_path / "bad.ttl").write_text("@prefix ex: <http://a/> .\nex:x ex:p ex:y ;; .\nex:q\n")
    with pytest.raises(UserError, match=r"bad.ttl: not valid Turtle"):
        D.parse_chunk(D.Chunk(1, str(tmp_path / "bad.ttl")), SideSpec(format="turtle", files=[]), None, False)


def test_tsv_links_expand_wikidata_ids(tmp_path):
    assert D.tsv_link(b"Q42\thttp://dbpedia.org/resource/Douglas_Adams\n", (WD, "")) == (
        WD + "Q42", "http://dbpedia.org/resource/Douglas_Adams")
    assert D.tsv_link(b"   \n", ("", "")) is None
    with pytest.raises(ValueError, match="expected 2 tab-separated keys"):
        D.tsv_link(b"Q1\tQ2\tQ3\n", ("", ""))


def test_multistream_bz2_is_cut_at_streams_and_reads_every_line_once(tmp_path):
    import bz2

    rng = np.random.default_rng(1)
    lines = [f'<http://a/{i}> <http://p/x> "{"w" * int(rng.integers(0, 300))}" .\n' for i in range(3000)]
    text = "".join(lines).encode()
    # pbzip2-like: streams cut at arbitrary bytes (mid-line), one exactly after a line break, one
    # line longer than a whole stream
    cuts = sorted(set(int(c) for c in rng.integers(1, len(text) - 1, 25)) | {text.index(b"\n", 5000) + 1})
    text = text[: cuts[3]] + b'"' + b"y" * 60000 + text[cuts[3]:]  # a long line spanning streams
    cuts = [c if c < cuts[3] else c + 60001 for c in cuts] + [cuts[3] + 20000, cuts[3] + 40000]
    cuts = sorted(set(cuts))
    parts = [text[a:b] for a, b in zip([0] + cuts, cuts + [len(text)])]
    p = tmp_path / "m.nt.bz2"
    p.write_bytes(b"".join(bz2.compress(x) for x in parts))
    want = text.decode().splitlines(keepends=True)
    starts = D.bz2_streams(str(p))
    assert len(starts) == len(parts)
    for size in (1, 5000, 20000, 10**9):
        chunks = D.plan_chunks(1, [str(p)], size)
        assert (len(chunks) > 1) == (size < p.stat().st_size // 2)
        got = [raw.decode() for c in chunks for _, _, raw in D.read_lines(c)]
        assert got == want, size
    # a single-stream .bz2 stays one chunk; a truncated range is one clear error
    (tmp_path / "s.nt.bz2").write_bytes(bz2.compress(text))
    assert len(D.plan_chunks(1, [str(tmp_path / "s.nt.bz2")], 100)) == 1
    (tmp_path / "t.nt.bz2").write_bytes(p.read_bytes()[:-50])
    with pytest.raises(UserError, match=r"t.nt.bz2: truncated or corrupt bz2 stream"):
        for c in D.plan_chunks(1, [str(tmp_path / "t.nt.bz2")], 5000):
            list(D.read_lines(c))
