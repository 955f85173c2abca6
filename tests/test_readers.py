"""Readers: DBP15K / SRPRS / OpenEA fixtures written by hand, splits, names, errors, the id leak."""

from __future__ import annotations

import random
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pytest

from hiea_ray.config import DataConfig
from hiea_ray.errors import UserError
from hiea_ray.kg.readers import detect_format, read_pair, uri_name

ZH = "http://zh.dbpedia.org/resource/"
EN = "http://dbpedia.org/resource/"

# KG1 (ids 0..5) and KG2 (ids 100..105); links i <-> 100 + i; 0..2 train (sup), 3..5 test (ref).
KG1 = {0: "%E5%8C%97%E4%BA%AC", 1: "上海", 2: "中国", 3: "姚明", 4: "李娜", 5: "武汉"}
KG2 = {100: "Peking", 101: "Shanghai", 102: "People's_Republic_of_China", 103: "Yao_Ming", 104: "Li_Na", 105: "Wuhan"}


def _write(folder: Path, name: str, rows) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text("".join("\t".join(map(str, r)) + "\n" for r in rows), encoding="utf-8")


def _id_release_common(d: Path) -> None:
    _write(d, "ent_ids_1", [(i, ZH + u) for i, u in KG1.items()])
    _write(d, "ent_ids_2", [(i, EN + u) for i, u in KG2.items()])
    _write(d, "rel_ids_1", [(0, "http://zh.dbpedia.org/property/country"), (1, "http://zh.dbpedia.org/property/birthPlace")])
    _write(d, "rel_ids_2", [(2, "http://dbpedia.org/ontology/country"), (3, "http://dbpedia.org/ontology/birthPlace")])
    _write(d, "triples_1", [(0, 0, 2), (1, 0, 2), (3, 1, 1), (4, 1, 5), (5, 0, 2)])
    _write(d, "triples_2", [(100, 2, 102), (101, 2, 102), (103, 3, 101), (104, 3, 105)])


def make_dbp15k(d: Path) -> Path:
    _id_release_common(d)
    _write(d, "sup_pairs", [(i, 100 + i) for i in range(3)])
    _write(d, "ref_pairs", [(i, 100 + i) for i in range(3, 6)])
    # entity 2 has an empty translated name: it keeps its URI name
    _write(d, "ent_names_translated_1", [(0, "Beijing"), (1, "Shanghai"), (2, ""), (3, "Yao Ming"), (4, "Li Na"), (5, "Wuhan")])
    _write(d, "ent_names_translated_2", [(100, "Peking City")])
    return d


def make_srprs(d: Path) -> Path:
    _id_release_common(d)
    _write(d, "sup_ent_ids", [(i, 100 + i) for i in range(3)])
    _write(d, "ref_ent_ids", [(i, 100 + i) for i in range(6)])  # all links, the sup ones included
    (d / "training_attrs_1").write_text(
        f"{ZH}{KG1[0]}\thttp://zh.dbpedia.org/property/population\thttp://zh.dbpedia.org/property/areaTotal\n"
        f"{ZH}{KG1[3]}\thttp://zh.dbpedia.org/property/height\n",
        encoding="utf-8",
    )
    (d / "training_attrs_2").write_text(f"{EN}{KG2[103]}\thttp://dbpedia.org/ontology/height\n", encoding="utf-8")
    return d


def make_big_dbp15k(d: Path, n: int = 300, aligned: int = 250, train: int = 75, offset: int = 300) -> Path:
    """DBP15K-style release like the real one: KG1 ids 0..n-1, KG2 ids offset.., link (i, i + offset)."""
    _write(d, "ent_ids_1", [(i, f"{ZH}E{i}") for i in range(n)])
    _write(d, "ent_ids_2", [(i + offset, f"{EN}F{i}") for i in range(n)])
    _write(d, "rel_ids_1", [(0, "http://zh.dbpedia.org/property/next")])
    _write(d, "rel_ids_2", [(1, "http://dbpedia.org/property/next")])
    _write(d, "triples_1", [(i, 0, (i + 1) % n) for i in range(n)])
    _write(d, "triples_2", [(i + offset, 1, (i + 1) % n + offset) for i in range(n)])
    _write(d, "sup_pairs", [(i, i + offset) for i in range(train)])
    _write(d, "ref_pairs", [(i, i + offset) for i in range(train, aligned)])
    return d


def uri_links(pair, split: str) -> set[tuple[str, str]]:
    uri = dict(zip(pair.entities["id"].to_pylist(), pair.entities["uri"].to_pylist()))
    t = pair.links_of(split)
    return {(uri[s], uri[g]) for s, g in zip(t["src"].to_pylist(), t["tgt"].to_pylist())}


def names_by_uri(pair) -> dict[str, str]:
    return dict(zip(pair.entities["uri"].to_pylist(), pair.entities["name"].to_pylist()))


# -- formats ------------------------------------------------------------------------------------


def test_uri_name():
    assert uri_name(ZH + "%E5%8C%97%E4%BA%AC") == "北京"
    assert uri_name("http://dbpedia.org/resource/Yao_Ming") == "Yao Ming"
    assert uri_name("http://x.org/onto#birthPlace") == "birthPlace"
    assert uri_name("http://x.org/a/b/") == "b"


def test_detect_format(tmp_path, synthetic_dir):
    assert detect_format(make_dbp15k(tmp_path / "d")) == "dbp15k"
    assert detect_format(make_srprs(tmp_path / "s")) == "srprs"
    assert detect_format(synthetic_dir) == "openea"
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="cannot tell the format"):
        detect_format(tmp_path / "empty")
    with pytest.raises(UserError, match="not found"):
        detect_format(tmp_path / "missing")


def test_dbp15k_counts_splits_and_tables(tmp_path):
    d = make_dbp15k(tmp_path / "d")
    pair = read_pair(d)
    r = pair.report
    assert r["format"] == "dbp15k"
    assert r["entities"] == {"kg1": 6, "kg2": 6}
    assert r["rel_triples"] == {"kg1": 5, "kg2": 4}
    assert r["attr_triples"] == {"kg1": 0, "kg2": 0}
    assert r["links"] == {"test": 3, "train": 3}  # round(0.1 * 3) = 0 valid links
    assert r["skipped_lines"] == {}
    assert pair.entities.num_rows == 12 and pair.attr_triples.num_rows == 0
    ids = pair.entities["id"].to_numpy()
    assert sorted(ids.tolist()) == list(range(12))  # dense ids over both KGs
    assert uri_links(pair, "train") == {(ZH + KG1[i], EN + KG2[100 + i]) for i in range(3)}
    assert uri_links(pair, "test") == {(ZH + KG1[i], EN + KG2[100 + i]) for i in range(3, 6)}
    # triples keep their endpoints and relation URIs through the id change
    uri = dict(zip(ids.tolist(), pair.entities["uri"].to_pylist()))
    kg = dict(zip(ids.tolist(), pair.entities["kg"].to_pylist()))
    t = pair.rel_triples.to_pylist()
    assert {(uri[x["head"]], x["relation"], uri[x["tail"]]) for x in t if x["kg"] == 1} >= {
        (ZH + KG1[3], "http://zh.dbpedia.org/property/birthPlace", ZH + KG1[1])
    }
    assert all(kg[x["head"]] == x["kg"] == kg[x["tail"]] for x in t)
    links = pair.links.to_pylist()
    assert all(kg[x["src"]] == 1 and kg[x["tgt"]] == 2 for x in links)


def test_dbp15k_names_translated_and_uri(tmp_path):
    d = make_dbp15k(tmp_path / "d")
    names = names_by_uri(read_pair(d))
    assert names[ZH + KG1[0]] == "Beijing"
    assert names[ZH + KG1[3]] == "Yao Ming"
    assert names[ZH + KG1[2]] == "中国"  # empty translation -> URI name
    assert names[EN + KG2[100]] == "Peking City"
    assert names[EN + KG2[102]] == "People's Republic of China"  # no translation -> URI name
    names = names_by_uri(read_pair(d, DataConfig(names="uri")))
    assert names[ZH + KG1[0]] == "北京"
    assert names[ZH + KG1[3]] == "姚明"
    assert names[EN + KG2[100]] == "Peking"


def test_srprs_links_and_attributes(tmp_path):
    d = make_srprs(tmp_path / "s")
    pair = read_pair(d)
    r = pair.report
    assert r["format"] == "srprs"
    # ref_ent_ids repeats the sup links: they stay train, the rest is test
    assert r["links"] == {"test": 3, "train": 3}
    assert uri_links(pair, "train") == {(ZH + KG1[i], EN + KG2[100 + i]) for i in range(3)}
    assert uri_links(pair, "test") == {(ZH + KG1[i], EN + KG2[100 + i]) for i in range(3, 6)}
    assert r["attr_triples"] == {"kg1": 3, "kg2": 1}
    uri = dict(zip(pair.entities["id"].to_pylist(), pair.entities["uri"].to_pylist()))
    attrs = {(uri[a["entity"]], a["attribute"], a["value"], a["kg"]) for a in pair.attr_triples.to_pylist()}
    assert attrs == {
        (ZH + KG1[0], "http://zh.dbpedia.org/property/population", "", 1),
        (ZH + KG1[0], "http://zh.dbpedia.org/property/areaTotal", "", 1),
        (ZH + KG1[3], "http://zh.dbpedia.org/property/height", "", 1),
        (EN + KG2[103], "http://dbpedia.org/ontology/height", "", 2),
    }


def _read_links_file(path: Path) -> set[tuple[str, str]]:
    return {tuple(line.split("\t")) for line in path.read_text().splitlines() if line}


def test_openea_synthetic(synthetic_dir, synthetic_pair):
    pair = synthetic_pair
    r = pair.report
    assert r["format"] == "openea"
    fold = synthetic_dir / "721_5fold" / "1"
    for split in ("train", "valid", "test"):  # the release's own splits, nothing carved
        assert uri_links(pair, split) == _read_links_file(fold / f"{split}_links")
    assert r["links"] == {s: len(_read_links_file(fold / f"{s}_links")) for s in ("test", "train", "valid")}
    for kg in (1, 2):
        rel_lines = (synthetic_dir / f"rel_triples_{kg}").read_text().splitlines()
        attr_lines = (synthetic_dir / f"attr_triples_{kg}").read_text().splitlines()
        assert r["rel_triples"][f"kg{kg}"] == len(rel_lines)
        assert r["attr_triples"][f"kg{kg}"] == len(attr_lines)
        ents = {x.split("\t")[0] for x in rel_lines} | {x.split("\t")[2] for x in rel_lines}
        ents |= {x.split("\t")[0] for x in attr_lines}
        assert r["entities"][f"kg{kg}"] == len(ents)
    names = names_by_uri(pair)
    some = next(iter(_read_links_file(fold / "test_links")))[1]
    assert names[some] == uri_name(some)
    # attribute values survive (OpenEA has values, unlike SRPRS)
    assert all(v for v in pair.attr_triples["value"].to_pylist())


def test_openea_counts_match_generator(tmp_path):
    from hiea_ray.kg.synthetic import generate

    counts = generate(tmp_path / "g", n_entities=200, seed=3)
    r = read_pair(tmp_path / "g").report
    assert r["entities"] == {"kg1": counts["kg1"]["entities"], "kg2": counts["kg2"]["entities"]}
    assert r["rel_triples"] == {"kg1": counts["kg1"]["rel_triples"], "kg2": counts["kg2"]["rel_triples"]}
    assert r["links"] == dict(sorted(counts["links"].items()))


# -- splits -------------------------------------------------------------------------------------


def test_valid_split_carved_from_train_deterministically(tmp_path):
    d = make_big_dbp15k(tmp_path / "b")
    expected_train = {(f"{ZH}E{i}", f"{EN}F{i}") for i in range(75)}
    expected_test = {(f"{ZH}E{i}", f"{EN}F{i}") for i in range(75, 250)}
    a = read_pair(d, DataConfig(seed=0, valid_fraction=0.1))
    assert a.report["links"] == {"test": 175, "train": 67, "valid": 8}
    assert uri_links(a, "test") == expected_test  # test untouched
    assert uri_links(a, "train") | uri_links(a, "valid") == expected_train
    assert not uri_links(a, "train") & uri_links(a, "valid")
    b = read_pair(d, DataConfig(seed=0, valid_fraction=0.1))
    assert uri_links(b, "valid") == uri_links(a, "valid")
    assert a.entities.equals(b.entities) and a.links.equals(b.links)
    c = read_pair(d, DataConfig(seed=1, valid_fraction=0.1))
    assert uri_links(c, "valid") != uri_links(a, "valid")
    assert uri_links(c, "test") == expected_test
    # independent of the order of the lines of the link file
    lines = (d / "sup_pairs").read_text().splitlines(keepends=True)
    random.Random(5).shuffle(lines)
    (d / "sup_pairs").write_text("".join(lines))
    assert uri_links(read_pair(d, DataConfig(seed=0)), "valid") == uri_links(a, "valid")
    none = read_pair(d, DataConfig(valid_fraction=0.0))
    assert none.report["links"] == {"test": 175, "train": 75}


# -- the id leak --------------------------------------------------------------------------------


def _offset_predictor(train_src, train_tgt, test_src):
    """tgt = src + the constant offset that is right most often on the train links."""
    off = Counter((train_tgt - train_src).tolist()).most_common(1)[0][0]
    return test_src + off


def _rank_predictor(test_src, candidates):
    """The i-th smallest test source -> the i-th smallest candidate target."""
    s = np.sort(test_src)
    c = np.sort(candidates)[: len(s)]
    return dict(zip(s.tolist(), c.tolist()))


def test_no_id_leak(tmp_path):
    """Ids after read_pair carry no information about links (the real DBP15K release's ids do)."""
    offset = 300
    d = make_big_dbp15k(tmp_path / "leak", offset=offset)
    # raw file ids: both predictors are perfect (that is the leak of the release)
    raw_train = np.array([list(map(int, x.split())) for x in (d / "sup_pairs").read_text().splitlines()])
    raw_test = np.array([list(map(int, x.split())) for x in (d / "ref_pairs").read_text().splitlines()])
    raw_kg2 = np.array([int(x.split()[0]) for x in (d / "ent_ids_2").read_text().splitlines()])
    pred = _offset_predictor(raw_train[:, 0], raw_train[:, 1], raw_test[:, 0])
    assert np.mean(pred == raw_test[:, 1]) == 1.0
    rank = _rank_predictor(raw_test[:, 0], raw_test[:, 1])
    assert np.mean([rank[s] == t for s, t in raw_test]) == 1.0
    rank_all = _rank_predictor(np.arange(300), raw_kg2)
    assert np.mean([rank_all[s] == t for s, t in raw_test]) == 1.0

    pair = read_pair(d)
    train, test = pair.links_of("train"), pair.links_of("test")
    ts, tt = test["src"].to_numpy(), test["tgt"].to_numpy()
    assert len(ts) == 175
    # (a) best constant offset learnt on the train links
    pred = _offset_predictor(train["src"].to_numpy(), train["tgt"].to_numpy(), ts)
    assert np.mean(pred == tt) < 0.05
    # (b) rank order: sorted test sources vs sorted test targets (standard protocol) ...
    rank = _rank_predictor(ts, tt)
    assert np.mean([rank[s] == t for s, t in zip(ts, tt)]) < 0.05
    # ... and vs sorted KG2 ids (all-targets protocol)
    ents = pair.entities
    kg = ents["kg"].to_numpy()
    ids = ents["id"].to_numpy()
    rank_all = _rank_predictor(ids[kg == 1], ids[kg == 2])
    assert np.mean([rank_all[s] == t for s, t in zip(ts, tt)]) < 0.05
    # (c) row order of the normalized tables: i-th KG1 row of the entities table -> i-th KG2 row
    row1 = {x: i for i, x in enumerate(ids[kg == 1].tolist())}
    kg2_rows = ids[kg == 2]
    pred = np.array([kg2_rows[row1[s]] for s in ts.tolist()])
    assert np.mean(pred == tt) < 0.05
    # (d) row order of the triples: i-th distinct KG1 head in table order -> i-th distinct KG2 head
    tr = pair.rel_triples
    heads = {k: list(dict.fromkeys(tr.filter(pc.equal(tr["kg"], k))["head"].to_pylist())) for k in (1, 2)}
    row1 = {x: i for i, x in enumerate(heads[1])}
    pred = np.array([heads[2][row1[s]] for s in ts.tolist()])
    assert np.mean(pred == tt) < 0.05
    # (e) row order of the links table: test links are not in source or target order
    assert not (np.all(np.diff(ts) > 0) or np.all(np.diff(tt) > 0))


# -- bad input ----------------------------------------------------------------------------------


def _replace_line(path: Path, lineno: int, text: str) -> None:
    lines = path.read_text(encoding="utf-8").split("\n")
    lines[lineno - 1] = text
    path.write_text("\n".join(lines), encoding="utf-8")


@pytest.mark.parametrize(
    "fname, lineno, text, words",
    [
        ("triples_1", 2, "1\t0", ["expected 3"]),  # malformed: 2 fields
        ("ent_ids_2", 3, "102\thttp://x\textra", ["expected 2"]),
        ("triples_2", 3, "999\t3\t101", ["999", "ent_ids_2"]),  # unknown entity id
        ("triples_1", 1, "100\t0\t2", ["100", "ent_ids_1"]),  # a KG2 entity in KG1's triples
        ("triples_1", 4, "4\t77\t5", ["relation id 77"]),
        ("ref_pairs", 2, "4\t999", ["999", "ent_ids_2"]),  # unknown link id
        ("sup_pairs", 1, "100\t0", ["100", "ent_ids_1"]),  # swapped link sides
        ("sup_pairs", 3, "1\t101", ["appears twice"]),  # duplicate link
        ("ent_ids_1", 4, "0\thttp://dup", ["appears twice"]),
        ("ent_names_translated_1", 2, "55\tNobody", ["55"]),
    ],
)
def test_bad_line_names_file_and_line(tmp_path, fname, lineno, text, words):
    d = make_dbp15k(tmp_path / "d")
    _replace_line(d / fname, lineno, text)
    with pytest.raises(UserError) as e:
        read_pair(d)
    msg = str(e.value)
    assert f"{fname}:{lineno}:" in msg
    for w in words:
        assert w in msg
    assert "skip_bad_lines" in msg


def test_line_numbers_count_blank_lines(tmp_path):
    d = make_dbp15k(tmp_path / "d")
    text = (d / "triples_2").read_text().splitlines()
    (d / "triples_2").write_text("\n".join(text[:2] + ["", "", "bad line"] + text[2:]) + "\n")
    with pytest.raises(UserError, match=r"triples_2:5: expected 3 tab-separated fields, found 1"):
        read_pair(d)


def test_crlf_and_trailing_blank_lines_are_fine(tmp_path):
    d = make_dbp15k(tmp_path / "d")
    for f in ("ent_ids_1", "ref_pairs"):
        p = d / f
        p.write_text(p.read_text().replace("\n", "\r\n") + "\r\n\n", encoding="utf-8")
    pair = read_pair(d)
    assert pair.report["links"]["test"] == 3
    assert all("\r" not in u for u in pair.entities["uri"].to_pylist())


def test_skip_bad_lines_counts_them(tmp_path):
    d = make_dbp15k(tmp_path / "d")
    _replace_line(d / "triples_1", 2, "1\t0")
    _replace_line(d / "triples_2", 3, "999\t3\t101")
    _replace_line(d / "ref_pairs", 2, "4\t999")
    with pytest.raises(UserError):
        read_pair(d)
    pair = read_pair(d, DataConfig(skip_bad_lines=True))
    r = pair.report
    assert r["skipped_lines"] == {"ref_pairs": 1, "triples_1": 1, "triples_2": 1}
    assert r["rel_triples"] == {"kg1": 4, "kg2": 3}
    assert r["links"] == {"test": 2, "train": 3}
    assert (ZH + KG1[4], EN + KG2[104]) not in uri_links(pair, "test")


@pytest.mark.parametrize("fname", ["ent_ids_1", "rel_ids_2", "triples_2", "sup_pairs", "ref_pairs"])
def test_missing_required_file(tmp_path, fname):
    d = make_dbp15k(tmp_path / "d")
    (d / fname).unlink()
    with pytest.raises(UserError) as e:
        read_pair(d, DataConfig(format="dbp15k"))
    assert fname in str(e.value) and "missing" in str(e.value)


def test_translated_names_are_optional(tmp_path):
    d = make_dbp15k(tmp_path / "d")
    (d / "ent_names_translated_1").unlink()
    assert names_by_uri(read_pair(d))[ZH + KG1[0]] == "北京"


def test_missing_folder(tmp_path):
    with pytest.raises(UserError, match="not found"):
        read_pair(tmp_path / "nope")
    with pytest.raises(UserError, match="ent_ids_1"):
        read_pair(tmp_path / "nope", DataConfig(format="dbp15k"))


def test_non_utf8_file(tmp_path):
    d = make_dbp15k(tmp_path / "d")
    (d / "rel_ids_1").write_bytes(b"0\thttp://x/\xff\xfe\n")
    with pytest.raises(UserError, match="rel_ids_1.*UTF-8"):
        read_pair(d)


def test_openea_bad_link_and_missing_fold(tmp_path, synthetic_dir):
    d = tmp_path / "o"
    shutil.copytree(synthetic_dir, d)
    with pytest.raises(UserError, match="split folder missing"):
        read_pair(d, DataConfig(openea_fold=4))
    _replace_line(d / "721_5fold" / "1" / "test_links", 3, "http://nowhere/a\thttp://kg2.example.org/wiki/X")
    with pytest.raises(UserError, match=r"test_links:3: link entity 'http://nowhere/a'"):
        read_pair(d)
    pair = read_pair(d, DataConfig(skip_bad_lines=True))
    assert pair.report["skipped_lines"] == {"test_links": 1}


def test_a_label_free_pair_reads_without_test_links(synthetic_dir, tmp_path):
    """data.test_links: none — an empty (or absent) test links file is a label-free pair, and test
    links that are there are not read; by default an empty test file stays a clear error."""
    import shutil

    from hiea_ray.config import DataConfig
    from hiea_ray.errors import UserError
    from hiea_ray.kg.readers import read_pair

    d = tmp_path / "pair"
    shutil.copytree(synthetic_dir, d)
    full = read_pair(d)
    withheld = read_pair(d, DataConfig(test_links="none"))
    assert "test" in full.links["split"].to_pylist() and "test" not in withheld.links["split"].to_pylist()
    assert withheld.entities.equals(full.entities)  # the same ids: the same alignment problem
    seeds = full.links.filter(pc.not_equal(full.links["split"], "test"))
    assert withheld.links.sort_by("src").equals(seeds.sort_by("src"))
    (d / "721_5fold" / "1" / "test_links").write_text("")
    with pytest.raises(UserError, match="test_links: no alignment links"):
        read_pair(d)
    assert read_pair(d, DataConfig(test_links="none")).links.num_rows == seeds.num_rows
    (d / "721_5fold" / "1" / "test_links").unlink()
    assert read_pair(d, DataConfig(test_links="none")).links.num_rows == seeds.num_rows
