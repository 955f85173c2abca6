"""Slow: ``benchmarks/gpu_smoke.py --dry-run`` — every section of the GPU smoke script (encoder,
LLM equality, LLM tier, generation) on the CPU with tiny sizes, so the one script a lent GPU runs
is known to work before the device time is spent (~2 min on 2 cores):

    .venv/bin/pytest -m slow tests/test_gpu_smoke_slow.py
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_smoke_dry_run_runs_every_section_without_an_error(tmp_path):
    out = tmp_path / "gpu_smoke.json"
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_smoke.py"), "--dry-run", "--out", str(out)],
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    doc = json.loads(out.read_text())
    sections = doc["sections"]
    assert set(sections) == {"encoder", "llm_equality", "llm", "generate"}, sections.keys()
    errors = {k: v["error"] for k, v in sections.items() if isinstance(v, dict) and "error" in v}
    assert not errors, errors
    assert doc["command"].endswith(f"--dry-run --out {out}") and doc["commit"]
