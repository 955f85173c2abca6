"""Verbalization: relation labels, columnar contexts on a hand-made pair, the text template."""

from __future__ import annotations

import random

import pyarrow as pa
import pytest

from hiea_ray.config import VerbalizeConfig
from hiea_ray.core.verbalize import (
    TEXTS,
    build_contexts,
    relation_label,
    verbalize_row,
    verbalize_table,
    word_count_stats,
)
from hiea_ray.kg.model import ATTR_TRIPLES, ENTITIES, LINKS, REL_TRIPLES, KGPair

O = "http://dbpedia.org/ontology/"


@pytest.mark.parametrize(
    "uri, label",
    [
        (O + "birthPlace", "birth place"),
        ("http://www.wikidata.org/prop/countryOfCitizenship", "country of citizenship"),
        ("http://x.org/onto#hasName", "has name"),
        ("http://x.org/p/iso3166Code", "iso3166 code"),
        ("http://x.org/p/birth_place", "birth place"),
        ("http://x.org/p/name", "name"),
    ],
)
def test_relation_label(uri, label):
    assert relation_label(uri) == label


def tiny_pair(with_attrs: bool = True, with_triples: bool = True) -> KGPair:
    # ids deliberately not in row order
    entities = pa.table(
        {
            "id": [3, 0, 2, 1, 4, 10],
            "kg": [1, 1, 1, 1, 1, 2],
            "uri": ["u:Bob", "u:Alice", "u:France", "u:Paris", "u:Lonely", "v:Alicia"],
            "name": ["Bob", "Alice", "France", "Paris", "Lonely", "Alicia"],
        },
        schema=ENTITIES,
    )
    tr = [
        (1, 0, O + "birthPlace", 1),
        (1, 1, O + "country", 2),
        (1, 3, O + "birthPlace", 1),
        (1, 0, O + "spouse", 3),
        (1, 0, O + "spouse", 3),  # a duplicate triple: verbalized once
    ]
    if not with_triples:
        tr = []
    rel = pa.table(
        {
            "kg": [t[0] for t in tr],
            "head": [t[1] for t in tr],
            "relation": [t[2] for t in tr],
            "tail": [t[3] for t in tr],
        },
        schema=REL_TRIPLES,
    )
    at = [(1, 0, O + "birthYear", "1950"), (1, 1, O + "populationTotal", "2000000"), (2, 10, O + "birthYear", "1950")]
    if not with_attrs:
        at = []
    attrs = pa.table(
        {"kg": [a[0] for a in at], "entity": [a[1] for a in at], "attribute": [a[2] for a in at], "value": [a[3] for a in at]},
        schema=ATTR_TRIPLES,
    )
    links = pa.table({"src": [0], "tgt": [10], "split": ["test"]}, schema=LINKS)
    return KGPair(entities=entities, rel_triples=rel, attr_triples=attrs, links=links)


def _triples(row, prefix):
    return sorted(zip(row[f"{prefix}_rel"] or [], row[f"{prefix}_nbr"] or [], row[f"{prefix}_deg"] or []))


@pytest.fixture(scope="module")
def contexts():
    return build_contexts(tiny_pair())


def test_build_contexts(contexts):
    rows = {r["id"]: r for r in contexts.to_pylist()}
    assert contexts["id"].to_pylist() == [0, 1, 2, 3, 4, 10]  # sorted by id
    assert rows[0]["name"] == "Alice" and rows[0]["kg"] == 1
    # degrees: Alice 3 (3 triples as head), Paris 3, France 1, Bob 3
    assert _triples(rows[0], "out") == [("birth place", "Paris", 3), ("spouse", "Bob", 3), ("spouse", "Bob", 3)]
    assert _triples(rows[0], "in") == []
    assert _triples(rows[1], "out") == [("country", "France", 1)]
    assert _triples(rows[1], "in") == [("birth place", "Alice", 3), ("birth place", "Bob", 3)]
    assert _triples(rows[2], "out") == []
    assert _triples(rows[2], "in") == [("country", "Paris", 3)]
    assert _triples(rows[3], "out") == [("birth place", "Paris", 3)]
    assert _triples(rows[3], "in") == [("spouse", "Alice", 3), ("spouse", "Alice", 3)]
    for p in ("out", "in"):
        assert _triples(rows[4], p) == []
    assert sorted(zip(rows[0]["attr_key"], rows[0]["attr_val"])) == [("birth year", "1950")]
    assert sorted(zip(rows[1]["attr_key"], rows[1]["attr_val"])) == [("population total", "2000000")]
    assert not rows[2]["attr_key"]
    assert rows[10]["attr_key"] == ["birth year"]


def test_build_contexts_without_attributes_or_triples():
    ctx = build_contexts(tiny_pair(with_attrs=False))
    assert ctx.num_rows == 6
    assert all(not r["attr_key"] for r in ctx.to_pylist())
    ctx = build_contexts(tiny_pair(with_attrs=False, with_triples=False))
    assert ctx.num_rows == 6
    texts = verbalize_table(ctx, VerbalizeConfig())
    assert texts["text"].to_pylist() == texts["name"].to_pylist()


def rows_by_id(contexts):
    return {r["id"]: r for r in contexts.to_pylist()}


def test_template_text(contexts):
    rows = rows_by_id(contexts)
    cfg = VerbalizeConfig()
    assert verbalize_row(rows[0], cfg) == "Alice. birth place: Paris. spouse: Bob. birth year: 1950"
    assert verbalize_row(rows[1], cfg) == "Paris. country: France. birth place of: Alice, Bob. population total: 2000000"
    assert verbalize_row(rows[2], cfg) == "France. country of: Paris"
    assert verbalize_row(rows[4], cfg) == "Lonely"


def test_mode_name(contexts):
    cfg = VerbalizeConfig(mode="name")
    for r in contexts.to_pylist():
        assert verbalize_row(r, cfg) == r["name"]


@pytest.mark.parametrize("max_words", [1, 2, 3, 4, 5, 7, 9, 12, 64])
def test_max_words(contexts, max_words):
    cfg = VerbalizeConfig(max_words=max_words)
    for r in contexts.to_pylist():
        text = verbalize_row(r, cfg)
        assert text.startswith(r["name"])
        assert len(text.split()) <= max(max_words, len(r["name"].split()))
    assert verbalize_row(rows_by_id(contexts)[1], VerbalizeConfig(max_words=4)) == "Paris. country: France. birth"


def test_deterministic_under_list_order(contexts):
    cfg = VerbalizeConfig()
    rng = random.Random(0)
    for r in contexts.to_pylist():
        want = verbalize_row(r, cfg)
        for _ in range(5):
            s = dict(r)
            for p in ("out", "in"):
                z = list(zip(r[f"{p}_rel"] or [], r[f"{p}_nbr"] or [], r[f"{p}_deg"] or []))
                rng.shuffle(z)
                s[f"{p}_rel"], s[f"{p}_nbr"], s[f"{p}_deg"] = (list(x) for x in zip(*z)) if z else ([], [], [])
            a = list(zip(r["attr_key"] or [], r["attr_val"] or []))
            rng.shuffle(a)
            s["attr_key"], s["attr_val"] = (list(x) for x in zip(*a)) if a else ([], [])
            assert verbalize_row(s, cfg) == want


def test_include_relations_false(contexts):
    rows = rows_by_id(contexts)
    cfg = VerbalizeConfig(include_relations=False)
    text = verbalize_row(rows[1], cfg)
    assert text == "Paris. France. Alice. Bob. population total: 2000000"
    for r in contexts.to_pylist():
        t = verbalize_row(r, cfg)
        assert "birth place" not in t and "country" not in t and "spouse" not in t


def test_incoming_attributes_and_neighbour_limit(contexts):
    rows = rows_by_id(contexts)
    assert verbalize_row(rows[1], VerbalizeConfig(include_incoming=False)) == "Paris. country: France. population total: 2000000"
    assert verbalize_row(rows[1], VerbalizeConfig(include_attributes=False)) == "Paris. country: France. birth place of: Alice, Bob"
    # highest degree first, then relation, then name: Alice before Bob
    assert verbalize_row(rows[1], VerbalizeConfig(max_neighbors=1)) == "Paris. country: France. birth place of: Alice. population total: 2000000"


def test_verbalize_table(contexts):
    t = verbalize_table(contexts, VerbalizeConfig())
    assert t.schema == TEXTS
    assert t["id"].to_pylist() == contexts["id"].to_pylist()
    assert t["name"].to_pylist() == contexts["name"].to_pylist()
    stats = word_count_stats(t["text"].to_pylist())
    assert stats["max_words"] == 11 and stats["mean_words"] > 1


def test_synthetic_texts_within_budget(synthetic_texts, synthetic_pair):
    assert synthetic_texts.num_rows == synthetic_pair.entities.num_rows
    assert sorted(synthetic_texts["id"].to_pylist()) == sorted(synthetic_pair.entities["id"].to_pylist())
    texts = synthetic_texts["text"].to_pylist()
    assert max(len(t.split()) for t in texts) <= VerbalizeConfig().max_words
    assert sum(t != n for t, n in zip(texts, synthetic_texts["name"].to_pylist())) > 0.9 * len(texts)
