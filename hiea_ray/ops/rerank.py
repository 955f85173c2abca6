"""The cross-encoder's Ray Data piece: ``Reranker`` (callable class) and ``rerank_spec``.

``Reranker`` scores each (source text, candidate text) pair of a source's top-k candidates with
the cross-encoder (loaded once per actor); the rerank stage chains it over its candidate Parquet.
"""

from __future__ import annotations

import os
from dataclasses import asdict

import numpy as np
import pyarrow as pa

from hiea_ray.config import RerankConfig
from hiea_ray.core.encoder import resolve_backend, set_threads
from hiea_ray.ops.data import MapSpec, model_chain, resolve
from hiea_ray.io import TextLookup, column_to_numpy, embeddings_column


class Reranker:
    """Candidate rows (src, cand[K], score[K]) -> (src, cand[k], retr[k], rerank[k]) for the top k.

    Scores each (source text, candidate text) pair of a source's top-k candidates with the
    cross-encoder (loaded once per actor). ``texts`` (id, text) is a table or an object ref
    (shared read-only through the object store on a cluster). Padded candidates (-1) score -inf."""

    def __init__(self, cfg: dict, model: str, texts, tokenized: bool = False):
        import torch

        from hiea_ray.core.cross_encoder import load_reranker

        self.tokenized = tokenized  # the input contract (data.model_chain): pair token ids, or the texts by id

        self.cfg = RerankConfig(**cfg)
        set_threads(self.cfg.torch_threads or os.cpu_count())  # as the embed stage: 0 = all cores
        self.device = torch.device("cuda" if self.cfg.gpus_per_actor > 0 and torch.cuda.is_available() else "cpu")
        self.amp = torch.bfloat16 if (self.device.type == "cuda" and self.cfg.amp) else None
        if self.device.type == "cpu" and resolve_backend(self.cfg.backend, self.device) == "torch-bf16":
            self.amp = torch.bfloat16  # oneDNN bf16 on CPU (auto: where core.encoder.cpu_has_bf16)
        self.model, self.tokenizer = load_reranker(model)
        self.model.to(self.device)
        self._texts = TextLookup(resolve(texts))

    def __call__(self, batch: pa.Table) -> pa.Table:
        from hiea_ray.core.cross_encoder import score_pair_ids, score_pairs

        k = self.cfg.k
        src = batch["src"].to_numpy()
        cand = column_to_numpy(batch["cand"])[:, :k]
        retr = column_to_numpy(batch["score"])[:, :k]
        ok = cand >= 0
        rows, cols = np.nonzero(ok)
        from hiea_ray.ops.data import require_columns

        require_columns(batch, ("src", "cand", "score", *((PAIR_IDS, PAIR_TYPES) if self.tokenized else ())), "Reranker")
        if self.tokenized:  # token ids from the CPU tokenize stage: pad, copy, forward
            ids, types = batch[PAIR_IDS].to_pylist(), batch[PAIR_TYPES].to_pylist()
            logits = score_pair_ids(self.model, self.tokenizer, [ids[r][c] for r, c in zip(rows, cols)],
                                    [types[r][c] for r, c in zip(rows, cols)], self.device, self.cfg.infer_batch_size,
                                    self.amp)
        else:
            logits = score_pairs(
                self.model, self.tokenizer, self._texts(src[rows]), self._texts(cand[rows, cols]), self.cfg.max_length,
                self.device, self.cfg.infer_batch_size, self.amp,
            )
        rerank = np.full(cand.shape, -np.inf, np.float32)
        rerank[rows, cols] = logits
        return pa.table({"src": batch["src"], "cand": embeddings_column(cand.astype(np.int64)), "retr": embeddings_column(retr),
                         "rerank": embeddings_column(rerank)})


class RerankTokenize:
    """Candidate rows -> the same rows + each source's top-k (source text, candidate text) pairs as
    token ids and token type ids (``core.cross_encoder.pair_token_ids``; empty for padding): the
    rerank stage's CPU tokenize actors (``rerank.tokenize: stage``), ahead of the GPU actors."""

    def __init__(self, cfg: dict, model: str, texts):
        from transformers import AutoTokenizer

        from hiea_ray.core.encoder import resolve_model

        self.cfg = RerankConfig(**cfg)
        self.tokenizer = AutoTokenizer.from_pretrained(resolve_model(model))
        self._texts = TextLookup(resolve(texts))

    def __call__(self, batch: pa.Table) -> pa.Table:
        from hiea_ray.core.cross_encoder import pair_token_ids

        k = self.cfg.k
        src = batch["src"].to_numpy()
        cand = column_to_numpy(batch["cand"])[:, :k]
        rows, cols = np.nonzero(cand >= 0)
        ids, types = pair_token_ids(self.tokenizer, self._texts(src[rows]), self._texts(cand[rows, cols]),
                                    self.cfg.max_length)
        out_ids = [[[] for _ in range(cand.shape[1])] for _ in range(len(src))]
        out_types = [[[] for _ in range(cand.shape[1])] for _ in range(len(src))]
        for r, c, i, t in zip(rows, cols, ids, types):
            out_ids[r][c], out_types[r][c] = i, t
        return batch.append_column(PAIR_IDS, pa.array(out_ids, pa.list_(pa.list_(pa.int32())))).append_column(
            PAIR_TYPES, pa.array(out_types, pa.list_(pa.list_(pa.int8()))))


PAIR_IDS, PAIR_TYPES = "pair_ids", "pair_types"


def rerank_spec(cfg: RerankConfig, model: str, texts) -> list[MapSpec]:
    """The chain's callable classes in order: [RerankTokenize,] Reranker."""
    args = {"cfg": asdict(cfg), "model": model, "texts": texts}
    rerank = MapSpec(Reranker, args, {"batch_size": cfg.rows_per_batch, "batch_format": "pyarrow",
                                      "num_cpus": cfg.cpus_per_actor, "num_gpus": cfg.gpus_per_actor},
                     actors=cfg.num_actors)
    return model_chain(cfg, "rerank", rerank, RerankTokenize, args)
