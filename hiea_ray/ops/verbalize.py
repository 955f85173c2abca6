"""The verbalizers' Ray Data pieces: callable classes and chains.

- ``Verbalizer``: template / name texts (``core.verbalize.verbalize_table`` over blocks of context rows).
- ``LLMVerbalizer``: a causal LM writes one description per entity (transformers; the model loaded
  once per actor); ``generate_parts`` chains it over context blocks, resumable.
- the vLLM path (GPU clusters): ``Prompter`` -> ``ray.data.llm``'s processor (``vllm_config``) ->
  ``vllm_finish``; used by ``generate_parts`` when ``use_vllm``.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pyarrow as pa

from hiea_ray.config import VerbalizeConfig, section_from_dict
from hiea_ray.core.verbalize import entity_facts, verbalize_row, verbalize_table
from hiea_ray.ops.data import MapSpec

# What the LLM actors write per entity (the texts table's columns, then the record of the generation).
GENERATED = pa.schema([
    ("id", pa.int64()), ("kg", pa.int8()), ("name", pa.string()), ("text", pa.string()),
    ("generated", pa.string()), ("facts", pa.list_(pa.string())), ("facts_total", pa.int32()),
    ("prompt_tokens", pa.int32()), ("new_tokens", pa.int32()), ("gen_s", pa.float64()), ("worker", pa.string()),
])


class Verbalizer:
    """Context rows (``verbalize.build_contexts``) -> (id, kg, name, text)."""

    def __init__(self, cfg: dict):
        self.cfg = section_from_dict(VerbalizeConfig, cfg)

    def __call__(self, batch):
        return verbalize_table(batch, self.cfg)


def verbalize_spec(cfg: VerbalizeConfig) -> MapSpec:
    return MapSpec(Verbalizer, {"cfg": asdict(cfg)}, {"batch_size": cfg.batch_size, "batch_format": "pyarrow", "num_cpus": 1})


def final_text(mode: str, name: str, generated: str, template: str) -> str:
    """The text the encoder reads: the description (the name when the generation came out empty),
    followed by the template text in ``llm+template``."""
    desc = generated or name or ""
    return f"{desc} {template}".strip() if mode == "llm+template" else desc


def prompt_rows(rows: list[dict], cfg: VerbalizeConfig, tokenizer, count) -> dict[str, list]:
    """For context rows: chat-wrapped ``prompt`` (answer prefilled with the name when
    ``verbalize.llm.prefill_name``: "<name> is"), its ``prefix``, ``facts`` it holds, ``facts_total`` the entity
    has, ``prompt_tokens`` (within ``verbalize.llm.prompt_tokens``, the prefix included)."""
    from hiea_ray.core.describe import answer_prefix, fit_facts
    from hiea_ray.core.generate import chat

    out: dict[str, list] = {k: [] for k in ("prompt", "prefix", "facts", "facts_total", "prompt_tokens")}
    for r in rows:
        facts = entity_facts(r, cfg)
        prefix = answer_prefix(r["name"]) if cfg.llm.prefill_name else ""
        extra = len(tokenizer(prefix, add_special_tokens=False)["input_ids"]) if prefix else 0
        body, kept = fit_facts(r["name"] or "", facts, lambda b: count(b) + extra, cfg.llm.prompt_tokens)
        out["prompt"].append(chat(tokenizer, body, prefix))
        out["prefix"].append(prefix)
        out["facts"].append(kept)
        out["facts_total"].append(len(facts))
        out["prompt_tokens"].append(count(body) + extra)
    return out


def _worker() -> str:
    from hiea_ray.ops.embed import node_id

    return f"{node_id()}:{os.getpid()}"


class LLMVerbalizer:
    """Context rows -> ``GENERATED`` rows; the causal LM is loaded once per actor (transformers)."""

    def __init__(self, cfg: dict, model: str, lora: str | None = None):
        import torch

        from hiea_ray.core.encoder import set_threads
        from hiea_ray.core.generate import load_generator, token_counter

        self.cfg = section_from_dict(VerbalizeConfig, cfg)
        lc = self.cfg.llm
        set_threads(lc.torch_threads or os.cpu_count())
        device = "cuda" if lc.gpus_per_actor > 0 and torch.cuda.is_available() else "cpu"
        self.device = device
        self.model, self.tok = load_generator(model, lora, device, lc.amp)
        self.count = token_counter(self.tok)
        self.worker = _worker()

    def __call__(self, batch: pa.Table) -> pa.Table:
        from hiea_ray.core.describe import clean
        from hiea_ray.core.generate import generate, join_prefix

        rows = batch.to_pylist()
        p = prompt_rows(rows, self.cfg, self.tok, self.count)
        raw, new_tokens, secs = generate(self.model, self.tok, p["prompt"], self.cfg.llm.max_new_tokens,
                                         gen_batch_size(self.cfg.llm.batch_size_gen, self.device))
        gen = [clean(join_prefix(pre, g), self.cfg.max_words) for pre, g in zip(p["prefix"], raw)]
        return generated_table(rows, self.cfg, gen, p["facts"], p["facts_total"], p["prompt_tokens"], new_tokens, secs,
                               self.worker)


def generated_table(rows, cfg: VerbalizeConfig, gen, used, total, prompt_tokens, new_tokens, secs, worker) -> pa.Table:
    tmpl = [verbalize_row(r, cfg) for r in rows]
    return pa.table({
        "id": [r["id"] for r in rows], "kg": [r["kg"] for r in rows], "name": [r["name"] for r in rows],
        "text": [final_text(cfg.mode, r["name"], g, t) for r, g, t in zip(rows, gen, tmpl)],
        "generated": gen, "facts": used, "facts_total": total, "prompt_tokens": prompt_tokens,
        "new_tokens": new_tokens, "gen_s": secs, "worker": [worker] * len(rows),
    }, schema=GENERATED)


def use_vllm(cfg: VerbalizeConfig) -> bool:
    lc = cfg.llm
    if lc.engine == "vllm":
        return True
    return lc.engine == "auto" and lc.gpus_per_actor > 0 and importlib.util.find_spec("vllm") is not None


class Prompter:
    """vLLM path, before the engine: context rows -> rows with the chat-wrapped ``prompt`` (the
    tokenizer only, for the budget)."""

    def __init__(self, cfg: dict, model: str):
        from transformers import AutoTokenizer

        from hiea_ray.core.generate import token_counter

        self.cfg = section_from_dict(VerbalizeConfig, cfg)
        self.tok = AutoTokenizer.from_pretrained(model)
        self.count = token_counter(self.tok)

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = batch.to_pylist()
        p = prompt_rows(rows, self.cfg, self.tok, self.count)
        return pa.table({
            "id": batch["id"], "kg": batch["kg"], "name": batch["name"],
            "template": [verbalize_row(r, self.cfg) for r in rows], "facts": pa.array(p["facts"], pa.list_(pa.string())),
            "facts_total": pa.array(p["facts_total"], pa.int32()), "prompt": p["prompt"], "prefix": p["prefix"],
            "prompt_tokens": pa.array(p["prompt_tokens"], pa.int32()),
        })


def vllm_finish(cfg: VerbalizeConfig):
    """vLLM path, after the engine: its row (``generated_text``, ``num_generated_tokens``, ``time_taken_llm``)
    -> a ``GENERATED`` row."""
    from hiea_ray.core.describe import clean
    from hiea_ray.core.generate import join_prefix

    def finish(row: dict) -> dict:
        gen = clean(join_prefix(row["prefix"], row.get("generated_text") or ""), cfg.max_words)
        return {"id": row["id"], "kg": row["kg"], "name": row["name"],
                "text": final_text(cfg.mode, row["name"], gen, row["template"]), "generated": gen,
                "facts": list(row["facts"]), "facts_total": row["facts_total"], "prompt_tokens": row["prompt_tokens"],
                # vLLM runs requests concurrently: a request's latency is no share of the engine's time,
                # so throughput is the stage's wall clock only (gen_s 0)
                "new_tokens": int(row.get("num_generated_tokens") or 0), "gen_s": 0.0, "worker": "vllm"}

    return finish


def generate_parts(contexts: Path, parts: Path, cfg: VerbalizeConfig, model: str, lora: str | None,
                   done: np.ndarray | None = None, total: int | None = None) -> None:
    """The generation chain: context blocks -> (drop done ids) -> LLM actor pool -> ``GENERATED`` parts."""
    from hiea_ray.ops.data import map_parquet

    lc = cfg.llm
    if use_vllm(cfg):
        return _generate_vllm(contexts, parts, cfg, model, lora, done)
    spec = MapSpec(LLMVerbalizer, {"cfg": asdict(cfg), "model": model, "lora": lora},
                   {"batch_size": lc.rows_per_batch, "batch_format": "pyarrow", "num_cpus": lc.cpus_per_actor,
                    "num_gpus": lc.gpus_per_actor})
    map_parquet(contexts, parts, spec, lc.num_actors, lc.rows_per_batch, done,
                progress=None if total is None else ("verbalize (LLM)", total))


def _generate_vllm(contexts: Path, parts: Path, cfg: VerbalizeConfig, model: str, lora: str | None,
                   done: np.ndarray | None) -> None:
    """vLLM through Ray Data's LLM processor (GPU clusters; needs ``pip install vllm``). Greedy, the
    same prompts as the transformers path; a tuned verbalizer is merged into a full model first."""
    import ray
    from ray.data.llm import build_processor

    from hiea_ray.core.generate import STOP
    from hiea_ray.ops.data import DropDone

    lc = cfg.llm
    if lora is not None:
        model = merged_model(model, lora, parts.parent / "merged")
    ds = ray.data.read_parquet(str(contexts))
    if done is not None and len(done):
        ds = ds.map_batches(DropDone, fn_constructor_kwargs={"done": ray.put(done)}, batch_format="pyarrow",
                            compute=ray.data.ActorPoolStrategy(size=1), num_cpus=0)
    ds = ds.map_batches(Prompter, fn_constructor_kwargs={"cfg": asdict(cfg), "model": model}, batch_format="pyarrow",
                        batch_size=lc.rows_per_batch, compute=ray.data.ActorPoolStrategy(size=1), num_cpus=1)
    processor = build_processor(
        vllm_config(cfg, model),
        preprocess=lambda row: {**row, "sampling_params": {"temperature": 0.0, "max_tokens": lc.max_new_tokens,
                                                           "stop": STOP}},
        postprocess=vllm_finish(cfg),
    )
    processor(ds).write_parquet(str(parts))


def gen_batch_size(setting: int, device: str) -> int:
    """``verbalize.llm.batch_size_gen``, with 0 = by device: 64 prompts per generate() call on a GPU
    (an H200 writes 21.0 descriptions/s at 64 against 5.8 at 16: docs/gpus.md), 16 on a CPU."""
    if setting > 0:
        return setting
    return 64 if str(device).startswith("cuda") else 16


def vllm_config(cfg: VerbalizeConfig, model: str):
    """``ray.data.llm``'s engine config for the verbalizer: one vLLM engine per GPU actor
    (``verbalize.llm.num_actors``), bf16 weights with ``amp``, the prompt budget + new tokens as the
    context length, ``batch_size_gen`` rows per engine call. Built without vLLM installed."""
    from ray.data.llm import vLLMEngineProcessorConfig

    lc = cfg.llm
    return vLLMEngineProcessorConfig(
        model_source=model,
        engine_kwargs={"dtype": "bfloat16" if lc.amp else "float32", "max_model_len": lc.prompt_tokens + lc.max_new_tokens + 8},
        concurrency=lc.num_actors, batch_size=gen_batch_size(lc.batch_size_gen, "cuda"), chat_template_stage=False,
    )


def merged_model(base: str, lora: str, out: Path) -> str:
    """A LoRA verbalizer merged into its base model's weights (vLLM loads one folder)."""
    from hiea_ray.core.generate import load_generator

    if not (out / "config.json").is_file():
        model, tok = load_generator(base, lora, "cpu", amp=False)
        model.save_pretrained(out)
        tok.save_pretrained(out)
    return str(out)
