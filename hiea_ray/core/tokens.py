"""Token id rows padded into arrays: what a model actor does with the ids a CPU tokenize stage made."""

from __future__ import annotations

import numpy as np


def pad_rows(rows, value: int, left: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Rows of ids (lists or arrays) -> (int64 (B, T) padded with ``value`` on the right, or the
    left, bool (B, T) mask of the real positions): the arrays a tokenizer returns with padding."""
    lens = np.fromiter((len(x) for x in rows), np.int64, len(rows))
    t = int(lens.max()) if len(rows) else 0
    pos = np.arange(t)[None, :]
    real = pos >= (t - lens)[:, None] if left else pos < lens[:, None]
    out = np.full((len(rows), t), value, np.int64)
    out[real] = np.concatenate([np.asarray(x, np.int64) for x in rows]) if len(rows) else []  # row-major order
    return out, real


def to_device(arr, device):
    """A numpy array (or CPU tensor) on ``device``: on a GPU from page-locked memory without
    blocking, so the copy overlaps the GPU's work."""
    import torch

    x = torch.from_numpy(arr) if isinstance(arr, np.ndarray) else arr
    device = torch.device(device)
    return (x.pin_memory() if device.type == "cuda" else x).to(device, non_blocking=True)
