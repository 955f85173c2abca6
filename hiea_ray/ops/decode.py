"""Decoding as distributed Ray work (``decode.engine: ray``): no process holds a protocol's lists.

    s2t / t2s.parquet ─▶ DecodeShard actors (``decode.shards``; each source rows [lo, hi) of the lists,
                         ``core.sharded.ListShard``) ◀─▶ the driver: O(m) per step (Sinkhorn's v and
                         column sums, the matching's per-column best edges), the matches
    each shard ─▶ <decoder>.parts/part-<lo>.parquet ─▶ streamed into <decoder>.parquet (by the first shard)

top1, CSLS and Sinkhorn run over the shards with the single process's lists and matchings
(``tests/test_sharded.py``); the structure decoder (neighbour consistency over both whole KGs) runs
in one Ray task from the Sinkhorn lists, as ``ray.offload`` runs the stage. A shard actor lost
with its node: that decoder starts again on new actors (``ray.offload_retries`` times); finished
decoders are kept (``<decoder>.done.json``).
"""

from __future__ import annotations

import json
import logging
import os
import resource
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from hiea_ray.core.sharded import SHARDED, Facts, ListShard, decode_sharded, shard_bounds

log = logging.getLogger(__name__)


class DecodeShard(ListShard):
    """A ``ListShard`` as a Ray actor; reports its node and its process's peak RSS, and (the first
    shard) streams a decoder's parts into its list file with the CPU it already holds.

    ``HIEA_FAIL_SHARD_AT_ITER=N`` (with ``HIEA_FAIL_MARKER``, a file path; passed from the driver's
    environment): the first shard's process dies at Sinkhorn iteration N, once (the marker says it
    did), as it would with its node; the tests use it to see the decoder start again."""

    def sink_step(self, v):
        self.iteration = getattr(self, "iteration", 0) + 1
        marker = os.environ.get("HIEA_FAIL_MARKER")
        if self.lo == 0 and marker and os.environ.get("HIEA_FAIL_SHARD_AT_ITER") == str(self.iteration) \
                and not os.path.exists(marker):
            Path(marker).write_text("shard 0 died here\n")
            os._exit(1)
        return super().sink_step(v)

    def concat(self, parts_dir: str, out: str) -> int:
        return concat_parts(parts_dir, out)

    def node_and_peak(self) -> tuple[str, float]:
        import ray

        return ray.get_runtime_context().get_node_id()[:12], resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def concat_parts(parts_dir: str, out: str) -> int:
    """A decoder's parts (one per shard, in row order) streamed into one list file."""
    import shutil

    files = sorted(Path(parts_dir).glob("*.parquet"))
    tmp = Path(out).with_suffix(".tmp")
    rows = 0
    with pq.ParquetWriter(tmp, pq.read_schema(files[0])) as w:
        for f in files:
            t = pq.read_table(f)
            rows += t.num_rows
            w.write_table(t)
    tmp.replace(out)
    shutil.rmtree(parts_dir)
    return rows


def seed_facts(ctx, q: np.ndarray, b: np.ndarray) -> Facts | None:
    """``decode.seeds_as_facts``: the seed links read from the ingested links (not the whole pair)."""
    from hiea_ray.run.context import SEED_SPLITS

    if not ctx.cfg.decode.seeds_as_facts:
        return None
    links = pq.read_table(ctx.run / "ingest" / "links.parquet", columns=["src", "tgt", "split"])
    seeds = links.filter(pc.is_in(links["split"], pa.array(SEED_SPLITS, pa.string())))
    return Facts(q, b, seeds["src"].to_numpy(), seeds["tgt"].to_numpy())


def _shards(ctx, d: Path, q, b, facts):
    import ray

    c = ctx.cfg.decode
    opts = {"num_cpus": c.shard_cpus, "max_restarts": 0}
    env = {k: v for k, v in os.environ.items() if k.startswith("HIEA_")}
    if env:
        opts["runtime_env"] = {"env_vars": env}
    if c.shard_memory_gib:
        opts["memory"] = int(c.shard_memory_gib * 2**30)
    actor = ray.remote(DecodeShard).options(**opts)
    qr, br, fr = ray.put(q), ray.put(b), ray.put(facts)
    bounds = shard_bounds(len(q), c.shards, c.sinkhorn_block_rows)
    return [actor.remote(str(d / "s2t.parquet"), str(d / "t2s.parquet"), qr, br, int(lo), int(hi), c.csls_k, fr)
            for lo, hi in zip(bounds[:-1], bounds[1:])]


def _caller(actors):
    import ray

    def call(method, *args):
        refs = [ray.put(a) if isinstance(a, np.ndarray) and a.nbytes > 1 << 16 else a for a in args]
        return ray.get([getattr(a, method).remote(*refs) for a in actors])
    return call


def _sharded_protocol(ctx, protocol: str, names: list[str], d: Path, out: Path, q, b, facts) -> dict:
    """The sharded decoders of one protocol (new actors for a decoder that lost one); -> stats."""
    import ray

    from hiea_ray.progress import Progress

    c, stats = ctx.cfg.decode, {"wall_s": {}, "shard_peak_rss_gib": 0.0, "nodes": {}}
    todo = list(names)
    for attempt in range(ctx.cfg.ray.offload_retries + 1):
        actors = _shards(ctx, d, q, b, facts)
        call = _caller(actors)
        try:
            t0 = time.time()
            bar = Progress(f"decode {protocol} sinkhorn", c.sinkhorn_iters, unit="iterations") if "sinkhorn" in todo else None
            for name, (r, col, w) in decode_sharded(call, list(todo), len(b), c, bar.update if bar else None,
                                                    c.sinkhorn_block_rows):
                call("write", name, str(out / f"{name}.parts"))
                ray.get(actors[0].concat.remote(str(out / f"{name}.parts"), str(out / f"{name}.parquet")))
                pq.write_table(pa.table({"src": q[r], "tgt": b[col], "score": w.astype(np.float32)}),
                               out / f"{name}.match.parquet")
                stats["wall_s"][name] = round(time.time() - t0, 3)
                (out / f"{name}.done.json").write_text(json.dumps({"wall_s": stats["wall_s"][name]}))
                log.info("decode %s: %s done over %d shards in %.1f s", protocol, name, len(actors), stats["wall_s"][name])
                todo.remove(name)
                t0 = time.time()
            for node, peak in call("node_and_peak"):
                stats["nodes"][node] = stats["nodes"].get(node, 0) + 1
                stats["shard_peak_rss_gib"] = round(max(stats["shard_peak_rss_gib"], peak), 3)
            return stats
        except ray.exceptions.RayActorError as e:
            if attempt == ctx.cfg.ray.offload_retries:
                raise
            log.warning("decode %s: a shard actor was lost (%s); %s again on new actors", protocol,
                        type(e).__name__, ", ".join(todo))
            stats["restarts"] = stats.get("restarts", 0) + 1
        finally:
            for a in actors:
                ray.kill(a)
    return stats


def _structure_on_worker(cfg, data: str, run: str, out: str, protocol: str) -> float:
    """A Ray task: the structure decoder of one protocol from its Sinkhorn lists (one process)."""
    from hiea_ray.core.decoders import run_decoders
    from hiea_ray.core.structure import SeedGraphs
    from hiea_ray.io import read_lists, to_local, write_decoded
    from hiea_ray.run import RunContext, candidate_lists

    ctx = RunContext(cfg, data, run)
    q, b, s2t, s2t_score, t2s, t2s_score = candidate_lists(ctx, protocol)
    _, ids, score = read_lists(Path(out) / "sinkhorn.parquet")
    graphs = SeedGraphs.of(ctx.pair(), [*cfg.decode.structure_anchors, "pseudo"])
    for d in run_decoders(["structure"], s2t, s2t_score, t2s, t2s_score, q, b, cfg.decode, lambda: graphs,
                          sink=(to_local(b, ids), score)):
        write_decoded(Path(out), q, b, d)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def decode_distributed(ctx, tmp: Path) -> dict:
    """The decode stage's body with ``decode.engine: ray``; the driver reads the lists' ids only."""
    import ray

    from hiea_ray.ops.data import init_ray

    cfg, c = ctx.cfg, ctx.cfg.decode
    t_start = time.time()
    init_ray(cfg)
    ray_start_s = round(time.time() - t_start, 3)  # > 0 when this stage is the run's first Ray work
    structure = ray.remote(_structure_on_worker).options(num_cpus=cfg.ray.offload_cpus, max_retries=cfg.ray.offload_retries,
                                                         **({"memory": int(cfg.ray.offload_memory_gib * 2**30)}
                                                            if cfg.ray.offload_memory_gib else {}))
    t0, rows, timing, peak, nodes, structure_peak, restarts = time.time(), 0, {}, 0.0, {}, 0.0, 0
    for protocol in cfg.evaluate.protocols:
        d, out = ctx.run / "retrieve" / protocol, tmp / protocol
        out.mkdir(parents=True, exist_ok=True)
        q = pq.read_table(d / "s2t.parquet", columns=["src"])["src"].to_numpy()
        b = pq.read_table(d / "t2s.parquet", columns=["src"])["src"].to_numpy()
        done = {n: json.loads((out / f"{n}.done.json").read_text()) for n in c.decoders if (out / f"{n}.done.json").is_file()}
        timing.update({f"{protocol}/{n}": rec["wall_s"] for n, rec in done.items()})
        names = [n for n in c.decoders if n in SHARDED and n not in done]
        if names:
            st = _sharded_protocol(ctx, protocol, names, d, out, q, b, seed_facts(ctx, q, b))
            restarts += st.get("restarts", 0)
            timing.update({f"{protocol}/{n}": w for n, w in st["wall_s"].items()})
            peak = max(peak, st["shard_peak_rss_gib"])
            for node, n in st["nodes"].items():
                nodes[node] = nodes.get(node, 0) + n
        if "structure" in c.decoders and "structure" not in done:
            t1 = time.time()
            structure_peak = max(structure_peak, ray.get(structure.remote(cfg, str(Path(ctx.data).resolve()),
                                                                          str(ctx.run.resolve()), str(out.resolve()), protocol)))
            timing[f"{protocol}/structure"] = round(time.time() - t1, 3)
        rows += len(q) * len(c.decoders)
    wall = time.time() - t0
    return {"rows": rows, "rows_per_s": round(rows / max(wall, 1e-9), 1), "decoder_wall_s": timing, "engine": "ray",
            "shards": c.shards, "shard_restarts": restarts, "shard_peak_rss_gib": peak, "shards_per_node": nodes,
            "structure_task_peak_rss_gib": round(structure_peak, 3) or None, "ray_start_s": ray_start_s}
