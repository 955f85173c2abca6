"""The encoder's Ray Data pieces: ``Tokenize`` and ``Embedder`` (callable classes), ``embed_dataset``.

    texts ─(embed.tokenize: stage)─▶ Tokenize (CPU actors) ─▶ token ids ─▶ Embedder ─▶ vectors
    texts ─(embed.tokenize: actor)──────────────────────────────────────▶ Embedder ─▶ vectors

With ``stage`` the tokenizer runs on CPU actors of its own and the encoder actor (a GPU one, where
it pays) only pads, copies and runs the forward; Ray Data streams blocks between the two so they
overlap. Both give the same vectors (``tests/test_encoder.py``).
"""

from __future__ import annotations

import os
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pyarrow as pa

from hiea_ray.config import EmbedConfig
from hiea_ray.core.encoder import Encoder, fuse, load_tokenizer, set_threads, token_ids
from hiea_ray.ops.data import MapSpec, model_chain
from hiea_ray.io import embeddings_column

IDS, NAME_IDS = "input_ids", "name_ids"  # the token id columns the tokenize stage adds


class Tokenize:
    """(id, kg, name, text) rows -> (id, kg, input_ids[, name_ids]): token id lists (int32), the
    tokenizer loaded once per actor. Runs on CPUs, ahead of the encoder actors."""

    def __init__(self, cfg: dict):
        self.cfg = EmbedConfig(**cfg)
        self.tokenizer = load_tokenizer(self.cfg.model)

    def __call__(self, batch: pa.Table) -> pa.Table:
        cols = {"id": batch["id"], "kg": batch["kg"], IDS: self._ids(batch["text"].to_pylist())}
        if self.cfg.name_weight > 0:
            cols[NAME_IDS] = self._ids(batch["name"].to_pylist())
        return pa.table(cols)

    def _ids(self, texts: list[str]) -> pa.Array:
        return pa.array(token_ids(self.tokenizer, texts, self.cfg.max_length), pa.list_(pa.int32()))


def id_rows(column) -> list[np.ndarray]:
    """A list<int> Arrow column -> one numpy array of token ids per row (views, no copies)."""
    col = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    offsets = col.offsets.to_numpy()
    values = col.values.to_numpy(zero_copy_only=False)
    start = offsets[0]
    return [values[a - start : b - start] for a, b in zip(offsets[:-1], offsets[1:])] if len(col) else []


class Embedder:
    """(id, kg, name, text) rows — or the tokenize stage's (id, kg, input_ids[, name_ids]) rows —
    -> (id, kg, embedding, node, worker, precision); the encoder is loaded once per actor. ``worker``:
    the Ray actor and the process that embedded the row (``actor_id:pid``): an actor Ray restarted
    after its node was lost shows a second process, a replacement actor a new id."""

    def __init__(self, cfg: dict, tokenized: bool = False):
        self.cfg = EmbedConfig(**cfg)
        # the input contract (data.model_chain): token ids from the tokenize stage, or the texts
        names = self.cfg.name_weight > 0
        self.inputs = ((IDS, NAME_IDS) if names else (IDS,)) if tokenized else (("text", "name") if names else ("text",))
        self.tokenized = tokenized
        set_threads(self.cfg.torch_threads or os.cpu_count())
        self.encoder = Encoder(self.cfg.model, self.cfg.pooling, self.cfg.max_length, amp=self.cfg.amp,
                               backend=self.cfg.backend, threads=self.cfg.torch_threads or os.cpu_count())
        self.node = os.environ.get("HIEA_NODE_ID") or node_id()
        self.worker = f"{actor_id()}:{os.getpid()}"

    def _encode(self, batch: pa.Table, text: str, ids: str) -> np.ndarray:
        if self.tokenized:
            return self.encoder.encode_ids(id_rows(batch[ids]), self.cfg.batch_size)
        return self.encoder.encode(batch[text].to_pylist(), self.cfg.batch_size)

    def __call__(self, batch: pa.Table) -> pa.Table:
        from hiea_ray.ops.data import require_columns

        require_columns(batch, self.inputs, "Embedder")
        vecs = self._encode(batch, "text", IDS)
        if self.cfg.name_weight > 0:
            vecs = fuse(self._encode(batch, "name", NAME_IDS), vecs, self.cfg.name_weight)
        n = batch.num_rows
        return pa.table(
            {
                "id": batch["id"],
                "kg": batch["kg"],
                "embedding": embeddings_column(vecs),
                "node": pa.array([self.node] * n, pa.string()).dictionary_encode(),
                "worker": pa.array([self.worker] * n, pa.string()).dictionary_encode(),
                "precision": pa.array([self.encoder.precision] * n, pa.string()).dictionary_encode(),
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


def actor_id() -> str:
    """This Ray actor's id (12 hex digits), "local" outside an actor."""
    try:
        import ray
    except ImportError:
        return "local"
    if ray.is_initialized():
        return (ray.get_runtime_context().get_actor_id() or "local")[:12]
    return "local"


def embed_specs(cfg: EmbedConfig) -> list[MapSpec]:
    """The chain's callable classes in order: [Tokenize,] Embedder."""
    embed = MapSpec(Embedder, {"cfg": asdict(cfg)},
                    {"batch_size": cfg.rows_per_batch, "batch_format": "pyarrow", "num_cpus": cfg.cpus_per_actor,
                     "num_gpus": cfg.gpus_per_actor}, actors=cfg.num_actors)
    return model_chain(cfg, "embed", embed, Tokenize, {"cfg": asdict(cfg)})


def embed_dataset(texts_dir: Path, parts: Path, e: EmbedConfig, done: np.ndarray | None = None,
                  total: int | None = None) -> None:
    """The embed chain: read texts -> (drop done ids) -> [tokenize actors ->] encoder actors -> Parquet parts."""
    from hiea_ray.ops.data import map_parquet

    map_parquet(texts_dir, parts, embed_specs(e), e.num_actors, e.rows_per_batch, done,
                progress=None if total is None else ("embed", total))
