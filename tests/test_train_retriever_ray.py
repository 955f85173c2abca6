"""Retriever training on Ray Train with a tiny encoder on the synthetic pair.

- validation MRR rises over the untrained model;
- 2 workers (global batch split, negatives all-gathered) follow the 1-worker loss curve, with DDP
  and with DeepSpeed ZeRO-2 (gloo on CPU);
- an injected worker failure restarts from the last checkpoint's step, not from zero.
"""

import numpy as np
import pytest

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def texts_and_links(synthetic_dir):
    from hiea_ray.config import VerbalizeConfig
    from hiea_ray.core.verbalize import build_contexts, verbalize_table
    from hiea_ray.kg.readers import read_pair

    pair = read_pair(synthetic_dir)
    return verbalize_table(build_contexts(pair), VerbalizeConfig(max_words=24)), pair.links


def _cfg(tiny_encoder_dir, *extra):
    from hiea_ray.config import load_config

    return load_config(
        overrides=[
            f"embed.model={tiny_encoder_dir}",
            "embed.max_length=32",
            "train.enabled=true",
            "train.rounds=1",
            "train.epochs_per_round=4",
            "train.batch_size=16",
            "train.lr=1e-3",
            "train.warmup_steps=0",
            "train.eval_every=4",
            "train.cpus_per_worker=0.5",
            "train.torch_threads=1",
            *extra,
        ]
    )


def test_training_raises_validation_mrr(ray_shared, tiny_encoder_dir, texts_and_links, tmp_path):
    from hiea_ray.core.encoder import Encoder

    texts, links = texts_and_links
    from hiea_ray.ray_layer.train_retriever import train_retriever

    cfg = _cfg(tiny_encoder_dir, "train.hard_negatives=2", "train.hard_rank_to=50")
    res = train_retriever(cfg, texts, links, tmp_path)
    best = res["history"][-1]["best"]
    assert best["valid_mrr"] > res["initial"]["valid_mrr"] + 0.05, (res["initial"], best)
    enc = Encoder(str(tmp_path / "model"))  # a normal HF folder the embed stage can load
    v = enc.encode(["a b c"])
    assert np.isclose(np.linalg.norm(v), 1.0, atol=1e-5)
    assert (tmp_path / "curve.png").is_file()


def _epoch_means(curve, steps_per_epoch):
    losses = np.array([c[1] for c in curve])
    return [float(losses[i : i + steps_per_epoch].mean()) for i in range(0, len(losses), steps_per_epoch)]


def test_two_workers_follow_the_one_worker_loss_curve(ray_shared, tiny_encoder_dir, texts_and_links, tmp_path):
    from hiea_ray.ray_layer.train_retriever import train_retriever

    texts, links = texts_and_links
    curves = {}
    for workers, zero in ((1, 0), (2, 0), (2, 2)):
        cfg = _cfg(tiny_encoder_dir, "train.hard_negatives=0", f"train.num_workers={workers}", f"train.zero_stage={zero}")
        res = train_retriever(cfg, texts, links, tmp_path / f"w{workers}z{zero}")
        curves[workers, zero] = res["history"][-1]["curve"]
    one = curves[1, 0]
    spe = len(one) // 4
    for key in ((2, 0), (2, 2)):  # 2 workers with DDP, and with DeepSpeed ZeRO-2 (gloo on CPU)
        assert len(curves[key]) == len(one)  # same global batch: same number of steps
        a, b = _epoch_means(one, spe), _epoch_means(curves[key], spe)
        assert a[-1] < a[0] and b[-1] < b[0], key  # both learn
        np.testing.assert_allclose(a, b, rtol=0.15, err_msg=str(key))  # and follow the same curve


def test_worker_failure_resumes_from_checkpoint_step(ray_shared, tiny_encoder_dir, texts_and_links, tmp_path):
    from hiea_ray.ray_layer.train_retriever import train_retriever

    texts, links = texts_and_links
    cfg = _cfg(tiny_encoder_dir, "train.hard_negatives=0", "train.epochs_per_round=2", "train.max_failures=1")
    res = train_retriever(cfg, texts, links, tmp_path, fail_at_step=6)
    last = res["history"][-1]["last"]
    steps = [int(c[0]) for c in res["history"][-1]["curve"]]
    assert last["resumed"] == [4]  # restarted once, at the checkpoint of step 4 (eval_every=4)
    assert steps == list(range(1, last["step"] + 1))  # no step trained twice, none skipped


def test_zero2_worker_failure_resumes_from_its_sharded_checkpoint(ray_shared, tiny_encoder_dir, texts_and_links, tmp_path):
    """DeepSpeed ZeRO-2 on 2 workers: each saves its optimizer shard; a restart loads them all."""
    from hiea_ray.ray_layer.train_retriever import train_retriever

    texts, links = texts_and_links
    cfg = _cfg(tiny_encoder_dir, "train.hard_negatives=0", "train.epochs_per_round=2", "train.max_failures=1",
               "train.num_workers=2", "train.zero_stage=2")
    res = train_retriever(cfg, texts, links, tmp_path, fail_at_step=6)
    last = res["history"][-1]["last"]
    steps = [int(c[0]) for c in res["history"][-1]["curve"]]
    assert last["resumed"] == [4]
    assert steps == list(range(1, last["step"] + 1))
    assert res["history"][-1]["best"]["valid_mrr"] > res["initial"]["valid_mrr"]


def test_killed_run_resumes_from_its_checkpoint(ray_shared, tiny_encoder_dir, texts_and_links, tmp_path):
    """The driver dies (no retries left): running the same job again continues at the saved step."""
    from hiea_ray.ray_layer.train_retriever import train_retriever

    texts, links = texts_and_links
    cfg = _cfg(tiny_encoder_dir, "train.hard_negatives=0", "train.epochs_per_round=2", "train.max_failures=0")
    with pytest.raises(Exception):
        train_retriever(cfg, texts, links, tmp_path, fail_at_step=6)
    res = train_retriever(cfg, texts, links, tmp_path)
    last = res["history"][-1]["last"]
    steps = [int(c[0]) for c in res["history"][-1]["curve"]]
    assert last["resumed"] == [4]
    assert steps == list(range(1, last["step"] + 1))
