"""Slow: the real DBP15K zh_en pair from ../shared/datasets, names only, default encoder.

Run with `.venv/bin/pytest -m slow`. Skipped when the shared datasets are not beside the repo.
"""

import json
from pathlib import Path

import pytest

DATA = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "DBP15K" / "zh_en"

pytestmark = [pytest.mark.slow, pytest.mark.ray]


@pytest.mark.skipif(not DATA.is_dir(), reason="../shared/datasets/DBP15K/zh_en not present")
def test_zh_en_names_zero_shot_matches_reference(tmp_path):
    from hiea_ray.cli import main

    cfg = Path(__file__).resolve().parents[1] / "benchmarks" / "configs" / "dbp15k-names.yaml"
    rc = main(["align", "--data", str(DATA), "--out", str(tmp_path / "run"), "--config", str(cfg),
               "--set", "evaluate.protocols=[standard]", "-q"])
    assert rc == 0
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert m["protocol"] == "standard"
    # Reference (dense cosine / dense Sinkhorn over the 10,500 test pairs): 0.701 / 0.764.
    assert m["top1"]["hits@1"] >= 0.69
    assert m["sinkhorn"]["hits@1"] >= 0.755
    assert m["sinkhorn"]["hits@1"] > m["top1"]["hits@1"] + 0.04
