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
from dataclasses import dataclass
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
    config section as a dict, with ``scaling``), init_model, n_train. The steps: restore (from Ray
    Train's checkpoint, else the initial model), wrap (DeepSpeed ZeRO or DDP), train the worker's
    shard, reporting metrics and a checkpoint every ``eval_every`` steps and at the end."""
    import ray.train
    import ray.train.torch
    import torch

    task, opts = config["task"], config["opts"]
    sc = opts["scaling"]
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.manual_seed(sc["seed"])
    torch.set_num_threads(max(1, sc["torch_threads"] or int(os.environ.get("OMP_NUM_THREADS", "1"))))
    device = ray.train.torch.get_device()
    ckpt = ray.train.get_checkpoint()
    model, tokenizer, state = _restore(task, config["init_model"], ckpt, device)
    start_step = state["step"] if state is not None else 0
    if sc.get("gradient_checkpointing") and device.type == "cuda":
        model.gradient_checkpointing_enable()
    per_worker = max(1, opts["batch_size"] // world)
    steps_per_epoch = config["n_train"] // (per_worker * world)
    epochs = opts["epochs"]
    total = max(1, steps_per_epoch * epochs)
    amp_dtype = torch.bfloat16 if (sc["amp"] and (device.type == "cuda" or sc.get("cpu_amp"))) else None
    w = _wrap(model, opts, total, per_worker, amp_dtype, ckpt, state, device)
    rep = _Reporter(task, tokenizer, w, opts, rank, world, per_worker, _valid_table(rank, config["valid_path"]), device,
                    state, start_step)
    shard = ray.train.get_dataset_shard("train")
    fail_at = int(os.environ.get("HIEA_FAIL_AT_STEP", "0") or 0)
    for epoch in range(epochs):
        batches = shard.iter_batches(batch_size=per_worker, batch_format="numpy", drop_last=True, local_shuffle_buffer_size=None)
        for i, batch in enumerate(batches):
            if i >= steps_per_epoch:
                break
            if epoch * steps_per_epoch + i < start_step:
                continue  # resumed: this batch was trained before the interruption
            rep.add(task.step(w.model, tokenizer, w.optimizer, w.scheduler, batch, opts, device, w.amp_dtype))
            if rank == 0 and rep.step % 10 == 0:
                # Ray Train routes worker logging to the driver (and its structured log files); a
                # print() is patched into that logger *and* teed to stdout, so it would show twice.
                log.info("[%s] step %d/%d loss %.4f %.1f links/s", task.name, rep.step, total,
                         np.mean(rep.losses[-10:]), rep.rate())
            if fail_at == rep.step and ckpt is None and rank == 0:
                raise RuntimeError(f"injected failure at step {rep.step} (HIEA_FAIL_AT_STEP)")
            if rep.step % opts["eval_every"] == 0 and rep.step < total:
                rep.report()
    rep.report(final=True)


def _restore(task, init_model: str, ckpt, device):
    """(model, tokenizer, state): from Ray Train's checkpoint when the worker resumes (state: step,
    curve, optimizer, ...), else the initial model (state None)."""
    import torch

    if ckpt is None:
        return (*task.load(init_model, device=device), None)
    with ckpt.as_directory() as d:
        state = torch.load(Path(d) / "state.pt", weights_only=False)
        model, tokenizer = task.load(str(Path(d) / "model"), device=device)
    return model, tokenizer, state


@dataclass
class _Wrapped:
    """The model as trained (DDP module or DeepSpeed engine), the bare model inside it (``raw``:
    evaluated and saved), its optimizer and scheduler, the autocast dtype and the ZeRO stage (0: DDP)."""

    model: object
    raw: object
    optimizer: object
    scheduler: object
    amp_dtype: object
    zero: int


def _wrap(model, opts: dict, total: int, per_worker: int, amp_dtype, ckpt, state, device) -> _Wrapped:
    import ray.train.torch

    zero = opts["scaling"].get("zero_stage", 0)
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
        if ckpt is not None:
            with ckpt.as_directory() as d:
                model.load_checkpoint(str(Path(d) / "deepspeed"), tag="ckpt")
        return _Wrapped(model, model.module, optimizer, scheduler, None, zero)  # the engine runs bf16 itself
    # Parameters that get no gradient (e.g. a bi-encoder's unused pooler head) are allowed.
    model = ray.train.torch.prepare_model(model, parallel_strategy_kwargs={"find_unused_parameters": True})
    raw = model.module if hasattr(model, "module") else model
    optimizer, scheduler = _optimizer(model, opts, total)
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
    return _Wrapped(model, raw, optimizer, scheduler, amp_dtype, 0)


class _Reporter:
    """The worker's losses since the last report, the loss curve and the steps resumed at; ``report``
    sends Ray Train the metrics (rank 0 validates) and a checkpoint (model, state; ZeRO: every
    worker's shard)."""

    def __init__(self, task, tokenizer, w: _Wrapped, opts: dict, rank: int, world: int, per_worker: int, valid,
                 device, state, start_step: int):
        self.task, self.tokenizer, self.w, self.opts, self.valid, self.device = task, tokenizer, w, opts, valid, device
        self.rank, self.world, self.per_worker = rank, world, per_worker
        self.step = start_step
        self.losses: list[float] = []
        self.curve: list[list[float]] = state.get("curve", []) if state is not None else []  # (step, loss)
        self.resumed = (state.get("resumed", []) + [start_step]) if state is not None else []  # steps resumed at
        self.t0 = time.time()

    def add(self, loss: float) -> None:
        self.losses.append(loss)
        self.step += 1
        self.curve.append([self.step, loss])

    def rate(self) -> float:
        return len(self.losses) * self.per_worker * self.world / max(time.time() - self.t0, 1e-9)

    def report(self, final: bool = False) -> None:
        import ray.train
        import torch

        w = self.w
        metrics = {"step": self.step, "loss": float(np.mean(self.losses)) if self.losses else float("nan"),
                   "pairs_per_s": round(self.rate(), 2), "final": final, "resumed": list(self.resumed)}
        with tempfile.TemporaryDirectory() as tmp:
            checkpoint = None
            if w.zero:  # every worker writes its shard; Ray Train merges them into one checkpoint
                w.model.save_checkpoint(str(Path(tmp) / "deepspeed"), tag="ckpt")
                checkpoint = ray.train.Checkpoint.from_directory(tmp)
            with _gathered(w.raw, w.zero):
                if self.rank == 0:
                    metrics.update(self.task.evaluate(w.raw, self.tokenizer, self.valid, self.opts, self.device))
                    self.task.save(w.raw, self.tokenizer, Path(tmp) / "model")
            if self.rank == 0:
                torch.save(
                    {"step": self.step, "curve": self.curve, "resumed": self.resumed,
                     **({} if w.zero else {"optimizer": w.optimizer.state_dict(), "scheduler": w.scheduler.state_dict()})},
                    Path(tmp) / "state.pt",
                )
                checkpoint = ray.train.Checkpoint.from_directory(tmp)
            ray.train.report(metrics, checkpoint=checkpoint)
        self.losses.clear()
        self.t0 = time.time()


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
