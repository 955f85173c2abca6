"""Retrieval as distributed Ray work (``retrieve.engine: ray``): the driver holds no vector and no list.

    embed parts ─▶ build_index (a Ray task: one direction's targets -> a FAISS index file in the run)
    embed parts ─▶ (the direction's queries, less the finished ones) ─▶ Searcher (actor pool: the
                   index loaded once per actor) ─▶ Parquet parts (src, cand, score)
    parts ─▶ finish (a Ray task: lists sorted by source, the structural channel, s2t / t2s.parquet)

Each direction's queries go in blocks of ``retrieve.rows_per_block`` to ``retrieve.search_actors``
actors spread over the cluster's nodes; the parts are written as the embed stage writes its
(resumable: a killed run searches only the queries without a part). The index is exact or
IVF / HNSW as ``retrieve.index`` chooses for the target count (``core.retrieval.factory_string``),
built once and read from the run folder every node mounts. Each candidate's score is recomputed
alone on the vectors and the lists ranked by score, then row (``core.retrieval.rescore``), so
exact search gives the driver path's lists bit for bit whatever blocks Ray Data makes.
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from hiea_ray.config import RetrieveConfig
from hiea_ray.io import column_to_numpy, finished_ids, ids_or_pad, read_dir

log = logging.getLogger(__name__)


def side_vectors(parts: Path, ids: np.ndarray) -> np.ndarray:
    """The embed stage's vectors of ``ids`` (sorted), read part by part (only those rows kept)."""
    keep = pa.array(ids, pa.int64())
    chunks = [t.filter(pc.is_in(t["id"], keep)) for t in
              (pq.read_table(f, columns=["id", "embedding"]) for f in sorted(Path(parts).glob("*.parquet")))]
    t = pa.concat_tables(chunks).sort_by("id")
    if not np.array_equal(t["id"].to_numpy(), ids):
        raise RuntimeError("retrieve: the embed stage's parts lack some entities")
    return column_to_numpy(t["embedding"])


def build_index_file(parts: str, ids: np.ndarray, cfg: dict, out: str) -> dict:
    """A Ray task: the FAISS index over the vectors of ``ids`` -> ``out`` (index), ``out``.ids.npy and
    ``out``.vectors.npy (the vectors, which the searchers rescore their candidates on)."""
    import faiss

    from hiea_ray.core.retrieval import build_index, factory_string

    rc = RetrieveConfig(**cfg)
    base = side_vectors(Path(parts), ids)
    index = build_index(base, rc)
    if hasattr(faiss, "index_gpu_to_cpu") and "Gpu" in type(index).__name__:
        index = faiss.index_gpu_to_cpu(index)
    tmp = f"{out}.{os.getpid()}.tmp"
    faiss.write_index(index, tmp)
    np.save(f"{out}.ids.npy", ids)
    np.save(f"{out}.vectors.npy", base)  # the searchers rescore their candidates on them (memory-mapped)
    os.replace(tmp, out)
    return {"index": factory_string(rc, len(ids)), "rows": int(len(ids))}


class Searcher:
    """(id, embedding, ...) query rows -> (src, cand, score): each row's top-k in the direction's
    FAISS index, loaded once per actor from the run folder (moved to the GPUs when faiss has
    them and ``retrieve.gpu`` allows)."""

    def __init__(self, index: str, cfg: dict, threads: int):
        import faiss

        from hiea_ray.core.retrieval import use_gpu

        self.cfg = RetrieveConfig(**cfg)
        faiss.omp_set_num_threads(max(1, threads))
        self.index = faiss.read_index(index)
        if use_gpu(self.cfg.gpu) and getattr(faiss.downcast_index(self.index), "hnsw", None) is None:
            self.index = faiss.index_cpu_to_all_gpus(self.index)
        self.ids = np.load(f"{index}.ids.npy")
        self.base = np.load(f"{index}.vectors.npy", mmap_mode="r")
        try:
            import ray

            self.node = ray.get_runtime_context().get_node_id()[:12]
        except Exception:  # outside Ray (a unit test calling the class)
            self.node = "local"

    def __call__(self, batch: pa.Table) -> pa.Table:
        from hiea_ray.core.retrieval import search

        score, idx = search(self.index, column_to_numpy(batch["embedding"]), len(self.ids), self.cfg.k, self.cfg.query_batch,
                            base=self.base)
        k = idx.shape[1]
        return pa.table({"src": batch["id"],
                         "cand": pa.FixedSizeListArray.from_arrays(pa.array(ids_or_pad(self.ids, idx).reshape(-1)), k),
                         "score": pa.FixedSizeListArray.from_arrays(pa.array(score.reshape(-1)), k),
                         "node": pa.array([self.node] * len(idx), pa.string()).dictionary_encode()})


def search_direction(parts: Path, queries: np.ndarray, all_ids: np.ndarray, index: Path, out: Path, rc: RetrieveConfig,
                     label: str) -> int:
    """The queries' lists as Parquet parts in ``out`` (those already there are kept: resumable);
    -> how many queries were searched now."""
    from hiea_ray.ops.data import MapSpec, map_parquet

    out.mkdir(parents=True, exist_ok=True)
    done = finished_ids(out, "src")
    skip = np.union1d(np.setdiff1d(all_ids, queries), done)  # other side's rows and finished queries
    todo = len(queries) - len(np.intersect1d(done, queries))
    if todo == 0:
        return 0
    spec = MapSpec(Searcher, {"index": str(index), "cfg": asdict(rc), "threads": max(1, int(rc.search_cpus))},
                   {"batch_size": rc.rows_per_block, "batch_format": "pyarrow", "num_cpus": rc.search_cpus,
                    "num_gpus": rc.search_gpus},
                   actors=rc.search_actors, fields="retrieve.search_actors x search_cpus")
    map_parquet(parts, out, spec, rc.search_actors, rc.rows_per_block, skip, progress=(label, len(queries), len(queries) - todo))
    return todo


def shard_lists(parts_dir: str, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
    """One index shard's parts -> (cand ids, scores) per query in the order of ``queries`` (each
    query once: a block written twice by a retry counts once), and the queries searched per node."""
    t = read_dir(Path(parts_dir)).sort_by("src")
    src = t["src"].to_numpy()
    keep = np.r_[True, src[1:] != src[:-1]] if len(src) else np.zeros(0, bool)
    if not np.array_equal(src[keep], queries):
        raise RuntimeError(f"retrieve: {parts_dir} holds {int(keep.sum())} of {len(queries)} queries")
    nodes = {}
    if "node" in t.column_names:
        col = t["node"].filter(pa.array(keep)).cast(pa.string())
        nodes = {d["values"] or "unknown": d["counts"] for d in pc.value_counts(col).to_pylist()}
    return column_to_numpy(t["cand"])[keep], column_to_numpy(t["score"])[keep], nodes


def merge_shards(cands: list[np.ndarray], scores: list[np.ndarray], k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per query, the k best of every shard's list by score, then id (ids -1 padded): with the
    rescored exact scores (``core.retrieval.rescore``) the unsharded search's list."""
    if len(cands) == 1:
        return cands[0], scores[0]
    c, s = np.hstack(cands), np.hstack(scores)
    by_id = np.argsort(np.where(c >= 0, c, np.iinfo(np.int64).max), axis=1, kind="stable")
    c, s = np.take_along_axis(c, by_id, 1), np.take_along_axis(s, by_id, 1)
    by_score = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(c, by_score, 1), np.take_along_axis(s, by_score, 1)


def finish_lists(parts_dirs: str | list[str], out: str, queries: np.ndarray) -> dict[str, int]:
    """A Ray task: a direction's parts (one folder per index shard) -> one ranked-list file sorted by
    source (each query once, the shards' lists merged); -> query searches per node (the Searcher
    actors' nodes; a query counts once per shard)."""
    from hiea_ray.io import write_lists

    cands, scores, per_node = [], [], {}
    for d in [parts_dirs] if isinstance(parts_dirs, str) else parts_dirs:
        c, s, nodes = shard_lists(d, queries)
        cands.append(c)
        scores.append(s)
        for node, n in nodes.items():
            per_node[node] = per_node.get(node, 0) + n
    cand, score = merge_shards(cands, scores, cands[0].shape[1])
    write_lists(Path(out), queries, cand, score)
    return per_node


def finish_protocol(cfg, data: str, run: str, out: str, q: np.ndarray, b: np.ndarray) -> dict:
    """A Ray task: both directions' parts -> s2t.parquet / t2s.parquet (sorted by source, each query
    once); with ``retrieve.structural_k`` the structural channel merged in (its vectors read part by
    part, the graphs from the ingested pair) and written alone to structural.parquet; the parts and
    the index files removed."""
    import shutil

    from hiea_ray.core.candidates import with_structural
    from hiea_ray.io import read_lists, to_local, write_lists
    from hiea_ray.run import RunContext

    d = Path(out)
    per_node = finish_lists(shard_paths(d, "s2t", "parts", cfg.retrieve.index_shards), str(d / "s2t.parquet"), q)
    for node, n in finish_lists(shard_paths(d, "t2s", "parts", cfg.retrieve.index_shards), str(d / "t2s.parquet"), b).items():
        per_node[node] = per_node.get(node, 0) + n
    rc = cfg.retrieve
    if rc.structural_k:
        from hiea_ray.core.structure import SeedGraphs

        ctx = RunContext(cfg, data, run)
        parts = ctx.run / "embed" / "parts"
        graphs = SeedGraphs.of(ctx.pair(), [*cfg.decode.structure_anchors, "pseudo"])
        _, s2t_ids, s2t_score = read_lists(d / "s2t.parquet")
        _, t2s_ids, t2s_score = read_lists(d / "t2s.parquet")
        i, s, i2, s2, (si, sc) = with_structural(graphs, q, b, side_vectors(parts, q), side_vectors(parts, b),
                                                 to_local(b, s2t_ids), s2t_score, to_local(q, t2s_ids), t2s_score,
                                                 rc.structural_k, rc.structural_hub_degree)
        write_lists(d / "s2t.parquet", q, ids_or_pad(b, i), s)
        write_lists(d / "t2s.parquet", b, ids_or_pad(q, i2), s2)
        write_lists(d / "structural.parquet", q, ids_or_pad(b, si), sc)
    for p in [*d.glob("*.parts"), *d.glob("*.index*")]:
        shutil.rmtree(p) if p.is_dir() else p.unlink()
    import resource

    return {"worker_peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3),
            "queries_per_node": per_node}


def shard_paths(d: Path, direction: str, kind: str, shards: int) -> list[str]:
    """A direction's index files or parts folders, one per index shard (``retrieve.index_shards``)."""
    if shards == 1:
        return [str(d / f"{direction}.{kind}")]
    return [str(d / f"{direction}.{j}.{kind}") for j in range(shards)]


def retrieve_distributed(ctx, tmp: Path) -> dict:
    """The retrieve stage's body with ``retrieve.engine: ray`` (see the module docstring); the
    driver reads only the entities' ids and sides."""
    import time

    import ray

    from hiea_ray.core.metrics import protocol_sets
    from hiea_ray.core.retrieval import factory_string
    from hiea_ray.ops.data import init_ray

    cfg, rc = ctx.cfg, ctx.cfg.retrieve
    t_start = time.time()
    init_ray(cfg)
    ray_start_s = round(time.time() - t_start, 3)  # > 0 when this stage is the run's first Ray work
    parts = ctx.run / "embed" / "parts"
    side = pa.concat_tables([pq.read_table(f, columns=["id", "kg"]) for f in sorted(parts.glob("*.parquet"))]).sort_by("id")
    ids, kg = side["id"].to_numpy(), side["kg"].to_numpy()
    links = pq.read_table(ctx.run / "ingest" / "links.parquet")
    test = links.filter(pc.equal(links["split"], "test"))
    opts = {"num_cpus": 1, "max_retries": cfg.ray.offload_retries}
    if rc.task_memory_gib:
        opts["memory"] = int(rc.task_memory_gib * 2**30)
    build = ray.remote(build_index_file).options(**opts, name="hiea-ray:retrieve-index")
    finish = ray.remote(finish_protocol).options(**opts, name="hiea-ray:retrieve-finish")
    t0, rows, searched, index, per_node, finish_peak = time.time(), 0, 0, {}, {}, 0.0
    for protocol in cfg.evaluate.protocols:
        q, b = protocol_sets(protocol, test["src"].to_numpy(), test["tgt"].to_numpy(), ids, kg)
        d = tmp / protocol
        d.mkdir(parents=True, exist_ok=True)
        if (d / "s2t.parquet").is_file() and not any(d.glob("*.parts")):
            continue  # finished before an interruption
        for direction, (queries, base) in (("s2t", (q, b)), ("t2s", (b, q))):
            # each index shard: the targets' rows j::index_shards (sorted ids), its own index and parts
            paths = shard_paths(d, direction, "index", rc.index_shards)
            ray.get([build.remote(str(parts), base[j::rc.index_shards], asdict(rc), path)
                     for j, path in enumerate(paths) if not Path(path).is_file()])
            for j, (path, out) in enumerate(zip(paths, shard_paths(d, direction, "parts", rc.index_shards))):
                label = f"retrieve {protocol} {direction}" + (f" shard {j + 1}/{rc.index_shards}" if rc.index_shards > 1 else "")
                searched += search_direction(parts, queries, ids, Path(path), Path(out), rc, label)
        done = ray.get(finish.remote(cfg, str(Path(ctx.data).resolve()), str(ctx.run.resolve()), str(d.resolve()), q, b))
        per_node[protocol] = done["queries_per_node"]  # a resumed run: the nodes of its own searches and earlier ones'
        finish_peak = max(finish_peak, done["worker_peak_rss_gib"])
        rows += len(q) + len(b)
        index[protocol] = {"s2t": factory_string(rc, -(-len(b) // rc.index_shards)),
                           "t2s": factory_string(rc, -(-len(q) // rc.index_shards))}
    wall = time.time() - t0
    return {"rows": rows, "rows_per_s": round(rows / max(wall, 1e-9), 1), "k": rc.k, "index": index, "engine": "ray",
            "index_shards": rc.index_shards, "queries_searched_now": searched, "search_actors": rc.search_actors, "queries_per_node": per_node,
            "finish_task_peak_rss_gib": finish_peak, "ray_start_s": ray_start_s}
