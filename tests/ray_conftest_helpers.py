"""Helpers shared by the Ray-based tests (test_pipeline_ray, test_cluster_ray, test_cli).

Plain functions, no fixtures: each Ray test module owns its Ray instance (a module-scoped fixture)
so that the 2-node cluster test never shares a Ray instance with the other modules. The one full
pipeline run on the synthetic pair (``e2e_run``) is made once per session and shared on disk.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

def run_stages() -> list[str]:
    """The stages a default config runs, in order (retriever training and reranking are off by default)."""
    from hiea_ray.config import Config
    from hiea_ray.stages import REGISTRY, STAGES

    return [s for s in STAGES if REGISTRY[s].enabled(Config())]


# Small settings for a 2-core machine: one torch thread per encoder actor, several small blocks
# (so the embed stage writes several part files and a resume has something to keep).
TINY_EMBED = [
    # fp32 whatever the CPU: the tests compare with fp32 references, and bf16 (what backend auto
    # picks on CPUs with AMX / AVX512-BF16) is not batch-invariant
    "embed.backend=torch",
    "rerank.backend=torch",
    "embed.torch_threads=1",
    "embed.rows_per_batch=256",
    "embed.batch_size=64",
    "embed.max_length=64",
    "verbalize.batch_size=256",
]


def tiny_overrides(model_dir: str | Path, *extra: str) -> list[str]:
    return [f"embed.model={model_dir}", *TINY_EMBED, *extra]


def shutdown_ray() -> None:
    import ray

    if ray.is_initialized():
        ray.shutdown()


def start_local_ray(num_cpus: int = 2) -> None:
    """A fresh local Ray instance, like ray's ``ray_start_regular_shared``."""
    import ray

    shutdown_ray()
    ray.init(
        address="local",  # always a new instance, never one found on this machine
        num_cpus=num_cpus,
        include_dashboard=False,
        object_store_memory=200 * 2**20,
        log_to_driver=False,
    )


def copy_stages(src_run: Path, dst_run: Path, names: list[str]) -> Path:
    """Copy finished stage folders (manifests and files, mtimes kept) into another run folder."""
    dst_run.mkdir(parents=True, exist_ok=True)
    for name in names:
        shutil.copytree(src_run / name, dst_run / name)
    return dst_run


def snapshot(run: Path) -> dict[str, tuple[int, int]]:
    """Relative path -> (size, mtime_ns) of every file under a run folder."""
    out = {}
    for p in sorted(Path(run).rglob("*")):
        if p.is_file():
            st = p.stat()
            out[str(p.relative_to(run))] = (st.st_size, st.st_mtime_ns)
    return out


def manifests(run: Path) -> dict[str, str]:
    return {p.parent.name: p.read_text() for p in sorted(Path(run).glob("*/manifest.json"))}


def manifest(run: Path, stage: str) -> dict:
    return json.loads((Path(run) / stage / "manifest.json").read_text())


def stage_key(run: Path, stage: str) -> dict:
    """The resume key (``<run>/.<stage>.tmp/.key.json``) of a stage, from its finished manifest."""
    m = manifest(run, stage)
    return {k: m[k] for k in ("schema_version", "config_hash", "inputs")}


_E2E: dict = {}


def e2e_cached(data: Path, model: str | Path) -> bool:
    return (str(data), str(model)) in _E2E


def e2e_run(tmp_path_factory, data: Path, model: str | Path) -> dict:
    """One full pipeline run on the synthetic pair with the tiny encoder, made once per session
    (by whichever test asks first; Ray must be up) and shared: users copy its stage folders
    before changing anything. Returns cfg, run, metrics, pipe (the first run's Pipeline), data, model."""
    key = (str(data), str(model))
    if key not in _E2E:
        from hiea_ray.config import load_config
        from hiea_ray.pipeline import Pipeline

        cfg = load_config(overrides=tiny_overrides(model))
        run = tmp_path_factory.mktemp("e2e") / "run"
        pipe = Pipeline(cfg, data, run)
        metrics = pipe.run_all()
        _E2E[key] = {"cfg": cfg, "run": run, "metrics": metrics, "pipe": pipe, "data": data, "model": model}
    return _E2E[key]


def hiea_cfg(e2e: dict, llm_dir, *extra: str):
    """The HIEA tier's tiny config on the e2e run: structure decoding, router, a tiny Llama."""
    from hiea_ray.config import load_config

    return load_config(overrides=tiny_overrides(
        e2e["model"], "decode.decoders=[top1,csls,sinkhorn,structure]", "evaluate.protocols=[standard]",
        "route.folds=3", "route.max_llm_fraction=0.5", "llm.enabled=true", f"llm.model={llm_dir}", "llm.candidates=3",
        "llm.prompt_tokens=160", "llm.max_facts=3", "llm.max_train_links=48", "llm.valid_links=16", "llm.batch_size=8",
        "llm.eval_every=100", "llm.scaling.torch_threads=1", "llm.scaling.cpus_per_worker=0.5", "llm.torch_threads=1",
        "llm.rows_per_batch=16", "llm.infer_batch_size=8", "llm.readout=slots", "llm.fusion=auto", *extra))


_HIEA: dict = {}


def hiea_run_shared(tmp_path_factory, e2e: dict, llm_dir) -> dict:
    """The e2e run continued through route -> llm_train -> llm -> evaluate with ``hiea_cfg``, made
    once per session and shared (test_hiea_ray, test_serve_ray): copy before changing anything."""
    key = (str(e2e["run"]), str(llm_dir))
    if key not in _HIEA:
        from hiea_ray.pipeline import Pipeline

        run = copy_stages(e2e["run"], tmp_path_factory.mktemp("hiea") / "run", ["ingest", "verbalize", "embed"])
        cfg = hiea_cfg(e2e, llm_dir)
        pipe = Pipeline(cfg, e2e["data"], run)
        metrics = pipe.run_all()
        _HIEA[key] = {"run": run, "cfg": cfg, "metrics": metrics, "pipe": pipe}
    return _HIEA[key]
