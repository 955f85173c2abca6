"""verbalize (Ray Data): one text per entity.

Modes (``verbalize.mode``):
- ``template`` / ``name``: ``Verbalizer`` maps ``core.verbalize.verbalize_table`` over blocks of
  context rows (``core.verbalize.build_contexts``).
- ``llm`` / ``llm+template``: DERA's entity verbalization by a causal LM. The context rows are
  written once as Parquet blocks (``contexts/``); an actor pool (the model loaded once per actor;
  ``verbalize.llm.num_actors``, ``gpus_per_actor``) turns each entity's facts — the template's facts
  (``core.verbalize.entity_facts``) — into a prompt within ``verbalize.llm.prompt_tokens``
  (``core.describe``) and generates greedily (``max_new_tokens``): with transformers
  (``LLMVerbalizer``), or with vLLM through ``ray.data.llm`` on GPU actors when it is installed.
  ``llm+template`` appends the template text to the description (a small generator drops facts).
  Resumable like embed: finished ``parts/`` survive a kill and only missing ids are generated again.
  A LoRA-tuned verbalizer (stage ``verbalize_train``, from ``verbalize.train_file``) is used when set.

Output ``texts/*.parquet`` (id, kg, name, text), one file per ``verbalize.batch_size`` rows; in the
LLM modes also ``parts/`` (the generations with their facts, token counts and timings) and
``sample.md`` / ``sample.json`` (``verbalize.llm.sample_size`` entities' facts, template text and
generated text, for a person to read). The key holds ``core.describe.PROMPT_VERSION`` and the
model's content fingerprint: a new prompt or new weights re-generate the texts.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from hiea_ray.config import VerbalizeConfig, section_from_dict
from hiea_ray.core.verbalize import TEXTS, build_contexts, entity_facts, verbalize_row, verbalize_table, word_count_stats
from hiea_ray.data import MapSpec
from hiea_ray.io import finished_ids, read_dir
from hiea_ray.stages.base import RunContext, StageDef

log = logging.getLogger("hiea_ray")

LLM_MODES = ("llm", "llm+template")
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


# -- the LLM verbalizer ------------------------------------------------------------------------------
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
        self.model, self.tok = load_generator(model, lora, device, lc.amp)
        self.count = token_counter(self.tok)
        self.worker = _worker()

    def __call__(self, batch: pa.Table) -> pa.Table:
        from hiea_ray.core.describe import clean
        from hiea_ray.core.generate import generate, join_prefix

        rows = batch.to_pylist()
        p = prompt_rows(rows, self.cfg, self.tok, self.count)
        raw, new_tokens, secs = generate(self.model, self.tok, p["prompt"], self.cfg.llm.max_new_tokens,
                                         self.cfg.llm.batch_size_gen)
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
    from hiea_ray.data import map_parquet

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
    from ray.data.llm import build_processor, vLLMEngineProcessorConfig

    from hiea_ray.core.generate import STOP
    from hiea_ray.data import DropDone

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
        vLLMEngineProcessorConfig(
            model_source=model,
            engine_kwargs={"dtype": "bfloat16" if lc.amp else "float32",
                           "max_model_len": lc.prompt_tokens + lc.max_new_tokens + 8},
            concurrency=lc.num_actors, batch_size=lc.batch_size_gen, chat_template_stage=False,
        ),
        preprocess=lambda row: {**row, "sampling_params": {"temperature": 0.0, "max_tokens": lc.max_new_tokens,
                                                           "stop": STOP}},
        postprocess=vllm_finish(cfg),
    )
    processor(ds).write_parquet(str(parts))


def merged_model(base: str, lora: str, out: Path) -> str:
    """A LoRA verbalizer merged into its base model's weights (vLLM loads one folder)."""
    from hiea_ray.core.generate import load_generator

    if not (out / "config.json").is_file():
        model, tok = load_generator(base, lora, "cpu", amp=False)
        model.save_pretrained(out)
        tok.save_pretrained(out)
    return str(out)


def write_contexts(contexts: pa.Table, out: Path, rows: int) -> None:
    """Context rows as Parquet blocks of ``rows`` rows, written once (folder renamed into place)."""
    if out.is_dir():
        return
    part = out.with_name(out.name + ".part")
    shutil.rmtree(part, ignore_errors=True)
    part.mkdir(parents=True)
    for i in range(0, max(contexts.num_rows, 1), rows):
        pq.write_table(contexts.slice(i, rows), part / f"contexts-{i // rows:06d}.parquet")
    os.replace(part, out)


def write_texts(parts: Path, out: Path) -> None:
    """The texts table from the generated parts, part by part (the driver never holds them all)."""
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    for i, f in enumerate(sorted(parts.glob("*.parquet"))):
        pq.write_table(pq.read_table(f, columns=TEXTS.names).cast(TEXTS), out / f"texts-{i:06d}.parquet")


def write_sample(parts: Path, ids: np.ndarray, cfg: VerbalizeConfig, out: Path, seed: int) -> None:
    """``sample.json`` / ``sample.md``: a seeded sample of entities, facts beside texts."""
    n = min(cfg.llm.sample_size, len(ids))
    pick = pa.array(np.random.default_rng(seed).choice(np.sort(ids), n, replace=False) if n else [], pa.int64())
    cols = ["id", "kg", "name", "facts", "generated", "text"]
    rows = pa.concat_tables([pq.read_table(f, columns=cols, filters=pc.is_in(pc.field("id"), value_set=pick))
                             for f in sorted(parts.glob("*.parquet"))]).sort_by("id").to_pylist() if n else []
    (out / "sample.json").write_text(json.dumps(rows, indent=2, ensure_ascii=False))
    lines = [f"# {n} generated descriptions (verbalize.mode={cfg.mode}, model {cfg.llm.model})", ""]
    for r in rows:
        lines += [f"## {r['name']} (id {r['id']}, KG{r['kg']})", "", "Facts in the prompt:", ""]
        lines += [f"- {f}" for f in r["facts"]] or ["- (none)"]
        lines += ["", f"Generated: {r['generated'] or '(empty)'}", "", f"Text: {r['text']}", ""]
    (out / "sample.md").write_text("\n".join(lines))


def generation_stats(table: pa.Table, wall: float, generated_now: int) -> dict:
    """Throughput overall and per worker (entities/s and new tokens/s over the seconds it generated)."""
    per = {}
    for w in pc.unique(table["worker"]).to_pylist():
        t = table.filter(pc.equal(table["worker"], w))
        secs = float(pc.sum(t["gen_s"]).as_py() or 0.0)
        per[w] = {"rows": t.num_rows, "entities_per_s": round(t.num_rows / secs, 2) if secs else None,
                  "tokens_per_s": round(float(pc.sum(t["new_tokens"]).as_py()) / secs, 1) if secs else None}
    gen = table["generated"].to_pylist()
    kept = pc.list_value_length(table["facts"]).to_numpy(zero_copy_only=False)
    total = table["facts_total"].to_numpy()
    return {
        "generated_now": generated_now, "entities_per_s": round(generated_now / max(wall, 1e-9), 2),
        "per_worker": per, "empty_generations": int(sum(1 for g in gen if not g)),
        "new_tokens_mean": round(float(np.mean(table["new_tokens"].to_numpy())), 1),
        "prompt_tokens_mean": round(float(np.mean(table["prompt_tokens"].to_numpy())), 1),
        "prompt_tokens_max": int(np.max(table["prompt_tokens"].to_numpy())),
        "facts_in_prompt_share": round(float(kept.sum() / max(total.sum(), 1)), 3),
    }


def llm_texts(ctx: RunContext, contexts: pa.Table, tmp: Path) -> dict:
    """The LLM modes' body: contexts -> resumable generation -> texts + sample; returns stats."""
    from hiea_ray.core.llm import resolve_llm

    cfg = ctx.cfg.verbalize
    model = resolve_llm(cfg.llm.model)
    lora = str(ctx.run / "verbalize_train" / "model") if cfg.train_file else None
    write_contexts(contexts, tmp / "contexts", cfg.llm.rows_per_batch)
    parts = tmp / "parts"
    parts.mkdir(exist_ok=True)
    done = finished_ids(parts)
    total = contexts.num_rows
    t0 = time.time()
    if len(done) < total:
        if len(done):
            log.info("verbalize: resuming, %d of %d entities already generated", len(done), total)
        generate_parts(tmp / "contexts", parts, cfg, model, lora, done, total)
    wall = time.time() - t0
    ids = finished_ids(parts)
    if len(ids) != total or len(np.unique(ids)) != total:
        raise RuntimeError(f"verbalize: expected {total} unique generated rows, found {len(ids)}")
    write_texts(parts, tmp / "texts")
    write_sample(parts, ids, cfg, tmp, ctx.cfg.data.seed)
    shutil.rmtree(tmp / "contexts", ignore_errors=True)
    record = pq.read_table(parts, columns=[c for c in GENERATED.names if c not in ("text", "name")])
    return {"engine": "vllm" if use_vllm(cfg) else "transformers", "tuned": lora is not None,
            **generation_stats(record, wall, total - len(done))}


def run(ctx: RunContext, tmp: Path) -> dict:
    from hiea_ray.data import init_ray, map_blocks

    init_ray(ctx.cfg)
    t0 = time.time()
    cfg = ctx.cfg.verbalize
    contexts = build_contexts(ctx.pair())
    extra = {}
    if cfg.mode in LLM_MODES:
        extra = llm_texts(ctx, contexts, tmp)
    else:
        step = max(1, cfg.batch_size)
        blocks = [contexts.slice(i, step) for i in range(0, max(contexts.num_rows, 1), step)]
        out = tmp / "texts"
        shutil.rmtree(out, ignore_errors=True)
        map_blocks(blocks, out, verbalize_spec(cfg), cfg.num_actors, progress="verbalize")
    texts = read_dir(tmp / "texts")
    wall = time.time() - t0
    return {"rows": texts.num_rows, "rows_per_s": round(texts.num_rows / max(wall, 1e-9), 1),
            **word_count_stats(texts["text"].to_pylist()), **extra}


def check(ctx: RunContext) -> None:
    """The LLM modes' model (a causal LM folder, the packaged default, or a hub id) and engine."""
    cfg = ctx.cfg.verbalize
    if cfg.mode not in LLM_MODES:
        return
    from hiea_ray.core.llm import resolve_llm
    from hiea_ray.errors import UserError

    model = resolve_llm(cfg.llm.model)
    if Path(model).is_dir():
        from transformers import AutoTokenizer

        from hiea_ray.core.describe import describe_body
        from hiea_ray.core.generate import token_counter

        need = token_counter(AutoTokenizer.from_pretrained(model))(describe_body("", []))
        if cfg.llm.prompt_tokens < need + 16:
            raise UserError(f"config field verbalize.llm.prompt_tokens: {cfg.llm.prompt_tokens} leaves no room for "
                            f"facts (the instruction alone is {need} tokens with this model's tokenizer)")
    if cfg.llm.engine == "vllm" and importlib.util.find_spec("vllm") is None:
        raise UserError("config field verbalize.llm.engine: vllm is not installed (pip install vllm; GPU nodes)")


def model_key(cfg) -> dict | None:
    """The LLM modes' prompt version (``core.describe.PROMPT_VERSION``) in the key."""
    if cfg.verbalize.mode not in LLM_MODES:
        return None
    from hiea_ray.core.describe import PROMPT_VERSION

    return {"prompt_version": PROMPT_VERSION}


def model_fingerprint(ctx: RunContext) -> dict:
    """The LLM's weights by content (a new model at the same path re-generates the texts)."""
    cfg = ctx.cfg.verbalize
    if cfg.mode not in LLM_MODES:
        return {}
    from hiea_ray.core.llm import resolve_llm

    path = Path(resolve_llm(cfg.llm.model))
    return {"verbalizer": ctx.content_fingerprint(path) if path.exists() else f"hub:{cfg.llm.model}"}


STAGE = StageDef(name="verbalize", body=run, reads=("ingest", "verbalize_train"), config=("verbalize",),
                 extra=model_key, external=model_fingerprint, check=check, resumable=True)
