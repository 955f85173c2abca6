"""The reranker on Ray: Ray Train learns (validation Hits@1 above the retriever's), the pipeline's
rerank_train -> rerank (Ray Data) -> decode chain, score fusion by config, and a killed rerank
stage that resumes."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest
from ray_conftest_helpers import copy_stages, e2e_run, manifest, stage_key, tiny_overrides

from hiea_ray.config import load_config
from hiea_ray.io import column_to_numpy, read_dir, read_lists
from hiea_ray.pipeline import Pipeline

pytestmark = pytest.mark.ray

UPSTREAM = ["ingest", "verbalize", "embed", "retrieve"]


@pytest.fixture(scope="module")
def e2e(ray_shared, synthetic_dir, tiny_encoder_dir, tmp_path_factory):
    return e2e_run(tmp_path_factory, synthetic_dir, tiny_encoder_dir)


def _rerank_cfg(model_dir, *extra):
    return load_config(
        overrides=tiny_overrides(
            model_dir,
            "rerank.enabled=true",
            "rerank.train=false",
            f"rerank.model={model_dir}",
            "rerank.k=5",
            "rerank.max_length=48",
            "rerank.rows_per_batch=100",
            "rerank.cpus_per_actor=1",
            *extra,
        )
    )


@pytest.mark.slow
def test_reranker_training_beats_the_retriever(ray_shared, tmp_path):
    """MiniLM (packaged) + a fresh head, 160 train links x (1 + 3 negatives), 2 epochs on Ray Train:
    validation Hits@1 of the reranked top-10 lists rises well above the retriever's own order
    (zero-shot MiniLM embeddings). A 3000-entity synthetic pair: the shared 600-entity one has
    too few train and validation links for this. Slow (minutes of MiniLM on 2 cores); the fast
    suite checks learning with the tiny model below."""
    import torch

    from hiea_ray.config import VerbalizeConfig
    from hiea_ray.core.encoder import Encoder
    from hiea_ray.core.verbalize import build_contexts, verbalize_table
    from hiea_ray.kg.readers import read_pair
    from hiea_ray.kg.synthetic import generate
    from hiea_ray.train.reranker import train_reranker

    generate(tmp_path / "pair", n_entities=3000, seed=0)
    synthetic_pair = read_pair(tmp_path / "pair")
    texts = verbalize_table(build_contexts(synthetic_pair), VerbalizeConfig(max_words=16)).sort_by("id")
    torch.set_num_threads(2)
    vecs = Encoder("default", max_length=48, device=torch.device("cpu")).encode(texts["text"].to_pylist(), 64)
    cfg = load_config(
        overrides=[
            "rerank.enabled=true", "rerank.k=10", "rerank.max_length=48", "rerank.negatives=3", "rerank.negative_depth=30",
            "rerank.max_train_links=160", "rerank.valid_links=100", "rerank.epochs=2", "rerank.lr=3e-4",
            "rerank.warmup_steps=0", "rerank.eval_every=20", "rerank.batch_size=8", "rerank.scaling.torch_threads=2",
        ]
    )
    res = train_reranker(cfg, texts, synthetic_pair.links, texts["id"].to_numpy(), texts["kg"].to_numpy(), vecs, tmp_path / "out")
    base, best = res["retriever_valid"], res["best"]
    print(f"\nretriever valid Hits@1 {base['valid_hits@1']:.3f} -> reranker {best['valid_hits@1']:.3f}")
    assert best["valid_hits@1"] > base["valid_hits@1"] + 0.05, (base, best)
    assert (tmp_path / "out" / "model" / "config.json").is_file() and (tmp_path / "out" / "curve.png").is_file()
    hist = json.loads((tmp_path / "out" / "history.json").read_text())
    assert hist["train_links"] == 160 and len(hist["curve"]) == 2 * (160 // 8)


def test_reranker_training_learns_on_ray_train(ray_shared, synthetic_dir, tiny_encoder_dir, tmp_path):
    """MiniLM + a fresh one-logit head, trained briefly on Ray Train on the shared 600-entity pair:
    its validation Hits@1 over the retriever's top-k lists rises well above the untrained model's
    (the same weights before training, scored by the same function). (A tiny random BERT does not
    learn pair matching in a test's budget: its loss stays at chance.)"""
    import torch

    from hiea_ray.config import VerbalizeConfig
    from hiea_ray.core import cross_encoder as ce
    from hiea_ray.core.encoder import Encoder
    from hiea_ray.core.verbalize import build_contexts, verbalize_table
    from hiea_ray.kg.readers import read_pair
    from hiea_ray.train.reranker import reranker_data, train_reranker
    from hiea_ray.train.tasks import valid_lists

    pair = read_pair(synthetic_dir)
    texts = verbalize_table(build_contexts(pair), VerbalizeConfig(max_words=16)).sort_by("id")
    torch.set_num_threads(2)
    vecs = Encoder("default", max_length=32, device=torch.device("cpu")).encode(texts["text"].to_pylist(), 64)
    cfg = load_config(
        overrides=[
            "rerank.enabled=true", "rerank.k=5", "rerank.max_length=40", "rerank.max_train_links=64",
            "rerank.negatives=3", "rerank.negative_depth=20", "rerank.valid_links=40", "rerank.epochs=1", "rerank.lr=3e-4",
            "rerank.warmup_steps=0", "rerank.eval_every=100", "rerank.batch_size=8", "rerank.scaling.torch_threads=2",
        ]
    )
    ids, kg = texts["id"].to_numpy(), texts["kg"].to_numpy()
    _, valid = reranker_data(cfg, texts, pair.links, ids, kg, vecs)
    model, tok = ce.load_reranker("default")
    untrained = ce.evaluate(model, tok, valid_lists(valid), 40, torch.device("cpu"))
    res = train_reranker(cfg, texts, pair.links, ids, kg, vecs, tmp_path / "out")
    best = res["best"]
    print(f"\nuntrained valid Hits@1 {untrained['valid_hits@1']:.3f}, retriever {res['retriever_valid']['valid_hits@1']:.3f}"
          f" -> trained {best['valid_hits@1']:.3f}")
    assert best["valid_hits@1"] > untrained["valid_hits@1"] + 0.1, (untrained, best)
    trained = ce.evaluate(*ce.load_reranker(str(tmp_path / "out" / "model")), valid_lists(valid), 40, torch.device("cpu"))
    assert trained["valid_hits@1"] == pytest.approx(best["valid_hits@1"])  # the saved model is the best one


def test_pipeline_reranks_fuses_and_decodes(e2e, tmp_path):
    run = copy_stages(e2e["run"], tmp_path / "run", UPSTREAM)
    cfg = _rerank_cfg(e2e["model"])
    pipe = Pipeline(cfg, e2e["data"], run)
    metrics = pipe.run_all()
    assert {n: t["reused"] for n, t in pipe.timings.items()} == {
        "ingest": True, "verbalize": True, "embed": True, "retrieve": True, "rerank": False, "decode": False, "calibrate": False,
        "export": False,
        "evaluate": False,
    }
    stats = manifest(run, "rerank")["stats"]
    q, cand, _ = read_lists(run / "retrieve" / "standard" / "s2t.parquet")
    assert stats["pairs"] == sum(int((read_lists(run / "retrieve" / p / "s2t.parquet")[1][:, :5] >= 0).sum())
                                 for p in ("standard", "all-targets"))
    assert stats["pairs_per_s"] > 0
    t = read_dir(run / "rerank" / "standard" / "parts").sort_by("src")
    assert np.array_equal(t["src"].to_numpy(), q)
    assert np.array_equal(column_to_numpy(t["cand"]), cand[:, :5])  # the retriever's top-5, its order
    # decoded lists keep the whole candidate graph (the reranked top-5 + the retriever's list,
    # each target once), ordered by the fused score
    _, top1, score = read_lists(run / "decode" / "standard" / "top1.parquet")
    fin = np.isfinite(score)
    assert top1.shape[1] == 5 + cand.shape[1] and (fin[:, :-1] | ~fin[:, 1:]).all()  # padding last
    assert all(np.all(np.diff(score[i][fin[i]]) <= 1e-6) for i in range(len(score)))
    assert all(set(top1[i][top1[i] >= 0]) == set(cand[i][cand[i] >= 0]) for i in range(len(cand)))
    assert set(metrics) >= {"top1", "csls", "sinkhorn"}

    # fusion weight 0 = the retriever's scores: top1 gives the retriever's order back
    cfg0 = _rerank_cfg(e2e["model"], "decode.fusion_weight=0")
    p0 = Pipeline(cfg0, e2e["data"], run)
    p0.run_all()
    assert p0.timings["rerank"]["reused"] and not p0.timings["decode"]["reused"]
    _, top1_0, _ = read_lists(run / "decode" / "standard" / "top1.parquet")
    assert np.array_equal(top1_0[:, : cand.shape[1]], cand)


def test_rerank_stage_resumes_after_kill(e2e, tmp_path, caplog):
    clean = copy_stages(e2e["run"], tmp_path / "clean", UPSTREAM)
    cfg = _rerank_cfg(e2e["model"], "evaluate.protocols=[standard]")  # one protocol is enough here
    Pipeline(cfg, e2e["data"], clean).run_stage("retrieve")
    Pipeline(cfg, e2e["data"], clean).run_stage("rerank")
    parts = sorted((clean / "rerank" / "standard" / "parts").glob("*.parquet"))
    assert len(parts) >= 3

    run = copy_stages(e2e["run"], tmp_path / "run", UPSTREAM)
    tmp = run / ".rerank.tmp"
    (tmp / "standard" / "parts").mkdir(parents=True)
    (tmp / ".key.json").write_text(json.dumps(stage_key(clean, "rerank"), sort_keys=True))
    for f in parts[:2]:
        shutil.copy2(f, tmp / "standard" / "parts" / f.name)
    data = parts[2].read_bytes()
    (tmp / "standard" / "parts" / "cut.parquet").write_bytes(data[: len(data) // 2])  # killed mid-write
    done = sum(pq.ParquetFile(f).metadata.num_rows for f in parts[:2])

    pipe = Pipeline(cfg, e2e["data"], run)
    pipe.run_stage("retrieve")
    with caplog.at_level("INFO", logger="hiea_ray"):
        pipe.run_stage("rerank")
    assert any("resuming" in r.getMessage() and f"{done} of" in r.getMessage() for r in caplog.records)
    a = read_dir(clean / "rerank" / "standard" / "parts").sort_by("src")
    b = read_dir(run / "rerank" / "standard" / "parts").sort_by("src")
    assert np.array_equal(a["src"].to_numpy(), b["src"].to_numpy())
    assert np.allclose(column_to_numpy(a["rerank"]), column_to_numpy(b["rerank"]), atol=1e-4)
    assert not tmp.exists()


def test_pipeline_trains_the_reranker_then_uses_it(e2e, tmp_path):
    run = copy_stages(e2e["run"], tmp_path / "run", UPSTREAM)
    cfg = _rerank_cfg(
        e2e["model"], "rerank.train=true", "rerank.max_train_links=48", "rerank.valid_links=30", "rerank.negatives=2",
        "rerank.negative_depth=10", "rerank.eval_every=100", "rerank.torch_threads=1", "rerank.scaling.cpus_per_worker=0.5",
        "rerank.lr=1e-3", "evaluate.protocols=[standard]",
    )
    pipe = Pipeline(cfg, e2e["data"], run)
    pipe.run_all()
    assert not pipe.timings["rerank_train"]["reused"]
    assert manifest(run, "rerank")["inputs"]["rerank_train"] == manifest(run, "rerank_train")["fingerprint"]
    assert not (run / "rerank_train" / "ray").exists()
    # the rerank stage's logits are the trained model's, not the base model's fresh head's
    from hiea_ray.core.cross_encoder import load_reranker, score_pairs
    from hiea_ray.io import TextLookup

    t = read_dir(run / "rerank" / "standard" / "parts").sort_by("src").slice(0, 20)
    cand, logits = column_to_numpy(t["cand"]), column_to_numpy(t["rerank"])
    r, c = np.nonzero(cand >= 0)
    text = TextLookup(pipe.texts())
    src_t, cand_t = text(t["src"].to_numpy()[r]), text(cand[r, c])
    trained = score_pairs(*load_reranker(str(run / "rerank_train" / "model")), src_t, cand_t, 48)
    base = score_pairs(*load_reranker(str(e2e["model"])), src_t, cand_t, 48)
    np.testing.assert_allclose(logits[r, c], trained, atol=1e-4)
    assert not np.allclose(logits[r, c], base, atol=1e-3)


def test_sinkhorn_candidates_are_the_decoders_top_k_with_cosines(e2e, tmp_path):
    run = copy_stages(e2e["run"], tmp_path / "run", UPSTREAM)
    cfg = _rerank_cfg(e2e["model"], "rerank.candidates=sinkhorn", "evaluate.protocols=[standard]")
    Pipeline(cfg, e2e["data"], run).run_stage("rerank")
    t = read_dir(run / "rerank" / "standard" / "parts").sort_by("src")
    # the e2e run decoded with the same sinkhorn settings: its lists' top-5 are the candidates
    q, sink, _ = read_lists(e2e["run"] / "decode" / "standard" / "sinkhorn.parquet")
    assert np.array_equal(t["src"].to_numpy(), q)
    assert np.array_equal(column_to_numpy(t["cand"]), sink[:, :5])
    # retr holds each pair's cosine, read off the retrieved lists
    ids, kg, vecs = e2e["pipe"].embeddings()
    cand = column_to_numpy(t["cand"])
    r, c = np.nonzero(cand >= 0)
    cos = np.einsum("nd,nd->n", vecs[np.searchsorted(ids, q[r])], vecs[np.searchsorted(ids, cand[r, c])])
    assert np.allclose(column_to_numpy(t["retr"])[r, c], cos, atol=1e-4)
