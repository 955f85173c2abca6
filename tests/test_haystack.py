"""The haystack generator (hiea_ray.kg.haystack): real pair kept, distractors confusable and dangling; Ray-free."""

from __future__ import annotations

import json

import numpy as np

from hiea_ray.config import DataConfig
from hiea_ray.kg.haystack import make_haystack, name_pools, pool_files
from hiea_ray.kg.readers import read_pair
from test_readers import _write, make_dbp15k


def _pair_with_names(d):
    make_dbp15k(d)
    _write(d, "ent_names_translated_1", [(0, "beijing"), (1, "shanghai"), (2, "china"), (3, "yao ming"), (4, "li na"), (5, "wuhan")])
    _write(d, "ent_names_translated_2", [(100, "peking"), (101, "shanghai"), (102, "people's republic of china"),
                                         (103, "yao ming"), (104, "li na"), (105, "wuhan")])
    return d


def _pools(tmp_path):
    p = tmp_path / "pools" / "other"
    _write(p, "ent_names_translated_1", [(i, f"tok{i} word{i % 7} end{i % 3}") for i in range(50)])
    _write(p, "ent_names_translated_2", [(i, f"name{i} part{i % 5}") for i in range(60)])
    _write(p, "ent_ids_2", [(i, f"http://dbpedia.org/resource/Thing_{i}_(film)") for i in range(40)]
           + [(i + 40, f"http://dbpedia.org/resource/Band_{i}_(band)") for i in range(5)])
    return pool_files(tmp_path / "pools")


def test_pools_take_each_sides_style_and_real_qualifiers(tmp_path):
    kg1, kg2, quals = name_pools(_pools(tmp_path))
    assert len(kg1) == 50 and all(n.startswith("tok") for n in kg1)
    assert "name3 part3" in kg2 and "thing 7" in kg2  # translated KG2 names and English URI names
    assert quals[0] == "film" and "band" in quals  # disambiguators seen at least 3 times


def test_haystack_keeps_the_pair_and_adds_dangling_distractors(tmp_path):
    pair = _pair_with_names(tmp_path / "pair")
    files = _pools(tmp_path)
    desc = make_haystack(pair, tmp_path / "hs", 40, files, seed=3, homonym_share=0.5)
    out = tmp_path / "hs"
    for f in ("rel_ids_1", "rel_ids_2", "sup_pairs", "ref_pairs"):
        assert (out / f).read_bytes() == (pair / f).read_bytes()
    for kg in (1, 2):
        real = (pair / f"triples_{kg}").read_text()
        assert (out / f"triples_{kg}").read_text().startswith(real)  # every real triple kept
        assert (out / f"ent_ids_{kg}").read_text().startswith((pair / f"ent_ids_{kg}").read_text())
        side = desc["sides"][f"kg{kg}"]
        assert side["distractors"] == 40 and side["near_homonyms"] == 20
        assert side["distractor_triples"] >= 40 and side["distractor_triples_touching_real"] > 0
    d1 = np.loadtxt(out / "distractors_1", dtype=np.int64)
    d2 = np.loadtxt(out / "distractors_2", dtype=np.int64)
    assert len(set(d1) | set(d2)) == 80 and min(d1) > 105  # fresh ids after the real ones
    names1 = dict(line.split("\t") for line in (out / "ent_names_translated_1").read_text().splitlines())
    real1 = {"beijing", "shanghai", "china", "yao ming", "li na", "wuhan"}
    homonyms = [names1[str(i)] for i in d1 if any(r in names1[str(i)] and names1[str(i)] != r for r in real1)]
    assert len(homonyms) >= 10  # a real name plus a qualifier / with one token changed
    # the pipeline's reader takes it unchanged; the distractors have no links
    p = read_pair(out, DataConfig())
    assert p.report["entities"] == {"kg1": 46, "kg2": 46}
    assert p.links.num_rows == 6
    assert json.loads((out / "haystack.json").read_text())["seed"] == 3


def test_haystack_is_deterministic_by_seed(tmp_path):
    pair = _pair_with_names(tmp_path / "pair")
    files = _pools(tmp_path)
    make_haystack(pair, tmp_path / "a", 30, files, seed=1)
    make_haystack(pair, tmp_path / "b", 30, files, seed=1)
    make_haystack(pair, tmp_path / "c", 30, files, seed=2)
    for f in ("ent_names_translated_1", "ent_names_translated_2", "triples_1", "triples_2"):
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes()
    assert (tmp_path / "a" / "ent_names_translated_1").read_bytes() != (tmp_path / "c" / "ent_names_translated_1").read_bytes()
