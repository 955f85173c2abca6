"""Tokenizer helpers of the LLM tier: loading a trained tier's tokenizer, prompts to padded
tensors (``encode``) or token ids (``token_ids``, for a CPU tokenize stage) and back (``encode_ids``)."""

from __future__ import annotations

import numpy as np
import torch

from hiea_ray.core.prompt import SLOT
from hiea_ray.core.tokens import pad_rows, to_device


def load_tokenizer(path: str):
    """The LLM's tokenizer with the slot token (added when missing) and a pad token."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    if SLOT not in tok.get_vocab():
        tok.add_special_tokens({"additional_special_tokens": [SLOT]})
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "right"
    return tok


# -- batches, training step, scoring (the Ray Train task and the llm stage's actors call these) -----
def encode(tokenizer, texts, vectors: np.ndarray, n_options: np.ndarray, slots: int, device):
    """Tensors of one batch: token ids / mask (right padded), slot vectors (B, slots, D), which
    slots and options each prompt has (a prompt with n options shows n - 1 candidates + none and
    n entity slots: the source and the candidates)."""
    enc = tokenizer(list(texts), return_tensors="pt", padding=True, add_special_tokens=False)
    b = len(texts)
    vec = torch.as_tensor(np.asarray(np.stack(list(vectors)), np.float32)).view(b, slots, -1)
    n = torch.as_tensor(np.asarray(n_options, np.int64))
    have = torch.arange(slots)[None, :] < n[:, None]
    return enc["input_ids"].to(device), enc["attention_mask"].to(device), vec.to(device), have.to(device)


def token_ids(tokenizer, texts) -> list[list[int]]:
    """Prompts -> token ids (no special tokens added: the chat template has them), unpadded: what
    the llm stage's CPU tokenize actors hand to the GPU actors (``llm.tokenize: stage``)."""
    return tokenizer(list(texts), add_special_tokens=False)["input_ids"]


def encode_ids(tokenizer, ids, vectors: np.ndarray, n_options: np.ndarray, slots: int, device):
    """``encode`` from token ids: right padded with the tokenizer's pad id (as ``encode`` pads),
    copied from pinned memory without blocking on GPUs."""
    arr, real = pad_rows(ids, tokenizer.pad_token_id)
    b = len(ids)
    vec = torch.as_tensor(np.asarray(np.stack(list(vectors)), np.float32)).view(b, slots, -1)
    n = torch.as_tensor(np.asarray(n_options, np.int64))
    have = torch.arange(slots)[None, :] < n[:, None]
    return to_device(arr, device), to_device(real.astype(np.int64), device), to_device(vec, device), have.to(device)
