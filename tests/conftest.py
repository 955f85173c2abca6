"""Shared fixtures for the test suite.

- ``synthetic_dir``: a small seeded synthetic KG pair (OpenEA layout, ~600 world entities).
- ``synthetic_pair`` / ``synthetic_texts``: that pair read and verbalized (Ray-free).
- ``tiny_encoder_dir``: a tiny randomly initialised BERT + WordPiece tokenizer built locally from
  the synthetic pair's names and texts (``hiea_ray.core.tiny``); no network, no downloaded weights.

Tests that are not marked ``@pytest.mark.ray`` must not start Ray: for them ``ray.init`` (and so
Ray's auto-init on first use of ``ray.data`` / ``ray.remote``) raises.
"""

from __future__ import annotations

import os

# Before torch / faiss / transformers are imported: no network, no thread oversubscription on
# small shared machines, quiet HF progress bars. setdefault: an explicit environment wins.
for _k, _v in {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "TRANSFORMERS_VERBOSITY": "error",
    "TOKENIZERS_PARALLELISM": "false",
    "OMP_NUM_THREADS": "1",
    "RAY_USAGE_STATS_ENABLED": "0",
}.items():
    os.environ.setdefault(_k, _v)

import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _refuse_ray_init_outside_ray_tests(request, monkeypatch):
    """Unmarked tests fail loudly if they (or the code they call) start or join Ray."""
    if request.node.get_closest_marker("ray") is not None:
        yield
        return
    import ray

    def refuse(*args, **kwargs):
        raise RuntimeError(
            f"{request.node.nodeid} called ray.init() but is not marked @pytest.mark.ray: "
            "unit tests must not depend on Ray (call the stage classes directly)"
        )

    monkeypatch.setattr(ray, "init", refuse)
    yield


@pytest.fixture(scope="session")
def synthetic_dir(tmp_path_factory):
    """A seeded synthetic pair in OpenEA format (generate(n_entities=600, seed=0))."""
    from hiea_ray.kg.synthetic import generate

    d = tmp_path_factory.mktemp("synthetic")
    generate(d, n_entities=600, seed=0)
    return d


@pytest.fixture(scope="session")
def synthetic_pair(synthetic_dir):
    from hiea_ray.kg.readers import read_pair

    return read_pair(synthetic_dir)


@pytest.fixture(scope="session")
def synthetic_texts(synthetic_pair):
    """(id, kg, name, text) table of the synthetic pair, default verbalization config."""
    from hiea_ray.config import VerbalizeConfig
    from hiea_ray.core.verbalize import build_contexts, verbalize_table

    return verbalize_table(build_contexts(synthetic_pair), VerbalizeConfig())


@pytest.fixture(scope="session")
def tiny_encoder_dir(tmp_path_factory, synthetic_texts):
    """A tiny random BERT (hidden 32, 2 layers) whose tokenizer is built on the synthetic texts."""
    import torch

    from hiea_ray.core.tiny import build_tiny_encoder

    torch.set_num_threads(1)
    corpus = synthetic_texts["name"].to_pylist() + synthetic_texts["text"].to_pylist()
    return build_tiny_encoder(tmp_path_factory.mktemp("tiny_encoder"), corpus, seed=0)


@pytest.fixture(scope="session")
def tiny_encoder(tiny_encoder_dir):
    """The tiny encoder loaded once on CPU (mean pooling)."""
    import torch

    from hiea_ray.core.encoder import Encoder

    return Encoder(tiny_encoder_dir, pooling="mean", max_length=128, device=torch.device("cpu"))


# -- Ray: one shared local instance per test module (ray's `ray_start_regular_shared`) ------------
@pytest.fixture(scope="module")
def ray_shared():
    """A local Ray (2 CPUs) shared by all tests of a module and shut down after it, so no Ray
    instance leaks into the Ray-free tests of other modules."""
    from ray_conftest_helpers import shutdown_ray, start_local_ray

    start_local_ray(num_cpus=2)
    yield
    shutdown_ray()


@pytest.fixture(scope="session")
def tiny_llm_dir(tmp_path_factory, synthetic_texts):
    """A tiny random Llama (hidden 32) whose tokenizer knows the prompts' words and the slot token."""
    from hiea_ray.core.prompt import HEADER, NONE, SLOT
    from hiea_ray.core.tiny import build_tiny_causal_lm

    corpus = synthetic_texts["text"].to_pylist() + [HEADER, NONE, "Source: A. B. C. D. E. F. Answer: | ; ="]
    return build_tiny_causal_lm(tmp_path_factory.mktemp("tiny_llm"), corpus, hidden=32, layers=2, heads=4,
                                extra_special=(SLOT,))
