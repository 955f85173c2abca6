"""The Ray Train loop shared by the retriever (bi-encoder) and the reranker (cross-encoder) jobs.

``train_loop_per_worker`` runs on every worker: it loads the model (or the checkpoint Ray Train
hands back after a failure / restart), wraps it in DDP with ``prepare_model``, reads its Ray Data
shard, runs the task's plain ``train_step`` (``hiea_ray.core.bi_encoder_train`` or
``hiea_ray.core.cross_encoder``), validates every ``eval_every`` steps and reports metrics with a
checkpoint (model folder + optimizer/scheduler/step) through ``ray.train.report``. A restarted run
skips the batches it trained before and continues at the saved step.

With ``zero_stage`` 1 or 2, DeepSpeed's engine replaces DDP (ZeRO-sharded optimizer states and
gradients); each worker saves its shard into the reported checkpoint and loads it on resume.

``fit`` builds the ``TorchTrainer`` (``ScalingConfig``, ``FailureConfig``, ``CheckpointConfig``
keeping the best by validation MRR) and copies the best checkpoint's model into a normal HF folder.
The same run name + storage path lets Ray Train restore a killed run from its latest checkpoint.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np


class _Task:
    """What differs between the two jobs: model class, step function, validation."""

    name = ""

    def load(self, path: str):
        raise NotImplementedError

    def step(self, model, tokenizer, optimizer, scheduler, batch, opts, device, amp_dtype) -> float:
        raise NotImplementedError

    def evaluate(self, model, tokenizer, valid, opts, device) -> dict:
        raise NotImplementedError


class RetrieverTask(_Task):
    name = "retriever"

    def load(self, path):
        from transformers import AutoModel, AutoTokenizer

        return AutoModel.from_pretrained(path), AutoTokenizer.from_pretrained(path)

    def step(self, *args):
        from hiea_ray.core.bi_encoder_train import train_step

        return train_step(*args)

    def evaluate(self, model, tokenizer, valid, opts, device):
        from hiea_ray.core.bi_encoder_train import evaluate

        return evaluate(model, tokenizer, valid["src"], valid["tgt"], opts["max_length"], device)


class RerankerTask(_Task):
    name = "reranker"

    def load(self, path):
        from hiea_ray.core.cross_encoder import load_reranker

        return load_reranker(path)

    def step(self, *args):
        from hiea_ray.core.cross_encoder import train_step

        return train_step(*args)

    def evaluate(self, model, tokenizer, valid, opts, device):
        from hiea_ray.core.cross_encoder import evaluate

        return evaluate(model, tokenizer, valid, opts["max_length"], device)


TASKS = {t.name: t for t in (RetrieverTask(), RerankerTask())}


def train_loop_per_worker(config: dict) -> None:
    """Runs on every Ray Train worker. config: task, opts (the config section + max_length),
    init_model, n_train, valid, fail_at_step (tests)."""
    import ray.train
    import ray.train.torch
    import torch
    from transformers import get_linear_schedule_with_warmup

    task = TASKS[config["task"]]
    opts = config["opts"]
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.manual_seed(opts["seed"])
    torch.set_num_threads(max(1, opts["torch_threads"] or int(os.environ.get("OMP_NUM_THREADS", "1"))))
    device = ray.train.torch.get_device()
    start_step = 0
    ckpt = ray.train.get_checkpoint()
    state = None
    if ckpt is not None:
        with ckpt.as_directory() as d:
            state = torch.load(Path(d) / "state.pt", weights_only=False)
            model, tokenizer = task.load(str(Path(d) / "model"))
        start_step = state["step"]
    else:
        model, tokenizer = task.load(config["init_model"])
    if opts.get("gradient_checkpointing") and device.type == "cuda":
        model.gradient_checkpointing_enable()
    zero = opts.get("zero_stage", 0)
    per_worker = max(1, opts["batch_size"] // world)
    steps_per_epoch = config["n_train"] // (per_worker * world)
    epochs = opts["epochs"]
    total = max(1, steps_per_epoch * epochs)
    amp_dtype = torch.bfloat16 if (opts["amp"] and device.type == "cuda") else None
    if zero:
        # DeepSpeed ZeRO: the engine replaces DDP and does backward, clipping, optimizer and
        # scheduler steps; optimizer states (and gradients at stage 2) are sharded over workers.
        import deepspeed

        model.to(device)
        optimizer = torch.optim.AdamW(model.parameters(), lr=opts["lr"], weight_decay=0.01)
        scheduler = get_linear_schedule_with_warmup(optimizer, min(opts["warmup_steps"], total // 10), total)
        ds_config = {
            "train_micro_batch_size_per_gpu": per_worker,
            "gradient_accumulation_steps": 1,
            "gradient_clipping": 1.0,
            "zero_optimization": {"stage": zero},
            "zero_allow_untested_optimizer": True,
            "bf16": {"enabled": amp_dtype is not None},
        }
        model, optimizer, _, scheduler = deepspeed.initialize(
            model=model, optimizer=optimizer, lr_scheduler=scheduler, config=ds_config, dist_init_required=False
        )
        amp_dtype = None  # the engine runs the model in bf16 itself
        if ckpt is not None:
            with ckpt.as_directory() as d:
                model.load_checkpoint(str(Path(d) / "deepspeed"), tag="ckpt")
        raw = model.module
    else:
        # The bi-encoder's pooler head gets no gradient (we pool token states): DDP must allow that.
        model = ray.train.torch.prepare_model(model, parallel_strategy_kwargs={"find_unused_parameters": True})
        raw = model.module if hasattr(model, "module") else model
        optimizer = torch.optim.AdamW(model.parameters(), lr=opts["lr"], weight_decay=0.01)
        scheduler = get_linear_schedule_with_warmup(optimizer, min(opts["warmup_steps"], total // 10), total)
        if state is not None:
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
    valid = config["valid"]
    shard = ray.train.get_dataset_shard("train")
    step = start_step
    losses: list[float] = []
    curve: list[list[float]] = state.get("curve", []) if state is not None else []  # (step, loss)
    resumed = (state.get("resumed", []) + [start_step]) if state is not None else []  # steps resumed at
    t0 = time.time()

    def report(final: bool = False):
        metrics = {"step": step, "loss": float(np.mean(losses)) if losses else float("nan")}
        metrics["pairs_per_s"] = round(len(losses) * per_worker * world / max(time.time() - t0, 1e-9), 2)
        metrics.update(task.evaluate(raw, tokenizer, valid, opts, device))
        metrics["final"] = final
        metrics["resumed"] = list(resumed)
        with tempfile.TemporaryDirectory() as tmp:
            checkpoint = None
            if zero:  # every worker writes its optimizer shard; Ray Train merges them into one checkpoint
                model.save_checkpoint(str(Path(tmp) / "deepspeed"), tag="ckpt")
                checkpoint = ray.train.Checkpoint.from_directory(tmp)
            if rank == 0:
                raw.save_pretrained(Path(tmp) / "model")
                tokenizer.save_pretrained(Path(tmp) / "model")
                torch.save(
                    {"step": step, "curve": curve, "resumed": resumed,
                     **({} if zero else {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()})},
                    Path(tmp) / "state.pt",
                )
                checkpoint = ray.train.Checkpoint.from_directory(tmp)
            ray.train.report(metrics, checkpoint=checkpoint)

    for epoch in range(epochs):
        batches = shard.iter_batches(batch_size=per_worker, batch_format="numpy", drop_last=True, local_shuffle_buffer_size=None)
        for i, batch in enumerate(batches):
            if i >= steps_per_epoch:
                break
            if epoch * steps_per_epoch + i < start_step:
                continue  # resumed: this batch was trained before the interruption
            losses.append(task.step(model, tokenizer, optimizer, scheduler, batch, opts, device, amp_dtype))
            step += 1
            curve.append([step, losses[-1]])
            if rank == 0 and step % 10 == 0:
                rate = len(losses) * per_worker * world / max(time.time() - t0, 1e-9)
                print(f"[{task.name}] step {step}/{total} loss {np.mean(losses[-10:]):.4f} {rate:.1f} links/s", flush=True)
            if config.get("fail_at_step") == step and ckpt is None and rank == 0:
                raise RuntimeError(f"injected failure at step {step}")
            if step % opts["eval_every"] == 0 and step < total:
                report()
                losses.clear()
                t0 = time.time()
    report(final=True)


def fit(task: str, opts: dict, scaling: dict, init_model: str, data, valid: dict, name: str, storage: Path,
        best_dir: Path, fail_at_step: int | None = None) -> dict:
    """One TorchTrainer run; copies the best checkpoint's model to ``best_dir``.

    scaling: num_workers, use_gpu, cpus_per_worker, max_failures. data: a ``pyarrow.Table`` of
    training rows (one per link). Returns best / last metrics and the loss curve."""
    import ray.data
    import ray.train
    import torch
    from ray.train.torch import TorchTrainer

    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "task": task,
            "opts": opts,
            "init_model": init_model,
            "n_train": data.num_rows,
            "valid": valid,
            "fail_at_step": fail_at_step,
        },
        scaling_config=ray.train.ScalingConfig(
            num_workers=scaling["num_workers"], use_gpu=scaling["use_gpu"], resources_per_worker={"CPU": scaling["cpus_per_worker"]}
        ),
        run_config=ray.train.RunConfig(
            name=name,
            storage_path=str(storage),
            failure_config=ray.train.FailureConfig(max_failures=scaling["max_failures"]),
            checkpoint_config=ray.train.CheckpointConfig(
                num_to_keep=2, checkpoint_score_attribute="valid_mrr", checkpoint_score_order="max"
            ),
        ),
        datasets={"train": ray.data.from_arrow(data)},
    )  # same run name + storage path: Ray Train restores a killed run from its latest checkpoint
    result = trainer.fit()
    best = max(result.best_checkpoints, key=lambda cm: cm[1]["valid_mrr"])
    with result.checkpoint.as_directory() as d:
        curve = torch.load(Path(d) / "state.pt", weights_only=False)["curve"]
    shutil.rmtree(best_dir, ignore_errors=True)
    with best[0].as_directory() as d:
        shutil.copytree(Path(d) / "model", best_dir)
    return {"best": best[1], "last": result.metrics, "curve": curve}
