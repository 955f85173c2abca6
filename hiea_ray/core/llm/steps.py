"""One training step, scoring prompts in batches (``score``: the tier's one forward pass per prompt)
and the validation metrics of a checkpoint (``evaluate``)."""

from __future__ import annotations

import numpy as np
import torch

from hiea_ray.core.llm.precision import autocast, llm_amp_dtype
from hiea_ray.core.llm.tokens import encode, encode_ids, token_ids
from hiea_ray.core.optim import apply_gradients


def train_step(model, tokenizer, optimizer, scheduler, batch, opts: dict, device, amp_dtype) -> float:
    """One LoRA + adapter step: cross-entropy of the answer letter (the only supervised token)."""
    slots = opts["candidates"] + 1
    ids, mask, vec, have = encode(tokenizer, batch["text"], batch["vectors"], batch["n_options"], slots, device)
    answer = torch.as_tensor(np.asarray(batch["answer"], np.int64), device=device)
    model.train()
    with autocast(device, amp_dtype):
        logp = model(ids, mask, vec, have, have)
    loss = torch.nn.functional.nll_loss(logp.float(), answer)
    apply_gradients(model, optimizer, scheduler, loss)
    return float(loss.detach())


@torch.no_grad()
def score(model, tokenizer, texts, vectors, n_options, slots: int, device, batch_size: int = 8,
          amp_dtype=None, ids=None) -> np.ndarray:
    """(n, slots) log-probabilities over each prompt's options (-inf where it has fewer), one
    forward pass per prompt, batched. ``ids``: the prompts' token ids (``token_ids``), when a CPU
    stage tokenized them; then ``texts`` is not read."""
    model.eval()
    out = []
    n = len(ids) if ids is not None else len(texts)
    lengths = [len(x) for x in ids] if ids is not None else [len(t) for t in texts]
    order = np.argsort(lengths, kind="stable")  # similar lengths together: less padding
    for i in range(0, n, batch_size):
        sel = order[i : i + batch_size]
        if ids is not None:
            ids_t, mask, vec, have = encode_ids(tokenizer, [ids[j] for j in sel], [vectors[j] for j in sel],
                                                [n_options[j] for j in sel], slots, device)
        else:
            ids_t, mask, vec, have = encode(tokenizer, [texts[j] for j in sel], [vectors[j] for j in sel],
                                            [n_options[j] for j in sel], slots, device)
        with autocast(device, amp_dtype):
            out.append(model(ids_t, mask, vec, have, have).float().cpu().numpy())
    logp = np.concatenate(out) if out else np.zeros((0, slots), np.float32)
    res = np.empty_like(logp)
    res[order] = logp
    return res


def evaluate(model, tokenizer, valid, opts: dict, device) -> dict:
    """Accuracy of the arg-max option on validation examples (a pyarrow table with text, vectors,
    n_options, answer, small: the option the small model ranks first)."""
    slots = opts["candidates"] + 1
    vectors = [np.asarray(v, np.float32) for v in valid["vectors"].to_pylist()]
    sc = opts.get("scaling") or {}
    logp = score(model, tokenizer, valid["text"].to_pylist(), vectors, valid["n_options"].to_pylist(), slots, device,
                 opts.get("infer_batch_size", 8), llm_amp_dtype(device, sc.get("amp", True), sc.get("cpu_amp", False)))
    answer = valid["answer"].to_numpy()
    none = valid["n_options"].to_numpy() - 1
    pick = logp.argmax(1)
    rank = np.where(np.arange(slots)[None, :] < none[:, None], logp, -np.inf).argmax(1)  # "none" left out
    return {"valid_acc": float(np.mean(pick == answer)), "valid_small_acc": float(np.mean(valid["small"].to_numpy() == answer)),
            # Hits@1: a right candidate picked ("none" is no hit even where it is the right answer)
            "valid_hits1": float(np.mean((pick == answer) & (answer != none))),
            # the merge's Hits@1 on these: the best-ranked candidate ("none" only abstains, in P/R)
            "valid_rank_hits1": float(np.mean((rank == answer) & (answer != none))),
            "valid_picked_none": float(np.mean(pick == none))}
