"""The ``retrieve`` section of the config: its fields (a comment on each: its help) and ``rules``, the checks
between its fields and the rest of the config (``Config.validate`` runs every section's)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from hiea_ray.config.fields import bounded, hashed_if_set, runtime
from hiea_ray.errors import UserError


@dataclass
class RetrieveConfig:
    # Candidates kept per source entity.
    k: int = bounded(50, ge=1)
    # FAISS index, as a faiss.index_factory string over inner product: "Flat" (exact),
    # "IVF4096,Flat", "HNSW32", "IVF4096,SQ8", "IVF65536,PQ32" ... Aliases: auto = exact on a GPU
    # at any size, on CPU up to exact_max_targets target rows, above it IVF<~4 sqrt(n)>,Flat probed
    # ivf_nprobe lists (why: docs/results/approximate-retrieval-at-10-5-and-10-6.md); flat =
    # "Flat", ivf = "IVF<ivf_nlist>,Flat" (nlist clamped to n/39), hnsw = "HNSW<hnsw_m>". Below
    # 2000 target rows the exact flat index is always used. Trained indexes train on the targets.
    index: str = "auto"
    # auto: exact search on CPU up to this many target rows (2 cores: ~1-2 h per direction at 10^6
    # x 10^6 with 384-dim vectors; minutes on a many-core head), approximate above it.
    exact_max_targets: int = hashed_if_set(default=2_000_000, ge=0)
    # IVF indexes: lists probed per query (clamped to nlist); ivf_nlist is the ivf alias's list count.
    ivf_nlist: int = bounded(1024, ge=1)
    ivf_nprobe: int = bounded(64, ge=1)
    # HNSW indexes: neighbours per node of the alias, and search breadth (>= k).
    hnsw_m: int = bounded(32, ge=2)
    hnsw_ef_search: int = bounded(128, ge=1)
    # Use a GPU index: "auto" (when faiss sees a GPU), "yes" or "no".
    gpu: Literal["auto", "yes", "no"] = "auto"
    # Queries per FAISS search call (bounds memory: batch x k).
    query_batch: int = runtime(16384, ge=1)
    # Where the search runs: "driver" (this process loads the vectors and searches both
    # directions) or "ray" (``hiea_ray.ops.retrieve``: each direction's index built once by a Ray
    # task into the run folder, the queries searched in blocks by an actor pool over the
    # cluster's nodes, resumable part by part; the driver holds no vector and no list). Exact
    # search gives both the same lists.
    engine: Literal["driver", "ray"] = runtime("driver")
    # engine ray: searcher actors, CPUs (FAISS threads) of each, query rows per block, and the
    # memory reserved for the tasks that build an index and assemble the lists (GiB; null: none).
    search_actors: int = runtime(1, ge=1)
    search_cpus: float = runtime(1.0, gt=0)
    search_gpus: float = runtime(0.0, ge=0)
    rows_per_block: int = runtime(8192, ge=1)
    task_memory_gib: float | None = runtime(None, gt=0)
    # engine ray: the targets split into this many index shards (rows j::index_shards), each its own
    # index file searched by every query, the lists merged per query by score, then id. For an index
    # that does not fit one node's memory (docs/cluster.md): each Searcher then holds 1/index_shards
    # of it. Exact search gives the unsharded lists; an approximate one its own (in the stage key).
    index_shards: int = hashed_if_set(default=1, ge=1)
    # Structural candidates (``core.candidates.structural``): per source, up to this many KG2
    # neighbours of the counterparts of its anchored neighbours (decode.structure_anchors, and a
    # collaboration round's pseudo-seeds), by support then cosine, added to the k dense ones (and
    # the same for the reverse lists); found by facts, not by name, so they do not thin out as the
    # pool grows. 0 = off.
    structural_k: int = hashed_if_set(default=0, ge=0)
    # An anchor whose counterpart has more neighbours than this vouches for none of them (a hub).
    structural_hub_degree: int = hashed_if_set(default=200, ge=1)

    def rules(self, cfg) -> None:
        _check_index(self.index)
        if self.index_shards > 1 and self.engine != "ray":
            raise UserError("config field retrieve.index_shards: index shards are searched by retrieve.engine ray")
        if self.engine == "ray" and "retrieve" in cfg.ray.offload:
            raise UserError("config field ray.offload: retrieve.engine ray already runs retrieve as Ray work; leave retrieve out")


# Numeric fields and their lower bound: (field, bound, strictly greater).


def _check_index(spec: str) -> None:
    """retrieve.index must be an alias or a faiss.index_factory string for some usual dimension
    (the exact dimension is checked again when the index is built)."""
    if spec.lower() in ("auto", "flat", "ivf", "hnsw"):
        return
    import faiss

    for d in (64, 96, 128, 256, 384, 512, 768, 1024):
        try:
            faiss.index_factory(d, spec, faiss.METRIC_INNER_PRODUCT)
            return
        except RuntimeError:
            continue
    raise UserError(f"config field retrieve.index: {spec!r} is neither auto / flat / ivf / hnsw nor a faiss index_factory string")
