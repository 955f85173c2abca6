"""The optimizer step every training task shares (retriever, reranker, LLM tier, verbalizer)."""

from __future__ import annotations

import torch


def apply_gradients(model, optimizer, scheduler, loss: torch.Tensor, max_norm: float = 1.0) -> None:
    """Backward + clipped optimizer step + scheduler step. A DeepSpeed engine (ZeRO) does all
    three itself (clipping and scheduler are in its config): then ``model.backward``/``model.step``."""
    if hasattr(model, "backward") and hasattr(model, "step"):
        model.backward(loss)
        model.step()
        return
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    optimizer.step()
    if scheduler is not None:
        scheduler.step()
