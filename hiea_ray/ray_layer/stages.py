"""Ray Data stages: plain callable classes (load once in ``__init__``, map a batch in ``__call__``).

They import no Ray and are unit-tested by calling them directly; ``pipeline.py`` hands them to
``Dataset.map_batches`` with the compute strategy and resources from the config.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field

import numpy as np
import pyarrow as pa

from hiea_ray.config import EmbedConfig, RerankConfig, VerbalizeConfig
from hiea_ray.core.encoder import Encoder, fuse, set_threads
from hiea_ray.core.verbalize import verbalize_table


class VerbalizeStage:
    """Context rows (``verbalize.build_contexts``) -> (id, kg, name, text)."""

    def __init__(self, cfg: dict):
        self.cfg = VerbalizeConfig(**cfg)

    def __call__(self, batch: pa.Table) -> pa.Table:
        return verbalize_table(batch, self.cfg)


def embeddings_column(vectors: np.ndarray) -> pa.FixedSizeListArray:
    """(n, d) array -> fixed_size_list[d] column (float32 unless the array is integer)."""
    v = np.ascontiguousarray(vectors, dtype=vectors.dtype if vectors.dtype.kind == "i" else np.float32)
    return pa.FixedSizeListArray.from_arrays(pa.array(v.reshape(-1)), v.shape[1])


def column_to_numpy(col: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """fixed_size_list<float32>[d] column -> (n, d) float32 array."""
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    d = col.type.list_size
    return col.flatten().to_numpy(zero_copy_only=False).reshape(-1, d)


class EmbedStage:
    """(id, kg, name, text) rows -> (id, kg, embedding, node); the encoder is loaded once per actor."""

    def __init__(self, cfg: dict):
        self.cfg = EmbedConfig(**cfg)
        set_threads(self.cfg.torch_threads or os.cpu_count())
        self.encoder = Encoder(self.cfg.model, self.cfg.pooling, self.cfg.max_length, amp=self.cfg.amp)
        self.node = os.environ.get("HIEA_NODE_ID") or _node_id()

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


class RerankStage:
    """Candidate rows (src, cand[K], score[K]) -> (src, cand[k], retr[k], rerank[k]) for the top k.

    Scores each (source text, candidate text) pair of a source's top-k retrieved candidates with
    the cross-encoder (loaded once per actor). ``texts`` (id, text) is a table or an object ref
    (shared read-only through the object store on a cluster). Padded candidates (-1) score -inf."""

    def __init__(self, cfg: dict, model: str, texts):
        import torch

        from hiea_ray.core.cross_encoder import load_reranker

        self.cfg = RerankConfig(**cfg)
        set_threads(self.cfg.torch_threads or os.cpu_count())  # as the embed stage: 0 = all cores
        self.device = torch.device("cuda" if self.cfg.gpus_per_actor > 0 and torch.cuda.is_available() else "cpu")
        self.amp = torch.bfloat16 if (self.device.type == "cuda" and self.cfg.amp) else None
        self.model, self.tokenizer = load_reranker(model)
        self.model.to(self.device)
        self._texts = TextLookup(resolve(texts))

    def __call__(self, batch: pa.Table) -> pa.Table:
        from hiea_ray.core.cross_encoder import score_pairs

        k = self.cfg.k
        src = batch["src"].to_numpy()
        cand = column_to_numpy(batch["cand"])[:, :k]
        retr = column_to_numpy(batch["score"])[:, :k]
        ok = cand >= 0
        rows, cols = np.nonzero(ok)
        logits = score_pairs(
            self.model, self.tokenizer, self._texts(src[rows]), self._texts(cand[rows, cols]), self.cfg.max_length,
            self.device, self.cfg.infer_batch_size, self.amp,
        )
        rerank = np.full(cand.shape, -np.inf, np.float32)
        rerank[rows, cols] = logits
        return pa.table({"src": batch["src"], "cand": embeddings_column(cand.astype(np.int64)), "retr": embeddings_column(retr),
                         "rerank": embeddings_column(rerank)})


class TextLookup:
    """Entity id -> verbalized text over an (id, text) table; a missing id is a KeyError."""

    def __init__(self, texts: pa.Table):
        t = texts.select(["id", "text"]).sort_by("id")
        self.ids = t["id"].to_numpy()
        self.text = t["text"].combine_chunks()

    def __call__(self, ids: np.ndarray) -> list[str]:
        rows = np.searchsorted(self.ids, ids)
        if len(ids) and (rows.max() >= len(self.ids) or not np.array_equal(self.ids[rows], ids)):
            raise KeyError("candidate ids missing from the verbalized texts")
        return self.text.take(pa.array(rows)).to_pylist()


def resolve(obj):
    """An object ref (under Ray) or the object itself."""
    if type(obj).__name__ == "ObjectRef":
        import ray

        return ray.get(obj)
    return obj


def _node_id() -> str:
    try:
        import ray

        if ray.is_initialized():
            return ray.get_runtime_context().get_node_id()[:12]
    except Exception:  # noqa: BLE001 - provenance only; never fail a batch for it
        pass
    return "local"


@dataclass
class StageSpec:
    """What the processor needs to chain one stage: the class, its arguments, map_batches options."""

    cls: type
    constructor_kwargs: dict = field(default_factory=dict)
    map_batches_kwargs: dict = field(default_factory=dict)


def verbalize_spec(cfg: VerbalizeConfig) -> StageSpec:
    return StageSpec(
        VerbalizeStage,
        {"cfg": asdict(cfg)},
        {"batch_size": cfg.batch_size, "batch_format": "pyarrow", "num_cpus": 1},
    )


def embed_spec(cfg: EmbedConfig) -> StageSpec:
    return StageSpec(
        EmbedStage,
        {"cfg": asdict(cfg)},
        {
            "batch_size": cfg.rows_per_batch,
            "batch_format": "pyarrow",
            "num_cpus": cfg.cpus_per_actor,
            "num_gpus": cfg.gpus_per_actor,
        },
    )


def rerank_spec(cfg: RerankConfig, model: str, texts) -> StageSpec:
    return StageSpec(
        RerankStage,
        {"cfg": asdict(cfg), "model": model, "texts": texts},
        {
            "batch_size": cfg.rows_per_batch,
            "batch_format": "pyarrow",
            "num_cpus": cfg.cpus_per_actor,
            "num_gpus": cfg.gpus_per_actor,
        },
    )
