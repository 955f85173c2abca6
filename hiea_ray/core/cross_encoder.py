"""Cross-encoder reranker: plain load / score / train / eval functions; Ray-free (Ray wraps them).

The reranker reads a (source text, candidate text) pair together and outputs one logit. It is a
``AutoModelForSequenceClassification`` with ``num_labels=1``: from the packaged
all-MiniLM-L6-v2 (a ``BertModel``) transformers adds a freshly initialised scoring head.

Training is listwise (DERA): for each train link, the group [gold target, N negatives sampled from
the retriever's top candidates] is scored and the loss is the softmax cross-entropy of the gold
one (position 0). Validation reranks each validation source's retrieved top-k and reports Hits@1
and MRR of the gold target (a gold outside the list counts as a miss, as in the pipeline).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from hiea_ray.core.optim import apply_gradients
from hiea_ray.core.tokens import pad_rows, to_device


def load_reranker(model: str):
    """(model, tokenizer) for a reranker: a folder / HF id, "default" = packaged MiniLM + fresh head."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging as hf_logging

    from hiea_ray.core.encoder import resolve_model

    path = resolve_model(model)
    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # "newly initialized: classifier.*" is the point here
    try:
        with torch.random.fork_rng():  # a fresh head is the same in every process (resume, actors)
            torch.manual_seed(0)
            m = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1)
    finally:
        hf_logging.set_verbosity(level)
    tok = AutoTokenizer.from_pretrained(path)
    return m, tok


def pair_logits(model, tokenizer, src: list[str], cand: list[str], max_length: int, device) -> torch.Tensor:
    """(n,) logits for n (src, cand) pairs, differentiable."""
    batch = tokenizer(src, cand, padding=True, truncation="longest_first", max_length=max_length, return_tensors="pt").to(device)
    return model(**batch).logits.reshape(-1).float()


@torch.inference_mode()
def score_pairs(model, tokenizer, src: list[str], cand: list[str], max_length: int, device=None, batch_size: int = 64, amp_dtype=None) -> np.ndarray:
    """Scores many pairs in batches, shortest first (less padding); returns (n,) float32 logits."""
    device = device or torch.device("cpu")
    model.eval()
    out = np.empty(len(src), np.float32)
    order = np.argsort([len(a) + len(b) for a, b in zip(src, cand)], kind="stable")
    for i in range(0, len(order), batch_size):
        idx = order[i : i + batch_size]
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            logits = pair_logits(model, tokenizer, [src[j] for j in idx], [cand[j] for j in idx], max_length, device)
        out[idx] = logits.float().cpu().numpy()
    return out


def pair_token_ids(tokenizer, src: list[str], cand: list[str], max_length: int) -> tuple[list, list]:
    """(token ids, token type ids) per (src, cand) pair, truncated as ``pair_logits`` truncates,
    unpadded: what the rerank stage's CPU tokenize actors hand to the GPU actors."""
    enc = tokenizer(list(src), list(cand), truncation="longest_first", max_length=max_length, padding=False)
    types = enc.get("token_type_ids") or [[0] * len(x) for x in enc["input_ids"]]
    return enc["input_ids"], types


@torch.inference_mode()
def score_pair_ids(model, tokenizer, ids: list, types: list, device=None, batch_size: int = 64, amp_dtype=None) -> np.ndarray:
    """``score_pairs`` on token ids (``pair_token_ids``): only padding, the copy (pinned memory,
    non-blocking on GPUs) and the forward run here; batches by token count. (n,) float32 logits."""
    device = device or torch.device("cpu")
    model.eval()
    out = np.empty(len(ids), np.float32)
    order = np.argsort(np.fromiter((len(x) for x in ids), np.int64, len(ids)), kind="stable")
    pad = tokenizer.pad_token_id or 0
    for i in range(0, len(order), batch_size):
        idx = order[i : i + batch_size]
        input_ids, real = pad_rows([ids[j] for j in idx], pad)
        arr = {"input_ids": input_ids, "token_type_ids": pad_rows([types[j] for j in idx], 0)[0],
               "attention_mask": real.astype(np.int64)}
        batch = {k: to_device(v, device) for k, v in arr.items()}
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            out[idx] = model(**batch).logits.reshape(-1).float().cpu().numpy()
    return out


def listwise_loss(logits: torch.Tensor) -> torch.Tensor:
    """(B, 1 + N) logits with the positive in column 0 -> mean softmax cross-entropy."""
    return F.cross_entropy(logits, torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device))


def train_step(model, tokenizer, optimizer, scheduler, batch: dict, opts: dict, device, amp_dtype=None) -> float:
    """One optimizer step on B groups: batch has ``src`` (B,), ``pos`` (B,), ``neg`` (B lists of N)."""
    model.train()
    src, pos, negs = list(batch["src"]), list(batch["pos"]), [list(n) for n in batch["neg"]]
    n = min(len(x) for x in negs)
    left, right = [], []
    for s, p, ng in zip(src, pos, negs):
        left += [s] * (1 + n)
        right += [p] + ng[:n]
    with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
        logits = pair_logits(model, tokenizer, left, right, opts["max_length"], device)
    loss = listwise_loss(logits.view(len(src), 1 + n))
    apply_gradients(model, optimizer, scheduler, loss)
    return float(loss.detach())


def group_metrics(scores: np.ndarray, gold_pos: np.ndarray) -> dict:
    """scores (n, k) per candidate list, gold_pos (n,) position of the gold in its list or -1."""
    n = len(gold_pos)
    has = gold_pos >= 0
    g = np.where(has, scores[np.arange(n), np.maximum(gold_pos, 0)], np.inf)
    rank = (scores > g[:, None]).sum(1) + 1
    rr = np.where(has, 1.0 / rank, 0.0)
    return {"valid_hits@1": float(np.mean(has & (rank == 1))), "valid_mrr": float(np.mean(rr))}


def evaluate(model, tokenizer, valid: dict, max_length: int, device, batch_size: int = 64) -> dict:
    """valid: ``src`` (n,), ``cand`` (n lists of k texts, retriever order), ``gold_pos`` (n,)."""
    src = [s for s, c in zip(valid["src"], valid["cand"]) for _ in c]
    cand = [t for c in valid["cand"] for t in c]
    k = len(valid["cand"][0]) if len(valid["cand"]) else 0
    logits = score_pairs(model, tokenizer, src, cand, max_length, device, batch_size).reshape(-1, k)
    return group_metrics(logits, np.asarray(valid["gold_pos"]))


def retriever_metrics(valid: dict) -> dict:
    """The same metrics for the retriever's own order (the baseline the reranker must beat)."""
    k = len(valid["cand"][0]) if len(valid["cand"]) else 0
    n = len(valid["gold_pos"])
    return group_metrics(np.tile(-np.arange(k, dtype=np.float32), (n, 1)), np.asarray(valid["gold_pos"]))


def sample_negatives(cand: np.ndarray, gold: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """cand (B, depth) candidate ids (-1 padded), gold (B,) -> (B, n) negative ids, gold excluded.

    Rows with fewer than n usable candidates repeat them (or get -1 when none)."""
    out = np.full((len(gold), n), -1, np.int64)
    for i in range(len(gold)):
        pool = cand[i][(cand[i] >= 0) & (cand[i] != gold[i])]
        if len(pool):
            out[i] = rng.choice(pool, size=n, replace=len(pool) < n)
    return out


def save_reranker(model, tokenizer, folder: Path) -> None:
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
