"""The HIEA tier on Ray, with a tiny random Llama: route -> llm_train (Ray Train) -> llm (Ray Data)
-> the "hiea" decoder; LoRA + adapter learning on Ray Train (beats the small model where it is
wrong in a learnable way; 2 workers follow 1 worker); a killed llm stage resumes; bad input."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from ray_conftest_helpers import copy_stages, e2e_run, hiea_cfg as _cfg, hiea_run_shared, manifest, stage_key, tiny_overrides

from hiea_ray.config import load_config
from hiea_ray.errors import UserError
from hiea_ray.io import column_to_numpy, read_dir
from hiea_ray.pipeline import Pipeline

pytestmark = pytest.mark.ray

UPSTREAM = ["ingest", "verbalize", "embed"]


@pytest.fixture(scope="module")
def e2e(ray_shared, synthetic_dir, tiny_encoder_dir, tmp_path_factory):
    return e2e_run(tmp_path_factory, synthetic_dir, tiny_encoder_dir)


@pytest.fixture(scope="module")
def hiea_run(e2e, tiny_llm_dir, tmp_path_factory):
    return hiea_run_shared(tmp_path_factory, e2e, tiny_llm_dir)


def test_pipeline_routes_trains_scores_and_merges(hiea_run):
    run, metrics = hiea_run["run"], hiea_run["metrics"]
    assert [n for n, t in hiea_run["pipe"].timings.items() if not t["reused"]][-5:] == ["route", "llm_train", "llm", "export", "evaluate"]
    route = pq.read_table(run / "route" / "standard" / "route.parquet")
    certain = route["certain"].to_numpy(zero_copy_only=False)
    routed = route["src"].to_numpy()[~certain]
    assert 0 < len(routed) < route.num_rows  # some certain, some to the LLM
    rep = json.loads((run / "route" / "report.json").read_text())["protocols"]["standard"]
    assert rep["routed_to_llm"] == len(routed) and rep["labelled"]["sources"] > 0
    router = json.loads((run / "route" / "standard" / "router.json").read_text())
    assert router["primary"] == "structure" and "mutual_best" in router["features"] and "consistency" in router["features"]
    assert (run / "route" / "route.png").is_file()
    # one LLM call per routed source, no more, no less
    parts = read_dir(run / "llm" / "standard" / "parts")
    assert sorted(parts["src"].to_pylist()) == sorted(routed.tolist())
    logp = column_to_numpy(parts["logp"])
    assert np.allclose(np.exp(logp).sum(1), 1.0, atol=1e-4)
    h = metrics["hiea"]
    assert h["llm_calls"] == h["routed"] == len(routed) and h["llm_fraction"] == pytest.approx(len(routed) / route.num_rows, abs=1e-4)
    assert h["prompt_tokens_max"] <= 160 and h["entities_per_s"] > 0
    assert {"llm_hits@1_routed", "small_hits@1_routed", "hits@1", "f1"} <= set(h)
    model = run / "llm_train" / "model"
    assert (model / "hiea_llm.json").is_file() and (model / "knowledge_adapter.pt").is_file()
    assert (model / "adapter_config.json").is_file() and not (run / "llm_train" / "ray").exists()
    assert (run / "llm_train" / "curve.png").is_file()
    # validated on the labelled sources the router routes (held out of training); fusion chosen there
    labelled = pq.read_table(run / "route" / "standard" / "labelled.parquet")
    assert labelled.num_rows == rep["labelled"]["sources"] and 0 < sum(labelled["routed"].to_pylist()) < labelled.num_rows
    history = json.loads((run / "llm_train" / "history.json").read_text())
    assert history["validation"] == "routed" and 0 < history["valid_examples"] <= 16
    fusion = json.loads((model / "fusion.json").read_text())
    by_weight = fusion["valid_hits1_by_fusion"]
    assert h["fusion"] == fusion["fusion"] and by_weight[str(fusion["fusion"])] == max(by_weight.values()) and len(by_weight) == 11
    assert json.loads((model / "hiea_llm.json").read_text())["readout"] == "slots"
    # a second run reuses everything
    again = Pipeline(hiea_run["cfg"], hiea_run["pipe"].data, run)
    again.run_all()
    assert all(t["reused"] for t in again.timings.values())


def test_killed_llm_stage_resumes(hiea_run, e2e, tmp_path, caplog):
    clean = hiea_run["run"]
    parts = sorted((clean / "llm" / "standard" / "parts").glob("*.parquet"))
    assert len(parts) >= 2
    run = copy_stages(clean, tmp_path / "run", UPSTREAM + ["retrieve", "decode", "calibrate", "route", "llm_train"])
    tmp = run / ".llm.tmp"
    (tmp / "standard" / "parts").mkdir(parents=True)
    (tmp / ".key.json").write_text(json.dumps(stage_key(clean, "llm"), sort_keys=True))
    shutil.copy2(clean / "llm" / "standard" / "prompts.parquet", tmp / "standard" / "prompts.parquet")
    shutil.copy2(parts[0], tmp / "standard" / "parts" / parts[0].name)
    data = parts[1].read_bytes()
    (tmp / "standard" / "parts" / "cut.parquet").write_bytes(data[: len(data) // 2])  # killed mid-write
    done = pq.ParquetFile(parts[0]).metadata.num_rows
    pipe = Pipeline(hiea_run["cfg"], e2e["data"], run)
    with caplog.at_level("INFO", logger="hiea_ray"):
        pipe.run_stage("llm")
    assert any("resuming" in r.getMessage() and f"{done} of" in r.getMessage() for r in caplog.records)
    a = read_dir(clean / "llm" / "standard" / "parts").sort_by("src")
    b = read_dir(run / "llm" / "standard" / "parts").sort_by("src")
    assert np.array_equal(a["src"].to_numpy(), b["src"].to_numpy())
    assert np.allclose(column_to_numpy(a["logp"]), column_to_numpy(b["logp"]), atol=1e-4)
    assert manifest(run, "llm")["stats"]["protocols"]["standard"]["llm_calls"] == a.num_rows


def _marked_examples(n: int, seed: int, fmt, c: int = 3, dim: int = 16) -> pa.Table:
    """Examples where the small model is wrong in a learnable way: half the sources have no
    counterpart among their candidates (the answer is "none"; the small model answers its top-1
    anyway) and their entity vectors say so (a marker component the knowledge adapter sees);
    on the others the small model is right half the time."""
    from hiea_ray.core.prompt import EntityView, build_prompt
    from hiea_ray.io import embeddings_column

    rng = np.random.default_rng(seed)
    rows = {k: [] for k in ("text", "n_options", "answer", "small")}
    vecs = np.zeros((n, (c + 1) * dim), np.float32)
    for i in range(n):
        unmatched = rng.random() < 0.5
        v = rng.normal(size=(c + 1, dim)).astype(np.float32)
        v[0, 0] = 3.0 if unmatched else -3.0
        p = build_prompt(EntityView(0, f"e{rng.integers(500)}"), [EntityView(j + 1, f"e{rng.integers(500)}") for j in range(c)],
                         fmt.count, 120, np.random.default_rng([seed, i]), gold=99 if unmatched else 1, slot=fmt.slot)
        vecs[i] = v[[0] + [j + 1 for j in p.order]].ravel()
        rows["text"].append(fmt.wrap(p.text))
        rows["n_options"].append(c + 1)
        rows["answer"].append(p.answer)
        rows["small"].append(p.order.index(0) if rng.random() < 0.5 else p.order.index(1))
    return pa.table({"text": rows["text"], "vectors": embeddings_column(vecs), "n_options": rows["n_options"],
                     "answer": rows["answer"], "small": rows["small"]})


def test_lora_and_adapter_learn_on_ray_train_and_two_workers_follow_one(ray_shared, tiny_llm_dir, tmp_path):
    """LoRA + knowledge adapter on Ray Train: validation accuracy rises well above the small
    model's on examples where the small model is wrong in a learnable way (it never abstains;
    the entity vectors say when it should); 2 DDP workers follow the 1-worker loss curve."""
    from hiea_ray.core.llm import PromptFormat, load_tokenizer
    from hiea_ray.train.loop import fit
    from hiea_ray.train.tasks import LLMTask

    fmt = PromptFormat(load_tokenizer(tiny_llm_dir), 1)
    data, valid = _marked_examples(800, 1, fmt), _marked_examples(120, 2, fmt)
    small = float(np.mean(valid["small"].to_numpy() == valid["answer"].to_numpy()))
    curves, best = {}, {}
    for workers in (1, 2):
        cfg = load_config(overrides=[
            "llm.candidates=3", "llm.lora_dropout=0", "llm.lr=5e-3", "llm.batch_size=16", "llm.epochs=3",
            "llm.eval_every=1000", "llm.warmup_steps=5", f"llm.scaling.num_workers={workers}",
            "llm.scaling.torch_threads=1", "llm.scaling.cpus_per_worker=0.5"])
        opts = cfg.to_dict()["llm"]
        res = fit(LLMTask(tiny_llm_dir, 16, opts), opts, tiny_llm_dir, data, valid, f"llm{workers}", tmp_path / "ray",
                  tmp_path / f"best{workers}")
        curves[workers], best[workers] = np.array(res["curve"])[:, 1], res["best"]
    print(f"\nsmall model valid acc {small:.3f}; LLM 1 worker {best[1]['valid_acc']:.3f}, 2 workers {best[2]['valid_acc']:.3f}")
    assert best[1]["valid_acc"] > small + 0.2, (small, best[1])
    assert best[1]["valid_small_acc"] == pytest.approx(small)
    spe = len(curves[1]) // 3
    assert len(curves[2]) == len(curves[1])  # same global batch: same number of steps
    a, b = (c.reshape(3, spe).mean(1) for c in (curves[1], curves[2]))
    assert a[-1] < a[0] and b[-1] < b[0]
    np.testing.assert_allclose(a, b, rtol=0.15)
    assert (tmp_path / "best1" / "hiea_llm.json").is_file()


def test_bad_llm_input_is_one_clear_error(e2e, tiny_encoder_dir, tiny_llm_dir, tmp_path):
    run = copy_stages(e2e["run"], tmp_path / "run", UPSTREAM)
    # the LLM folder is an encoder, not a causal LM: refused before the stage starts
    pipe = Pipeline(_cfg(e2e, tiny_encoder_dir), e2e["data"], run)
    for s in ("ingest", "verbalize", "embed", "retrieve", "decode", "calibrate", "route"):
        pipe.run_stage(s)
    with pytest.raises(UserError, match="not a causal LM"):
        pipe.run_stage("llm_train")
    assert not (run / ".llm_train.tmp").exists()
    # a trained folder that is not an llm_train model
    with pytest.raises(UserError, match="llm.trained"):
        Pipeline(_cfg(e2e, tiny_llm_dir, "llm.train=false", f"llm.trained={tiny_llm_dir}"), e2e["data"], run).run_stage("llm")
    # a run without decoded lists
    shutil.rmtree(run / "decode" / "standard")
    with pytest.raises(UserError, match="no decoded lists"):
        Pipeline(_cfg(e2e, tiny_llm_dir, "route.target_precision=0.95"), e2e["data"], run).run_stage("route")


def test_router_labels_never_come_from_their_own_anchors(hiea_run, monkeypatch):
    """Each fold of the seed links is decoded with the other folds as anchors only: a labelled
    source is never an anchor of the decode its features come from."""
    import hiea_ray.run.labelled as labelled

    ctx = hiea_run["pipe"]
    cfg = ctx.cfg
    seeds = labelled.seeds_of(ctx)
    graphs, fold = seeds.graphs, seeds.fold
    seen = []
    real = labelled.run_decoders

    def spy(names, s2t, s2t_score, t2s, t2s_score, q, b, c, graphs_fn):
        seen.append((q, graphs_fn().anchors))
        return real(names, s2t, s2t_score, t2s, t2s_score, q, b, c, graphs_fn)

    monkeypatch.setattr(labelled, "run_decoders", spy)
    lab = labelled.labelled_decode(ctx, "standard", seeds, "structure", ctx.embeddings())
    X, right, src, cand = lab.X, lab.list_right(), lab.src, lab.cand
    assert len(seen) == cfg.route.folds and len(src) == (fold >= 0).sum() == len(X) == len(cand)
    # each labelled source's list is its fold's primary list, in global ids: right = its head is the gold
    gold = dict(zip(seeds.links["src"].to_pylist(), seeds.links["tgt"].to_pylist()))
    assert np.array_equal(lab.tgt, [gold[s] for s in src.tolist()])
    assert np.array_equal(right, cand[:, 0] == lab.tgt)
    for d in cfg.decode.decoders:  # every decoder's one-to-one answer is labelled too
        assert len(lab.answer[d]) == len(src) and np.isin(lab.answer[d], np.append(graphs.ids_t, -1)).all()
        assert np.isnan(lab.answer_score[d]).tolist() == (lab.answer[d] < 0).tolist()
        assert 0 < lab.right(d).mean() < 1
    for j, (q, anchors) in enumerate(seen):
        f_src = seeds.links["src"].to_numpy()[fold == j]
        assert np.isin(f_src, q).all()  # the fold is decoded ...
        anchor_src = graphs.ids_s[anchors[:, 0]]
        assert not np.isin(f_src, anchor_src).any()  # ... without its own links as anchors
        assert len(anchors) == (fold != j).sum()
    assert 0 < right.mean() < 1  # labels are not trivially right
    # the route stage's labelled sources are the calibrate stage's, as decoded here
    routed = pq.read_table(hiea_run["run"] / "route" / "standard" / "labelled.parquet")
    assert np.array_equal(routed["src"].to_numpy(), src) and np.array_equal(routed["right"].to_numpy(), right)


def test_route_alone_on_both_protocols(e2e, tmp_path):
    """route.enabled without the LLM tier: both protocols routed (all-targets: every KG1 entity),
    the target precision met on the labelled sources, the budget respected."""
    run = copy_stages(e2e["run"], tmp_path / "run", UPSTREAM)
    cfg = load_config(overrides=tiny_overrides(
        e2e["model"], "decode.decoders=[top1,sinkhorn,structure]", "route.enabled=true", "route.folds=3",
        "route.target_precision=0.9", "evaluate.protocols=[standard,all-targets]"))
    pipe = Pipeline(cfg, e2e["data"], run)
    metrics = pipe.run_all()
    assert "route" in pipe.timings and "llm" not in pipe.timings and "hiea" not in metrics
    rep = json.loads((run / "route" / "report.json").read_text())["protocols"]
    pair = pipe.pair()
    assert rep["all-targets"]["sources"] == int((pair.entities["kg"].to_numpy() == 1).sum())
    for p in ("standard", "all-targets"):
        lab = rep[p]["labelled"]
        assert lab["precision"] is None or lab["precision"] >= 0.9  # met on the labelled (out-of-fold) sources
    budget = Pipeline(load_config(overrides=tiny_overrides(
        e2e["model"], "decode.decoders=[top1,sinkhorn,structure]", "route.enabled=true", "route.folds=3",
        "route.target_precision=1.0", "route.max_llm_fraction=0.3", "evaluate.protocols=[standard,all-targets]")),
        e2e["data"], run)
    budget.run_stage("route")
    rep = json.loads((run / "route" / "report.json").read_text())["protocols"]
    assert all(rep[p]["labelled"]["certain_fraction"] >= 0.7 - 1e-9 for p in rep)  # at most 30% to the LLM
    # labelled by the validation links only (what "auto" picks when the retriever trained on "train"):
    # the train links stay anchors of every fold's decode and are never labelled
    valid_only = Pipeline(load_config(overrides=tiny_overrides(
        e2e["model"], "decode.decoders=[top1,sinkhorn,structure]", "route.enabled=true", "route.folds=3",
        "route.target_precision=0.9", "route.labelled=[valid]", "evaluate.protocols=[standard,all-targets]")),
        e2e["data"], run)
    valid_only.run_stage("calibrate")  # the labelled sources are the calibrate stage's
    valid_only.run_stage("route")
    valid = pair.links_of("valid")["src"].to_numpy()
    for p in ("standard", "all-targets"):
        lab = pq.read_table(run / "route" / p / "labelled.parquet")
        assert sorted(lab["src"].to_pylist()) == sorted(valid.tolist())


def test_router_labels_only_what_no_small_model_trained_on(e2e):
    from hiea_ray.run.labelled import labelled_splits

    def splits(*sets):
        return labelled_splits(load_config(overrides=tiny_overrides(e2e["model"], *sets)), ["train", "valid"])

    assert splits() == ["train", "valid"]  # zero-shot small models: every seed link is test-like
    assert splits("train.enabled=true") == ["valid"]  # the retriever learned the train links
    assert splits("rerank.enabled=true") == ["valid"]  # so did the reranker
    assert splits("train.enabled=true", "route.labelled=[train]") == ["train"]  # said explicitly: as said
    with pytest.raises(UserError, match="route.labelled: test not among the structure anchors"):
        splits("route.labelled=[test]")
    cfg = load_config(overrides=tiny_overrides(e2e["model"], "train.enabled=true"))
    with pytest.raises(UserError, match="data.valid_fraction"):
        labelled_splits(cfg, ["train"])
