"""The LLM tier's Ray Data piece: ``LLMScorer`` (callable class) and ``llm_spec``.

``LLMScorer`` loads the causal LM + LoRA + knowledge adapter once per actor (weights by
``llm.dtype``: bf16 on GPUs) and reads one forward pass per prompt: a distribution over its
candidates and "none" (``core.llm.score``).
"""

from __future__ import annotations

import os
from dataclasses import asdict

import numpy as np
import pyarrow as pa

from hiea_ray.config import LLMConfig
from hiea_ray.core.encoder import set_threads
from hiea_ray.ops.data import MapSpec, model_chain
from hiea_ray.io import column_to_numpy, embeddings_column


class LLMScorer:
    """Prompt rows (src, text, vectors, n_options, options) -> (src, options, n_options, logp)."""

    def __init__(self, cfg: dict, base: str, trained: str, vector_dim: int, tokenized: bool = False):
        import torch

        self.tokenized = tokenized  # the input contract (data.model_chain): input_ids, or the prompt texts

        from hiea_ray.core.llm import llm_amp_dtype, load_hiea_llm, weight_dtype

        self.cfg = LLMConfig(**{k: v for k, v in cfg.items() if k != "scaling"})
        set_threads(self.cfg.torch_threads or os.cpu_count())
        self.device = torch.device("cuda" if self.cfg.gpus_per_actor > 0 and torch.cuda.is_available() else "cpu")
        self.amp = llm_amp_dtype(self.device, self.cfg.amp, self.cfg.cpu_amp)
        self.model, self.tokenizer = load_hiea_llm(base, trained, vector_dim, cfg, trainable=False,
                                                   dtype=weight_dtype(self.cfg.dtype, self.device))
        self.model.to(self.device)

    def __call__(self, batch: pa.Table) -> pa.Table:
        from hiea_ray.core.llm import score

        slots = self.cfg.candidates + 1
        vectors = list(column_to_numpy(batch["vectors"]))
        from hiea_ray.ops.data import require_columns

        require_columns(batch, (IDS if self.tokenized else "text", "vectors", "n_options"), "LLMScorer")
        ids = batch[IDS].to_pylist() if self.tokenized else None  # from LLMTokenize
        texts = None if self.tokenized else batch["text"].to_pylist()
        logp = score(self.model, self.tokenizer, texts, vectors, batch["n_options"].to_pylist(),
                     slots, self.device, self.cfg.infer_batch_size, self.amp, ids=ids)
        return pa.table({"src": batch["src"], "options": batch["options"], "n_options": batch["n_options"],
                         "logp": embeddings_column(logp.astype(np.float32))})


IDS = "input_ids"


class LLMTokenize:
    """Prompt rows -> the same rows + ``input_ids`` (the prompt's token ids with the trained model's
    tokenizer, slot token included): the llm stage's CPU tokenize actors (``llm.tokenize: stage``)."""

    def __init__(self, trained: str):
        from hiea_ray.core.llm import load_tokenizer

        self.tokenizer = load_tokenizer(trained)

    def __call__(self, batch: pa.Table) -> pa.Table:
        from hiea_ray.core.llm import token_ids

        ids = token_ids(self.tokenizer, batch["text"].to_pylist())
        return batch.append_column(IDS, pa.array(ids, pa.list_(pa.int32())))


def llm_spec(lc: LLMConfig, base: str, trained: str, vector_dim: int) -> list[MapSpec]:
    """The chain's callable classes in order: [LLMTokenize,] LLMScorer."""
    scorer = MapSpec(LLMScorer, {"cfg": asdict(lc), "base": base, "trained": trained, "vector_dim": vector_dim},
                     {"batch_size": lc.rows_per_batch, "batch_format": "pyarrow", "num_cpus": lc.cpus_per_actor,
                      "num_gpus": lc.gpus_per_actor}, actors=lc.num_actors)
    return model_chain(lc, "llm", scorer, LLMTokenize, {"trained": trained})
