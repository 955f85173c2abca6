"""Pseudo-seeds of collaboration rounds (``hiea_ray.core.collab``), without Ray."""

import numpy as np

from hiea_ray.core.collab import mutual_best, select


def test_mutual_best_keeps_a_source_only_when_its_top_target_ranks_it_first():
    q = np.array([10, 11, 12])
    cand = np.array([[100, 101], [100, 102], [103, -1]])
    score = np.array([[0.9, 0.1], [0.8, 0.7], [0.5, -np.inf]])
    # 10 -> 100 and 100's best source is 10 (0.9 > 0.8); 11 -> 100 but 100 prefers 10; 12 -> 103 alone
    assert mutual_best(q, cand, score).tolist() == [100, -1, 103]
    # a tie goes to the lowest row
    assert mutual_best(q[:2], np.array([[100], [100]]), np.array([[0.5], [0.5]])).tolist() == [100, -1]


def test_pseudo_seeds_are_one_to_one_most_confident_first_never_a_seed_and_capped():
    src = np.array([1, 2, 3, 4, 5, 6])
    ans = np.array([10, 10, 30, 40, 50, -1])
    conf = np.array([0.6, 0.9, 0.8, 0.99, 0.7, 0.95])
    keep = np.array([True, True, True, True, False, True])
    s, t, c = select(src, ans, conf, keep, seed_src=np.array([4]), seed_tgt=np.array([30]), cap=None)
    # 4 is a seed source, 3's answer a seed target, 5 not kept, 6 has no answer; 10 goes to 2 (0.9 > 0.6)
    assert s.tolist() == [2] and t.tolist() == [10] and c.tolist() == [0.9]
    s, t, _ = select(src, np.array([10, 20, 30, 40, 50, 60]), conf, np.ones(6, bool), np.array([], np.int64),
                     np.array([], np.int64), cap=3)
    assert s.tolist() == [2, 4, 6] and t.tolist() == [20, 40, 60]  # the 3 most confident, sorted by source
    assert len(set(s.tolist())) == len(s) and len(set(t.tolist())) == len(t)


def test_pseudo_seeds_come_from_the_all_targets_decode_never_from_the_standard_protocol(tmp_path):
    """The standard protocol ranks test sources against the gold test targets only: its answers
    carry test knowledge. With standard listed first, the pseudo-seeds are still all-targets'."""
    import pyarrow as pa

    from hiea_ray.collab import pseudo_seeds
    from hiea_ray.config import load_config
    from hiea_ray.io import write_lists
    from hiea_ray.kg.model import ATTR_TRIPLES, ENTITIES, LINKS, REL_TRIPLES, KGPair

    ents = pa.table({"id": [1, 2, 3, 11, 12, 13], "kg": [1, 1, 1, 2, 2, 2], "uri": list("abcdef"), "name": list("abcdef")},
                    schema=ENTITIES)
    links = pa.table({"src": [1, 2, 3], "tgt": [11, 12, 13], "split": ["train", "test", "test"]}, schema=LINKS)
    KGPair(entities=ents, rel_triples=REL_TRIPLES.empty_table(), attr_triples=ATTR_TRIPLES.empty_table(),
           links=links, report={}).write(tmp_path / "ingest")
    for protocol, (a, b) in {"standard": ([12, 13], [13, 12]), "all-targets": ([11, 13, 12], [11, 12, 13])}.items():
        d = tmp_path / "decode" / protocol
        d.mkdir(parents=True)
        q = np.array([2, 3]) if protocol == "standard" else np.array([1, 2, 3])
        cand = np.array([[x, y] for x, y in zip(a, b)]) if protocol == "standard" else np.array([[11, 12], [13, 12], [12, 13]])
        write_lists(d / "structure.parquet", q, cand, np.tile([0.9, 0.1], (len(q), 1)))
    cfg = load_config(overrides=["decode.decoders=[top1,structure]", "collab.rounds=2", "collab.pseudo_seeds=mutual",
                                 "evaluate.protocols=[standard,all-targets]"])
    table, report = pseudo_seeds(cfg, tmp_path)
    # all-targets: 2 -> 13 and 3 -> 12 are mutual best (1 is a seed); standard would have said 2 -> 12, 3 -> 13
    assert report["protocol"] == "all-targets"
    assert dict(zip(table["src"].to_pylist(), table["tgt"].to_pylist())) == {2: 13, 3: 12}


def test_collaboration_rounds_refuse_a_run_without_the_all_targets_protocol():
    import pytest

    from hiea_ray.config import load_config
    from hiea_ray.errors import UserError

    with pytest.raises(UserError, match="all-targets"):
        load_config(overrides=["collab.rounds=2", "collab.pseudo_seeds=mutual", "evaluate.protocols=[standard]"])
