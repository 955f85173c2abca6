"""Retriever training on Ray Train with a tiny encoder on the synthetic pair.

- validation MRR rises over the untrained model;
- 2 workers (global batch split, negatives all-gathered) follow the 1-worker loss curve;
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
    for workers in (1, 2):
        cfg = _cfg(tiny_encoder_dir, "train.hard_negatives=0", f"train.num_workers={workers}")
        res = train_retriever(cfg, texts, links, tmp_path / f"w{workers}")
        curves[workers] = res["history"][-1]["curve"]
    assert len(curves[1]) == len(curves[2])  # same global batch: same number of steps
    spe = len(curves[1]) // 4
    one, two = _epoch_means(curves[1], spe), _epoch_means(curves[2], spe)
    assert one[-1] < one[0] and two[-1] < two[0]  # both learn
    np.testing.assert_allclose(one, two, rtol=0.15)  # and follow the same curve


def test_worker_failure_resumes_from_checkpoint_step(ray_shared, tiny_encoder_dir, texts_and_links, tmp_path):
    from hiea_ray.ray_layer.train_retriever import train_retriever

    texts, links = texts_and_links
    cfg = _cfg(tiny_encoder_dir, "train.hard_negatives=0", "train.epochs_per_round=2", "train.max_failures=1")
    res = train_retriever(cfg, texts, links, tmp_path, fail_at_step=6)
    last = res["history"][-1]["last"]
    steps = [int(c[0]) for c in res["history"][-1]["curve"]]
    assert last["resumed"] == [4]  # restarted once, at the checkpoint of step 4 (eval_every=4)
    assert steps == list(range(1, last["step"] + 1))  # no step trained twice, none skipped


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
