"""train (Ray Train; ``train.enabled``): fine-tune the bi-encoder on the train links.

Rounds of (mine hard negatives with the current model -> TorchTrainer over the training contract
of ``train.scaling``); the best checkpoint by validation MRR becomes ``model/`` (a normal HF
folder that records its pooling), with ``history.json`` and ``curve.png``. A killed job resumes
from its last checkpoint (``hiea_ray.train.retriever``).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from hiea_ray.run import RunContext
from hiea_ray.stages.base import StageDef


def run(ctx: RunContext, tmp: Path) -> dict:
    from hiea_ray.ops.data import init_ray
    from hiea_ray.train.retriever import train_retriever

    init_ray(ctx.cfg)
    res = train_retriever(ctx.cfg, ctx.texts(), ctx.pair().links, tmp)
    shutil.rmtree(tmp / "ray", ignore_errors=True)  # Ray Train's checkpoints: only the best model is kept
    for d in tmp.glob("round*-best"):
        shutil.rmtree(d)
    last = res["history"][-1]
    rounds = [{k: v for k, v in h.items() if k != "curve"} for h in res["history"]]
    return {"initial": res["initial"], "rounds": rounds, "best_valid_mrr": last["best"]["valid_mrr"]}


STAGE = StageDef(
    resumable=True,
    name="train",
    body=run,
    reads=("verbalize",),
    config=("train", "embed.model", "embed.pooling", "embed.max_length"),
    enabled=lambda cfg: cfg.train.enabled,
    external=lambda ctx: {"base_model": ctx.model_fingerprint(ctx.cfg.embed.model)},
)
