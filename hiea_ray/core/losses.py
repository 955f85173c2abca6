"""Contrastive loss of the bi-encoder (InfoNCE with temperature); Ray-free, pure torch.

For a batch of B train links (source s_i, target t_i) on each of W workers, with optional N hard
negatives h_i1..h_iN per source (targets the current model ranks high for s_i, not t_i):

    logits_i = [ s_i . t_i,                      positive
                 s_i . t_j   (j != i, all workers when cross_device, else this worker),
                 s_i . h_in  (n = 1..N) ] / temperature
    loss     = cross_entropy(logits_i, positive)

Each negative source is switchable so its effect can be measured: ``in_batch`` (other links'
targets), ``cross_device`` (also other workers' targets, gathered; gradients flow through this
worker's part only, and the loss covers the global batch so W workers follow the 1-worker loss
curve), and hard negatives (pass ``hard=None`` to disable). ``symmetric`` adds the target ->
source direction over the same (gathered) batch.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F


def gather_with_grad(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(B, D) local -> (W*B, D) from all workers and the offset of this worker's rows.

    all_gather returns tensors without grad; this worker's slot is replaced by the local tensor
    so the gradient flows through the local part (each worker back-propagates its own rows)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x, 0
    world, rank = dist.get_world_size(), dist.get_rank()
    parts = [torch.empty_like(x) for _ in range(world)]
    dist.all_gather(parts, x.detach().contiguous())
    parts[rank] = x
    return torch.cat(parts, 0), rank * x.shape[0]


def _direction(q: torch.Tensor, pos: torch.Tensor, cand: torch.Tensor | None, offset: int, hard: torch.Tensor | None):
    """q, pos (B, D); cand (C, D) or None; hard (B, N, D) or None -> logits (B, 1|C [+N]), labels (B,)."""
    b = q.shape[0]
    if cand is not None:
        logits = q @ cand.T  # (B, C): the positive of row i sits at column offset + i
        labels = torch.arange(b, device=q.device) + offset
    else:
        logits = (q * pos).sum(-1, keepdim=True)  # (B, 1)
        labels = torch.zeros(b, dtype=torch.long, device=q.device)
    if hard is not None:
        logits = torch.cat([logits, torch.einsum("bd,bnd->bn", q, hard)], 1)  # (B, C + N)
    return logits, labels


def contrastive_loss(
    src: torch.Tensor,
    tgt: torch.Tensor,
    hard: torch.Tensor | None = None,
    temperature: float = 0.05,
    in_batch: bool = True,
    cross_device: bool = True,
    symmetric: bool = False,
) -> torch.Tensor:
    """src, tgt (B, D) unit rows; hard (B, N, D) unit rows or None -> scalar loss.

    With ``cross_device`` (and a process group of W > 1 workers) every worker computes the loss of
    the whole global batch (W*B rows, W*B in-batch candidates) from gathered embeddings in which
    only its own rows carry gradient; the loss value is the same on every worker and equals the
    single-process loss of the global batch. Summing the workers' gradients gives the full
    gradient, so the caller multiplies by W before ``backward`` (DDP averages): see
    ``world_scale``."""
    if in_batch and cross_device:
        src, _ = gather_with_grad(src)
        tgt, _ = gather_with_grad(tgt)
        if hard is not None:
            b, n, d = hard.shape
            hard = gather_with_grad(hard.reshape(b, n * d))[0].reshape(-1, n, d)
    cand = tgt if in_batch else None
    logits, labels = _direction(src, tgt, cand, 0, hard)
    loss = F.cross_entropy(logits / temperature, labels)
    if symmetric:
        logits_t, labels_t = _direction(tgt, src, src if in_batch else None, 0, None)
        loss = 0.5 * (loss + F.cross_entropy(logits_t / temperature, labels_t))
    return loss


def world_scale(cross_device: bool, in_batch: bool = True) -> int:
    """Factor for the loss before backward under DDP: W when the loss covers the global batch."""
    if cross_device and in_batch and dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1
