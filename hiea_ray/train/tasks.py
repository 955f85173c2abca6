"""Training tasks: what differs between the jobs the one Ray Train loop (``train.loop``) runs.

A task is a small picklable object made on the driver and shipped to the workers. It names its
checkpoint ``metric``, loads its model, runs one optimizer step on a batch, validates on an Arrow
table of validation rows, and saves a model folder that the next stage loads. The steps
themselves are the Ray-free functions of ``hiea_ray.core``.
"""

from __future__ import annotations

from pathlib import Path


class TrainTask:
    name = ""
    # The validation metric that picks the best checkpoint (higher is better).
    metric = "valid_mrr"

    def load(self, path: str, device=None):
        """-> (model, tokenizer)."""
        raise NotImplementedError

    def step(self, model, tokenizer, optimizer, scheduler, batch, opts: dict, device, amp_dtype) -> float:
        raise NotImplementedError

    def evaluate(self, model, tokenizer, valid, opts: dict, device) -> dict:
        """valid: a ``pyarrow.Table`` of validation rows -> metrics (must contain ``metric``)."""
        raise NotImplementedError

    def save(self, model, tokenizer, folder: Path) -> None:
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)


class RetrieverTask(TrainTask):
    """The bi-encoder: InfoNCE steps, validation MRR of the valid links' targets; trains, validates
    and saves with the same pooling the embed stage uses (``pooling``: mean | cls, resolved)."""

    name = "retriever"

    def __init__(self, pooling: str, max_length: int):
        self.pooling = pooling
        self.max_length = max_length

    def load(self, path, device=None):
        from transformers import AutoModel, AutoTokenizer

        return AutoModel.from_pretrained(path), AutoTokenizer.from_pretrained(path)

    def step(self, model, tokenizer, optimizer, scheduler, batch, opts, device, amp_dtype):
        from hiea_ray.core.bi_encoder_train import train_step

        return train_step(model, tokenizer, optimizer, scheduler, batch,
                          {**opts, "pooling": self.pooling, "max_length": self.max_length}, device, amp_dtype)

    def evaluate(self, model, tokenizer, valid, opts, device):
        from hiea_ray.core.bi_encoder_train import evaluate

        return evaluate(model, tokenizer, valid["src"].to_pylist(), valid["tgt"].to_pylist(), self.max_length, device,
                        pooling=self.pooling)

    def save(self, model, tokenizer, folder):
        from hiea_ray.core.encoder import write_pooling

        super().save(model, tokenizer, folder)
        write_pooling(folder, self.pooling, int(model.config.hidden_size))


class RerankerTask(TrainTask):
    """The cross-encoder: listwise steps, validation MRR of the reranked top-k lists."""

    name = "reranker"

    def __init__(self, max_length: int):
        self.max_length = max_length

    def load(self, path, device=None):
        from hiea_ray.core.cross_encoder import load_reranker

        return load_reranker(path)

    def step(self, model, tokenizer, optimizer, scheduler, batch, opts, device, amp_dtype):
        from hiea_ray.core.cross_encoder import train_step

        return train_step(model, tokenizer, optimizer, scheduler, batch, {**opts, "max_length": self.max_length}, device,
                          amp_dtype)

    def evaluate(self, model, tokenizer, valid, opts, device):
        from hiea_ray.core.cross_encoder import evaluate

        return evaluate(model, tokenizer, valid_lists(valid), self.max_length, device)


def valid_lists(valid) -> dict:
    """Reranker validation rows (src, cand list, gold_pos) as the dict ``cross_encoder.evaluate`` takes."""
    return {"src": valid["src"].to_pylist(), "cand": valid["cand"].to_pylist(), "gold_pos": valid["gold_pos"].to_pylist()}


class LLMTask(TrainTask):
    """The HIEA tier's LLM: LoRA + knowledge adapter on a causal LM (``core.llm.HieaLLM``);
    cross-entropy of the answer option; the best checkpoint by ``llm.keep_by``: the validation
    accuracy of the arg-max option ("acc", a right "none" counted) or the Hits@1 of the
    best-ranked candidate ("rank_hits1": what the merge's Hits@1 counts; "none" only abstains)."""

    name = "llm"

    def __init__(self, base: str, vector_dim: int, opts: dict):
        self.base = base  # the causal LM folder; checkpoints hold LoRA + adapter only
        self.vector_dim = vector_dim
        self.opts = opts  # lora_*, adapter_tokens, candidates, keep_by
        self.metric = f"valid_{opts.get('keep_by', 'acc')}"

    def load(self, path, device=None):
        from hiea_ray.core.llm import load_hiea_llm, weight_dtype

        trained = path if (Path(path) / "hiea_llm.json").is_file() else None
        dtype = weight_dtype(self.opts.get("dtype", "float32"), device or "cpu")
        return load_hiea_llm(self.base, trained, self.vector_dim, self.opts, trainable=True, dtype=dtype)

    def step(self, model, tokenizer, optimizer, scheduler, batch, opts, device, amp_dtype):
        from hiea_ray.core.llm import train_step

        return train_step(model, tokenizer, optimizer, scheduler, batch, opts, device, amp_dtype)

    def evaluate(self, model, tokenizer, valid, opts, device):
        from hiea_ray.core.llm import evaluate

        return evaluate(model, tokenizer, valid, opts, device)


class VerbalizerTask(TrainTask):
    """The LLM verbalizer: LoRA (peft) on a causal LM, next-token loss of the target descriptions
    given their prompts (``core.generate.sft_step``); validation next-token accuracy. Checkpoints and
    the saved model hold the LoRA weights and the tokenizer; ``base`` is the causal LM folder."""

    name = "verbalizer"
    metric = "valid_token_acc"

    def __init__(self, base: str, opts: dict):
        self.base = base
        self.opts = opts  # lora_r, lora_alpha, lora_dropout, lora_targets

    def load(self, path, device=None):
        import torch
        from peft import LoraConfig, PeftModel, get_peft_model
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tuned = (Path(path) / "adapter_config.json").is_file()
        tok = AutoTokenizer.from_pretrained(path if tuned else self.base)
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        model = AutoModelForCausalLM.from_pretrained(self.base, dtype=torch.float32)
        if tuned:
            return PeftModel.from_pretrained(model, path, is_trainable=True), tok
        o = self.opts
        lora = LoraConfig(r=o["lora_r"], lora_alpha=o["lora_alpha"], lora_dropout=o["lora_dropout"],
                          target_modules=list(o["lora_targets"]), task_type="CAUSAL_LM")
        return get_peft_model(model, lora), tok

    def step(self, model, tokenizer, optimizer, scheduler, batch, opts, device, amp_dtype):
        from hiea_ray.core.generate import sft_step

        return sft_step(model, tokenizer, optimizer, scheduler, batch, opts, device, amp_dtype)

    def evaluate(self, model, tokenizer, valid, opts, device):
        from hiea_ray.core.generate import sft_evaluate

        return sft_evaluate(model, tokenizer, valid, opts, device)
