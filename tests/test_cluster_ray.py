"""The embed stage on a 2-node local Ray cluster (``ray.cluster_utils.Cluster``).

Two raylets on this machine, 3 logical CPUs each; an encoder actor reserves 2 of them, so at most
one actor fits on a node (2 actors -> one per node) and 1 CPU per node is left for Ray Data's
read/repartition/write tasks. This module owns its Ray instance: any other one is shut down first
and the cluster is torn down at the end.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from ray_conftest_helpers import copy_stages, manifest, shutdown_ray, tiny_overrides

from hiea_ray.config import load_config
from hiea_ray.pipeline import Pipeline

NODE_CPUS = 3
ACTOR_CPUS = 2
ROWS_PER_BATCH = 128  # ~9 blocks for the ~1100 texts: both actors get work


@pytest.fixture(scope="module")
def two_node_cluster():
    import ray
    from ray.cluster_utils import Cluster

    shutdown_ray()  # never share an instance with another module
    saved = os.environ.pop("HIEA_NODE_ID", None)  # the node column must be Ray's node id
    # Start feeding blocks only once both encoder actors are up; otherwise, on a loaded machine,
    # the actor that starts first may embed every block before the other one is ready.
    ctx = ray.data.DataContext.get_current()
    old_wait = ctx.wait_for_min_actors_s
    ctx.wait_for_min_actors_s = 300
    small = {"num_cpus": NODE_CPUS, "object_store_memory": 100 * 2**20}
    cluster = Cluster(initialize_head=True, head_node_args={**small, "include_dashboard": False})
    try:
        cluster.add_node(**small)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, log_to_driver=False)
        yield cluster
    finally:
        shutdown_ray()
        cluster.shutdown()
        ctx.wait_for_min_actors_s = old_wait
        if saved is not None:
            os.environ["HIEA_NODE_ID"] = saved


def _cfg(model, actors):
    return load_config(
        overrides=tiny_overrides(
            model,
            f"embed.num_actors={actors}",
            f"embed.cpus_per_actor={ACTOR_CPUS}",
            f"embed.rows_per_batch={ROWS_PER_BATCH}",
            "verbalize.batch_size=128",
        )
    )


@pytest.mark.ray
def test_embed_spreads_over_two_nodes_and_matches_single_actor(two_node_cluster, synthetic_dir, tiny_encoder_dir, tmp_path):
    import ray

    alive = [n for n in ray.nodes() if n["Alive"]]
    assert len(alive) == 2
    node_ids = {n["NodeID"][:12] for n in alive}

    # (a) 2 actors: rows are embedded on both nodes.
    run2 = tmp_path / "two_actors"
    p2 = Pipeline(_cfg(tiny_encoder_dir, 2), synthetic_dir, run2)
    p2.run_all(until="embed")
    stats = manifest(run2, "embed")["stats"]
    per_node = stats["rows_per_node"]
    print(f"\nrows per node (2 actors): {per_node}; timings {p2.timings}")
    assert len(per_node) == 2, per_node
    assert set(per_node) <= node_ids
    assert all(rows > 0 for rows in per_node.values())
    assert sum(per_node.values()) == stats["rows"] == stats["rows_embedded_now"]
    # no node lost: two encoder actors, one process each, nothing restarted (the failover
    # benchmark, benchmarks/cluster_failover.py, loses a node and sees the count grow)
    procs = stats["rows_per_encoder_process"]
    assert len(procs) == stats["encoder_actors"] == 2 and sum(procs.values()) == stats["rows"], procs
    assert stats["encoder_actor_restarts"] == 0 == stats["encoder_processes_beyond_pool"]

    # (b) 1 actor (so one node) on the same texts: the same vectors, row for row.
    run1 = copy_stages(run2, tmp_path / "one_actor", ["ingest", "verbalize"])
    p1 = Pipeline(_cfg(tiny_encoder_dir, 1), synthetic_dir, run1)
    p1.run_stage("embed")
    assert p1.timings["embed"]["reused"] is False
    per_node1 = manifest(run1, "embed")["stats"]["rows_per_node"]
    print(f"1 actor: {per_node1}; timings {p1.timings}")
    assert len(per_node1) == 1 and set(per_node1) <= node_ids, per_node1

    ids2, kg2, v2 = p2.embeddings()
    ids1, kg1, v1 = p1.embeddings()
    assert len(ids1) == stats["rows"]
    assert np.array_equal(ids1, ids2) and np.array_equal(kg1, kg2)
    assert np.allclose(v1, v2, atol=1e-5)
