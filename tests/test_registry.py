"""The stage registry and the shape of the code (Ray-free): stage order, what each stage's key
hashes, no import cycle, no private helper imported across modules."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from hiea_ray.config import Config, load_config, section_hash, select
from hiea_ray.pipeline import stage_key
from hiea_ray.stages import REGISTRY, STAGES, RunContext

ROOT = Path(__file__).resolve().parents[1]


def test_stage_order_is_the_documented_one():
    assert STAGES == ["ingest", "verbalize_train", "verbalize", "train", "embed", "retrieve", "rerank_train", "rerank", "decode", "calibrate", "route",
                      "llm_train", "llm", "export", "evaluate"]
    for name, sd in REGISTRY.items():
        assert sd.name == name
        assert all(STAGES.index(up) < STAGES.index(name) for up in sd.reads), name  # reads only upstream stages


def test_every_declared_config_selector_exists():
    cfg = Config()
    for sd in REGISTRY.values():
        for sel in sd.config:
            select(cfg, sel)  # raises KeyError on a typo
    with pytest.raises(KeyError):
        select(cfg, "embed.no_such_field")


def _key(stage: str, *overrides: str) -> str:
    sd = REGISTRY[stage]
    cfg = load_config(overrides=list(overrides))
    return section_hash(cfg, *sd.config, extra={"version": sd.version})


@pytest.mark.parametrize(
    "stage, changes, keeps",
    [
        # precision and device change the vectors; actors, threads and batch rows only place work
        ("embed", ["embed.amp=fp16", "embed.gpus_per_actor=1", "embed.pooling=cls", "embed.model=x"],
         ["embed.num_actors=4", "embed.torch_threads=3", "embed.rows_per_batch=7", "embed.cpus_per_actor=2"]),
        ("train", ["embed.pooling=cls", "embed.max_length=64", "train.scaling.zero_stage=3", "train.scaling.num_workers=2",
                   "train.scaling.amp=false"],
         ["train.scaling.cpus_per_worker=2", "train.scaling.max_failures=3", "embed.num_actors=4", "embed.name_weight=0.5"]),
        ("rerank", ["rerank.k=3", "rerank.model=x", "rerank.gpus_per_actor=1"],
         ["rerank.num_actors=3", "rerank.rows_per_batch=9", "decode.fusion_weight=0.2"]),
        ("decode", ["decode.fusion_weight=0.2", "decode.structure_beta=0.3"], ["rerank.num_actors=3"]),
        ("retrieve", ["retrieve.index=HNSW16", "evaluate.protocols=[standard]"], ["retrieve.query_batch=10"]),
        ("verbalize", ["verbalize.max_words=10"], ["verbalize.batch_size=10", "verbalize.num_actors=3"]),
    ],
)
def test_stage_keys_hash_whole_sections_but_not_runtime_fields(stage, changes, keeps):
    base = _key(stage)
    for item in changes:
        assert _key(stage, item) != base, item
    for item in keeps:
        assert _key(stage, item) == base, item


def test_rerank_key_follows_the_sinkhorn_settings_only_for_sinkhorn_candidates(tmp_path):
    def key(*o):
        cfg = load_config(overrides=["rerank.enabled=true", *o])
        sd = REGISTRY["rerank"]
        extra = {"version": sd.version}
        if (e := sd.extra(cfg)) is not None:
            extra["extra"] = e
        return section_hash(cfg, *sd.config, extra=extra)

    assert key("decode.sinkhorn_tau=0.1") == key()
    assert key("rerank.candidates=sinkhorn", "decode.sinkhorn_tau=0.1") != key("rerank.candidates=sinkhorn")


def test_stage_inputs_are_the_enabled_upstream_stages(tmp_path):
    """embed reads train only when training is on; decode reads rerank only when reranking is on."""
    from hiea_ray.manifest import Stage

    for name in ("verbalize", "train", "retrieve", "rerank"):
        st = Stage(tmp_path, name, "h", {})
        st.begin()
        st.commit()
    off = RunContext(load_config(), tmp_path, tmp_path)
    on = RunContext(load_config(overrides=["train.enabled=true", "rerank.enabled=true", "rerank.train=false"]), tmp_path, tmp_path)
    assert set(stage_key(REGISTRY["embed"], off)[1]) == {"verbalize", "model"}  # the encoder by content
    assert set(stage_key(REGISTRY["embed"], on)[1]) == {"verbalize", "train"}
    assert set(stage_key(REGISTRY["decode"], off)[1]) == {"retrieve"}
    assert set(stage_key(REGISTRY["decode"], on)[1]) == {"retrieve", "rerank"}
    assert "rerank_train" not in stage_key(REGISTRY["rerank"], on)[1]  # rerank.train=false


def _modules() -> dict[str, Path]:
    out = {}
    for p in sorted((ROOT / "hiea_ray").rglob("*.py")):
        rel = p.relative_to(ROOT).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = p
    return out


def _imports(path: Path) -> list[tuple[str, list[str]]]:
    """(module, names) of every import in a file, at any depth (function-level imports too)."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append((node.module, [a.name for a in node.names]))
        elif isinstance(node, ast.Import):
            out += [(a.name, []) for a in node.names]
    return out


def test_no_import_cycle_between_modules():
    """Every import, including those inside functions, between hiea_ray modules: the graph is acyclic."""
    mods = _modules()
    graph = {m: set() for m in mods}
    for m, path in mods.items():
        for target, names in _imports(path):
            for cand in [f"{target}.{n}" for n in names] + [target]:
                if cand in mods and cand != m:
                    graph[m].add(cand)
                    break
    seen, stack = set(), []

    def visit(m):
        if m in stack:
            raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(m):] + [m]))
        if m in seen:
            return
        stack.append(m)
        for n in sorted(graph[m]):
            visit(n)
        stack.pop()
        seen.add(m)

    for m in sorted(graph):
        visit(m)


def test_no_private_helper_is_imported_from_another_module():
    files = [p for d in ("hiea_ray", "benchmarks", "tests", "jobs") for p in (ROOT / d).rglob("*.py")]
    bad = [f"{p.relative_to(ROOT)}: from {m} import {n}" for p in files for m, names in _imports(p)
           if m.startswith("hiea_ray") for n in names if n.startswith("_") and not n.startswith("__")]
    assert not bad, bad


def test_the_runner_is_small_and_ray_free_modules_do_not_import_ray():
    assert len((ROOT / "hiea_ray" / "pipeline.py").read_text().splitlines()) < 150
    for sub in ("core", "kg"):
        for p in (ROOT / "hiea_ray" / sub).rglob("*.py"):
            assert not any(m == "ray" or m.startswith("ray.") for m, _ in _imports(p)), p


# The house's layers, bottom to top. A module may import its own layer's and lower layers' modules;
# a stage imports no other stage (only ``stages.base``); serve and train import no stage.
LAYERS = [
    ("base", ("hiea_ray.errors", "hiea_ray.config", "hiea_ray.io", "hiea_ray.manifest", "hiea_ray.model_store",
              "hiea_ray.progress", "hiea_ray.plots", "hiea_ray.core", "hiea_ray.kg")),
    ("ops", ("hiea_ray.ops", "hiea_ray.run", "hiea_ray.config_doc")),
    ("work", ("hiea_ray.train", "hiea_ray.stages", "hiea_ray.serve")),
    ("pipeline", ("hiea_ray.pipeline", "hiea_ray.collab")),
    ("cli", ("hiea_ray.cli", "hiea_ray.api", "hiea_ray")),
]


def _layer(module: str) -> int:
    best = None
    for i, (_, prefixes) in enumerate(LAYERS):
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and (best is None or len(p) > best[1]):
                best = (i, len(p))
    assert best is not None, f"{module}: in no layer of LAYERS"
    return best[0]


def _edges():
    mods = _modules()
    for m, path in mods.items():
        for target, names in _imports(path):
            for cand in [f"{target}.{n}" for n in names] + [target]:
                if cand in mods and cand != m:
                    yield m, cand
                    break


def violations(edges) -> list[str]:
    """The layer rule over import edges (module -> imported module): an arrow up a layer, or a
    stage used as a library by anything but the stage registry."""
    bad = []
    for m, t in edges:
        if _layer(t) > _layer(m):
            bad.append(f"{m} -> {t} (up: {LAYERS[_layer(m)][0]} -> {LAYERS[_layer(t)][0]})")
        if t.startswith("hiea_ray.stages.") and t != "hiea_ray.stages.base" and (
                not m.startswith("hiea_ray.stages") or m.startswith("hiea_ray.stages.")):
            bad.append(f"{m} -> {t} (a stage is used as a library)")
    return bad


def test_imports_follow_the_layers():
    """core/kg -> ops / run readers -> train / stages / serve -> pipeline -> cli: no arrow runs back up,
    and stages, train and serve do not use each other's stages."""
    bad = violations(_edges())
    assert not bad, "\n".join(bad)


def test_the_layer_test_sees_a_violation():
    """The rule above can fail: the same ``violations`` catches a serve module importing a stage,
    ops importing train, and one stage importing another; it passes allowed edges."""
    assert _layer("hiea_ray.serve.engine") > _layer("hiea_ray.ops.embed") > _layer("hiea_ray.core.encoder")
    assert _layer("hiea_ray") == _layer("hiea_ray.cli") and _layer("hiea_ray.run") == _layer("hiea_ray.ops.llm")
    bad = [("hiea_ray.serve.x", "hiea_ray.stages.decode"), ("hiea_ray.ops.x", "hiea_ray.train.loop"),
           ("hiea_ray.stages.decode", "hiea_ray.stages.embed")]
    assert [len(violations([e])) > 0 for e in bad] == [True, True, True]
    assert violations([("hiea_ray.stages.decode", "hiea_ray.stages.base"), ("hiea_ray.stages", "hiea_ray.stages.decode"),
                       ("hiea_ray.stages.decode", "hiea_ray.run"), ("hiea_ray.cli", "hiea_ray.pipeline")]) == []


def test_stage_modules_are_named_as_their_stages():
    mods = _modules()
    for name, stage in REGISTRY.items():
        assert f"hiea_ray.stages.{name}" in mods, f"stage {name}: no module hiea_ray/stages/{name}.py"
    import re

    for f in ("pipeline.py", "stages/__init__.py"):
        doc = (ROOT / "hiea_ray" / f).read_text().split('"""')[1]
        named = set(re.findall(r"[a-z_]+", doc))
        missing = [n for n in REGISTRY if n not in named]
        assert not missing, f"stages the docstring of {f} does not name: {missing}"
