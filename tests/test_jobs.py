"""The `ray job submit` entrypoints' argument handling (no Ray): the training-only job maps a task
to its stage and switch; an --until naming a stage the config does not run is one line, exit 2."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from hiea_ray.cli import main

ROOT = Path(__file__).resolve().parents[1]


def _train_job():
    spec = importlib.util.spec_from_file_location("train_job", ROOT / "jobs" / "train.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("task, stage, switch", [
    ("retriever", "train", "train.enabled=true"), ("reranker", "rerank_train", "rerank.enabled=true"),
    ("llm", "llm_train", "llm.enabled=true"), ("verbalizer", "verbalize_train", None)])
def test_training_job_maps_the_task_to_its_stage(task, stage, switch):
    argv = _train_job().align_argv([task, "--data", "D", "--out", "O", "--set", "train.lr=1e-4"])
    assert argv[:6] == ["--data", "D", "--out", "O", "--set", "train.lr=1e-4"]
    assert argv[6:8] == ["--until", stage]
    assert (switch in argv) if switch else len(argv) == 8
    from hiea_ray.stages import STAGES

    assert stage in STAGES


@pytest.mark.parametrize("argv, message", [([], "got nothing"), (["trainer"], "got trainer"),
                                           (["retriever", "--until", "embed"], "--until is the task's stage")])
def test_training_job_refuses_a_bad_task(argv, message):
    with pytest.raises(SystemExit) as e:
        _train_job().align_argv(argv)
    assert message in str(e.value) and str(e.value).startswith("jobs/train.py: error: ")


def test_until_a_stage_the_config_does_not_run_is_one_line(synthetic_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["align", "--data", str(synthetic_dir), "--out", str(out), "--until", "verbalize_train"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--until verbalize_train: this config does not run that stage" in err[0]
    assert "hiea_ray/stages/verbalize_train.py" in err[0]
    assert not out.exists() or not list(out.glob("*/manifest.json"))
