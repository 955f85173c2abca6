"""The Serve config and the KubeRay manifests in cluster/ are valid for what they name: Ray's own
Serve config schema accepts them, their deployments are the app's, their import path resolves,
the RayService carries the same Serve config as cluster/serve.yaml, and resources make sense."""

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
