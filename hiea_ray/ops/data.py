"""Ray Data plumbing: joining Ray, and the resumable map over Parquet parts that embed, rerank (and
later the LLM stages) share.

    read Parquet -> drop rows already written (resume) -> repartition into blocks
                 -> the stage's callable class on an actor pool -> Parquet part files

The callable classes themselves are plain Python (``hiea_ray.stages.*``), tested without Ray;
a ``MapSpec`` says how to chain one: the class, its constructor arguments, ``map_batches``
options (batch size and format, CPUs / GPUs per actor). Ray is imported only inside functions.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


def init_ray(cfg) -> None:
    """Join the cluster at ray.address / $RAY_ADDRESS (as under `ray job submit`), else start a local one.

    The Ray workers' output (actor prints, Ray Train's controller and placement-group cleaner
    notices) stays in Ray's log files unless ``ray.log_to_driver``; when the ``hiea_ray`` logger is
    quieter than INFO (``hiea-ray -q``), Ray's own INFO lines and progress bars are kept off the
    terminal too."""
    import ray

    from hiea_ray.errors import handle_signals

    if ray.is_initialized():
        return
    quiet = not logging.getLogger("hiea_ray").isEnabledFor(logging.INFO)
    if quiet:
        _quiet_ray_loggers()
        os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")  # the C++ core's stderr lines
    ray.init(**ray_init_kwargs(cfg, quiet, os.environ.get("RAY_ADDRESS")))
    handle_signals()  # ray.init installs its own SIGTERM handler in the driver: ours again
    import ray.data  # its log handlers exist once it is imported

    _drop_file_system_tracebacks()
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = not quiet
    if quiet:
        ctx.print_on_execution_start = False
        _quiet_ray_loggers()  # again: importing ray.data configures its loggers


def ray_init_kwargs(cfg, quiet: bool, env_address: str | None) -> dict:
    """``ray.init``'s arguments: join ``ray.address``; else, with $RAY_ADDRESS set (``env_address``:
    inside ``ray job submit``), let ray.init read it; else a new local instance ("local": never one
    found on this machine). Workers' output reaches the terminal only with ``ray.log_to_driver``
    and never when quiet."""
    kwargs = {"ignore_reinit_error": True, "log_to_driver": bool(cfg.ray.log_to_driver) and not quiet}
    if quiet:
        kwargs["logging_level"] = logging.ERROR
    if cfg.ray.address:
        return {"address": cfg.ray.address, **kwargs}
    if env_address:
        return kwargs
    return {"address": "local", "num_cpus": cfg.ray.num_cpus, "include_dashboard": False, **kwargs}


def _quiet_ray_loggers() -> None:
    for name in ("ray", "ray.data", "ray.train", "ray.serve"):
        logging.getLogger(name).setLevel(logging.ERROR)


class _FileSystemErrorFilter(logging.Filter):
    """Drops Ray's own ERROR records (tracebacks) of a file-system error (a full disk, a read-only
    folder): the driver reports it in one line (``hiea_ray.cli``) instead of hundreds."""

    def filter(self, record: logging.LogRecord) -> bool:
        from hiea_ray.errors import file_system_error

        if record.levelno >= logging.ERROR and str(record.msg).startswith("Exception occurred in Ray Data"):
            return False  # the preamble of the traceback record below; the CLI says what happened
        exc = record.exc_info[1] if record.exc_info else None
        return exc is None or file_system_error(exc) is None


def _drop_file_system_tracebacks() -> None:
    f = _FileSystemErrorFilter()
    for name in ("", "ray", "ray.data", "ray.train"):
        for h in logging.getLogger(name).handlers:
            if not any(isinstance(x, _FileSystemErrorFilter) for x in h.filters):
                h.addFilter(f)


def check_cpus(reserved: dict[str, float]) -> None:
    """Actor pools that reserve every logical CPU of the cluster leave none for Ray Data's read and
    write tasks, and the stage waits forever: a user error naming the fields (``reserved``: the
    fields' description -> the CPUs they reserve)."""
    import ray

    from hiea_ray.errors import UserError

    total = float(ray.cluster_resources().get("CPU", 0))
    need = sum(reserved.values())
    if total and need > total - 1 + 1e-9:
        parts = " + ".join(f"{k} = {v:g}" for k, v in reserved.items())
        raise UserError(f"config: {parts} reserve {need:g} of the cluster's {total:g} CPUs; leave at least one for "
                        "Ray Data's read and write tasks (fewer actors or fewer CPUs per actor)")


@dataclass
class MapSpec:
    """How to chain one callable class: the class, its arguments, ``map_batches`` options, the
    size of its actor pool (None: the ``num_actors`` the chain is given) and the config fields that
    size it (named when the pools leave no CPU for Ray Data's own tasks)."""

    cls: type
    constructor_kwargs: dict = field(default_factory=dict)
    map_batches_kwargs: dict = field(default_factory=dict)
    actors: int | None = None
    fields: str = ""


def tokenize_mode(cfg) -> str:
    """actor | stage of a section with ``tokenize`` and ``gpus_per_actor`` (embed, rerank, llm):
    "auto" = a CPU tokenize stage when the model's actors hold GPUs."""
    if cfg.tokenize != "auto":
        return cfg.tokenize
    return "stage" if cfg.gpus_per_actor > 0 else "actor"


def model_chain(cfg, section: str, model: MapSpec, tokenizer: type, tokenizer_kwargs: dict) -> list[MapSpec]:
    """[tokenize stage,] model actors: ``model`` alone, or after a CPU actor pool of ``tokenizer``
    (``section.tokenize_actors`` actors of ``section.tokenize_cpus``) when ``tokenize_mode`` is stage.
    The one place the mode is resolved: the model class is told which input it gets (its
    ``tokenized`` argument) and checks its batches hold it (``require_columns``)."""
    model.fields = model.fields or f"{section}.num_actors x cpus_per_actor"
    stage = tokenize_mode(cfg) == "stage"
    model.constructor_kwargs = {**model.constructor_kwargs, "tokenized": stage}
    if not stage:
        return [model]
    tok = MapSpec(tokenizer, tokenizer_kwargs, {"batch_size": cfg.rows_per_batch, "batch_format": "pyarrow",
                                                "num_cpus": cfg.tokenize_cpus}, actors=cfg.tokenize_actors,
                  fields=f"{section}.tokenize_actors x tokenize_cpus")
    return [tok, model]


def require_columns(batch: pa.Table, columns: tuple[str, ...], who: str) -> None:
    """A model actor's input contract: the batch holds these columns (the tokenize stage's token
    ids, or the texts), else one error naming what is missing (a chain built wrong, never a
    silent fallback to tokenizing on the model's device)."""
    missing = [c for c in columns if c not in batch.column_names]
    if missing:
        raise ValueError(f"{who}: input batch lacks {missing} (has {batch.column_names})")


def resolve(obj):
    """An object ref (under Ray) or the object itself."""
    if type(obj).__name__ == "ObjectRef":
        import ray

        return ray.get(obj)
    return obj


class DropDone:
    """Filters out rows whose id (``column``) was already processed (resume)."""

    def __init__(self, done, column: str = "id"):
        self.done = pa.array(resolve(done))
        self.column = column

    def __call__(self, batch: pa.Table) -> pa.Table:
        return batch.filter(pc.invert(pc.is_in(batch[self.column], value_set=self.done)))


def map_parquet(src: Path, parts: Path, spec: MapSpec | list[MapSpec], num_actors: int, rows_per_block: int,
                done: np.ndarray | None = None, column: str = "id", progress: tuple[str, int] | None = None) -> None:
    """A resumable Ray Data stage: read Parquet -> drop rows whose ``column`` is in ``done`` ->
    the stage class (or classes, chained in order, each on its own actor pool: Ray Data streams
    blocks from one to the next, so they overlap) -> Parquet part files in ``parts``.
    ``progress`` = (label, total rows[, rows finished before]): progress lines (rows/s, ETA) while
    it runs (finished before: the rows of ``done``, unless given: ``done`` may also hold rows that
    are not this stage's, as retrieve's other side)."""
    import ray

    specs = spec if isinstance(spec, list) else [spec]
    check_cpus({s.fields or s.cls.__name__: (s.actors or num_actors) * s.map_batches_kwargs.get("num_cpus", 1)
                for s in specs})
    ds = ray.data.read_parquet(str(src))
    if done is not None and len(done):
        ds = ds.map_batches(
            DropDone,
            fn_constructor_kwargs={"done": ray.put(done), "column": column},
            batch_format="pyarrow",
            compute=ray.data.ActorPoolStrategy(size=1),
            num_cpus=0,
        )
    # The Parquet reader bundles small files into one read task (one block), and an actor pool
    # hands whole blocks to actors: without this, every row went to a single actor whatever
    # num_actors was, and the stage wrote a single part file (nothing to resume).
    # Streaming repartition: blocks of <= rows_per_block rows, spread over the actors/nodes.
    ds = ds.repartition(target_num_rows_per_block=max(1, rows_per_block))
    for s in specs:
        ds = ds.map_batches(
            s.cls,
            fn_constructor_kwargs=s.constructor_kwargs,
            compute=ray.data.ActorPoolStrategy(size=s.actors or num_actors),
            **s.map_batches_kwargs,
        )
    before = progress[2] if progress is not None and len(progress) > 2 else (0 if done is None else len(done))
    _write(ds, parts, None if progress is None else progress[:2], before)


def map_blocks(blocks: list[pa.Table], out: Path, spec: MapSpec, num_actors: int,
               progress: str | None = None) -> None:
    """In-memory Arrow blocks -> the stage class on an actor pool -> Parquet files in ``out``
    (one file per block: a later stage's actor pool spreads them over the nodes); ``progress``:
    a label for progress lines while it runs."""
    import ray

    ds = ray.data.from_arrow(blocks).map_batches(
        spec.cls,
        fn_constructor_kwargs=spec.constructor_kwargs,
        compute=ray.data.ActorPoolStrategy(size=num_actors),
        **spec.map_batches_kwargs,
    )
    _write(ds, out, None if progress is None else (progress, sum(b.num_rows for b in blocks)))


def _write(ds, out: Path, progress: tuple[str, int] | None, done: int = 0) -> None:
    """ds -> Parquet files in ``out``; with ``progress`` = (label, total rows), progress lines
    counted from the files written (``done`` rows were there before, from a killed run)."""
    from hiea_ray.progress import watch_parts

    if progress is None:
        ds.write_parquet(str(out))
        return
    out.mkdir(parents=True, exist_ok=True)
    with watch_parts(progress[0], out, progress[1], done):
        ds.write_parquet(str(out))


def _stage_on_worker(body, cfg, data: str, run: str, tmp: str) -> dict:
    """A stage body in a Ray worker: a fresh RunContext over the same folders (nothing of the
    driver's process crosses but the config and the paths)."""
    import ray
    import psutil

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    import time

    from hiea_ray.run import RunContext

    t0 = time.time()
    stats = body(RunContext(cfg, data, run), Path(tmp))
    body_s = time.time() - t0
    # where it ran, and the worker's peak memory (ru_maxrss: the process's whole life, this task's at least)
    import resource

    return {**stats, "offloaded": {"node": ray.get_runtime_context().get_node_id()[:12], "pid": os.getpid(),
                                   "body_wall_s": round(body_s, 3),
                                   "worker_peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3),
                                   "worker_rss_gib": round(psutil.Process().memory_info().rss / 2**30, 3)}}


def offloaded(name: str, body, ctx, tmp: Path) -> dict:
    """Runs stage ``name``'s body as a Ray task (``ray.offload``): the driver holds none of its
    vectors or lists, only waits. The task writes the stage's outputs into ``tmp`` on the run's
    storage (every node mounts it) and returns its stats; a user error inside it reaches the CLI
    as the same one line; a task whose node is lost is retried (``ray.offload_retries``)."""
    import ray

    from hiea_ray.errors import UserError

    import time

    rc = ctx.cfg.ray
    t0 = time.time()
    init_ray(ctx.cfg)
    ray_start_s = time.time() - t0  # > 0 only when this stage is the run's first Ray work (a reused embed)
    opts = {"num_cpus": rc.offload_cpus, "max_retries": rc.offload_retries, "retry_exceptions": False,
            "name": f"hiea-ray:{name}"}
    if rc.offload_memory_gib:
        opts["memory"] = int(rc.offload_memory_gib * 2**30)
    task = ray.remote(_stage_on_worker).options(**opts)
    ref = task.remote(body, ctx.cfg, str(Path(ctx.data).resolve()), str(Path(ctx.run).resolve()), str(Path(tmp).resolve()))
    try:
        stats = ray.get(ref)
        stats["offloaded"]["ray_start_s"] = round(ray_start_s, 3)
        return stats
    except ray.exceptions.RayTaskError as e:
        cause = getattr(e, "cause", None)
        if isinstance(cause, UserError):
            raise cause from None
        raise
