"""The alignment's Ray-free pieces (``core.export``): input identifiers as IRIs, links rows in the
input's identifiers, N-Triples, and the confidence threshold a target precision needs."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from hiea_ray.core.export import WIKIDATA, iri, links_table, ntriples, precision_threshold


def test_identifiers_become_iris():
    assert iri("Q42") == WIKIDATA + "Q42" and iri("P31") == WIKIDATA + "P31"
    assert iri("http://dbpedia.org/resource/Paris") == "http://dbpedia.org/resource/Paris"
    assert iri('http://x.org/a b<c>"d') == "http://x.org/a%20b%3Cc%3E%22d"  # forbidden in N-Triples IRIs
    assert iri("plain name") == "urn:hiea-ray:plain%20name"


def test_links_are_in_the_inputs_identifiers_and_parse_as_ntriples():
    rdflib = pytest.importorskip("rdflib")
    ents = pa.table({"id": [5, 1, 9, 3], "uri": ["Q1", "http://b.org/x y", "Q2", "http://b.org/z"],
                     "name": ["a", "b", "c", "d"]})
    t = links_table(np.array([5, 9]), np.array([1, 3]), np.array([0.9, 0.4]), np.array([0.8, 0.3]),
                    np.array(["small", "llm"], object), np.array([0.5, 0.1]), "hiea", ents)
    assert t["kg1_id"].to_pylist() == ["Q1", "Q2"] and t["kg2_id"].to_pylist() == ["http://b.org/x y", "http://b.org/z"]
    assert t["kg2_name"].to_pylist() == ["b", "d"] and t["tier"].to_pylist() == ["small", "llm"]
    g = rdflib.Graph().parse(data=ntriples(t), format="nt")
    assert {(str(s), str(o)) for s, _, o in g} == {(WIKIDATA + "Q1", "http://b.org/x%20y"), (WIKIDATA + "Q2", "http://b.org/z")}
    with pytest.raises(ValueError, match="not an entity"):
        links_table(np.array([7]), np.array([1]), np.ones(1), np.ones(1), np.array(["small"], object), np.ones(1), "x", ents)


def test_the_threshold_keeps_the_most_links_at_the_target_precision():
    prob = np.array([0.99, 0.95, 0.9, 0.9, 0.8, 0.7, 0.6])
    right = np.array([1, 1, 1, 0, 1, 0, 0], bool)
    # cumulative precision by rank: 1, 1, 1, .75, .8, .667, .571; 0.9 is tied, so the cut after the
    # third source is not a real threshold: keeping prob >= 0.9 keeps 4 at 0.75
    assert precision_threshold(prob, right, 0.8) == (0.8, 0.8)
    assert precision_threshold(prob, right, 0.95) == (0.95, 1.0)
    t, est = precision_threshold(prob, right, 0.75)
    assert (t, est) == (0.8, 0.8)  # 0.8 keeps more links (5) than 0.9 (4) at >= 0.75
    assert precision_threshold(prob, np.zeros(7, bool), 0.5) == (float("inf"), None)
