"""Batched greedy generation with a causal LM (the LLM verbalizer on CPU / plain GPU); Ray-free.

``load_generator(path, lora, device, amp)`` loads the model once (a ``core.llm.resolve_llm``
folder; a ``verbalize_train`` LoRA folder merged into it), ``generate(...)`` runs prompts in
length-sorted batches (left padding, greedy, ``max_new_tokens``) and returns each completion with
its count of new tokens. On GPU clusters the stage uses vLLM through ``ray.data.llm`` instead,
with the same prompts (``hiea_ray.stages.verbalize``).
"""

from __future__ import annotations

import time

import torch

# Generation stops at a line break: a description is one line.
STOP = ["\n"]


def load_generator(path: str, lora: str | None = None, device: str = "cpu", amp: bool = True):
    """(model, tokenizer) ready for ``generate``: eval mode, left padding, a pad token; bf16 on a
    GPU with ``amp``, float32 on CPU. ``lora``: a peft adapter folder, merged into the weights."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dtype = torch.bfloat16 if (amp and device.startswith("cuda")) else torch.float32
    tok = AutoTokenizer.from_pretrained(lora or path)
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    if lora is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, lora).merge_and_unload()
    return model.to(device).eval(), tok


def chat(tokenizer, body: str, prefix: str = "") -> str:
    """The prompt as the model reads it: its chat template around ``body`` (instruct models), else
    the body with an answer cue; ``prefix`` starts the answer (the entity's name: the description
    is then about that entity and holds its name)."""
    if getattr(tokenizer, "chat_template", None):
        head = tokenizer.apply_chat_template([{"role": "user", "content": body}], add_generation_prompt=True,
                                             tokenize=False)
    else:
        head = body + "\nDescription:" + (" " if prefix else "")
    return head + prefix


def join_prefix(prefix: str, completion: str) -> str:
    """The answer: the prefilled ``prefix`` and the model's continuation of it."""
    if not prefix:
        return completion
    if not completion or completion[0].isspace() or completion[0] in ",.;:'!?)":
        return prefix + completion
    return f"{prefix} {completion}"


def token_counter(tokenizer):
    """count(body) -> tokens of the chat-wrapped prompt (the budget ``describe.fit_facts`` keeps)."""
    overhead = len(tokenizer(chat(tokenizer, ""), add_special_tokens=False)["input_ids"])

    def count(body: str) -> int:
        return len(tokenizer(body, add_special_tokens=False)["input_ids"]) + overhead

    return count


@torch.no_grad()
def generate(model, tokenizer, prompts: list[str], max_new_tokens: int, batch_size: int = 16
             ) -> tuple[list[str], list[int], list[float]]:
    """(completions, new-token counts, seconds per prompt) for chat-wrapped ``prompts``; batches of
    similar lengths (less padding); a prompt's seconds are its batch's wall time / batch size."""
    n = len(prompts)
    texts, counts, secs = [""] * n, [0] * n, [0.0] * n
    lengths = [len(tokenizer(p, add_special_tokens=False)["input_ids"]) for p in prompts]
    order = sorted(range(n), key=lambda i: lengths[i])
    device = next(model.parameters()).device
    eos = {tokenizer.eos_token_id, tokenizer.pad_token_id} - {None}
    # (a tokenizer that cannot write a line break, e.g. a whitespace-split test vocabulary, has no stop)
    can_break = "\n" in tokenizer.decode(tokenizer("a\nb", add_special_tokens=False)["input_ids"])
    stop = {"stop_strings": STOP, "tokenizer": tokenizer} if can_break else {}
    for start in range(0, n, max(1, batch_size)):
        sel = order[start : start + batch_size]
        enc = tokenizer([prompts[i] for i in sel], return_tensors="pt", padding=True, add_special_tokens=False).to(device)
        t0 = time.perf_counter()
        # a description is one line (describe.clean keeps the first): a row stops at its first line
        # break, and a batch as soon as every row has stopped
        out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id,
                             **stop)
        dt = (time.perf_counter() - t0) / len(sel)
        new = out[:, enc["input_ids"].shape[1]:].tolist()
        for i, ids in zip(sel, new):
            k = next((j for j, t in enumerate(ids) if t in eos), len(ids))
            texts[i] = tokenizer.decode(ids[:k], skip_special_tokens=True)
            counts[i] = k
            secs[i] = dt
    return texts, counts, secs


# -- LoRA fine-tuning of the verbalizer (the verbalize_train task's steps) ----------------------------
def sft_batch(tokenizer, prompts: list[str], texts: list[str], device, max_tokens: int = 512):
    """(input_ids, attention_mask, labels): each chat-wrapped prompt followed by its target text and
    EOS, right padded; labels are -100 on the prompt and the padding (only the text is learned)."""
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    seqs, labels = [], []
    for p, t in zip(prompts, texts):
        a = tokenizer(p, add_special_tokens=False)["input_ids"]
        t = t.rstrip()
        if p.endswith((" ", "\n")):
            t = t.lstrip()
        elif t and not t[0].isspace() and t[0] not in ",.;:'!?)":
            t = " " + t
        b = tokenizer(t, add_special_tokens=False)["input_ids"]
        b = (b + [eos])[: max(1, max_tokens - len(a))]
        seqs.append(a + b)
        labels.append([-100] * len(a) + b)
    n = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), n), pad, dtype=torch.long)
    lab = torch.full((len(seqs), n), -100, dtype=torch.long)
    mask = torch.zeros((len(seqs), n), dtype=torch.long)
    for i, (s, l) in enumerate(zip(seqs, labels)):
        ids[i, : len(s)] = torch.as_tensor(s)
        lab[i, : len(l)] = torch.as_tensor(l)
        mask[i, : len(s)] = 1
    return ids.to(device), mask.to(device), lab.to(device)


def sft_step(model, tokenizer, optimizer, scheduler, batch, opts: dict, device, amp_dtype) -> float:
    """One LoRA step: next-token cross-entropy of the target texts given their prompts."""
    from hiea_ray.core.optim import apply_gradients
    from hiea_ray.core.llm import autocast

    ids, mask, labels = sft_batch(tokenizer, list(batch["prompt"]), list(batch["text"]), device)
    model.train()
    with autocast(device, amp_dtype):
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
    apply_gradients(model, optimizer, scheduler, loss)
    return float(loss.detach())


@torch.no_grad()
def sft_evaluate(model, tokenizer, valid, opts: dict, device, batch_size: int = 8) -> dict:
    """Teacher-forced loss and next-token accuracy of the validation texts (higher accuracy: better)."""
    model.eval()
    prompts, texts = valid["prompt"].to_pylist(), valid["text"].to_pylist()
    loss_sum, right, total = 0.0, 0, 0
    for i in range(0, len(prompts), batch_size):
        ids, mask, labels = sft_batch(tokenizer, prompts[i : i + batch_size], texts[i : i + batch_size], device)
        logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
        target = labels[:, 1:]
        keep = target != -100
        loss_sum += float(torch.nn.functional.cross_entropy(logits[keep], target[keep], reduction="sum"))
        right += int((logits.argmax(-1)[keep] == target[keep]).sum())
        total += int(keep.sum())
    return {"valid_loss": loss_sum / max(total, 1), "valid_token_acc": right / max(total, 1)}
