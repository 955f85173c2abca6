"""Slow: a head and two worker nodes on this machine (``ray.cluster_utils.Cluster``), ``jobs/align.py``
submitted through the Jobs API, the node holding the encoder actor killed mid-embed: the job
succeeds with the single-node run's metrics (``benchmarks/cluster_failover.py``, ~3 min on 2 cores)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_a_node_lost_mid_embed_costs_nothing_but_time(tmp_path):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import cluster_failover

    out = tmp_path / "failover.json"
    assert cluster_failover.main(["--result", str(out)]) == 0
    doc = json.loads(out.read_text())
    job = doc["cluster_align"]
    assert job["status"].endswith("SUCCEEDED") and job["metrics_equal_one_node"]
    assert len(job["embed_rows_per_node"]) >= 2 and job["killed_node"] in job["embed_rows_per_node"]
    assert doc["cluster_align"]["head_node"] not in job["embed_rows_per_node"]  # work moved off the head
