"""llm_train (Ray Train; ``llm.enabled`` and ``llm.train``): LoRA + knowledge adapter on the causal LM.

Examples from the train links (and, in a collaboration round, the pseudo-seed links) with the retriever's candidates over all KG2 entities
(``hiea_ray.train.llm``), bridges from the seed links and the router's certain answers; the
shared training contract (``llm.scaling``: workers, DDP / ZeRO, FailureConfig, checkpoints,
resume); the best checkpoint by validation accuracy becomes ``model/`` (LoRA weights, adapter,
score head with ``llm.readout: slots``, tokenizer with the slot token: what the ``llm`` stage and
the Serve tier load), with ``history.json`` and ``curve.png``.

Validation (``llm.validation: routed``, the default): the labelled seed sources the router would
route (the route stage's out-of-fold ``labelled.parquet``) — prompts made exactly as a routed test
source's, so the LLM is judged where it will answer. A seeded share is held out (never trained on,
never shown as a bridge); the rest joins the training examples. After training the kept model
scores the held-out prompts once more and ``fusion.json`` records the merge weight with the best
Hits@1 there (``llm.fusion: auto`` uses it).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from hiea_ray.run import RunContext, prompt_format, seed_and_certain
from hiea_ray.stages.base import StageDef

log = logging.getLogger(__name__)


def routed_examples(ctx: RunContext, protocol: str):
    """(train part, validation part) of the router's routed labelled sources (``llm.validation:
    routed``), or None when there are none (then the valid links validate, with a warning; with
    ``llm.train_on`` labelled / both, whose prompts are those labelled sources: a UserError)."""
    from hiea_ray.errors import UserError
    from hiea_ray.train.llm import routed_split

    path = ctx.run / "route" / protocol / "labelled.parquet"
    if not path.is_file():
        raise UserError(f"{path}: missing (a route stage from before llm.validation=routed); delete "
                        f"{ctx.run / 'route'} to re-run it, or set llm.validation=links")
    labelled = pq.read_table(path)
    split = routed_split(labelled, ctx.cfg.llm)
    if split[1].num_rows == 0:
        if ctx.cfg.llm.train_on != "train":
            raise UserError(f"llm.train_on={ctx.cfg.llm.train_on}: the router routes none of the {labelled.num_rows} "
                            f"labelled sources ({path}), so none is held out to validate on (the valid links are "
                            "the labelled sources: validating there would score training prompts); set "
                            "llm.train_on=train, or a stricter route.target_precision")
        log.warning("llm_train: the router routes none of the labelled sources; validating on the valid links")
        return None
    return split


def without(links: list[tuple[np.ndarray, np.ndarray]], held: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """Known-match arrays minus the pairs whose source is held out (never shown as a bridge)."""
    keep = [~np.isin(s, held) for s, _ in links]
    return [(s[k], t[k]) for (s, t), k in zip(links, keep)]


def tune_fusion(model_dir: Path, base: str, vector_dim: int, valid, held, lc) -> dict:
    """Score the kept model on the routed validation examples and choose the merge's fusion
    weight there (``core.hiea.choose_fusion``); written to ``model_dir/fusion.json``."""
    import torch

    from hiea_ray.core.encoder import set_threads
    from hiea_ray.core.hiea import choose_fusion, small_probs
    from hiea_ray.core.llm import llm_amp_dtype, load_hiea_llm, score, weight_dtype
    from hiea_ray.io import column_to_numpy

    set_threads(lc.torch_threads or os.cpu_count() or 1)
    device = torch.device("cpu")
    model, tok = load_hiea_llm(base, str(model_dir), vector_dim, asdict(lc), trainable=False,
                               dtype=weight_dtype(lc.dtype, device))
    slots = lc.candidates + 1
    logp = score(model, tok, valid["text"].to_pylist(), list(column_to_numpy(valid["vectors"])),
                 valid["n_options"].to_pylist(), slots, device, lc.infer_batch_size,
                 llm_amp_dtype(device, lc.amp, lc.cpu_amp))
    options = column_to_numpy(valid["options"])
    small = small_probs(options, column_to_numpy(held["cand"]), column_to_numpy(held["score"]))
    answer, n_opt = valid["answer"].to_numpy(), valid["n_options"].to_numpy()
    w, by_weight = choose_fusion(logp, n_opt, small, answer)
    out = {"fusion": w, "valid_hits1_by_fusion": by_weight, "valid_examples": int(len(answer)),
           "llm_hits1": by_weight[0.0], "small_hits1": by_weight[1.0]}
    (model_dir / "fusion.json").write_text(json.dumps(out, indent=2))
    return out


def run(ctx: RunContext, tmp: Path) -> dict:
    from hiea_ray.core.llm import resolve_llm
    from hiea_ray.core.retrieval import knn
    from hiea_ray.ops.data import init_ray
    from hiea_ray.plots import plot_llm_curve
    from hiea_ray.train.llm import neighbourhoods, training_tables
    from hiea_ray.train.loop import fit
    from hiea_ray.train.tasks import LLMTask

    lc = ctx.cfg.llm
    protocol = ctx.cfg.evaluate.protocols[0]
    base = resolve_llm(lc.model)
    ids, kg, vecs = ctx.embeddings()
    pair = ctx.pair()
    t0 = time.time()
    routed = routed_examples(ctx, protocol) if lc.validation == "routed" else None
    known = seed_and_certain(ctx, protocol)
    if routed is not None:  # the held-out sources' links are never shown as bridges either
        known = without(known, routed[1]["src"].to_numpy())
    nb = neighbourhoods(pair, known, lc.max_facts)
    fmt = prompt_format(base, lc.adapter_tokens, lc.readout)
    kg2, kg2_vecs = ids[kg == 2], vecs[kg == 2]

    def ranked_of(src: np.ndarray, depth: int) -> np.ndarray:
        _, idx = knn(vecs[np.searchsorted(ids, src)], kg2_vecs, min(depth, len(kg2)), ctx.cfg.retrieve)
        return np.where(idx >= 0, kg2[np.maximum(idx, 0)], -1)

    data, valid = training_tables(pair.links, ranked_of, nb, fmt, lc, ids, vecs, routed)
    built = time.time() - t0
    tokens = data["tokens"].to_numpy()
    small = float(np.mean(valid["small"].to_numpy() == valid["answer"].to_numpy()))
    log.info("llm_train: %d train / %d validation prompts (%s; tokens mean %.0f, max %d) built in %.0f s; small-model "
             "validation Hits@1 %.4f", data.num_rows, valid.num_rows,
             "routed labelled sources" if routed is not None else "valid links", tokens.mean(), tokens.max(), built, small)
    init_ray(ctx.cfg)
    opts = asdict(lc)
    res = fit(LLMTask(base, int(vecs.shape[1]), opts), opts, base, data, valid, "llm", (tmp / "ray").resolve(),
              tmp / "best")
    shutil.rmtree(tmp / "model", ignore_errors=True)
    shutil.move(str(tmp / "best"), tmp / "model")
    shutil.rmtree(tmp / "ray", ignore_errors=True)  # Ray Train's checkpoints: only the best model is kept
    fusion = None
    if routed is not None:
        fusion = tune_fusion(tmp / "model", base, int(vecs.shape[1]), valid, routed[1], lc)
        log.info("llm_train: routed validation Hits@1 LLM %.4f, small model %.4f; fusion weight %.2f (Hits@1 %.4f)",
                 fusion["llm_hits1"], fusion["small_hits1"], fusion["fusion"],
                 fusion["valid_hits1_by_fusion"][fusion["fusion"]])
    llm_hits = res["best"]["valid_rank_hits1"]  # the merge's Hits@1 on validation, whatever kept it
    if llm_hits <= small:
        log.warning("llm_train: the LLM's validation Hits@1 %.4f is not above the small model's %.4f on the same "
                    "examples: its answers will likely lower Hits@1 on the routed sources (more steps, a larger "
                    "model or llm.fusion: auto may help)", llm_hits, small)
    history = {"train_examples": data.num_rows, "valid_examples": valid.num_rows, "prompt_tokens_mean": float(tokens.mean()),
               "prompt_tokens_max": int(tokens.max()), "valid_small_acc": small, "wall_s": round(time.time() - t0, 1),
               "prompt_build_s": round(built, 1), "validation": "routed" if routed is not None else "links",
               "fusion": fusion, **res}
    (tmp / "history.json").write_text(json.dumps(history, indent=2, default=str))
    plot_llm_curve(history, tmp / "curve.png")
    return {"best": res["best"], "valid_small_acc": small, "train_examples": data.num_rows,
            "prompt_tokens_mean": round(float(tokens.mean()), 1), "train_wall_s": history["wall_s"],
            "fusion": None if fusion is None else fusion["fusion"]}


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
