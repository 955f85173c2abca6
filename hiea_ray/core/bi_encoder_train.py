"""Plain train / eval step functions of the bi-encoder; Ray-free (Ray Train wraps them).

A batch is a dict with ``src`` (B texts), ``tgt`` (B texts) and optionally ``neg`` (B lists of N
texts: hard negatives). ``train_step`` encodes all of them with gradients, applies
``losses.contrastive_loss`` and steps the optimizer; ``evaluate`` ranks validation targets for
validation sources with the current weights (exact cosine over the small validation set).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from hiea_ray.core.encoder import pool
from hiea_ray.core.losses import contrastive_loss, world_scale
from hiea_ray.core.optim import apply_gradients


def embed_with_grad(model, tokenizer, texts: list[str], max_length: int, device, pooling: str = "mean") -> torch.Tensor:
    """texts (n,) -> (n, D) unit rows, differentiable."""
    batch = tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt").to(device)
    out = model(**batch).last_hidden_state
    return F.normalize(pool(out, batch["attention_mask"], pooling).float(), dim=-1)


def train_step(model, tokenizer, optimizer, scheduler, batch: dict, opts: dict, device, amp_dtype=None) -> float:
    """One optimizer step on one batch; returns the loss value."""
    model.train()
    src, tgt = list(batch["src"]), list(batch["tgt"])
    negs = batch.get("neg")
    n_neg = len(negs[0]) if negs is not None and len(negs) and opts["hard_negatives"] > 0 else 0
    texts = src + tgt + ([t for row in negs for t in list(row)[:n_neg]] if n_neg else [])
    with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
        emb = embed_with_grad(model, tokenizer, texts, opts["max_length"], device, opts["pooling"])
    b = len(src)
    hard = emb[2 * b :].view(b, n_neg, -1) if n_neg else None
    loss = contrastive_loss(
        emb[:b],
        emb[b : 2 * b],
        hard,
        temperature=opts["temperature"],
        in_batch=opts["in_batch"],
        cross_device=opts["cross_device"],
        symmetric=opts["symmetric"],
    )
    apply_gradients(model, optimizer, scheduler, loss * world_scale(opts["cross_device"], opts["in_batch"]))
    return float(loss.detach())


@torch.inference_mode()
def evaluate(model, tokenizer, src_texts: list[str], tgt_texts: list[str], max_length: int, device, batch_size: int = 128,
             pooling: str = "mean") -> dict:
    """Validation: source i's gold target is tgt_texts[i]; rank it among all tgt_texts."""
    model.eval()

    def enc(texts):
        order = np.argsort([len(t) for t in texts], kind="stable")
        out = torch.empty(len(texts), model.config.hidden_size)
        for i in range(0, len(texts), batch_size):
            idx = order[i : i + batch_size]
            out[idx] = embed_with_grad(model, tokenizer, [texts[j] for j in idx], max_length, device, pooling).float().cpu()
        return out

    s, t = enc(src_texts), enc(tgt_texts)
    sim = s @ t.T  # validation sets are small (hundreds to a few thousand)
    gold = sim.diagonal().unsqueeze(1)
    rank = (sim > gold).sum(1) + 1
    return {"valid_hits@1": float((rank == 1).float().mean()), "valid_mrr": float((1.0 / rank).mean())}
