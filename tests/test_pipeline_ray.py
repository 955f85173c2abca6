"""The whole Pipeline on one shared local Ray instance (2 logical CPUs), tiny data, tiny encoder.

- end to end on the synthetic pair: metrics for every decoder and protocol, and a Hits@1 floor
  that a random ranking cannot reach (shown by a control on the same run);
- a re-run is a no-op; a decode-only change re-runs decode + evaluate and reuses the rest;
- a killed embed stage resumes: finished parts are kept, a half-written part is dropped, only the
  missing rows are embedded, and the vectors equal a clean run's;
- bad input data fails the ingest with a UserError naming the file and line.
"""

from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import pandas as pd
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from ray_conftest_helpers import (
    copy_stages,
    e2e_run,
    manifest,
    manifests,
    run_stages,
    snapshot,
    stage_key,
    tiny_overrides,
)

from hiea_ray.config import load_config
from hiea_ray.core.metrics import ranking_metrics
from hiea_ray.errors import UserError
from hiea_ray.io import read_lists
from hiea_ray.pipeline import Pipeline

DECODERS = ("top1", "csls", "sinkhorn")
STAGES = run_stages()
PROTOCOLS = ("standard", "all-targets")
# The tiny random encoder (hidden 32, 2 layers, tokenizer built on the pair) reaches Hits@1 of
# about 0.2 on the standard protocol of this pair (CSLS best): its vectors only share word pieces,
# which is enough for names with small spelling changes. A random ranking of the ~380 test targets
# gets ~0.003. The floor sits well below the former and far above the latter.
HITS1_FLOOR = 0.10


@pytest.fixture(scope="module")
def shared_ray(ray_shared):
    """This module's shared local Ray (tests/conftest.py, like ray's ``ray_start_regular_shared``)."""
    yield


@pytest.fixture(scope="module")
def e2e(shared_ray, synthetic_dir, tiny_encoder_dir, tmp_path_factory):
    """The session's full run (made here, or earlier by test_cli); tests copy it before changes."""
    return e2e_run(tmp_path_factory, synthetic_dir, tiny_encoder_dir)


@pytest.mark.ray
def test_end_to_end_metrics_and_hits_floor(e2e):
    run = e2e["run"]
    assert all(not t["reused"] for t in e2e["pipe"].timings.values())
    assert list(e2e["pipe"].timings) == STAGES
    for stage in STAGES:
        assert (run / stage / "manifest.json").is_file()
        assert not (run / f".{stage}.tmp").exists()

    on_disk = json.loads((run / "metrics.json").read_text())
    assert on_disk == json.loads((run / "evaluate" / "metrics.json").read_text())
    assert on_disk["protocol"] == "standard"
    allp = on_disk["all_protocols"]["metrics"]
    assert set(allp) == set(PROTOCOLS)
    for protocol in PROTOCOLS:
        assert set(allp[protocol]) == set(DECODERS)
        for name in DECODERS:
            m = allp[protocol][name]
            for key in ("hits@1", "hits@5", "hits@10", "mrr", "precision", "recall", "f1"):
                assert 0.0 <= m[key] <= 1.0, (protocol, name, key)
            assert m["hits@1"] <= m["hits@5"] <= m["hits@10"] <= m["recall@k"]
    for name in DECODERS:
        assert on_disk[name] == allp["standard"][name]
    assert (run / "evaluate" / "metrics.png").stat().st_size > 0

    n_test = allp["standard"]["top1"]["n"]
    assert n_test > 300  # ~70% of the ~540 links of the 600-entity world
    best = max(DECODERS, key=lambda d: allp["standard"][d]["hits@1"])
    hits1 = allp["standard"][best]["hits@1"]
    print("\ntiny encoder Hits@1 (standard): " + ", ".join(f"{d}={allp['standard'][d]['hits@1']:.4f}" for d in DECODERS))
    print("tiny encoder Hits@1 (all-targets): " + ", ".join(f"{d}={allp['all-targets'][d]['hits@1']:.4f}" for d in DECODERS))
    assert hits1 >= HITS1_FLOOR, f"best decoder {best}: Hits@1 {hits1:.4f} < floor {HITS1_FLOOR}"
    assert max(allp["all-targets"][d]["hits@1"] for d in DECODERS) >= HITS1_FLOOR / 2

    # Control on the same run: the same candidate lists handed to the wrong sources (a random
    # permutation of the rows) -- what a broken id mapping or shuffled embeddings would give.
    # It stays far below the floor, so the floor is only reached by a pipeline that works.
    pair = e2e["pipe"].pair()
    test = pair.links_of("test")
    gold_src, gold_tgt = test["src"].to_numpy(), test["tgt"].to_numpy()
    q, cand, _ = read_lists(run / "decode" / "standard" / f"{best}.parquet")
    rows = np.searchsorted(q, gold_src)
    assert np.array_equal(q[rows], gold_src)
    real = ranking_metrics(cand[rows], gold_tgt, (1,))["hits@1"]
    assert real == pytest.approx(hits1)
    rng = np.random.default_rng(0)
    control = [ranking_metrics(cand[rng.permutation(rows)], gold_tgt, (1,))["hits@1"] for _ in range(5)]
    print(f"control (permuted candidate lists) Hits@1: {np.mean(control):.4f}")
    assert max(control) < HITS1_FLOOR / 4


@pytest.mark.ray
def test_rerun_is_noop(e2e):
    run = e2e["run"]
    before_files, before_manifests = snapshot(run), manifests(run)
    pipe = Pipeline(e2e["cfg"], e2e["data"], run)
    metrics = pipe.run_all()
    assert list(pipe.timings) == STAGES
    assert all(t["reused"] for t in pipe.timings.values()), pipe.timings
    assert manifests(run) == before_manifests
    assert snapshot(run) == before_files  # nothing rewritten: same sizes and mtimes
    assert not list(run.glob(".*.tmp"))
    assert metrics == json.loads((run / "metrics.json").read_text())


@pytest.mark.ray
def test_decode_change_reruns_only_decode_and_what_reads_it(e2e, tmp_path):
    run = copy_stages(e2e["run"], tmp_path / "run", STAGES)
    before = snapshot(run)
    cfg = load_config(overrides=tiny_overrides(e2e["model"], "decode.csls_k=5", "decode.sinkhorn_iters=20"))
    pipe = Pipeline(cfg, e2e["data"], run)
    pipe.run_all()
    reused = {name: t["reused"] for name, t in pipe.timings.items()}
    assert reused == {
        "ingest": True,
        "verbalize": True,
        "embed": True,
        "retrieve": True,
        "decode": False,
        "calibrate": False,  # the labelled sources are decoded with the new options too
        "export": False,
        "evaluate": False,
    }
    after = snapshot(run)
    for stage in ("ingest", "verbalize", "embed", "retrieve"):
        files = {k: v for k, v in before.items() if k.startswith(stage + "/")}
        assert files and all(after[k] == v for k, v in files.items()), stage
    assert manifest(run, "decode")["config_hash"] != manifest(e2e["run"], "decode")["config_hash"]
    assert manifest(run, "evaluate")["inputs"]["decode"] == manifest(run, "decode")["fingerprint"]
    # top1 does not depend on the changed options: same ranked lists as before.
    _, c_old, _ = read_lists(e2e["run"] / "decode" / "standard" / "top1.parquet")
    _, c_new, _ = read_lists(run / "decode" / "standard" / "top1.parquet")
    assert np.array_equal(c_old, c_new)


@pytest.mark.ray
def test_structural_candidates_join_the_dense_lists_and_reach_a_gold_target_the_dense_ones_missed(e2e, tmp_path):
    """retrieve.structural_k: the retrieve stage re-runs (embed reused), each list holds its k dense
    candidates first-ranked by cosine plus the structural channel (written alone beside them); on
    this pair some test sources' gold target is found by the structural channel only."""
    from hiea_ray.kg.model import KGPair

    run = copy_stages(e2e["run"], tmp_path / "run", ["ingest", "verbalize", "embed"])
    cfg = load_config(overrides=tiny_overrides(e2e["model"], "retrieve.k=5", "decode.csls_k=5", "retrieve.structural_k=10",
                                               "evaluate.protocols=[all-targets]"))
    pipe = Pipeline(cfg, e2e["data"], run)
    pipe.run_stage("retrieve")
    q, cand, score = read_lists(run / "retrieve" / "all-targets" / "s2t.parquet")
    sq, scand, _ = read_lists(run / "retrieve" / "all-targets" / "structural.parquet")
    assert cand.shape[1] == 15 and np.array_equal(q, sq) and (scand >= 0).any()
    ok = np.isfinite(score)
    assert (np.diff(np.where(ok, score, -9), axis=1) <= 1e-6).all()  # one ranking by cosine
    for row in range(0, len(q), 37):  # every structural candidate is in the merged list
        assert set(scand[row][scand[row] >= 0]) <= set(cand[row][cand[row] >= 0])
    test = KGPair.read(run / "ingest").links_of("test")
    rows = np.searchsorted(q, test["src"].to_numpy())
    gold = test["tgt"].to_numpy()
    dense = (cand[rows, :5] == gold[:, None]).any(1)
    merged = (cand[rows] == gold[:, None]).any(1)
    assert merged.sum() > dense.sum()


@pytest.mark.ray
def test_offloaded_stages_run_as_ray_tasks_and_give_the_drivers_lists_and_metrics(e2e, tmp_path):
    """ray.offload: retrieve, decode, calibrate, export and evaluate run as Ray tasks in worker
    processes (the driver loads no vector and no list): every list, the alignment and the metrics
    are the single-process run's."""
    import os

    import ray

    run = copy_stages(e2e["run"], tmp_path / "run", ["ingest", "verbalize", "embed"])
    cfg = load_config(overrides=tiny_overrides(e2e["model"], "ray.offload=[retrieve,decode,calibrate,export,evaluate]"))
    pipe = Pipeline(cfg, e2e["data"], run)
    pipe.run_all()
    assert all(not pipe.timings[s]["reused"] for s in ("retrieve", "decode", "calibrate", "export", "evaluate"))
    for protocol in ("standard", "all-targets"):
        for f in ("retrieve/{p}/s2t.parquet", "retrieve/{p}/t2s.parquet", "decode/{p}/sinkhorn.parquet",
                  "decode/{p}/csls.parquet", "decode/{p}/sinkhorn.match.parquet"):
            a, b = (pq.read_table(r / f.format(p=protocol)) for r in (e2e["run"], run))
            assert a.equals(b), f.format(p=protocol)
    a, b = (pq.read_table(r / "alignment" / "links.parquet").to_pandas() for r in (run, e2e["run"]))
    assert a.equals(b)  # NaN (a seed link's margin) equal to NaN
    m1, m2 = (json.loads((r / "metrics.json").read_text())["all_protocols"]["metrics"] for r in (e2e["run"], run))
    assert m1 == m2
    for stage in ("retrieve", "decode", "calibrate", "export", "evaluate"):  # each in a Ray worker, not here
        where = manifest(run, stage)["stats"]["offloaded"]
        assert where["pid"] != os.getpid() and where["worker_peak_rss_gib"] > 0 and ray.is_initialized()


@pytest.mark.ray
def test_distributed_retrieval_gives_the_drivers_lists_and_resumes_from_its_parts(e2e, tmp_path):
    """retrieve.engine=ray with the targets in 2 index shards: indexes built by Ray tasks, queries
    searched in blocks by 2 actors, the shards' lists merged by a task: s2t, t2s and the structural
    channel bit-equal to the driver path's; a direction killed half-way searches only the queries
    without a part when it resumes."""
    from hiea_ray.core.metrics import protocol_sets
    from hiea_ray.io import read_dir
    from hiea_ray.ops.retrieve import build_index_file, finish_lists, search_direction

    sets = ["retrieve.structural_k=5", "evaluate.protocols=[all-targets]"]
    runs = {}
    for engine in ("driver", "ray"):
        runs[engine] = copy_stages(e2e["run"], tmp_path / engine, ["ingest", "verbalize", "embed"])
        shards = ["retrieve.index_shards=2"] if engine == "ray" else []
        cfg = load_config(overrides=tiny_overrides(e2e["model"], *sets, f"retrieve.engine={engine}", "retrieve.search_actors=2",
                                                   "retrieve.search_cpus=0.5", "retrieve.rows_per_block=150", *shards))
        Pipeline(cfg, e2e["data"], runs[engine]).run_stage("retrieve")
    for protocol in ("all-targets",):
        for f in ("s2t", "t2s", "structural"):
            a, b = (pq.read_table(runs[e] / "retrieve" / protocol / f"{f}.parquet") for e in ("driver", "ray"))
            assert a.equals(b), (protocol, f)
        assert sorted(p.name for p in (runs["ray"] / "retrieve" / protocol).iterdir()) == \
            ["s2t.parquet", "structural.parquet", "t2s.parquet"]  # no index or part left behind
    m = manifest(runs["ray"], "retrieve")["stats"]
    assert m["engine"] == "ray" and m["queries_searched_now"] > 0
    # every query counted once per index shard, on the node of the actor that searched it (one node here)
    n_queries = pq.read_table(runs["ray"] / "retrieve" / "all-targets" / "s2t.parquet").num_rows + \
        pq.read_table(runs["ray"] / "retrieve" / "all-targets" / "t2s.parquet").num_rows
    assert sum(m["queries_per_node"]["all-targets"].values()) == 2 * n_queries and m["index_shards"] == 2
    assert len(m["queries_per_node"]["all-targets"]) == 1
    # resume: half the queries searched, then all: only the other half is searched again
    rc = cfg.retrieve
    parts = runs["ray"] / "embed" / "parts"
    emb = read_dir(parts).sort_by("id")
    ids, kg = emb["id"].to_numpy(), emb["kg"].to_numpy()
    q, b = protocol_sets("all-targets", np.zeros(0, np.int64), np.zeros(0, np.int64), ids, kg)
    index = tmp_path / "s2t.index"
    import ray

    ray.get(ray.remote(build_index_file).remote(str(parts), b, dataclasses.asdict(rc), str(index)))
    out = tmp_path / "s2t.parts"
    first = search_direction(parts, q[: len(q) // 2], ids, index, out, rc, "half")
    again = search_direction(parts, q, ids, index, out, rc, "all")
    assert first == len(q) // 2 and again == len(q) - len(q) // 2
    finish_lists(str(out), str(tmp_path / "s2t.parquet"), q)
    _, dense, _ = read_lists(tmp_path / "s2t.parquet")
    _, merged, _ = read_lists(runs["driver"] / "retrieve" / "all-targets" / "s2t.parquet")
    assert np.array_equal(dense, merged[:, : dense.shape[1]])  # the dense top-k head the merged lists


@pytest.mark.ray
def test_distributed_decoding_gives_the_single_process_lists_and_matchings_bit_for_bit(e2e, tmp_path, monkeypatch):
    """decode.engine=ray: top1 / csls / sinkhorn over 3 shard actors (the seed links as facts),
    structure in a task from the sharded Sinkhorn lists: every list and matching is the single
    process's, bit for bit (so every metric read from them); no part left behind; the stage's stats count the
    shards (the driver read ids only). A shard's process dies mid-Sinkhorn (as with its node): the
    decoder starts again on new actors, top1 / csls kept, and the outputs are still those bits."""
    four = ["decode.decoders=[top1,csls,sinkhorn,structure]", "decode.sinkhorn_block_rows=64"]  # 3 blocks: 3 shards
    runs = {"driver": copy_stages(e2e["run"], tmp_path / "driver", STAGES[:4]),
            "ray": copy_stages(e2e["run"], tmp_path / "ray", STAGES[:4])}
    Pipeline(load_config(overrides=tiny_overrides(e2e["model"], *four)), e2e["data"], runs["driver"]).run_stage("decode")
    cfg = load_config(overrides=tiny_overrides(e2e["model"], *four, "decode.engine=ray", "decode.shards=3", "decode.shard_cpus=0.5"))
    monkeypatch.setenv("HIEA_FAIL_SHARD_AT_ITER", "5")
    monkeypatch.setenv("HIEA_FAIL_MARKER", str(tmp_path / "died"))
    Pipeline(cfg, e2e["data"], runs["ray"]).run_stage("decode")
    assert (tmp_path / "died").is_file()
    for protocol in PROTOCOLS:
        for f in sorted((runs["driver"] / "decode" / protocol).glob("*.parquet")):
            a, b = (pq.read_table(r / "decode" / protocol / f.name) for r in (runs["driver"], runs["ray"]))
            assert a.equals(b), (protocol, f.name)
        assert not list((runs["ray"] / "decode" / protocol).glob("*.parts"))
    st = manifest(runs["ray"], "decode")["stats"]
    assert st["engine"] == "ray" and sum(st["shards_per_node"].values()) == 3 * len(PROTOCOLS) and st["shard_peak_rss_gib"] > 0
    assert st["shard_restarts"] == 1


@pytest.mark.ray
def test_decode_resumes_with_the_decoders_a_killed_attempt_finished(e2e, tmp_path, monkeypatch, caplog):
    """A decode stage killed in its structure decoder keeps top1 / csls / sinkhorn: the re-run
    decodes only structure (from the kept Sinkhorn lists) and writes what an uninterrupted run writes."""
    import hiea_ray.core.decode as dec_mod
    import hiea_ray.core.decoders as decoders_mod

    cfg = load_config(overrides=tiny_overrides(e2e["model"], "decode.decoders=[top1,csls,sinkhorn,structure]"))
    clean = copy_stages(e2e["run"], tmp_path / "clean", STAGES[:4])
    Pipeline(cfg, e2e["data"], clean).run_all(until="decode")
    run = copy_stages(e2e["run"], tmp_path / "run", STAGES[:4])

    class Killed(BaseException):  # like a SIGTERM / KeyboardInterrupt: not an Exception
        pass

    def killed(*a, **k):
        raise Killed

    with monkeypatch.context() as m:
        m.setattr(decoders_mod, "structure_sinkhorn", killed)
        with pytest.raises(Killed):
            Pipeline(cfg, e2e["data"], run).run_all(until="decode")
    kept = run / ".decode.tmp" / "standard"
    assert sorted(p.name for p in kept.glob("*.done.json")) == ["csls.done.json", "sinkhorn.done.json", "top1.done.json"]
    assert not (run / "decode").exists()
    solved, sinkhorn = [], dec_mod.sinkhorn
    with monkeypatch.context() as m:  # resumed: standard's Sinkhorn is not solved again, all-targets' is
        m.setattr(dec_mod, "sinkhorn", lambda *a, **k: solved.append(len(a[0])) or sinkhorn(*a, **k))
        caplog.set_level("INFO")
        Pipeline(cfg, e2e["data"], run).run_all(until="decode")
    assert solved == [len(read_lists(clean / "retrieve" / "all-targets" / "s2t.parquet")[0])]
    assert any("sinkhorn reused from the interrupted attempt" in r.getMessage() for r in caplog.records)
    for protocol in ("standard", "all-targets"):
        for name in ("top1", "csls", "sinkhorn", "structure"):
            a, b = read_lists(clean / "decode" / protocol / f"{name}.parquet"), read_lists(run / "decode" / protocol / f"{name}.parquet")
            assert all(np.array_equal(x, y) for x, y in zip(a, b)), (protocol, name)
            assert pq.read_table(clean / "decode" / protocol / f"{name}.match.parquet").equals(
                pq.read_table(run / "decode" / protocol / f"{name}.match.parquet"))


@pytest.mark.ray
def test_embed_resumes_after_kill(e2e, tmp_path, caplog):
    clean_run, cfg = e2e["run"], e2e["cfg"]
    clean_parts = sorted((clean_run / "embed" / "parts").glob("*.parquet"))
    assert len(clean_parts) >= 3, "the embed stage should write several part files"
    total = manifest(clean_run, "embed")["stats"]["rows"]

    # A run killed during embed: ingest and verbalize finished, two parts finished, a third cut
    # off half way (no Parquet footer), all in the tmp folder with the stage's key.
    run = copy_stages(clean_run, tmp_path / "run", ["ingest", "verbalize"])
    parts = run / ".embed.tmp" / "parts"
    parts.mkdir(parents=True)
    (run / ".embed.tmp" / ".key.json").write_text(json.dumps(stage_key(clean_run, "embed"), sort_keys=True))
    kept = clean_parts[:2]
    for f in kept:
        shutil.copy2(f, parts / f.name)
    cut = clean_parts[2]
    data = cut.read_bytes()
    (parts / f"cut-{cut.name}").write_bytes(data[: len(data) // 2])
    with pytest.raises(Exception):
        pq.read_table(parts / f"cut-{cut.name}")
    already = sum(pq.ParquetFile(f).metadata.num_rows for f in kept)
    assert 0 < already < total

    pipe = Pipeline(cfg, e2e["data"], run)
    with caplog.at_level("INFO", logger="hiea_ray"):
        pipe.run_stage("embed")
    assert pipe.timings["embed"]["reused"] is False
    stats = manifest(run, "embed")["stats"]
    assert stats["rows"] == total
    assert stats["rows_embedded_now"] == total - already
    assert any("dropping unreadable part" in r.getMessage() for r in caplog.records)
    assert any("resuming" in r.getMessage() for r in caplog.records)
    final_parts = {p.name for p in (run / "embed" / "parts").glob("*.parquet")}
    assert {f.name for f in kept} <= final_parts
    assert f"cut-{cut.name}" not in final_parts
    assert not (run / ".embed.tmp").exists()

    ids, kg, vecs = pipe.embeddings()
    ids0, kg0, vecs0 = e2e["pipe"].embeddings()
    assert np.array_equal(ids, ids0) and np.array_equal(kg, kg0)
    assert np.allclose(vecs, vecs0, atol=1e-5)
    # The resumed embed stage is fresh now: later stages build on it as usual.
    assert Pipeline(cfg, e2e["data"], run).run_stage("embed").fresh()


@pytest.mark.ray
def test_embed_with_a_tokenize_stage_gives_the_same_vectors(e2e, tmp_path):
    """embed.tokenize: stage on Ray Data (a CPU tokenize actor streaming token ids into the encoder
    actor) embeds every row once, with the vectors of the run that tokenized in the actor; the
    manifest says which mode and precision ran."""
    from dataclasses import replace

    clean_run, cfg = e2e["run"], e2e["cfg"]
    run = copy_stages(clean_run, tmp_path / "run", ["ingest", "verbalize"])
    cfg = replace(cfg, embed=replace(cfg.embed, tokenize="stage", tokenize_actors=1, tokenize_cpus=0.25,
                                     cpus_per_actor=0.25))
    pipe = Pipeline(cfg, e2e["data"], run)
    pipe.run_stage("embed")
    stats = manifest(run, "embed")["stats"]
    assert stats["chain"] == ["Tokenize", "Embedder"] and manifest(clean_run, "embed")["stats"]["chain"] == ["Embedder"]
    assert stats["rows_embedded_now"] == stats["rows"] and sum(stats["precision"].values()) == stats["rows"]
    assert stage_key(run, "embed") == stage_key(clean_run, "embed")  # a runtime field: the same stage
    ids, kg, vecs = pipe.embeddings()
    ids0, kg0, vecs0 = e2e["pipe"].embeddings()
    assert np.array_equal(ids, ids0) and np.array_equal(kg, kg0)
    assert np.abs(vecs - vecs0).max() <= 1e-6


def _corrupt(src, dst, relpath: str, lineno: int, line: str):
    shutil.copytree(src, dst)
    p = dst / relpath
    lines = p.read_text().split("\n")
    lines[lineno - 1] = line
    p.write_text("\n".join(lines))
    return dst


# Marked ray although ingest is Ray-free: the module's shared Ray instance may be running, and the
# conftest guard is for tests that must run without Ray. Ingest does not start Ray in any case.
@pytest.mark.ray
@pytest.mark.parametrize(
    "relpath, line, message",
    [
        ("rel_triples_1", "http://kg1.example.org/resource/Only\thttp://kg1.example.org/ontology/two", "expected 3 tab-separated fields"),
        ("721_5fold/1/test_links", "http://kg1.example.org/resource/Nobody\thttp://kg2.example.org/wiki/Nobody", "appears in no triple"),
    ],
)
def test_bad_data_fails_ingest_with_file_and_line(synthetic_dir, tmp_path, relpath, line, message):
    data = _corrupt(synthetic_dir, tmp_path / "data", relpath, 3, line)
    run = tmp_path / "run"
    pipe = Pipeline(load_config(overrides=["embed.model=unused"]), data, run)
    with pytest.raises(UserError) as e:
        pipe.run_all()
    msg = str(e.value)
    assert f"{data / relpath}:3: " in msg and message in msg
    assert "\n" not in msg
    assert not (run / "ingest").exists()  # nothing half-written became a final stage


@pytest.mark.ray
@pytest.mark.parametrize("kind", ["missing", "not-a-model"])
def test_cli_bad_model_folder_is_one_line_error(e2e, tmp_path, capsys, kind):
    """A bad embed.model reaches the CLI as a user error, not as a Ray actor traceback."""
    from hiea_ray.cli import main

    run = copy_stages(e2e["run"], tmp_path / "run", ["ingest", "verbalize"])  # embed runs next
    model = tmp_path / "model"
    if kind == "not-a-model":
        model.mkdir()
        (model / "vocab.txt").write_text("[PAD]\n")
    argv = ["align", "--data", str(e2e["data"]), "--out", str(run)]
    for s in tiny_overrides(model):
        argv += ["--set", s]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("hiea-ray: error: "), err
    assert str(model) in err[0]
    assert ("model folder not found" if kind == "missing" else "not a model folder") in err[0]
    assert not (run / "embed").exists() and not (run / ".embed.tmp").exists()


@pytest.mark.ray
def test_export_hands_over_the_alignment_in_the_inputs_identifiers(e2e):
    """RUN/alignment/: the output decoder's one-to-one links with the input's IRIs and names, as
    N-Triples any RDF parser reads; their precision / recall against the gold test links equal
    metrics.json's for that decoder and protocol; unmatched sources listed; summary counts."""
    import csv

    import rdflib

    run = e2e["run"]
    d = run / "alignment"
    summary = json.loads((d / "summary.json").read_text())
    assert summary["decoder"] == "sinkhorn" and summary["protocol"] == "all-targets"  # the defaults' auto
    assert summary["confidence"] == "calibrated decoder score"  # no router: calibrated on the labelled seeds
    links = pq.read_table(d / "links.parquet")
    ent = {r["id"]: r for r in pq.read_table(run / "ingest" / "entities.parquet").to_pylist()}
    assert links.num_rows == summary["links"] > 0
    for row in links.slice(0, 20).to_pylist():
        assert row["kg1_id"] == ent[row["src"]]["uri"] and row["kg2_id"] == ent[row["tgt"]]["uri"]
        assert row["kg1_name"] == ent[row["src"]]["name"] and ent[row["src"]]["kg"] == 1 and ent[row["tgt"]]["kg"] == 2
    g = rdflib.Graph().parse(d / "links.nt", format="nt")
    assert len(g) == links.num_rows
    assert all(str(p) == "http://www.w3.org/2002/07/owl#sameAs" for _, p, _ in g)
    assert {(str(s), str(o)) for s, _, o in g} == set(zip(links["kg1_id"].to_pylist(), links["kg2_id"].to_pylist()))
    m = json.loads((run / "metrics.json").read_text())["all_protocols"]["metrics"]["all-targets"]["sinkhorn"]
    assert summary["measured"]["precision"] == pytest.approx(m["precision"])
    assert summary["measured"]["recall"] == pytest.approx(m["recall"])
    with open(d / "links.tsv", encoding="utf-8") as fh:
        rows = list(csv.reader(fh, delimiter="\t"))
    assert rows[0][:2] == ["kg1_id", "kg2_id"] and len(rows) == links.num_rows + 1
    with open(d / "unmatched.tsv", encoding="utf-8") as fh:
        assert len(list(csv.reader(fh, delimiter="\t"))) - 1 <= summary["unmatched"]
    assert summary["links"] + summary["unmatched"] == summary["sources"]


@pytest.mark.ray
def test_the_users_seed_links_come_back_as_given_and_nothing_contradicts_them(e2e):
    """decode.seeds_as_facts (default): every seed link is in the output as given (tier seed,
    confidence 1), no link gives a seed source another target or a seed target another source,
    unmatched.tsv lists no seed source; the decoders never offer a seed target to another source;
    the calibrate stage's labelled sources still had their own target in their pool (they are not
    all trivially right)."""
    run = e2e["run"]
    links = pq.read_table(run / "alignment" / "links.parquet")
    seeds = pq.read_table(run / "ingest" / "links.parquet").to_pandas()
    seeds = seeds[seeds["split"].isin(["train", "valid"])]
    given = dict(zip(seeds["src"], seeds["tgt"]))
    out = links.to_pandas()
    seed_rows = out[out["tier"] == "seed"]
    assert dict(zip(seed_rows["src"], seed_rows["tgt"])) == given and (seed_rows["confidence"] == 1.0).all()
    rest = out[out["tier"] != "seed"]
    assert not rest["src"].isin(list(given)).any() and not rest["tgt"].isin(list(given.values())).any()
    un = pd.read_csv(run / "alignment" / "unmatched.tsv", sep="\t")
    ents = pq.read_table(run / "ingest" / "entities.parquet").to_pandas().set_index("id")
    assert not un["kg1_id"].isin(ents.loc[list(given), "uri"]).any()
    summary = json.loads((run / "alignment" / "summary.json").read_text())
    assert summary["tiers"]["seed"] == summary["seed_links"] == len(given)
    from hiea_ray.io import read_lists

    taken = np.array(list(given.values()))
    for decoder in ("top1", "csls", "sinkhorn"):
        q, cand, _ = read_lists(run / "decode" / "all-targets" / f"{decoder}.parquet")
        other = ~np.isin(q, list(given))
        assert not np.isin(cand[other], taken).any()
        assert (cand[~other, 0] == np.array([given[s] for s in q[~other]])).all()
    from hiea_ray.config import load_config
    from hiea_ray.run.labelled import seeds_of
    from hiea_ray.run import RunContext

    sd = seeds_of(RunContext(load_config(overrides=tiny_overrides(e2e["model"])), e2e["data"], run))
    fold_of = dict(zip(sd.links["src"].to_pylist(), sd.fold.tolist()))
    lab = pq.read_table(run / "calibrate" / "all-targets" / "labelled.parquet").to_pandas()
    for decoder in ("top1", "sinkhorn"):
        a, t = lab[f"answer.{decoder}"].to_numpy(), lab["tgt"].to_numpy()
        fold = np.array([fold_of[s] for s in lab["src"]])
        for j in np.unique(fold):  # decoded out of fold: never the target of a seed link outside fold j
            outside = [g for s, g in given.items() if fold_of.get(s, -1) != j]
            assert not np.isin(a[fold == j], outside).any()
        assert 0 < (a == t)[~lab["dangling"].to_numpy()].mean() < 1  # its own target was in its pool


@pytest.mark.ray
def test_export_command_and_python_api_reexport_without_rerunning(e2e, tmp_path, capsys):
    """`hiea-ray export` and `open_run(...).links()` remake the alignment with other settings from
    the decoded outputs (no stage re-runs); bad settings and an unfinished run are one line, exit 2."""
    import rdflib

    from hiea_ray import open_run
    from hiea_ray.cli import main

    run = e2e["run"]
    before = {p.name: p.stat().st_mtime_ns for p in run.rglob("manifest.json")}
    r = open_run(run)
    assert r.links().to_pandas().equals(pq.read_table(run / "alignment" / "links.parquet").to_pandas())  # NaN == NaN
    assert r.metrics["protocol"] == "standard" and "sinkhorn" in r.metrics
    top1 = r.links(decoder="top1", protocol="standard")
    assert set(top1["decoder"].to_pylist()) == {"top1", "seed"}  # the seed links handed back as given
    t = float(np.median(r.links()["confidence"].to_numpy()))
    strict = r.links(min_confidence=t)
    assert 0 < strict.num_rows < r.links().num_rows and min(strict["confidence"].to_pylist()) >= t
    nt = tmp_path / "links.nt"
    assert main(["export", str(run), "--decoder", "csls", "--format", "nt", "--out", str(nt)]) == 0
    g = rdflib.Graph().parse(nt, format="nt")
    assert len(g) == r.links(decoder="csls").num_rows
    assert main(["export", str(run), "--format", "all", "--out", str(tmp_path / "all")]) == 0
    assert (tmp_path / "all" / "links.tsv").read_text() == (run / "alignment" / "links.tsv").read_text()
    capsys.readouterr()
    for argv, message in (
        (["--decoder", "nope"], "output.decoder: 'nope' is not one this run decodes"),
        (["--target-precision", "1.5"], "output.target_precision: 1.5 must be in (0, 1]"),
    ):
        assert main(["export", str(run), *argv]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err
    # no router: the confidence is each decoder's score calibrated on the labelled seed sources
    # (the calibrate stage), and a target precision picks its threshold on them, out of fold
    links, _, s = r.export(decoder="csls", protocol="all-targets", target_precision=0.6)
    assert s["confidence"] == "calibrated decoder score" and s["estimated_precision"] >= 0.6
    conf = links["confidence"].to_numpy()
    assert len(conf) and conf.min() >= s["threshold"] and conf.max() <= 1.0
    cal = json.loads((run / "calibrate" / "all-targets" / "calibration.json").read_text())["decoders"]["csls"]
    assert np.all(np.diff(cal["y"]) >= 0)  # a monotone map of the score
    # a run without the calibrate stage (output.calibrate: false) keeps the raw score and says why
    # a target precision cannot be had
    raw = copy_stages(run, tmp_path / "raw", ["ingest", "verbalize", "embed", "retrieve", "decode"])
    (raw / "config.resolved.json").write_text((run / "config.resolved.json").read_text())
    assert main(["export", str(raw), "--target-precision", "0.9"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "needs labelled seed sources" in err[0] and "output.calibrate is false" in err[0], err
    unfinished = copy_stages(run, tmp_path / "unfinished", ["ingest"])
    (unfinished / "config.resolved.json").write_text((run / "config.resolved.json").read_text())
    assert main(["export", str(unfinished)]) == 2
    assert "has not decoded yet" in capsys.readouterr().err
    assert {p.name: p.stat().st_mtime_ns for p in run.rglob("manifest.json")} == before  # nothing re-ran


@pytest.mark.ray
def test_dangling_sources_are_simulated_and_the_share_with_a_counterpart_estimated(e2e, tmp_path):
    """output.dangling_share: the calibrate stage decodes that share of the labelled seed sources
    with their gold target hidden (none of them can then be answered right), learns P(a source has
    a counterpart), estimates the share of such sources among the run's own; export multiplies it
    into the confidence and meets a target precision on its own links."""
    from hiea_ray import open_run
    from hiea_ray.api import Run

    run = copy_stages(e2e["run"], tmp_path / "run", ["ingest", "verbalize", "embed", "retrieve", "decode"])
    cfg = load_config(overrides=tiny_overrides(e2e["model"], "output.dangling_share=0.5"))
    pipe = Pipeline(cfg, e2e["data"], run)
    pipe.write_config()
    pipe.run_stage("calibrate")
    d = run / "calibrate" / "all-targets"
    lab = pq.read_table(d / "labelled.parquet")
    hid = lab["dangling"].to_numpy(zero_copy_only=False)
    assert 0.4 <= hid.mean() <= 0.6, hid.mean()
    for dec in cfg.decode.decoders:
        right = lab[f"right.{dec}"].to_numpy(zero_copy_only=False)
        assert not right[hid].any(), dec  # a hidden counterpart cannot be found ...
        assert right[~hid].mean() > 0.05, dec  # ... the others are, sometimes (a tiny random encoder)
    # the standard protocol's sources all have a counterpart: nothing hidden, no model
    assert not pq.read_table(run / "calibrate" / "standard" / "labelled.parquet")["dangling"].to_numpy(
        zero_copy_only=False).any()
    assert not (run / "calibrate" / "standard" / "matchable.parquet").exists()
    rep = json.loads((d / "calibration.json").read_text())["dangling"]
    m = pq.read_table(d / "matchable.parquet")
    src, p = m["src"].to_numpy(), m["p_matchable"].to_numpy()
    from hiea_ray.kg.model import KGPair

    links = KGPair.read(run / "ingest").links
    seeds = links.filter(np.isin(links["split"].to_numpy(zero_copy_only=False), ["train", "valid"]))
    is_seed = np.isin(src, seeds["src"].to_numpy())
    assert np.all(p[is_seed] == 1) and np.all((p >= 0) & (p <= 1))
    # the estimate is over the run's non-seed sources (its accuracy needs a real encoder: the
    # tiny random one here separates nothing; benchmarks/haystack.py measures it)
    assert rep["sources"] == int((~is_seed).sum()) and rep["hidden"] == int(hid.sum())
    assert 0 < rep["estimated_matchable_share"] <= 1
    assert abs(rep["estimated_matchable_share"] - float(p[~is_seed].mean())) < 1e-3
    every, _, _ = open_run(run).export(decoder="sinkhorn", protocol="all-targets")
    target = 0.15  # fixed; this tiny random encoder tops out near 0.25 confidence
    out, _, s = open_run(run).export(decoder="sinkhorn", protocol="all-targets", target_precision=target)
    plain, _, _ = Run(run, overrides=["output.dangling_share=0"]).export(decoder="sinkhorn", protocol="all-targets")
    assert s["confidence"] == "calibrated decoder score x P(has a counterpart)" and s["estimated_precision"] >= target
    assert 0 < out.num_rows < every.num_rows
    # the cut is the one its definition says: the output's own links (not the seeds) at confidence >= the
    # threshold, whose mean confidence (the expected share right) is the estimate; one more link breaks it
    own = out.filter(pc.not_equal(out["tier"], "seed"))
    conf = np.sort(own["confidence"].to_numpy())[::-1]
    assert conf.min() >= s["threshold"] and abs(float(conf.mean()) - s["estimated_precision"]) < 1e-6
    rest = every.filter(pc.not_equal(every["tier"], "seed"))["confidence"].to_numpy()
    nxt = np.sort(rest[rest < s["threshold"]])[::-1][:1]
    assert not len(nxt) or float(np.r_[conf, nxt].mean()) < target
    # and it is measured: the precision of the kept links on the gold test links, near the estimate
    assert s["measured"]["predicted"] > 0 and abs(s["measured"]["precision"] - s["estimated_precision"]) < 0.15, s
    by_src = dict(zip(plain["src"].to_pylist(), plain["confidence"].to_pylist()))
    assert all(c <= by_src[x] + 1e-6 for x, c in zip(out["src"].to_pylist(), out["confidence"].to_pylist()))


@pytest.mark.ray
def test_a_label_free_run_aligns_everything_and_exports_the_labelled_runs_links(e2e, tmp_path):
    """data.test_links: none (the real case: align everything not yet linked): the pipeline runs end
    to end without gold test links, metrics.json says so and gives label-free figures, and the
    exported links are the labelled run's for the same config (the test links change nothing but
    the evaluation)."""
    from hiea_ray.config import load_config

    with pytest.raises(UserError, match="evaluate.protocols"):  # standard needs test links
        load_config(overrides=tiny_overrides(e2e["model"], "data.test_links=none"))
    cfg = load_config(overrides=tiny_overrides(e2e["model"], "data.test_links=none", "evaluate.protocols=[all-targets]"))
    run = tmp_path / "label-free"
    Pipeline(cfg, e2e["data"], run).run_all()
    m = json.loads((run / "metrics.json").read_text())
    assert "label_free" in m and m["protocol"] == "all-targets"
    assert m["sinkhorn"]["gold_test_links"] == 0 and 0 < m["sinkhorn"]["share_matched"] <= 1
    assert "hits@1" not in m["sinkhorn"]
    s = json.loads((run / "alignment" / "summary.json").read_text())
    assert s["measured"] is None and s["decoder"] == "sinkhorn"
    free = pq.read_table(run / "alignment" / "links.parquet")
    labelled = pq.read_table(e2e["run"] / "alignment" / "links.parquet")
    pairs = [set(zip(t["kg1_id"].to_pylist(), t["kg2_id"].to_pylist())) for t in (free, labelled)]
    assert labelled.num_rows > 0 and abs(free.num_rows - labelled.num_rows) <= labelled.num_rows // 100
    # the same links by the inputs' identifiers (the runs embed separately: a near-tie may flip, rarely)
    assert len(pairs[0] & pairs[1]) >= 0.99 * len(pairs[1])


@pytest.mark.ray
def test_a_dump_pair_exports_wikidata_and_rdf_identifiers(e2e, tmp_path):
    """A pair spec of dumps (KG1 a Wikidata JSON dump, KG2 N-Triples): the exported links carry the
    items' Wikidata entity IRIs (http://www.wikidata.org/entity/Q...) on the KG1 side and the
    N-Triples IRIs on the KG2 side; links.nt parses with rdflib; the links' precision / recall against the gold test links are
    metrics.json's, and the links that are right are the input's own gold pairs."""
    import rdflib

    from hiea_ray.core.export import WIKIDATA
    from hiea_ray.kg.dump_fixtures import write_dumps

    maps = write_dumps(e2e["data"], tmp_path / "dumps", "wikidata-json", "ntriples", "gz")
    run = tmp_path / "run"
    cfg = load_config(overrides=tiny_overrides(e2e["model"], "data.partitions=2"))  # a small pair: 2 shuffle partitions
    Pipeline(cfg, tmp_path / "dumps" / "pair.yaml", run).run_all()
    d = run / "alignment"
    s = json.loads((d / "summary.json").read_text())
    links = pq.read_table(d / "links.parquet")
    assert links.num_rows == s["links"] > 0
    kg1 = set(maps[1].values())
    assert all(a in kg1 and a.startswith(WIKIDATA + "Q") for a in links["kg1_id"].to_pylist())
    assert all(b.startswith("http") for b in links["kg2_id"].to_pylist())
    g = rdflib.Graph().parse(d / "links.nt", format="nt")
    assert {(str(x), str(o)) for x, _, o in g} == set(zip(links["kg1_id"].to_pylist(), links["kg2_id"].to_pylist()))
    m = json.loads((run / "metrics.json").read_text())["all_protocols"]["metrics"][s["protocol"]][s["decoder"]]
    assert s["measured"]["precision"] == pytest.approx(m["precision"])
    assert s["measured"]["recall"] == pytest.approx(m["recall"])
    # the gold links in the dumps' own identifiers (links.nt of the pair spec): the right links are among them
    gold = {(str(x), str(o)) for x, _, o in rdflib.Graph().parse(tmp_path / "dumps" / "links.nt", format="nt")}
    right = sum((a, b) in gold for a, b in zip(links["kg1_id"].to_pylist(), links["kg2_id"].to_pylist()))
    test_links = s["measured"]["gold_test_links"]
    assert right >= round(s["measured"]["recall"] * test_links) > 0


@pytest.mark.ray
def test_collaboration_rounds_train_and_anchor_on_pseudo_seeds_and_leave_round_one_as_it_was(e2e, tmp_path):
    """collab.rounds=2: round 1 is the run folder as the pipeline makes it (the e2e run's stages are
    reused, only the router and the retriever training are new); round 2 (RUN/round2) trains the
    retriever from round 1's model on seed + pseudo-seed links and decodes with the pseudo-seeds as
    extra anchors; the last round's alignment and metrics go to the run root; a re-run is a no-op."""
    from hiea_ray.collab import run_rounds
    from hiea_ray.run.labelled import seeds_of
    from hiea_ray.run import RunContext

    shared = ["ingest", "verbalize"]
    run = copy_stages(e2e["run"], tmp_path / "run", shared)
    train = ["train.enabled=true", "train.rounds=1", "train.hard_negatives=0", "train.epochs_per_round=1", "train.batch_size=16",
             "train.eval_every=100", "train.scaling.cpus_per_worker=0.5", "train.scaling.torch_threads=1"]
    cfg = load_config(overrides=tiny_overrides(e2e["model"], "route.enabled=true", "collab.rounds=2",
                                               "collab.pseudo_seeds=mutual", *train))
    before = snapshot(run / "ingest")
    metrics = run_rounds(cfg, e2e["data"], run)
    assert snapshot(run / "ingest") == before  # round 1's shared stages reused, round 2 links them
    r2 = run / "round2"
    pseudo = pq.read_table(r2 / "pseudo_seeds.parquet")
    s, t = pseudo["src"].to_numpy(), pseudo["tgt"].to_numpy()
    from hiea_ray.kg.model import KGPair

    links = KGPair.read(run / "ingest").links
    is_seed = np.isin(np.array(links["split"].to_pylist()), ["train", "valid"])
    seed_src, seed_tgt = links["src"].to_numpy()[is_seed], links["tgt"].to_numpy()[is_seed]
    assert len(s) > 0 and len(set(s.tolist())) == len(s) and len(set(t.tolist())) == len(t)
    assert not np.isin(s, seed_src).any() and not np.isin(t, seed_tgt).any()
    summary = json.loads((run / "collab.json").read_text())
    assert [r["round"] for r in summary["rounds"]] == [1, 2]
    assert summary["rounds"][1]["pseudo_seeds"]["pseudo_seeds"] == len(s)
    # round 2: trained from round 1's model, on the pseudo-seeds too; decoded with them as anchors
    m2 = manifest(r2, "train")
    assert m2["inputs"]["base_model"] == RunContext(cfg, e2e["data"], run).content_fingerprint(run / "train" / "model")
    assert "pseudo_seeds" in m2["inputs"] and "pseudo_seeds" in manifest(r2, "decode")["inputs"]
    assert "pseudo_seeds" not in manifest(run, "decode")["inputs"]
    ctx2 = RunContext(load_config(overrides=tiny_overrides(e2e["model"], "route.enabled=true")), e2e["data"], r2)
    sd = seeds_of(ctx2)
    assert len(sd.graphs.anchors) == is_seed.sum() + len(s) and len(sd.fold) == is_seed.sum()
    assert set(sd.links["split"].to_pylist()) <= {"train", "valid"}  # pseudo-seeds are never labelled
    # the run root hands over the last round
    assert (run / "alignment" / "links.tsv").read_bytes() == (r2 / "alignment" / "links.tsv").read_bytes()
    assert json.loads((run / "metrics.json").read_text())["collab"] == summary == metrics["collab"]
    snap = snapshot(r2)
    run_rounds(cfg, e2e["data"], run)
    assert snapshot(r2) == snap

