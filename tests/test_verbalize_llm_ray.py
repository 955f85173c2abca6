"""The LLM verbalizer on Ray with a tiny random Llama: verbalize.mode llm / llm+template writes one
text per entity (Ray Data actor pool) and a sample to read; a killed stage resumes without
re-generating finished parts; a new prompt version or new weights re-run it; LoRA tuning on a
tiny training file (Ray Train) is used by the stage; bad input exits 2 with one line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from ray_conftest_helpers import copy_stages, manifest, stage_key

from hiea_ray.cli import main
from hiea_ray.config import load_config
from hiea_ray.io import read_dir
from hiea_ray.pipeline import Pipeline
from hiea_ray.stages import REGISTRY

pytestmark = pytest.mark.ray


def overrides(llm_dir, *extra: str) -> list[str]:
    return ["verbalize.mode=llm", f"verbalize.llm.model={llm_dir}", "verbalize.llm.max_new_tokens=4",
            "verbalize.llm.prompt_tokens=200", "verbalize.llm.rows_per_batch=300", "verbalize.llm.batch_size_gen=50",
            "verbalize.llm.torch_threads=1", "verbalize.llm.cpus_per_actor=0.5", "verbalize.llm.sample_size=5", *extra]


@pytest.fixture(scope="module")
def llm_run(ray_shared, synthetic_dir, tiny_llm_dir, tmp_path_factory):
    cfg = load_config(overrides=overrides(tiny_llm_dir))
    run = tmp_path_factory.mktemp("verbalize_llm") / "run"
    pipe = Pipeline(cfg, synthetic_dir, run)
    pipe.run_all(until="verbalize")
    return {"cfg": cfg, "run": run, "pipe": pipe}


def test_llm_mode_writes_one_text_per_entity_and_a_sample(llm_run):
    run = llm_run["run"]
    ents = pq.read_table(run / "ingest" / "entities.parquet")
    texts = read_dir(run / "verbalize" / "texts")
    assert texts.column_names == ["id", "kg", "name", "text"]
    assert sorted(texts["id"].to_pylist()) == sorted(ents["id"].to_pylist())
    assert all(t for t in texts["text"].to_pylist())
    parts = sorted((run / "verbalize" / "parts").glob("*.parquet"))
    assert len(parts) >= 2  # several blocks: something to resume from
    gen = read_dir(run / "verbalize" / "parts")
    assert max(gen["new_tokens"].to_pylist()) <= 4 and max(gen["prompt_tokens"].to_pylist()) <= 200
    names = dict(zip(ents["id"].to_pylist(), ents["name"].to_pylist()))
    assert all(g.startswith(names[i] + " is") for i, g in zip(gen["id"].to_pylist(), gen["generated"].to_pylist()))  # prefilled
    stats = manifest(run, "verbalize")["stats"]
    assert stats["engine"] == "transformers" and stats["generated_now"] == texts.num_rows and not stats["tuned"]
    assert len(stats["per_worker"]) == 1 and stats["facts_in_prompt_share"] > 0
    sample = json.loads((run / "verbalize" / "sample.json").read_text())
    assert len(sample) == 5 and all(s["facts"] and s["generated"] for s in sample)
    assert (run / "verbalize" / "sample.md").read_text().count("\n## ") == 5
    assert not (run / "verbalize" / "contexts").exists()
    # the template run's key does not depend on the LLM settings; this one does
    assert manifest(run, "verbalize")["inputs"]["verbalizer"]


def test_killed_llm_verbalize_resumes(llm_run, synthetic_dir, tmp_path, caplog):
    clean = llm_run["run"]
    parts = sorted((clean / "verbalize" / "parts").glob("*.parquet"))
    run = copy_stages(clean, tmp_path / "run", ["ingest"])
    tmp = run / ".verbalize.tmp"
    (tmp / "parts").mkdir(parents=True)
    (tmp / ".key.json").write_text(json.dumps(stage_key(clean, "verbalize"), sort_keys=True))
    shutil.copy2(parts[0], tmp / "parts" / parts[0].name)
    data = parts[1].read_bytes()
    (tmp / "parts" / "cut.parquet").write_bytes(data[: len(data) // 2])  # killed mid-write
    done = pq.ParquetFile(parts[0]).metadata.num_rows
    pipe = Pipeline(llm_run["cfg"], synthetic_dir, run)
    with caplog.at_level("INFO", logger="hiea_ray"):
        pipe.run_stage("verbalize")
    assert any("resuming" in r.getMessage() and f"{done} of" in r.getMessage() for r in caplog.records)
    st = manifest(run, "verbalize")["stats"]
    assert st["generated_now"] == st["rows"] - done
    a = read_dir(clean / "verbalize" / "texts")
    b = read_dir(run / "verbalize" / "texts")
    assert a.sort_by("id").equals(b.sort_by("id"))  # greedy: the resumed run writes the same texts


def test_prompt_version_or_model_change_reruns_the_stage(llm_run, synthetic_dir, tiny_llm_dir, tmp_path, monkeypatch):
    from hiea_ray.core import describe
    from hiea_ray.manifest import Stage
    from hiea_ray.pipeline import stage_key as key_of

    run = llm_run["run"]
    sd = REGISTRY["verbalize"]
    pipe = Pipeline(llm_run["cfg"], synthetic_dir, run)
    key = key_of(sd, pipe)
    assert Stage(run, "verbalize", *key).fresh()
    monkeypatch.setattr(describe, "PROMPT_VERSION", describe.PROMPT_VERSION + 1)
    assert not Stage(run, "verbalize", *key_of(sd, pipe)).fresh()
    monkeypatch.undo()
    # the same model folder with other weights: a new content fingerprint
    other = tmp_path / "llm"
    shutil.copytree(tiny_llm_dir, other)
    cfg = load_config(overrides=overrides(tiny_llm_dir))
    cfg.verbalize.llm.model = str(other)
    before = key_of(sd, Pipeline(cfg, synthetic_dir, run))
    from transformers import AutoModelForCausalLM

    m = AutoModelForCausalLM.from_pretrained(other)
    m.lm_head.weight.data.mul_(1.01)
    m.save_pretrained(other)
    after = key_of(sd, Pipeline(cfg, synthetic_dir, run))
    assert before[0] == after[0] and before[1]["verbalizer"] != after[1]["verbalizer"]  # same path, new weights
    # the template mode's key ignores the verbalizer's settings
    t1 = load_config(overrides=["verbalize.llm.max_new_tokens=9"])
    t0 = load_config()
    assert key_of(sd, Pipeline(t0, synthetic_dir, run)) == key_of(sd, Pipeline(t1, synthetic_dir, run))


def _train_file(path: Path, pair_dir: Path) -> Path:
    """A tiny hand-written training file (entity names from the synthetic pair)."""
    rows = [
        {"triples": [["Alpha", "member of", "Beta"], ["Alpha", "born in", "Gamma"]], "text": "Alpha is a member of Beta, born in Gamma."},
        {"triples": [["Delta", "located in", "Gamma"]], "text": "Delta is located in Gamma."},
        {"triples": [["Beta", "founded", "1901"], ["Alpha", "member of", "Beta"]], "entity": "Beta",
         "text": "Beta was founded in 1901 and has Alpha as a member."},
        {"triples": [["Gamma", "country", "Epsilon"]], "text": "Gamma is in Epsilon."},
    ] * 4
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def test_verbalizer_lora_tuning_on_ray_train_is_used_by_the_stage(llm_run, synthetic_dir, tiny_llm_dir, tmp_path):
    train = _train_file(tmp_path / "train.jsonl", synthetic_dir)
    cfg = load_config(overrides=overrides(
        tiny_llm_dir, "verbalize.mode=llm+template", f"verbalize.train_file={train}", "verbalize.llm.epochs=2",
        "verbalize.llm.batch_size=4", "verbalize.llm.eval_every=100", "verbalize.llm.scaling.torch_threads=1",
        "verbalize.llm.scaling.cpus_per_worker=0.5", "verbalize.llm.valid_fraction=0.25"))
    run = copy_stages(llm_run["run"], tmp_path / "run", ["ingest"])
    pipe = Pipeline(cfg, synthetic_dir, run)
    pipe.run_all(until="verbalize")
    assert [n for n, t in pipe.timings.items() if not t["reused"]] == ["verbalize_train", "verbalize"]
    model = run / "verbalize_train" / "model"
    assert (model / "adapter_config.json").is_file() and not (run / "verbalize_train" / "ray").exists()
    hist = json.loads((run / "verbalize_train" / "history.json").read_text())
    assert hist["train_examples"] == 12 and hist["valid_examples"] == 4 and "valid_token_acc" in hist["best"]
    assert (run / "verbalize_train" / "curve.png").is_file()
    st = manifest(run, "verbalize")
    assert st["stats"]["tuned"] and st["inputs"]["verbalize_train"] == manifest(run, "verbalize_train")["fingerprint"]
    texts = read_dir(run / "verbalize" / "texts")
    gen = read_dir(run / "verbalize" / "parts")
    by_id = dict(zip(gen["id"].to_pylist(), gen["generated"].to_pylist()))
    assert all(t.startswith(by_id[i]) for i, t in zip(texts["id"].to_pylist(), texts["text"].to_pylist()))
    assert np.mean([len(t.split()) for t in texts["text"].to_pylist()]) > np.mean([len(g.split()) for g in by_id.values()])


def _one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("hiea-ray: error: ") and "Traceback" not in err, err
    return lines[0]


def test_bad_model_or_train_file_exits_2_with_one_line(synthetic_dir, tiny_llm_dir, tiny_encoder_dir, tmp_path, capsys):
    base = ["align", "--data", str(synthetic_dir), "--until", "verbalize"]
    out = tmp_path / "a"
    rc = main([*base, "--out", str(out), "--set", "verbalize.mode=llm", "--set", f"verbalize.llm.model={tiny_encoder_dir}"])
    line = _one_line(capsys.readouterr().err)
    assert rc == 2 and f"{tiny_encoder_dir}: not a causal LM" in line
    assert not (out / "verbalize").exists() and not (out / ".verbalize.tmp").exists()
    bad = tmp_path / "train.jsonl"
    bad.write_text(json.dumps({"triples": [["a", "r", "b"]], "text": "a r b"}) + "\n" + '{"triples": "x", "text": "t"}\n')
    rc = main([*base, "--out", str(tmp_path / "b"), "--set", "verbalize.mode=llm", "--set",
               f"verbalize.llm.model={tiny_llm_dir}", "--set", f"verbalize.train_file={bad}"])
    line = _one_line(capsys.readouterr().err)
    assert rc == 2 and f"{bad}:2: " in line and '"triples"' in line
    rc = main([*base, "--out", str(tmp_path / "c"), "--set", f"verbalize.train_file={bad}"])
    assert rc == 2 and "verbalize.train_file" in _one_line(capsys.readouterr().err)  # template mode: nothing to tune
    rc = main([*base, "--out", str(tmp_path / "d"), "--set", "verbalize.mode=llm", "--set",
               f"verbalize.llm.model={tiny_llm_dir}", "--set", "verbalize.llm.prompt_tokens=20"])
    assert rc == 2 and "verbalize.llm.prompt_tokens" in _one_line(capsys.readouterr().err)
