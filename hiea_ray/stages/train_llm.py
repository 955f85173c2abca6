"""llm_train (Ray Train; ``llm.enabled`` and ``llm.train``): LoRA + knowledge adapter on the causal LM.

Examples from the train links with the retriever's candidates over all KG2 entities
(``hiea_ray.train.llm``), bridges from the seed links and the router's certain answers; the
shared training contract (``llm.scaling``: workers, DDP / ZeRO, FailureConfig, checkpoints,
resume); the best checkpoint by validation accuracy becomes ``model/`` (LoRA weights, adapter,
tokenizer with the slot token: what the ``llm`` stage and the Serve tier load), with
``history.json`` and ``curve.png``.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from hiea_ray.stages.base import RunContext, StageDef

log = logging.getLogger("hiea_ray")


def seed_and_certain(ctx: RunContext, protocol: str) -> list[tuple[np.ndarray, np.ndarray]]:
    """(src, tgt) arrays of known matches: the seed links and the router's certain answers."""
    pair = ctx.pair()
    out = [(t["src"].to_numpy(), t["tgt"].to_numpy()) for t in (pair.links_of(s) for s in ("train", "valid"))]
    r = pq.read_table(ctx.run / "route" / protocol / "route.parquet")
    certain = r["certain"].to_numpy(zero_copy_only=False)
    out.append((r["src"].to_numpy()[certain], r["answer"].to_numpy()[certain]))
    return out


def prompt_format(base: str, adapter_tokens: int):
    from hiea_ray.core.llm import PromptFormat, load_tokenizer

    return PromptFormat(load_tokenizer(base), adapter_tokens)


def run(ctx: RunContext, tmp: Path) -> dict:
    from hiea_ray.core.llm import resolve_llm
    from hiea_ray.core.retrieval import knn
    from hiea_ray.data import init_ray
    from hiea_ray.plots import plot_llm_curve
    from hiea_ray.train.llm import neighbourhoods, training_tables
    from hiea_ray.train.loop import fit
    from hiea_ray.train.tasks import LLMTask

    lc = ctx.cfg.llm
    base = resolve_llm(lc.model)
    ids, kg, vecs = ctx.embeddings()
    pair = ctx.pair()
    t0 = time.time()
    nb = neighbourhoods(pair, seed_and_certain(ctx, ctx.cfg.evaluate.protocols[0]), lc.max_facts)
    fmt = prompt_format(base, lc.adapter_tokens)
    kg2, kg2_vecs = ids[kg == 2], vecs[kg == 2]

    def ranked_of(src: np.ndarray, depth: int) -> np.ndarray:
        _, idx = knn(vecs[np.searchsorted(ids, src)], kg2_vecs, min(depth, len(kg2)), ctx.cfg.retrieve)
        return np.where(idx >= 0, kg2[np.maximum(idx, 0)], -1)

    data, valid = training_tables(pair.links, ranked_of, nb, fmt, lc, ids, vecs)
    built = time.time() - t0
    tokens = data["tokens"].to_numpy()
    log.info("llm_train: %d train / %d validation prompts (tokens mean %.0f, max %d) built in %.0f s; small-model "
             "validation accuracy %.4f", data.num_rows, valid.num_rows, tokens.mean(), tokens.max(), built,
             float(np.mean(valid["small"].to_numpy() == valid["answer"].to_numpy())))
    init_ray(ctx.cfg)
    opts = asdict(lc)
    res = fit(LLMTask(base, int(vecs.shape[1]), opts), opts, base, data, valid, "llm", (tmp / "ray").resolve(),
              tmp / "best")
    shutil.rmtree(tmp / "model", ignore_errors=True)
    shutil.move(str(tmp / "best"), tmp / "model")
    shutil.rmtree(tmp / "ray", ignore_errors=True)  # Ray Train's checkpoints: only the best model is kept
    small = float(np.mean(valid["small"].to_numpy() == valid["answer"].to_numpy()))
    if res["best"]["valid_acc"] <= small:
        log.warning("llm_train: the LLM's best validation accuracy %.4f is not above the retriever's %.4f on the same "
                    "examples: its answers will likely lower Hits@1 on the routed sources (more steps, a larger "
                    "model or llm.fusion > 0 may help)", res["best"]["valid_acc"], small)
    history = {"train_examples": data.num_rows, "valid_examples": valid.num_rows, "prompt_tokens_mean": float(tokens.mean()),
               "prompt_tokens_max": int(tokens.max()), "valid_small_acc": small, "wall_s": round(time.time() - t0, 1),
               "prompt_build_s": round(built, 1), **res}
    (tmp / "history.json").write_text(json.dumps(history, indent=2, default=str))
    plot_llm_curve(history, tmp / "curve.png")
    return {"best": res["best"], "valid_small_acc": small, "train_examples": data.num_rows,
            "prompt_tokens_mean": round(float(tokens.mean()), 1), "train_wall_s": history["wall_s"]}


def check(ctx: RunContext) -> None:
    """The LLM (a causal LM folder, the packaged default, or a hub id) before anything starts."""
    from hiea_ray.core.llm import resolve_llm

    resolve_llm(ctx.cfg.llm.model)


def _base_fingerprint(ctx: RunContext) -> dict:
    from hiea_ray.core.llm import resolve_llm

    path = Path(resolve_llm(ctx.cfg.llm.model))
    return {"llm": ctx.content_fingerprint(path) if path.exists() else f"hub:{ctx.cfg.llm.model}"}


STAGE = StageDef(
    resumable=True,
    name="llm_train",
    check=check,
    body=run,
    reads=("embed", "route"),
    config=("llm", "retrieve", "evaluate.protocols"),
    enabled=lambda cfg: cfg.llm.enabled and cfg.llm.train,
    external=_base_fingerprint,
)
