"""embed (Ray Data actor pool, resumable): one L2-normalized vector per entity text.

The chain is ``hiea_ray.ops.embed`` (the encoder loaded once per actor: the trained retriever when
``train.enabled``, else ``embed.model``; token ids from a CPU tokenize stage with
``embed.tokenize: stage``); output ``parts/*.parquet`` (id, kg, embedding, node, worker, precision).
Finished parts are kept when a run is killed, and only the missing ids are embedded again. The
manifest records where the rows were embedded (per node) and by which encoder processes: more
processes than ``embed.num_actors`` means Ray restarted or replaced an encoder actor mid-stage
(a lost node, a crashed worker), and the rows it had in flight were embedded again.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from hiea_ray.core.encoder import resolve_model
from hiea_ray.io import finished_ids, read_dir
from hiea_ray.ops.embed import embed_dataset, embed_specs
from hiea_ray.run import RunContext
from hiea_ray.stages.base import StageDef

log = logging.getLogger(__name__)


def run(ctx: RunContext, tmp: Path) -> dict:
    from hiea_ray.ops.data import init_ray

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
    # the ids and where they were embedded: never the vectors (n x d) in the driver
    table = read_dir(parts, columns=["id", "node", "worker", "precision"])
    ids = table["id"].to_numpy()
    if len(np.unique(ids)) != total or len(ids) != total:
        raise RuntimeError(f"embed: expected {total} unique rows, found {len(ids)} ({len(np.unique(ids))} unique)")
    per_node = pc.value_counts(table["node"].cast(pa.string())).to_pylist()
    precision = pc.value_counts(table["precision"].cast(pa.string())).to_pylist() if "precision" in table.column_names else []
    new_rows = total - len(done)
    now = table.filter(pc.invert(pc.is_in(table["id"], pa.array(done, pa.int64())))) if len(done) else table
    procs = ({} if "worker" not in now.column_names else
             {d["values"]: d["counts"] for d in pc.value_counts(now["worker"].cast(pa.string())).to_pylist()})
    actors = {w.split(":")[0] for w in procs}
    return {
        "rows": total,
        "rows_embedded_now": new_rows,
        "rows_per_s": round(new_rows / max(wall, 1e-9), 1),
        "rows_per_node": {d["values"]: d["counts"] for d in per_node},
        # this run's rows per encoder process (actor:pid); restarted = an actor seen in a second
        # process; beyond the pool = processes more than embed.num_actors (restarts or replacements)
        "rows_per_encoder_process": procs,
        "encoder_actors": len(actors),
        "encoder_actor_restarts": len(procs) - len(actors),
        "encoder_processes_beyond_pool": max(0, len(procs) - e.num_actors),
        # what ran (embed.backend auto): backend/device/autocast dtype -> rows
        "precision": {str(d["values"]): d["counts"] for d in precision},
        "chain": [spec.cls.__name__ for spec in embed_specs(e)],  # [Tokenize,] Embedder: data.model_chain decides
        "dim": pq.read_schema(next(iter(sorted(parts.glob("*.parquet"))))).field("embedding").type.list_size,
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
