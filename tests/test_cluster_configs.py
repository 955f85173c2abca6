"""The Serve config and the KubeRay manifests in cluster/ are valid for what they name: Ray's own
Serve config schema accepts them, their deployments are the app's, their import path resolves,
the RayService carries the same Serve config as cluster/serve.yaml, the RayJob's entrypoint and
configs exist and load, and resources make sense."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def _serve_schema(cfg: dict):
    from ray.serve.schema import ServeDeploySchema

    return ServeDeploySchema.model_validate(cfg)


@pytest.fixture(scope="module")
def serve_cfg():
    return yaml.safe_load((ROOT / "cluster" / "serve.yaml").read_text())


def test_serve_config_is_valid_and_names_the_apps_deployments(serve_cfg):
    schema = _serve_schema(serve_cfg)
    (app,) = schema.applications
    module, _, attr = app.import_path.partition(":")
    builder = getattr(importlib.import_module(module), attr)
    assert callable(builder)
    from hiea_ray.serve import app as serve_app

    names = {d.name for d in app.deployments}
    assert names == {serve_app.Ingress.name, serve_app.Retriever.name, serve_app.Router.name, serve_app.LLM.name}
    with pytest.raises(ValueError, match="run"):
        builder({})
    # the overrides are real config fields
    from hiea_ray.config import load_config

    load_config(overrides=app.args["overrides"])
    by = {d.name: d for d in app.deployments}
    assert by["LLM"].ray_actor_options.num_gpus == 1
    a = by["LLM"].autoscaling_config
    assert 1 <= a["min_replicas"] <= a["max_replicas"]


def test_rayservice_carries_the_same_serve_config_and_sane_resources(serve_cfg):
    rs = yaml.safe_load((ROOT / "cluster" / "rayservice.yaml").read_text())
    assert rs["apiVersion"] == "ray.io/v1" and rs["kind"] == "RayService" and rs["metadata"]["name"]
    inner = yaml.safe_load(rs["spec"]["serveConfigV2"])
    _serve_schema(inner)
    assert inner == serve_cfg
    cluster = rs["spec"]["rayClusterConfig"]
    import ray

    assert cluster["rayVersion"] == ray.__version__
    gpus = 0
    for g in cluster["workerGroupSpecs"]:
        assert g["minReplicas"] <= g["replicas"] <= g["maxReplicas"]
        (c,) = g["template"]["spec"]["containers"]
        gpus += int(c["resources"]["limits"].get("nvidia.com/gpu", 0)) * g["maxReplicas"]
        assert {v["name"] for v in g["template"]["spec"]["volumes"]} >= {m["name"] for m in c["volumeMounts"]}
    llm = {d["name"]: d for d in inner["applications"][0]["deployments"]}["LLM"]
    # the LLM tier's largest scale-out fits the GPU workers' largest scale-out
    assert llm["autoscaling_config"]["max_replicas"] * llm["ray_actor_options"]["num_gpus"] <= gpus
    head = cluster["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert 8000 in [p["containerPort"] for p in head["ports"]]


def test_rayjob_runs_files_that_exist_with_configs_that_load_and_gpus_for_its_actors():
    """cluster/rayjob.yaml: a KubeRay RayJob whose entrypoint is a script of this repo with config
    files that exist and load (merged as jobs/align.py merges them), the Ray version installed,
    a working dir, paths on the mounted volume, and GPUs for the GPU actors the configs ask for."""
    import json
    import shlex

    import ray

    from hiea_ray.config import load_config

    job = yaml.safe_load((ROOT / "cluster" / "rayjob.yaml").read_text())
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob" and job["metadata"]["name"]
    spec = job["spec"]
    argv = shlex.split(spec["entrypoint"])
    assert argv[0] == "python" and (ROOT / argv[1]).is_file()
    opts = {k: v for k, v in zip(argv[2::2], argv[3::2])}
    assert (ROOT / opts["--config"]).is_file() and (ROOT / opts["--config-extra"]).is_file()
    extra = yaml.safe_load((ROOT / opts["--config-extra"]).read_text())

    def flat(d, prefix=""):
        for k, v in d.items():
            yield from flat(v, f"{prefix}{k}.") if isinstance(v, dict) else [f"{prefix}{k}={json.dumps(v)}"]

    cfg = load_config(ROOT / opts["--config"], list(flat(extra)))  # the job's config, as jobs/align.py builds it
    assert yaml.safe_load(spec["runtimeEnvYAML"])["working_dir"] == "."
    cluster = spec["rayClusterSpec"]
    assert cluster["rayVersion"] == ray.__version__
    head = cluster["headGroupSpec"]
    assert str(head["rayStartParams"].get("num-cpus")) == "0"  # the head runs the driver only
    mounts = {m["mountPath"] for c in head["template"]["spec"]["containers"] for m in c["volumeMounts"]}
    assert all(any(opts[k].startswith(m + "/") for m in mounts) for k in ("--data", "--out"))
    gpus = sum(g["replicas"] * int(c["resources"]["limits"].get("nvidia.com/gpu", 0))
               for g in cluster["workerGroupSpecs"] for c in g["template"]["spec"]["containers"])
    for name, need in (("embed", cfg.embed.num_actors * cfg.embed.gpus_per_actor),
                       ("llm", cfg.llm.num_actors * cfg.llm.gpus_per_actor),
                       ("verbalize.llm", cfg.verbalize.llm.num_actors * cfg.verbalize.llm.gpus_per_actor),
                       ("train", cfg.train.scaling.num_workers * cfg.train.scaling.use_gpu)):
        assert need <= gpus, f"{name} asks for {need} GPUs; the RayJob's workers have {gpus}"


def test_cluster_launcher_yaml_passes_rays_own_validation_and_fits_the_gpu_configs():
    """cluster/launcher.yaml (`ray up`): Ray's autoscaler fills in its defaults and validates it
    against its schema exactly as `ray up` does; the Ray in the image and the one the nodes start
    is the version installed here; the head runs no tasks; the GPU nodes hold the actors that
    cluster/gpu.yaml asks for; the commands it runs and documents name files of this repo."""
    import copy
    import re

    import ray
    from ray.autoscaler._private.util import prepare_config, validate_config

    from hiea_ray.config import load_config

    raw = (ROOT / "cluster" / "launcher.yaml").read_text()
    cfg = yaml.safe_load(raw)
    validate_config(prepare_config(copy.deepcopy(cfg)))
    assert f"ray:{ray.__version__}-" in cfg["docker"]["image"]
    types = cfg["available_node_types"]
    assert types[cfg["head_node_type"]]["resources"]["CPU"] == 0
    assert any("--num-cpus=0" in c for c in cfg["head_start_ray_commands"])
    gpu_nodes = [t for t in types.values() if t["resources"].get("GPU")]
    per_node = max(t["resources"]["GPU"] for t in gpu_nodes)
    most = sum(t["resources"]["GPU"] * t["max_workers"] for t in gpu_nodes)
    gpu = yaml.safe_load((ROOT / "cluster" / "gpu.yaml").read_text())
    assert gpu["embed"]["num_actors"] * gpu["embed"]["gpus_per_actor"] <= most
    assert gpu["embed"]["cpus_per_actor"] * per_node <= max(t["resources"]["CPU"] for t in gpu_nodes)
    # the repository is synced to where the setup and start commands use it
    (repo,) = [k for k, v in cfg["file_mounts"].items() if v == "."]
    for cmd in cfg["setup_commands"] + cfg["head_start_ray_commands"] + cfg["worker_start_ray_commands"]:
        for path in re.findall(re.escape(repo) + r"/([\w./-]+)", cmd):
            assert path.startswith(".venv/") or (ROOT / path).exists(), f"{cmd!r} names {path}, not in the repo"
    assert any("scripts/setup.sh" in c for c in cfg["setup_commands"]) and (ROOT / "scripts" / "setup.sh").is_file()
    # the documented submit command runs files that exist, with configs that load
    submits = re.findall(r"python (\S+) .*?--config (\S+) --config-extra (\S+)", raw, re.S)
    assert submits
    for script, conf, extra in submits:
        assert (ROOT / script).is_file() and (ROOT / extra).is_file()
        load_config(ROOT / conf)
