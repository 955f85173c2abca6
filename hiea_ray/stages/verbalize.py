"""verbalize (Ray Data): one text per entity.

Modes (``verbalize.mode``):
- ``template`` / ``name``: ``ops.verbalize.Verbalizer`` maps ``core.verbalize.verbalize_table`` over blocks of
  context rows (``core.verbalize.build_contexts``).
- ``llm`` / ``llm+template``: DERA's entity verbalization by a causal LM. The context rows are
  written once as Parquet blocks (``contexts/``); an actor pool (the model loaded once per actor;
  ``verbalize.llm.num_actors``, ``gpus_per_actor``) turns each entity's facts — the template's facts
  (``core.verbalize.entity_facts``) — into a prompt within ``verbalize.llm.prompt_tokens``
  (``core.describe``) and generates greedily (``max_new_tokens``): with transformers
  (``ops.verbalize.LLMVerbalizer``), or with vLLM through ``ray.data.llm`` on GPU actors when it is installed.
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
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from hiea_ray.config import VerbalizeConfig
from hiea_ray.core.verbalize import TEXTS, build_contexts, word_count_stats
from hiea_ray.io import finished_ids, read_dir
from hiea_ray.ops.verbalize import GENERATED, generate_parts, use_vllm, verbalize_spec
from hiea_ray.run import RunContext
from hiea_ray.stages.base import StageDef

log = logging.getLogger(__name__)

LLM_MODES = ("llm", "llm+template")


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
    from hiea_ray.ops.data import init_ray, map_blocks

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
