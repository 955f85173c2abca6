"""The one Ray Train loop: every training task (retriever, reranker, and the LLM tier next) runs here.

``fit(task, opts, init_model, data, valid, name, storage, best_dir)`` builds the
``TorchTrainer`` from the shared contract (``config.TrainScaling``: workers, GPU, CPUs, threads,
AMP, ZeRO stage, failures, seed) and copies the best checkpoint's model (by the task's own
``metric``) into ``best_dir``. The task (``hiea_ray.train.tasks``) supplies what differs: how to
load, step, validate and save its model.

On every worker ``train_loop_per_worker`` loads the model (or the checkpoint Ray Train hands back
after a failure / restart), wraps it in DDP (``prepare_model``) or a DeepSpeed ZeRO engine
(stage 1-3), reads its shard of the "train" Ray Dataset, runs the task's plain step, and every
``eval_every`` steps validates on rank 0 only (the validation rows, a Parquet file in the run's
storage path) and reports the
metrics with a checkpoint through ``ray.train.report``. Under ZeRO-3 the parameters are sharded:
validation and the model save run inside ``deepspeed.zero.GatheredParameters`` (all ranks gather,
rank 0 uses the full weights), so the saved model is complete, not the empty shells of the local
partitions. A restarted run skips the batches it trained before and continues at the saved step;
the same run name + storage path lets Ray Train restore a killed run from its latest checkpoint.

Environment variables ``HIEA_*`` of the driver are passed to the workers; ``HIEA_FAIL_AT_STEP=N``
makes rank 0 fail once at step N of a fresh (not restored) run — the failure tests use it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)


def _optimizer(model, opts: dict, total: int):
    import torch
    from transformers import get_linear_schedule_with_warmup

    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=opts["lr"], weight_decay=0.01)
    scheduler = get_linear_schedule_with_warmup(optimizer, min(opts["warmup_steps"], total // 10), total)
    return optimizer, scheduler


def _gathered(model, zero: int):
    """Full parameters on every rank for the duration (ZeRO-3); a no-op otherwise."""
    if zero == 3:
        import deepspeed

        return deepspeed.zero.GatheredParameters(list(model.parameters()), modifier_rank=None)
    return contextlib.nullcontext()


def _valid_table(rank: int, path: str):
    """The validation set (rank 0 only), from the Parquet file ``fit`` wrote beside the checkpoints
    (the run's storage path: shared storage on a cluster)."""
    import pyarrow.parquet as pq

    return pq.read_table(path) if rank == 0 else None


def train_loop_per_worker(config: dict) -> None:
    """Runs on every Ray Train worker. config: task (a ``tasks.TrainTask``), opts (the task's
    config section as a dict, with ``scaling``), init_model, n_train."""
    import ray.train
    import ray.train.torch
    import torch

    task = config["task"]
    opts = config["opts"]
    sc = opts["scaling"]
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.manual_seed(sc["seed"])
    torch.set_num_threads(max(1, sc["torch_threads"] or int(os.environ.get("OMP_NUM_THREADS", "1"))))
    device = ray.train.torch.get_device()
    start_step = 0
    ckpt = ray.train.get_checkpoint()
    state = None
    if ckpt is not None:
        with ckpt.as_directory() as d:
            state = torch.load(Path(d) / "state.pt", weights_only=False)
            model, tokenizer = task.load(str(Path(d) / "model"), device=device)
        start_step = state["step"]
    else:
        model, tokenizer = task.load(config["init_model"], device=device)
    if sc.get("gradient_checkpointing") and device.type == "cuda":
        model.gradient_checkpointing_enable()
    zero = sc.get("zero_stage", 0)
    per_worker = max(1, opts["batch_size"] // world)
    steps_per_epoch = config["n_train"] // (per_worker * world)
    epochs = opts["epochs"]
    total = max(1, steps_per_epoch * epochs)
    amp_dtype = torch.bfloat16 if (sc["amp"] and (device.type == "cuda" or sc.get("cpu_amp"))) else None
    if zero:
        # DeepSpeed ZeRO: the engine replaces DDP and does backward, clipping, optimizer and
        # scheduler steps; optimizer states (stage 1), gradients (2) and parameters (3) are sharded.
        import deepspeed

        model.to(device)
        optimizer, scheduler = _optimizer(model, opts, total)
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
        # Parameters that get no gradient (e.g. a bi-encoder's unused pooler head) are allowed.
        model = ray.train.torch.prepare_model(model, parallel_strategy_kwargs={"find_unused_parameters": True})
        raw = model.module if hasattr(model, "module") else model
        optimizer, scheduler = _optimizer(model, opts, total)
        if state is not None:
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
    valid = _valid_table(rank, config["valid_path"])
    shard = ray.train.get_dataset_shard("train")
    step = start_step
    losses: list[float] = []
    curve: list[list[float]] = state.get("curve", []) if state is not None else []  # (step, loss)
    resumed = (state.get("resumed", []) + [start_step]) if state is not None else []  # steps resumed at
    fail_at = int(os.environ.get("HIEA_FAIL_AT_STEP", "0") or 0)
    t0 = time.time()

    def report(final: bool = False):
        metrics = {"step": step, "loss": float(np.mean(losses)) if losses else float("nan")}
        metrics["pairs_per_s"] = round(len(losses) * per_worker * world / max(time.time() - t0, 1e-9), 2)
        metrics["final"] = final
        metrics["resumed"] = list(resumed)
        with tempfile.TemporaryDirectory() as tmp:
            checkpoint = None
            if zero:  # every worker writes its shard; Ray Train merges them into one checkpoint
                model.save_checkpoint(str(Path(tmp) / "deepspeed"), tag="ckpt")
                checkpoint = ray.train.Checkpoint.from_directory(tmp)
            with _gathered(raw, zero):
                if rank == 0:
                    metrics.update(task.evaluate(raw, tokenizer, valid, opts, device))
                    task.save(raw, tokenizer, Path(tmp) / "model")
            if rank == 0:
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
                # Ray Train routes worker logging to the driver (and its structured log files); a
                # print() is patched into that logger *and* teed to stdout, so it would show twice.
                log.info("[%s] step %d/%d loss %.4f %.1f links/s", task.name, step, total, np.mean(losses[-10:]), rate)
            if fail_at == step and ckpt is None and rank == 0:
                raise RuntimeError(f"injected failure at step {step} (HIEA_FAIL_AT_STEP)")
            if step % opts["eval_every"] == 0 and step < total:
                report()
                losses.clear()
                t0 = time.time()
    report(final=True)


def fit(task, opts: dict, init_model: str, data, valid, name: str, storage: Path, best_dir: Path) -> dict:
    """One TorchTrainer run; copies the best checkpoint's model (by ``task.metric``) to ``best_dir``.

    opts: the task's config section as a dict (with ``scaling``, a ``TrainScaling`` as a dict) and
    ``epochs``. data / valid: ``pyarrow.Table``s of training rows and validation rows. Returns
    best / last metrics and the loss curve."""
    import ray.data
    import ray.train
    import torch
    from ray.train.torch import TorchTrainer

    import pyarrow.parquet as pq

    sc = opts["scaling"]
    env = {k: v for k, v in os.environ.items() if k.startswith("HIEA_")}
    Path(storage).mkdir(parents=True, exist_ok=True)
    valid_path = Path(storage) / f"{name}-valid.parquet"
    pq.write_table(valid, valid_path)
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"task": task, "opts": opts, "init_model": init_model, "n_train": data.num_rows,
                           "valid_path": str(valid_path)},
        scaling_config=ray.train.ScalingConfig(
            num_workers=sc["num_workers"], use_gpu=sc["use_gpu"], resources_per_worker={"CPU": sc["cpus_per_worker"]}
        ),
        run_config=ray.train.RunConfig(
            name=name,
            storage_path=str(storage),
            failure_config=ray.train.FailureConfig(max_failures=sc["max_failures"]),
            checkpoint_config=ray.train.CheckpointConfig(
                num_to_keep=2, checkpoint_score_attribute=task.metric, checkpoint_score_order="max"
            ),
            worker_runtime_env={"env_vars": env} if env else None,
        ),
        datasets={"train": ray.data.from_arrow(data)},
    )  # same run name + storage path: Ray Train restores a killed run from its latest checkpoint
    result = trainer.fit()
    best = max(result.best_checkpoints, key=lambda cm: cm[1][task.metric])
    with result.checkpoint.as_directory() as d:
        curve = torch.load(Path(d) / "state.pt", weights_only=False)["curve"]
    shutil.rmtree(best_dir, ignore_errors=True)
    with best[0].as_directory() as d:
        shutil.copytree(Path(d) / "model", best_dir)
    return {"best": best[1], "last": result.metrics, "curve": curve}
