"""verbalize_train (Ray Train; ``verbalize.train_file`` set, LLM modes): LoRA-tunes the LLM verbalizer.

The training file is JSONL, one example per line: ``{"triples": [[subject, relation, object], ...],
"text": "the description", "entity"?: "its name"}`` (DERA's triple -> text pairs; there is no
generator of such pairs here: bring your own). Each line's triples become the same kind of facts
and the same prompt the verbalize stage builds from a KG (``core.describe``); the loss is the
next-token cross-entropy of the text given the prompt. A seeded share
(``verbalize.llm.valid_fraction``) is held out; the shared training contract
(``verbalize.llm.scaling``: workers, DDP / ZeRO, failures, checkpoints, resume) runs it and the best
checkpoint by validation next-token accuracy becomes ``model/`` (LoRA weights + tokenizer), with
``history.json`` and ``curve.png``. The verbalize stage merges it into the base model.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pyarrow as pa

from hiea_ray.run import RunContext
from hiea_ray.stages.base import StageDef


def examples(rows: list[dict], tokenizer, budget: int, prefill_name: bool = True) -> pa.Table:
    """Training rows (prompt: chat-wrapped, within the budget; text: what the model must write)
    from ``read_train_file`` rows. With ``prefill_name`` a text that starts as the verbalize stage's
    answers start ("<name> is") has that start in the prompt and the rest as its target."""
    from hiea_ray.core.describe import answer_prefix, fit_facts
    from hiea_ray.core.generate import chat, token_counter

    count = token_counter(tokenizer)
    prompts, texts = [], []
    for r in rows:
        text, prefix = r["text"], answer_prefix(r["name"])
        prefix = prefix if prefill_name and prefix and text.lower().startswith(prefix.lower()) else ""
        extra = len(tokenizer(prefix, add_special_tokens=False)["input_ids"]) if prefix else 0
        body = fit_facts(r["name"], r["facts"], lambda b: count(b) + extra, budget)[0]
        prompts.append(chat(tokenizer, body, text[: len(prefix)]))
        texts.append(text[len(prefix):])
    return pa.table({"prompt": prompts, "text": texts})


def run(ctx: RunContext, tmp: Path) -> dict:
    from transformers import AutoTokenizer

    from hiea_ray.core.describe import read_train_file
    from hiea_ray.core.llm import resolve_llm
    from hiea_ray.ops.data import init_ray
    from hiea_ray.plots import plot_verbalizer_curve
    from hiea_ray.train.loop import fit
    from hiea_ray.train.tasks import VerbalizerTask

    lc = ctx.cfg.verbalize.llm
    base = resolve_llm(lc.model)
    rows = read_train_file(ctx.cfg.verbalize.train_file)
    t0 = time.time()
    table = examples(rows, AutoTokenizer.from_pretrained(base), lc.prompt_tokens, lc.prefill_name)
    rng = np.random.default_rng(lc.scaling.seed)
    order = rng.permutation(table.num_rows)
    n_valid = int(round(lc.valid_fraction * table.num_rows)) if table.num_rows > 1 else 0
    valid, data = table.take(order[:n_valid]), table.take(order[n_valid:])
    if n_valid == 0:
        valid = data  # too few lines to hold any out: validated on the training lines
    init_ray(ctx.cfg)
    opts = asdict(lc)
    res = fit(VerbalizerTask(base, opts), opts, base, data, valid, "verbalize_train", (tmp / "ray").resolve(), tmp / "best")
    shutil.rmtree(tmp / "model", ignore_errors=True)
    shutil.move(str(tmp / "best"), tmp / "model")
    shutil.rmtree(tmp / "ray", ignore_errors=True)
    history = {"train_examples": data.num_rows, "valid_examples": valid.num_rows, "held_out": n_valid > 0,
               "wall_s": round(time.time() - t0, 1), **res}
    (tmp / "history.json").write_text(json.dumps(history, indent=2, default=str))
    plot_verbalizer_curve(history, tmp / "curve.png")
    return {"best": res["best"], "train_examples": data.num_rows, "valid_examples": valid.num_rows,
            "train_wall_s": history["wall_s"]}


def check(ctx: RunContext) -> None:
    """The base model and every line of the training file, before Ray starts."""
    from hiea_ray.core.describe import read_train_file
    from hiea_ray.core.llm import resolve_llm

    resolve_llm(ctx.cfg.verbalize.llm.model)
    read_train_file(ctx.cfg.verbalize.train_file)


def inputs(ctx: RunContext) -> dict:
    """The training file and the base model, by content."""
    from hiea_ray.core.llm import resolve_llm

    lc = ctx.cfg.verbalize.llm
    path = Path(resolve_llm(lc.model))
    train = Path(ctx.cfg.verbalize.train_file)
    return {"train_file": ctx.content_fingerprint(train) if train.is_file() else "missing",
            "verbalizer": ctx.content_fingerprint(path) if path.exists() else f"hub:{lc.model}"}


STAGE = StageDef(
    name="verbalize_train",
    body=run,
    check=check,
    config=("verbalize.llm", "verbalize.train_file"),
    enabled=lambda cfg: cfg.verbalize.mode in ("llm", "llm+template") and bool(cfg.verbalize.train_file),
    external=inputs,
    resumable=True,
)
