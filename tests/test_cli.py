"""The ``hiea-ray`` command: synth, user errors (one line, status 2, no traceback), one align run.

Most tests call ``hiea_ray.cli.main`` in-process; one runs the installed ``hiea-ray`` script to
check the real stderr of a failing run. Only the align end-to-end test may start Ray (marked
``ray``; it shuts Ray down afterwards), to make the session's shared pipeline run.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from ray_conftest_helpers import (
    copy_stages,
    e2e_cached,
    e2e_run,
    run_stages,
    shutdown_ray,
    start_local_ray,
    tiny_overrides,
)

from hiea_ray.cli import main
from hiea_ray.kg.readers import read_pair

ERROR_PREFIX = "hiea-ray: error: "
STAGES = run_stages()


def _bad_triples(synthetic_dir: Path, tmp_path: Path) -> Path:
    data = tmp_path / "bad_data"
    shutil.copytree(synthetic_dir, data)
    p = data / "rel_triples_1"
    lines = p.read_text().split("\n")
    lines[2] = "http://kg1.example.org/resource/Only\thttp://kg1.example.org/ontology/two"  # line 3
    p.write_text("\n".join(lines))
    return data


def _one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(ERROR_PREFIX), err
    assert "Traceback" not in err
    return lines[0]


def test_synth_writes_a_readable_pair(tmp_path, capsys):
    out = tmp_path / "pair"
    assert main(["synth", "--out", str(out), "--entities", "200", "--seed", "3"]) == 0
    counts = json.loads(capsys.readouterr().out)
    for name in ("rel_triples_1", "rel_triples_2", "attr_triples_1", "attr_triples_2", "ent_links"):
        assert (out / name).stat().st_size > 0, name
    for split in ("train", "valid", "test"):
        n = len((out / "721_5fold" / "1" / f"{split}_links").read_text().splitlines())
        assert n == counts["links"][split] > 0
    pair = read_pair(out)
    assert pair.report["format"] == "openea"
    assert pair.links.num_rows == sum(counts["links"].values())
    assert pair.report["entities"]["kg1"] > 0 and pair.report["entities"]["kg2"] > 0
    # Seeded: the same command writes the same files.
    again = tmp_path / "again"
    assert main(["synth", "--out", str(again), "--entities", "200", "--seed", "3"]) == 0
    assert (again / "rel_triples_2").read_bytes() == (out / "rel_triples_2").read_bytes()


def _error_case(case: str, synthetic_dir: Path, tmp_path: Path) -> tuple[list[str], str]:
    """argv (after --out) and what the one error line must name."""
    data = str(synthetic_dir)
    if case == "malformed-triple":
        bad = _bad_triples(synthetic_dir, tmp_path)
        return ["--data", str(bad)], f"{bad / 'rel_triples_1'}:3: expected 3 tab-separated fields"
    if case == "yaml-unknown-key":
        cfg = tmp_path / "cfg.yaml"
        cfg.write_text("retrieve:\n  k: 20\nembed:\n  modle: x\n")
        return ["--data", data, "--config", str(cfg)], f"{cfg}: unknown config key(s): embed.modle"
    if case == "set-bad-value":
        return ["--data", data, "--set", "retrieve.k=ten"], "config field retrieve.k: 'ten' is not a valid int"
    if case == "set-no-equals":
        return ["--data", data, "--set", "retrieve.k"], "--set 'retrieve.k': expected key=value"
    if case == "set-unknown-key":
        return ["--data", data, "--set", "decode.sinkhorn_temp=0.1"], "unknown config key(s): decode.sinkhorn_temp"
    if case == "missing-data":
        missing = tmp_path / "no_such_release"
        return ["--data", str(missing)], f"{missing}: data folder not found"
    raise AssertionError(case)


@pytest.mark.parametrize(
    "case",
    ["malformed-triple", "yaml-unknown-key", "set-bad-value", "set-no-equals", "set-unknown-key", "missing-data"],
)
def test_user_errors_exit_2_with_one_line(case, synthetic_dir, tmp_path, capsys):
    args, expected = _error_case(case, synthetic_dir, tmp_path)
    out = tmp_path / "run"
    rc = main(["align", "--out", str(out), *args, "--set", "embed.model=unused"])
    captured = capsys.readouterr()
    assert rc == 2
    line = _one_error_line(captured.err)
    assert expected in line, line
    assert captured.out == ""
    # (c) a failed run leaves no stage behind as finished.
    assert not (out / "ingest" / "manifest.json").exists()
    assert not list(out.glob("*/manifest.json"))


def test_yaml_syntax_error_names_the_line(synthetic_dir, tmp_path, capsys):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("retrieve:\n  k: 20\nembed:\n  model: [unclosed\n")
    assert main(["align", "--data", str(synthetic_dir), "--out", str(tmp_path / "run"), "--config", str(cfg)]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert f"{cfg}:" in line and "not valid YAML" in line
    lineno = int(line[len(ERROR_PREFIX) + len(str(cfg)) + 1 :].split(":", 1)[0])
    assert lineno >= 4  # the unclosed list starts on line 4 (the parser reports where it gave up)


def test_failed_ingest_keeps_no_stage_and_real_stderr_is_one_line(synthetic_dir, tmp_path):
    """The installed script, as a user runs it: status 2, one stderr line, no traceback."""
    bad = _bad_triples(synthetic_dir, tmp_path)
    out = tmp_path / "run"
    exe = Path(sys.executable).with_name("hiea-ray")
    cmd = [str(exe)] if exe.is_file() else [sys.executable, "-m", "hiea_ray.cli"]
    proc = subprocess.run(
        [*cmd, "align", "--data", str(bad), "--out", str(out), "--set", "embed.model=unused"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    line = _one_error_line(proc.stderr)
    assert f"{bad / 'rel_triples_1'}:3: " in line
    assert proc.stdout == ""
    assert not (out / "ingest").exists()
    assert not list(out.glob("*/manifest.json"))


@pytest.fixture
def ray_for_cli(monkeypatch):
    """A local Ray for making the session's shared run if no earlier test made it; shut down after."""
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    shutdown_ray()
    yield
    shutdown_ray()


@pytest.mark.ray
def test_align_end_to_end_prints_summary(ray_for_cli, synthetic_dir, tiny_encoder_dir, tmp_path_factory, tmp_path, capsys):
    """``align`` on the synthetic pair with the tiny encoder. To stay cheap it starts from the
    session's run (ingest, verbalize, embed copied; see ray_conftest_helpers.e2e_run): the command
    must reuse those, run retrieve/decode/evaluate, print the table and write metrics.json."""
    if not e2e_cached(synthetic_dir, tiny_encoder_dir):
        start_local_ray(num_cpus=2)
    shared = e2e_run(tmp_path_factory, synthetic_dir, tiny_encoder_dir)
    shutdown_ray()  # from here on the command must not need Ray: it reuses the Ray stages
    capsys.readouterr()
    out = copy_stages(shared["run"], tmp_path / "run", ["ingest", "verbalize", "embed"])
    argv = ["align", "--data", str(synthetic_dir), "--out", str(out), "-q"]
    for s in tiny_overrides(tiny_encoder_dir, "decode.decoders=[top1,csls]"):
        argv += ["--set", s]
    assert main(argv) == 0
    text = capsys.readouterr().out
    lines = text.splitlines()
    header = lines.index("stage         status    wall_s   rows/s")
    stage_rows = [ln.split() for ln in lines[header + 1 : header + 1 + len(STAGES)]]
    assert [r[0] for r in stage_rows] == STAGES
    ray_stages = {"ingest", "verbalize", "embed"}
    assert [r[1] for r in stage_rows] == ["reused" if s in ray_stages else "ran" for s in STAGES], stage_rows
    import ray

    assert not ray.is_initialized()
    metrics_header = next(i for i, ln in enumerate(lines) if ln.startswith("protocol"))
    rows = [ln.split() for ln in lines[metrics_header + 1 : metrics_header + 5]]
    assert [(r[0], r[1]) for r in rows] == [
        ("standard", "top1"),
        ("standard", "csls"),
        ("all-targets", "top1"),
        ("all-targets", "csls"),
    ]
    assert all(0.0 <= float(x) <= 1.0 for r in rows for x in r[2:])
    assert f"metrics: {out / 'metrics.json'}" in text

    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["protocol"] == "standard"
    assert {"top1", "csls"} <= set(metrics) and "sinkhorn" not in metrics
    # The printed table shows metrics.json's numbers (4 decimals) ...
    for r, (protocol, name) in zip(rows, [("standard", "top1"), ("standard", "csls"), ("all-targets", "top1"), ("all-targets", "csls")]):
        m = metrics["all_protocols"]["metrics"][protocol][name]
        assert [float(x) for x in r[2:]] == pytest.approx(
            [m["hits@1"], m["hits@10"], m["mrr"], m["precision"], m["recall"], m["f1"]], abs=1e-4
        )
    # ... and, on the same embeddings, the same numbers as the Pipeline run.
    for name in ("top1", "csls"):
        assert metrics[name] == shared["metrics"][name]
    resolved = json.loads((out / "config.resolved.json").read_text())
    assert resolved["embed"]["model"] == str(tiny_encoder_dir)
    assert resolved["decode"]["decoders"] == ["top1", "csls"]

    # The same command again: every stage reused, nothing rewritten.
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and p.name != "config.resolved.json"}
    assert main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    header = lines.index("stage         status    wall_s   rows/s")
    assert [ln.split()[1] for ln in lines[header + 1 : header + 1 + len(STAGES)]] == ["reused"] * len(STAGES)
    assert {p: p.stat().st_mtime_ns for p in before} == before
