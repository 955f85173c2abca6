"""The ``ray`` section of the config: its fields (a comment on each: its help) and ``rules``, the checks
between its fields and the rest of the config (``Config.validate`` runs every section's)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from hiea_ray.config.fields import bounded, runtime


@dataclass
class RayConfig:
    # Ray address; null starts (or joins, inside `ray job submit`) a local instance.
    address: str | None = None
    # CPUs of a local instance started here (null = all).
    num_cpus: int | None = bounded(None, ge=1)
    # Forward the Ray workers' stdout / stderr to this terminal. Off: they stay in Ray's log files
    # (/tmp/ray/session_latest/logs), and the terminal shows the stages, progress and warnings.
    log_to_driver: bool = runtime(False)
    # Stages whose body runs as a Ray task on a worker instead of in the driver process
    # (``hiea_ray.ops.data.offloaded``): the stages that hold n x d vectors or n x k lists (retrieve,
    # decode, calibrate, route, export, evaluate), so a small head node drives a large run. The
    # task's output files are the same; a task whose node is lost is retried (offload_retries).
    offload: list[Literal["retrieve", "decode", "calibrate", "route", "export", "evaluate"]] = field(
        default_factory=list, metadata={"runtime": True})
    # Each offloaded stage's task: CPUs (its threads: FAISS, BLAS) and memory reserved (GiB; null =
    # none reserved: Ray places it by CPUs alone). A cluster's head started with 0 CPUs never gets one.
    offload_cpus: float = runtime(1.0, gt=0)
    offload_memory_gib: float | None = runtime(None, gt=0)
    offload_retries: int = runtime(2, ge=0)
