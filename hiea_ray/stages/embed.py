"""embed (Ray Data actor pool, resumable): one L2-normalized vector per entity text.

``Embedder`` is the callable class (the encoder loaded once per actor: the trained retriever when
``train.enabled``, else ``embed.model``); output ``parts/*.parquet`` (id, kg, embedding, node).
Finished parts are kept when a run is killed, and only the missing ids are embedded again.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from hiea_ray.config import EmbedConfig
from hiea_ray.core.encoder import Encoder, fuse, resolve_model, set_threads
from hiea_ray.data import MapSpec
from hiea_ray.io import embeddings_column, finished_ids, read_dir
from hiea_ray.stages.base import RunContext, StageDef

log = logging.getLogger("hiea_ray")


class Embedder:
    """(id, kg, name, text) rows -> (id, kg, embedding, node); the encoder is loaded once per actor."""

    def __init__(self, cfg: dict):
        self.cfg = EmbedConfig(**cfg)
        set_threads(self.cfg.torch_threads or os.cpu_count())
        self.encoder = Encoder(self.cfg.model, self.cfg.pooling, self.cfg.max_length, amp=self.cfg.amp,
                               backend=self.cfg.backend, threads=self.cfg.torch_threads or os.cpu_count())
        self.node = os.environ.get("HIEA_NODE_ID") or node_id()

    def __call__(self, batch: pa.Table) -> pa.Table:
        texts = batch["text"].to_pylist()
        vecs = self.encoder.encode(texts, self.cfg.batch_size)
        if self.cfg.name_weight > 0:
            names = batch["name"].to_pylist()
            vecs = fuse(self.encoder.encode(names, self.cfg.batch_size), vecs, self.cfg.name_weight)
        return pa.table(
            {
                "id": batch["id"],
                "kg": batch["kg"],
                "embedding": embeddings_column(vecs),
                "node": pa.array([self.node] * batch.num_rows, pa.string()).dictionary_encode(),
            }
        )


def node_id() -> str:
    """The Ray node of this actor (provenance in the output), "local" outside Ray."""
    try:
        import ray
    except ImportError:
        return "local"
    if ray.is_initialized():
        return ray.get_runtime_context().get_node_id()[:12]
    return "local"


def embed_spec(cfg: EmbedConfig) -> MapSpec:
    return MapSpec(
        Embedder,
        {"cfg": asdict(cfg)},
        {"batch_size": cfg.rows_per_batch, "batch_format": "pyarrow", "num_cpus": cfg.cpus_per_actor,
         "num_gpus": cfg.gpus_per_actor},
    )


def embed_dataset(texts_dir: Path, parts: Path, e: EmbedConfig, done: np.ndarray | None = None,
                  total: int | None = None) -> None:
    """The embed chain: read texts -> (drop done ids) -> encoder actor pool -> Parquet parts."""
    from hiea_ray.data import map_parquet

    map_parquet(texts_dir, parts, embed_spec(e), e.num_actors, e.rows_per_batch, done,
                progress=None if total is None else ("embed", total))


def run(ctx: RunContext, tmp: Path) -> dict:
    from hiea_ray.data import init_ray

    e = replace(ctx.cfg.embed, model=ctx.encoder_model())
    init_ray(ctx.cfg)
    parts = tmp / "parts"
    parts.mkdir(exist_ok=True)
    done = finished_ids(parts)
    texts_dir = ctx.run / "verbalize" / "texts"
    total = sum(pq.ParquetFile(f).metadata.num_rows for f in texts_dir.glob("*.parquet"))
    t0 = time.time()
    if len(done) < total:
        if len(done):
            log.info("embed: resuming, %d of %d rows already embedded", len(done), total)
        embed_dataset(texts_dir, parts, e, done, total)
    wall = time.time() - t0
    table = read_dir(parts)
    ids = table["id"].to_numpy()
    if len(np.unique(ids)) != total or len(ids) != total:
        raise RuntimeError(f"embed: expected {total} unique rows, found {len(ids)} ({len(np.unique(ids))} unique)")
    per_node = pc.value_counts(table["node"].cast(pa.string())).to_pylist()
    new_rows = total - len(done)
    return {
        "rows": total,
        "rows_embedded_now": new_rows,
        "rows_per_s": round(new_rows / max(wall, 1e-9), 1),
        "rows_per_node": {d["values"]: d["counts"] for d in per_node},
        "dim": table["embedding"].type.list_size,
    }


def check(ctx: RunContext) -> None:
    """A missing model folder is a user error: checked here on the driver, where it reaches the
    CLI as a UserError (one line, status 2), not inside the encoder actors' constructors, where
    Ray turns it into an ActorDiedError with a traceback."""
    resolve_model(ctx.encoder_model())


def model_inputs(ctx: RunContext) -> dict:
    """The encoder's content (the train stage's fingerprint covers a trained one)."""
    return {} if ctx.cfg.train.enabled else {"model": ctx.model_fingerprint(ctx.cfg.embed.model)}


STAGE = StageDef(name="embed", body=run, reads=("verbalize", "train"), config=("embed",), check=check, resumable=True,
                 external=model_inputs)
