"""The alignment's Ray-free pieces (``core.export``): input identifiers as IRIs, links rows in the
input's identifiers, N-Triples, and the confidence threshold a target precision needs."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from hiea_ray.core.export import WIKIDATA, Calibration, calibrate_out_of_fold, iri, links_table, ntriples
from hiea_ray.core.metrics import precision_threshold


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


def test_a_calibrated_score_is_the_rate_of_right_answers_at_that_score():
    """A decoder whose answer is right with probability sigmoid(8 (s - 0.5)) at score s: the
    isotonic map learns that curve (monotone, within sampling noise), survives JSON, sends a missing
    answer (NaN) to 0, and its out-of-fold scores pick a threshold whose precision on fresh sources
    meets the target."""
    rng = np.random.default_rng(0)

    def draw(n):
        s = rng.uniform(0, 1, n)
        return s, rng.uniform(0, 1, n) < 1 / (1 + np.exp(-8 * (s - 0.5)))

    s, right = draw(20000)
    cal, oof = calibrate_out_of_fold(s, right, folds=5, seed=0)
    grid = np.linspace(0.05, 0.95, 19)
    got = cal(grid)
    assert np.all(np.diff(got) >= 0)  # monotone in the score
    assert np.abs(got - 1 / (1 + np.exp(-8 * (grid - 0.5)))).max() < 0.06
    back = Calibration.from_json(cal.to_json())
    assert np.array_equal(back(s), cal(s))
    assert cal(np.array([np.nan]))[0] == 0.0
    assert not np.array_equal(oof, cal(s))  # out of fold: each source scored by a fit without it
    t, est = precision_threshold(oof, right, 0.95)
    fresh, fresh_right = draw(20000)
    kept = cal(fresh) >= t
    assert est >= 0.95 and abs(fresh_right[kept].mean() - est) < 0.02
    # one class only, or one score only: a constant map, never an error
    assert np.all(Calibration.fit(s, np.ones(len(s), bool))(grid) == 1.0)
    assert np.all(Calibration.fit(np.full(10, 0.3), np.arange(10) < 4)(grid) == np.float32(0.4))


def test_the_share_of_sources_with_a_counterpart_is_recovered_by_em_and_the_expected_precision_cut_meets_it():
    """core.export.matchable_prior: a classifier trained at a 50 / 50 share, applied where the true
    share is 0.9 ... 0.02, gives back that share (Saerens et al.'s EM); expected_precision_threshold
    keeps the most links whose mean confidence reaches the target."""
    from hiea_ray.core.export import expected_precision_threshold, matchable_prior

    rng = np.random.default_rng(0)
    for true in (0.9, 0.5, 0.1, 0.02):
        n = 40000
        y = rng.random(n) < true
        z = np.where(y, rng.normal(1.5, 1, n), rng.normal(-1.5, 1, n))
        p = 1 / (1 + np.exp(-3 * z))  # the exact posterior at a 0.5 prior for these two classes
        post, share, _ = matchable_prior(p, 0.5)
        assert abs(share - true) < 0.01, (true, share)
        assert abs(post.mean() - share) < 1e-4
        naive = p.mean()
        if true < 0.2:
            assert naive > share + 0.02  # without the EM the share is overestimated
    conf = rng.random(5000)
    t, est = expected_precision_threshold(conf, 0.9)
    kept = conf[conf >= t]
    assert est >= 0.9 and abs(kept.mean() - est) < 1e-9
    assert conf[conf >= np.sort(conf)[::-1][len(kept)]].mean() < 0.9  # one more link would miss it
    assert expected_precision_threshold(np.full(10, 0.5), 0.9) == (float("inf"), None)
