"""Reliability of the `hiea-ray` command on Ray, run as a user runs it (a subprocess with its own
local Ray): SIGTERM ends like Ctrl-C and the run resumes; `-q` keeps Ray quiet and, without it, Ray's worker output stays in Ray's logs; a finished run on
a read-only file system still reports its results."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from ray_conftest_helpers import tiny_overrides
from test_reliability import read_only_folder

pytestmark = pytest.mark.ray

SUMMARY_LINES = 19  # the summary `demo -q` prints on stdout (stage table + metrics table + paths)


def _demo(run: Path, model, *extra: str) -> list[str]:
    return [sys.executable, "-m", "hiea_ray.cli", "demo", "--out", str(run), "--entities", "300", "-q",
            "--set", "embed.torch_threads=1", "--set", f"embed.model={model}", *extra]


def test_sigterm_ends_like_ctrl_c_the_run_resumes_quietly_and_reports_read_only(tmp_path, tiny_encoder_dir):
    """SIGTERM mid-run -> exit 143, one line; the same command resumes (with -q: only the summary);
    the finished run, mounted read-only, still reports its results (every stage reused)."""
    run = tmp_path / "ro-src" / "run"
    p = subprocess.Popen(_demo(run, tiny_encoder_dir), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    t0 = time.time()
    while not (run / "verbalize" / "manifest.json").is_file() and time.time() - t0 < 180 and p.poll() is None:
        time.sleep(0.2)
    assert p.poll() is None, p.communicate()
    ingest = (run / "ingest" / "manifest.json").read_text()
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 143, err
    assert "Traceback" not in err and "Aborted" not in err, err
    assert err.strip().splitlines()[-1] == (
        "hiea-ray: terminated; finished stages are kept, re-run the same command to resume")
    assert not (run / "metrics.json").exists()

    r = subprocess.run(_demo(run, tiny_encoder_dir), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert (run / "ingest" / "manifest.json").read_text() == ingest  # finished stages were kept
    out, err = r.stdout.strip().splitlines(), r.stderr.strip().splitlines()
    assert len(out) <= SUMMARY_LINES and out[-1].startswith("metrics: "), out
    # -q: no Ray INFO lines, no progress, no "Dataset job will hang"; at most the one line Ray's
    # C++ core prints when it reads its log level from the environment
    assert len(err) <= 1 and not any("Dataset" in ln or " INFO " in ln for ln in err), err

    metrics = (run / "metrics.json").read_text()
    ro, _ = read_only_folder(tmp_path)  # the finished run, unwritable: nothing may be rewritten
    r = subprocess.run(_demo(ro / "run", tiny_encoder_dir), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    stages = [ln.split() for ln in r.stdout.splitlines() if ln.split()[:1] and ln.split()[0] in
              ("ingest", "verbalize", "embed", "retrieve", "decode", "evaluate")]
    assert len(stages) == 6 and all(s[1] == "reused" for s in stages), r.stdout
    assert (ro / "run" / "metrics.json").read_text() == metrics
    assert json.loads(metrics)["sinkhorn"]["hits@1"] > 0.05


def test_a_full_disk_during_a_ray_stage_is_one_line(tmp_path, synthetic_dir, tiny_encoder_dir):
    """--out on a 300 KiB tmpfs: ingest and verbalize fit, the embed stage's Ray Data write runs out
    of space in a worker; the driver ends with one line naming the run folder and the OS error."""
    small = tmp_path / "small"
    small.mkdir()
    try:
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=300k", "tmpfs", str(small)], check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("cannot mount a small tmpfs here")
    try:
        r = subprocess.run([sys.executable, "-m", "hiea_ray.cli", "align", "--data", str(synthetic_dir), "--out",
                            str(small / "run"), "-q", "--set", "embed.torch_threads=1", "--set", f"embed.model={tiny_encoder_dir}"], capture_output=True, text=True,
                           timeout=600)
        err = [ln for ln in r.stderr.strip().splitlines() if "RAY_BACKEND_LOG_LEVEL" not in ln]
        assert r.returncode == 2, r.stderr
        assert err == [f"hiea-ray: error: {small / 'run'}: No space left on device (nothing half-written is kept; "
                       "free space or fix permissions and re-run)"], r.stderr
        assert not (small / "run" / "embed").exists()
    finally:
        subprocess.run(["umount", str(small)], capture_output=True)


def test_ctrl_c_ends_with_130_and_one_line_and_keeps_finished_stages(tmp_path, tiny_encoder_dir):
    """SIGINT (Ctrl-C) mid-run -> exit 130 and one line; the stages finished before it are kept."""
    run = tmp_path / "run"
    p = subprocess.Popen(_demo(run, tiny_encoder_dir), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    t0 = time.time()
    while not (run / "verbalize" / "manifest.json").is_file() and time.time() - t0 < 180 and p.poll() is None:
        time.sleep(0.2)
    assert p.poll() is None, p.communicate()
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 130, err
    assert "Traceback" not in err, err
    assert err.strip().splitlines()[-1].startswith("hiea-ray: interrupted"), err
    assert (run / "ingest" / "manifest.json").is_file() and (run / "verbalize" / "manifest.json").is_file()
    assert not (run / "metrics.json").exists()


# how Ray prefixes a worker's forwarded output, after its colour code: "(RayTrainWorker pid=42) ..."
WORKER_LINE = re.compile(r"^(?:\x1b\[[0-9;]*m)?\((?:[\w.:-]+ )?pid=\d+")


def test_a_run_shows_its_stages_not_rays_worker_output(tmp_path, synthetic_dir, tiny_encoder_dir):
    """Without -q, a run with Ray Train (its controller, placement-group cleaner and workers log)
    shows the stages and progress but no Ray worker line: those stay in Ray's log files unless
    ray.log_to_driver is set, which forwards them (the check below sees them then)."""
    def run(*extra):
        r = subprocess.run([sys.executable, "-m", "hiea_ray.cli", "align", "--data", str(synthetic_dir),
                            "--out", str(tmp_path / f"run{len(extra)}"), "--until", "train",
                            *[x for s in tiny_overrides(tiny_encoder_dir, "train.enabled=true", "train.rounds=1",
                                                         "train.eval_every=5", "train.hard_negatives=0",
                                                         "train.scaling.torch_threads=1", *extra)
                              for x in ("--set", s)]],
                           capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stderr
        return [ln for ln in (r.stdout + r.stderr).splitlines() if WORKER_LINE.match(ln)], r.stdout + r.stderr

    worker, text = run()
    assert not worker, worker[:5]
    assert "PlacementGroupCleaner" not in text and "Failed to query Ray Train Controller" not in text
    assert re.search(r"INFO stage train +done", text), text[-3000:]  # the stage lines are shown
    forwarded, _ = run("ray.log_to_driver=true")
    assert forwarded  # what the first run kept off the terminal is there to be kept off
