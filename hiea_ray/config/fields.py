"""The config's field kinds and checks, shared by every section: ``bounded`` (numeric bounds in
the field metadata), ``runtime`` fields (they only place work: left out of every stage key),
``hashed_if_set`` fields (in a key only when set), ``check_fields`` (every field's ``Literal``
choices and bounds), and the pieces several sections are made of (``ActorPool``,
``TokenizedPool``, ``TrainScaling``)."""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from typing import Literal

from hiea_ray.errors import UserError

_BOUNDS = ("ge", "gt", "le", "lt")


def _field(default=dataclasses.MISSING, default_factory=None, **meta):
    meta = {k: v for k, v in meta.items() if v is not None and v is not False}
    if default_factory is not None:
        return field(default_factory=default_factory, metadata=meta)
    return field(default=default, metadata=meta)


def bounded(default=dataclasses.MISSING, default_factory=None, *, ge=None, gt=None, le=None, lt=None):
    """A field with numeric bounds (``ge``: >=, ``gt``: >, ``le``: <=, ``lt``: <; None passes)."""
    return _field(default, default_factory, ge=ge, gt=gt, le=le, lt=lt)


def runtime(default, *, ge=None, gt=None, le=None, lt=None):
    """A field that only places work (resources, batch rows): left out of every stage key."""
    return _field(default, runtime=True, ge=ge, gt=gt, le=le, lt=lt)


def hashed_if_set(default_factory=None, default=dataclasses.MISSING, used_when=None, *, ge=None, gt=None, le=None,
                  lt=None):
    """A field left out of stage keys while it has its default value (so finished runs keep their
    keys and are reused) or, with ``used_when(section)``, while the section does not use it (the
    LLM verbalizer's settings in template mode)."""
    return _field(default, default_factory, omit_default=True, used_when=used_when, ge=ge, gt=gt, le=le, lt=lt)


def bound_rule(meta) -> str:
    lo = f"[{meta['ge']}" if "ge" in meta else f"({meta['gt']}" if "gt" in meta else None
    hi = f"{meta['le']}]" if "le" in meta else f"{meta['lt']})" if "lt" in meta else None
    if lo and hi:
        return f"in {lo}, {hi}"
    if lo:
        return (">= " if lo[0] == "[" else "> ") + lo[1:]
    return ("<= " if hi[-1] == "]" else "< ") + hi[:-1]


def check_fields(obj, prefix: str = "") -> None:
    """Every field's ``Literal`` choices and numeric bounds, nested sections included."""
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        name, value = f"{prefix}{f.name}", getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            check_fields(value, name + ".")
            continue
        tp = hints[f.name]
        items = value if typing.get_origin(tp) is list else [value]
        item_tp = typing.get_args(tp)[0] if typing.get_origin(tp) is list else tp
        choices = literal_choices(item_tp)
        for v in items:
            if choices is not None and v not in choices:
                raise UserError(f"config field {name}: {v!r} is not one of {sorted(choices, key=str)}")
        meta = {k: f.metadata[k] for k in _BOUNDS if k in f.metadata}
        if not meta or value is None or isinstance(value, str):
            continue
        ok = not (isinstance(value, float) and math.isnan(value)) and all((
            value >= meta.get("ge", -math.inf), value > meta.get("gt", -math.inf),
            value <= meta.get("le", math.inf), value < meta.get("lt", math.inf)))
        if not ok:
            raise UserError(f"config field {name}: {value!r} must be {bound_rule(meta)}")


def literal_choices(tp) -> tuple | None:
    """The allowed values of a ``Literal`` (or ``Literal | None``) annotation, else None."""
    if typing.get_origin(tp) is Literal:
        return typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        for a in typing.get_args(tp):
            if typing.get_origin(a) is Literal:
                return typing.get_args(a)
    return None


Tokenize = Literal["auto", "actor", "stage"]


@dataclass
class ActorPool:
    """A Ray Data actor pool (``ActorPoolStrategy``) over one stage's batches; every section that
    runs a model on an actor pool (embed, rerank, llm, verbalize.llm) is one."""

    # Actors of the pool (Ray Data ActorPoolStrategy size).
    num_actors: int = runtime(1, ge=1)
    # Logical CPUs Ray reserves per actor. Keep it below the node's CPU count so Ray Data
    # read/write tasks can run beside the actors.
    cpus_per_actor: float = runtime(1.0, gt=0)
    # GPUs per actor (0 on CPU machines; 1 on GPU nodes). Hashed: a GPU (with amp) computes other
    # numbers than a CPU.
    gpus_per_actor: float = bounded(0.0, ge=0)
    # torch intra-op threads per actor; 0 = all cores of the node (right for one actor per node,
    # the laptop case; set it when several CPU actors share a node).
    torch_threads: int = runtime(0, ge=0)
    # Rows per Ray Data batch handed to one actor call.
    rows_per_batch: int = runtime(256, ge=1)


@dataclass
class TokenizedPool(ActorPool):
    """An actor pool whose inputs can be tokenized by a CPU stage ahead of it."""

    # Where texts become token ids: "actor" (in the model's actor, before its forward), "stage" (a
    # CPU Ray Data stage of tokenize_actors actors ahead of the model's actors: the two overlap, and
    # a GPU actor only pads, copies and runs the forward), "auto" (stage when gpus_per_actor > 0).
    # The same numbers either way.
    tokenize: Tokenize = runtime("auto")
    # CPU actors of the tokenize stage and the CPUs Ray reserves for each. Leave a CPU per node for
    # Ray Data's read and write tasks beside the actors.
    tokenize_actors: int = runtime(2, ge=1)
    tokenize_cpus: float = runtime(1.0, gt=0)


@dataclass
class TrainScaling:
    """The Ray Train contract shared by every training task (retriever, reranker, LLM): how many
    workers, on what, with what precision and sharding. Mirrors ``ray.train.ScalingConfig`` +
    ``FailureConfig`` without importing Ray."""

    # Ray Train workers (data parallel; the global batch is split over them).
    num_workers: int = bounded(1, ge=1)
    # One GPU per worker (NCCL); else CPU workers over gloo.
    use_gpu: bool = False
    # Logical CPUs Ray reserves per worker.
    cpus_per_worker: float = runtime(1.0, gt=0)
    # torch intra-op threads per worker (0 = Ray's OMP_NUM_THREADS).
    torch_threads: int = bounded(0, ge=0)
    # bf16 autocast on GPU workers (ignored on CPU unless cpu_amp).
    amp: bool = True
    # bf16 autocast on CPU workers too (oneDNN's AVX512-BF16 / AMX kernels: faster on CPUs that
    # have them; off by default: not bit-exact, slow on CPUs without them).
    cpu_amp: bool = hashed_if_set(default=False)
    # Gradient checkpointing (GPU only: trades compute for activation memory).
    gradient_checkpointing: bool = False
    # DeepSpeed ZeRO: 0 = off (plain DDP), 1 = optimizer states sharded, 2 = also gradients,
    # 3 = also parameters (the saved model is gathered from the shards). Runs on CPU over gloo.
    zero_stage: Literal[0, 1, 2, 3] = 0
    # Restarts of failed workers (Ray Train FailureConfig) before the run fails.
    max_failures: int = runtime(1, ge=-1)
    # Seed of the model init / data order / sampling of the task.
    seed: int = 0


def unique_and_not_empty(name: str, values: list) -> None:
    """A list field that must name at least one entry, each once."""
    if not values:
        raise UserError(f"config field {name}: must not be empty")
    if len(set(values)) != len(values):
        raise UserError(f"config field {name}: {values} lists an entry twice")
