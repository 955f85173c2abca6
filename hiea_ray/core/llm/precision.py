"""The LLM tier's number formats: weights (``weight_dtype``) and autocast (``llm_amp_dtype``, ``autocast``)."""

from __future__ import annotations

import torch


def weight_dtype(setting: str, device) -> torch.dtype:
    """``llm.dtype`` -> the base LLM's weight dtype on ``device``: "auto" = bfloat16 on GPUs,
    float32 on CPUs (bf16 weights there would change every CPU result and gain nothing without
    native bf16 kernels)."""
    if setting == "auto":
        return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16}[setting]


def llm_amp_dtype(device, amp: bool, cpu_amp: bool):
    """bf16 for the LLM's passes on ``device``: on GPU when ``amp``; on CPU only with ``cpu_amp``
    too (oneDNN's bf16 kernels; without AVX512-BF16 / AMX it runs, slowly: a warning says so)."""
    if not amp or (device.type != "cuda" and not cpu_amp):
        return None
    if device.type == "cpu":
        from hiea_ray.core.encoder import cpu_has_bf16

        if not cpu_has_bf16():
            import logging

            logging.getLogger(__name__).warning("llm cpu_amp: this CPU has no native bf16 (AVX512-BF16 / AMX); it runs, slowly")
    return torch.bfloat16


def autocast(device, amp_dtype):
    """bf16/fp16 autocast on ``device`` when ``amp_dtype`` is set, else a no-op context."""
    import contextlib

    return torch.autocast(device.type, dtype=amp_dtype) if amp_dtype is not None else contextlib.nullcontext()
