"""GPU smoke benchmark: what hiea-ray's own code does on one CUDA GPU, in under 5 minutes.

    python benchmarks/gpu_smoke.py [--assets DIR] [--out benchmarks/results/gpu_smoke.json]
    python benchmarks/gpu_smoke.py --pack DIR      # on a machine with the project installed
    python benchmarks/gpu_smoke.py --dry-run       # every section on the CPU, tiny sizes (tests/test_gpu_smoke_slow.py)

Models are built from configs (random weights: speed and memory only, never accuracy); the
tokenizers and configs come from the packaged defaults (all-MiniLM-L6-v2, SmolLM2-135M-Instruct) or
from ``--assets DIR`` (made by ``--pack DIR``: configs and tokenizers only, ~5 MB, so it travels to a
bare GPU machine). Needs torch, transformers, peft, numpy, pyarrow and this repository; Ray is used
when installed (the embed chain on Ray Data with one GPU actor), else the same callable classes run
Ray-free (``Tokenize`` on worker processes feeding ``Embedder``: the pipeline Ray Data would build).

Sections (each written to the JSON as soon as it finishes; a failing section records its error):
- ``encoder``: texts/s of the embed path at 64 tokens — tokenizer alone, ``embed.tokenize: actor``
  (the actor tokenizes), ``stage`` (token ids from CPU workers; the GPU actor pads, copies, runs),
  the forward alone on pre-tokenized batches; cuda-vs-cpu equality of the vectors.
- ``llm_equality``: the LLM tier (LoRA + adapter + slot readout, 135M architecture) after training
  steps on the GPU: fp32 cuda vs cpu, and bf16 weights vs fp32.
- ``llm``: ``core.llm.train_step`` s/step and peak memory, ``core.llm.score`` prompts/s by batch,
  for the 135M and a 7B Llama architecture, with float32 and bfloat16 base weights (``llm.dtype``).
- ``generate``: LLM verbalization (``core.generate.generate``) prompts/s by batch.
Without a CUDA GPU (and without --dry-run) it prints one line and exits 1.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import os
import platform
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

ENCODER_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")
LLM_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
             "special_tokens_map.json", "chat_template.jinja", "vocab.json", "merges.txt")
# A 7B-class Llama architecture (Llama-2-7B's shapes; the vocabulary is the packaged tokenizer's).
LLAMA_7B = {"hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32, "num_attention_heads": 32,
            "num_key_value_heads": 32, "max_position_embeddings": 4096, "rms_norm_eps": 1e-5, "tie_word_embeddings": False}
LLM_OPTS = {"lora_r": 16, "lora_alpha": 32, "lora_dropout": 0.0, "lora_targets": ["q_proj", "k_proj", "v_proj", "o_proj"],
            "adapter_tokens": 1, "candidates": 5, "readout": "slots", "lr": 1e-4}


def pack(dest: Path) -> None:
    """The packaged encoder's and LLM's configs and tokenizers (no weights) into dest/{encoder,llm}."""
    from hiea_ray.core.encoder import resolve_model
    from hiea_ray.core.llm import resolve_llm

    for name, src, files in (("encoder", resolve_model("default"), ENCODER_FILES), ("llm", resolve_llm("default"), LLM_FILES)):
        (dest / name).mkdir(parents=True, exist_ok=True)
        for f in files:
            if (Path(src) / f).is_file():
                shutil.copy2(Path(src) / f, dest / name / f)
        if (Path(src) / "1_Pooling").is_dir():
            shutil.copytree(Path(src) / "1_Pooling", dest / name / "1_Pooling", dirs_exist_ok=True)
    print(f"gpu_smoke: packed configs and tokenizers into {dest} ({sum(f.stat().st_size for f in dest.rglob('*') if f.is_file()) / 1e6:.1f} MB)")


class Results:
    def __init__(self, out: Path, meta: dict):
        self.out, self.doc = out, {**meta, "sections": {}}
        self.save()

    def put(self, section: str, value: dict) -> None:
        self.doc["sections"][section] = value
        self.save()
        print(f"gpu_smoke: {section}: {json.dumps(value)[:600]}", flush=True)

    def save(self) -> None:
        self.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.out.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.doc, indent=1) + "\n")
        os.replace(tmp, self.out)


def words_from(tokenizer, n: int = 4000) -> list[str]:
    """Plain lower-case words of a tokenizer's vocabulary (text material, no meaning needed)."""
    vocab = [w for w in tokenizer.get_vocab() if w.isalpha() and w.islower() and 3 <= len(w) <= 10]
    vocab.sort()
    return vocab[:: max(1, len(vocab) // n)][:n]


def entity_texts(words: list[str], n: int, n_words: int, seed: int = 0) -> list[str]:
    """Verbalized-entity-like texts: a name, then relation: value pairs, about ``n_words`` words."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(words), size=(n, n_words))
    out = []
    for row in idx:
        w = [words[i] for i in row]
        out.append(f"{w[0]} {w[1]}. " + "; ".join(f"{w[i]}: {w[i + 1]} {w[i + 2]}" for i in range(2, n_words - 2, 3)))
    return out


def build_encoder(assets: Path, folder: Path, layers: int | None = None) -> None:
    """A random-weight encoder of the packaged architecture, saved as a normal HF folder."""
    import torch
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    cfg = AutoConfig.from_pretrained(assets / "encoder")
    if layers is not None:
        cfg.num_hidden_layers = layers
    torch.manual_seed(0)
    AutoModel.from_config(cfg).save_pretrained(folder)
    AutoTokenizer.from_pretrained(assets / "encoder").save_pretrained(folder)
    if (assets / "encoder" / "1_Pooling").is_dir():
        shutil.copytree(assets / "encoder" / "1_Pooling", folder / "1_Pooling", dirs_exist_ok=True)


_TOK = None


def _init_tokenize(cfg: dict) -> None:
    global _TOK
    from hiea_ray.ops.embed import Tokenize

    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    _TOK = Tokenize(cfg)


def _tokenize(batch):
    return _TOK(batch)


def encoder_section(assets: Path, device: str, n: int, batch_sizes: list[int], workers: list[int], dry: bool) -> dict:
    import pyarrow as pa
    import torch

    from hiea_ray.config import EmbedConfig
    from hiea_ray.core.encoder import Encoder
    from hiea_ray.io import column_to_numpy
    from hiea_ray.ops.embed import Embedder, Tokenize, id_rows

    tmp = Path(tempfile.mkdtemp(prefix="gpu_smoke_enc_"))
    build_encoder(assets, tmp, layers=2 if dry else None)
    out: dict = {"architecture": "all-MiniLM-L6-v2 (random weights)" if not dry else "MiniLM, 2 layers (dry run)",
                 "max_length": 64, "texts": n}
    tok = Tokenize(EmbedConfig(model=str(tmp), max_length=64).__dict__).tokenizer
    texts = entity_texts(words_from(tok), n, 80)
    table = pa.table({"id": np.arange(n, dtype=np.int64), "kg": np.ones(n, np.int8), "name": [t.split(".")[0] for t in texts],
                      "text": texts})
    lens = [len(x) for x in tok(texts[:256], truncation=True, max_length=64)["input_ids"]]
    out["tokens_per_text_mean"] = float(np.mean(lens))

    t0 = time.perf_counter()
    for i in range(0, n, 2048):
        tok(texts[i : i + 2048], truncation=True, max_length=64)
    out["tokenizer_alone_texts_per_s"] = round(n / (time.perf_counter() - t0), 1)

    amp = "bf16" if device == "cuda" else "none"
    gpus = 1.0 if device == "cuda" else 0.0
    by_batch: dict = {}
    ids = None
    for bs in batch_sizes:
        cfg = EmbedConfig(model=str(tmp), max_length=64, batch_size=bs, amp=amp, gpus_per_actor=gpus, torch_threads=0).__dict__
        emb = Embedder(cfg)
        emb(table.slice(0, min(n, 2 * bs)))  # warm-up: kernels, allocator
        row: dict = {"precision": emb.encoder.precision}
        t0 = time.perf_counter()
        actor = emb(table)
        _sync(device)
        row["actor_texts_per_s"] = round(n / (time.perf_counter() - t0), 1)
        ids = _tokenize_all(cfg, table) if ids is None else ids
        emb_ids = Embedder(cfg, tokenized=True)  # the stage mode's actor: token ids in (data.model_chain)
        emb_ids(ids.slice(0, min(n, 2 * bs)))
        t0 = time.perf_counter()
        emb_ids(ids)
        _sync(device)
        row["forward_on_token_ids_texts_per_s"] = round(n / (time.perf_counter() - t0), 1)
        for w in workers:  # the stage mode, as Ray Data runs it: tokenize workers stream into the actor
            t0 = time.perf_counter()
            parts = []
            with cf.ProcessPoolExecutor(w, initializer=_init_tokenize, initargs=(cfg,)) as pool:
                # own blocks, as Ray Data's repartition makes them (a pickled slice carries its whole parent table)
                blocks = [table.slice(i, 2048).take(np.arange(min(2048, n - i))) for i in range(0, n, 2048)]
                list(pool.map(_tokenize, blocks[:w]))  # the workers' start (a tokenizer load each) is not counted
                t0 = time.perf_counter()
                for b in pool.map(_tokenize, blocks):
                    parts.append(emb_ids(b))
            _sync(device)
            row[f"stage_{w}_tokenize_workers_texts_per_s"] = round(n / (time.perf_counter() - t0), 1)
        stage = pa.concat_tables(parts)
        row["stage_vs_actor_max_abs_diff"] = float(np.abs(column_to_numpy(stage["embedding"])
                                                          - column_to_numpy(actor["embedding"])).max())
        by_batch[str(bs)] = row
        del emb
    out["by_batch"] = by_batch

    # cuda vs cpu: the same weights, float32 on both (no autocast), then bf16 autocast on the GPU
    sample = texts[:256]
    cpu = Encoder(str(tmp), max_length=64, device=torch.device("cpu"), amp="none", backend="torch").encode(sample, 64)
    dev = Encoder(str(tmp), max_length=64, device=torch.device(device), amp="none", backend="torch").encode(sample, 64)
    bf = Encoder(str(tmp), max_length=64, device=torch.device(device), amp="bf16", backend="torch").encode(sample, 64)
    out["cuda_vs_cpu_fp32_max_abs_diff"] = float(np.abs(cpu - dev).max())
    out["cuda_bf16_vs_cpu_fp32_max_abs_diff"] = float(np.abs(cpu - bf).max())
    out["cuda_bf16_vs_cpu_fp32_min_cosine"] = float((cpu * bf).sum(1).min())
    ray_row = "ray not installed: the Ray-free chain above"
    if _has("ray"):
        ray_row = ray_embed(tmp, table, device) if not dry else "skipped in --dry-run (tests cover the Ray chain)"
    out["ray_data"] = ray_row
    shutil.rmtree(tmp, ignore_errors=True)
    return out


def _tokenize_all(cfg: dict, table):
    import pyarrow as pa

    from hiea_ray.ops.embed import Tokenize

    t = Tokenize(cfg)
    return pa.concat_tables([t(table.slice(i, 2048)) for i in range(0, table.num_rows, 2048)])


def ray_embed(model: Path, table, device: str) -> dict:
    """The embed chain on Ray Data (one encoder actor holding the GPU), both tokenize modes."""
    import pyarrow.parquet as pq
    import ray

    from hiea_ray.config import EmbedConfig
    from hiea_ray.ops.embed import embed_dataset

    ray.init(num_cpus=os.cpu_count(), num_gpus=1 if device == "cuda" else 0, include_dashboard=False,
             log_to_driver=False, ignore_reinit_error=True)
    tmp = Path(tempfile.mkdtemp(prefix="gpu_smoke_ray_"))
    (tmp / "texts").mkdir()
    for i in range(0, table.num_rows, 8192):
        pq.write_table(table.slice(i, 8192), tmp / "texts" / f"{i:09d}.parquet")
    out = {}
    for mode in ("actor", "stage"):
        cfg = EmbedConfig(model=str(model), max_length=64, batch_size=1024, amp="bf16" if device == "cuda" else "none",
                          gpus_per_actor=1.0 if device == "cuda" else 0.0, cpus_per_actor=1.0, tokenize=mode,
                          tokenize_actors=max(1, (os.cpu_count() or 2) - 4), rows_per_batch=4096)
        t0 = time.perf_counter()
        embed_dataset(tmp / "texts", tmp / f"parts_{mode}", cfg)
        out[f"{mode}_texts_per_s"] = round(table.num_rows / (time.perf_counter() - t0), 1)
    ray.shutdown()
    shutil.rmtree(tmp, ignore_errors=True)
    return out


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def _sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def build_llm(assets: Path, arch: str, dtype, device: str, dry: bool):
    """(HieaLLM, tokenizer, prompts): a causal LM of the architecture, random weights in ``dtype``,
    built on ``device`` directly, with LoRA + adapter + score head attached as the project does."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from hiea_ray.core.llm import attach_hiea, load_tokenizer

    tok = load_tokenizer(str(assets / "llm"))
    cfg = AutoConfig.from_pretrained(assets / "llm")
    if arch == "7b":
        for k, v in LLAMA_7B.items():
            setattr(cfg, k, v)
        cfg.head_dim = cfg.hidden_size // cfg.num_attention_heads
    if dry:
        cfg.num_hidden_layers = 2
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(cfg, dtype=dtype)
    m, tok = attach_hiea(model, tok, None, None, 384, LLM_OPTS, trainable=True)
    return m.to(device), tok


def llm_prompts(tok, n: int, tokens: int, seed: int = 0):
    """n prompts of about ``tokens`` tokens (a source, 5 candidates with facts, none), the
    project's prompt builder and chat format; vectors, option counts and answers to go with them."""
    from hiea_ray.core.llm import PromptFormat
    from hiea_ray.core.prompt import EntityView, build_prompt

    rng = np.random.default_rng(seed)
    words = words_from(tok, 3000)
    fmt = PromptFormat(tok, 1, "slots")
    slots = LLM_OPTS["candidates"] + 1

    def view(i):
        w = [words[j] for j in rng.integers(0, len(words), 40)]
        return EntityView(i, f"{w[0]} {w[1]}", [f"{w[k]}: {w[k + 1]}" for k in range(2, 38, 2)])

    texts, vectors = [], []
    for i in range(n):
        p = build_prompt(view(0), [view(j) for j in range(1, slots)], fmt.count, tokens, rng, slot=fmt.slot, slot_last=True)
        texts.append(fmt.wrap(p.text))
        vectors.append(rng.standard_normal(slots * 384).astype(np.float32))
    return texts, vectors, [slots] * n, list(rng.integers(0, slots, n))


def _optimizer(model):
    import torch

    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=LLM_OPTS["lr"])
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)


def llm_equality_section(assets: Path, device: str, steps: int, dry: bool) -> dict:
    import torch

    from hiea_ray.core.llm import score, train_step

    model, tok = build_llm(assets, "135m", torch.float32, device, dry)
    texts, vecs, n_opt, ans = llm_prompts(tok, 32, 256)
    opt, sched = _optimizer(model)
    dev = torch.device(device)
    for s in range(steps):
        sl = slice((s * 8) % 32, (s * 8) % 32 + 8)
        train_step(model, tok, opt, sched, {"text": texts[sl], "vectors": vecs[sl], "n_options": n_opt[sl],
                                            "answer": ans[sl]}, LLM_OPTS, dev, None)
    on_dev = score(model, tok, texts, vecs, n_opt, 6, dev, 8)
    on_dev_amp = score(model, tok, texts, vecs, n_opt, 6, dev, 8, torch.bfloat16 if device == "cuda" else None)
    model.to("cpu")
    on_cpu = score(model, tok, texts, vecs, n_opt, 6, torch.device("cpu"), 8)
    model.lm.get_base_model().to(torch.bfloat16)  # bf16 base weights (llm.dtype auto on GPUs); LoRA etc. stay fp32
    for p in model.parameters():
        if p.requires_grad:
            p.data = p.data.float()
    model.to(device)
    bf = score(model, tok, texts, vecs, n_opt, 6, dev, 8, torch.bfloat16 if device == "cuda" else None)
    return {"architecture": "SmolLM2-135M (random weights), LoRA r16 + adapter + slot readout",
            "training_steps_on_device": steps, "prompts": len(texts),
            "fp32_device_vs_cpu_max_abs_diff_logp": float(np.abs(on_dev - on_cpu).max()),
            "bf16_autocast_vs_fp32_max_abs_diff_prob": float(np.abs(np.exp(on_dev_amp) - np.exp(on_cpu)).max()),
            "bf16_weights_vs_fp32_max_abs_diff_prob": float(np.abs(np.exp(bf) - np.exp(on_cpu)).max()),
            "bf16_weights_vs_fp32_argmax_agreement": float(np.mean(bf.argmax(1) == on_cpu.argmax(1)))}


def llm_section(assets: Path, device: str, archs: list[str], batches: list[int], dry: bool) -> dict:
    import torch

    from hiea_ray.core.llm import score, train_step

    dev = torch.device(device)
    amp = torch.bfloat16 if device == "cuda" else None
    out = {}
    for arch in archs:
        for name, dtype in (("float32", torch.float32), ("bfloat16", torch.bfloat16)):
            key = f"{arch}/{name}"
            try:
                if device == "cuda":
                    torch.cuda.empty_cache()
                    torch.cuda.reset_peak_memory_stats()
                t0 = time.perf_counter()
                model, tok = build_llm(assets, arch, dtype, device, dry)
                row = {"build_s": round(time.perf_counter() - t0, 1),"parameters_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 1),
                       "trainable_m": round(sum(p.numel() for p in model.parameters() if p.requires_grad) / 1e6, 2)}
                texts, vecs, n_opt, ans = llm_prompts(tok, 64, 256)
                row["prompt_tokens_mean"] = float(np.mean([len(tok(t, add_special_tokens=False)["input_ids"]) for t in texts]))
                opt, sched = _optimizer(model)
                times = []
                for s in range(2 + (2 if dry else 5)):
                    sl = slice(s * 8 % 64, s * 8 % 64 + 8)
                    _sync(device)
                    t0 = time.perf_counter()
                    train_step(model, tok, opt, sched, {"text": texts[sl], "vectors": vecs[sl], "n_options": n_opt[sl],
                                                        "answer": ans[sl]}, LLM_OPTS, dev, amp)
                    _sync(device)
                    times.append(time.perf_counter() - t0)
                row["train_step_s"] = round(float(np.median(times[2:])), 4)
                row["train_batch"] = "8 prompts x ~256 tokens, bf16 autocast" if amp is not None else "8 prompts x ~256 tokens"
                if device == "cuda":
                    row["train_peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
                del opt, sched
                model.zero_grad(set_to_none=True)
                sc = {}
                for b in batches:
                    n = min(64, max(16, 4 * b))
                    score(model, tok, texts[:b], vecs[:b], n_opt[:b], 6, dev, b, amp)  # warm-up
                    _sync(device)
                    t0 = time.perf_counter()
                    score(model, tok, texts[:n], vecs[:n], n_opt[:n], 6, dev, b, amp)
                    _sync(device)
                    sc[str(b)] = round(n / (time.perf_counter() - t0), 1)
                row["score_prompts_per_s_by_batch"] = sc
                if device == "cuda":
                    row["peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
                out[key] = row
                del model
            except Exception as e:  # noqa: BLE001 - one configuration failing (e.g. out of memory) is a result
                out[key] = {"error": f"{type(e).__name__}: {str(e)[:300]}"}
                model = None
            print(f"gpu_smoke: llm {key}: {json.dumps(out[key])}", flush=True)
    return out


def generate_section(assets: Path, device: str, batches: list[int], n: int, dry: bool) -> dict:
    """LLM verbalization through ``core.generate.generate`` (transformers): the SmolLM2
    architecture, bf16 on a GPU, greedy, 48 new tokens at most (a line break stops a row), prompts
    of a description's size; prompts/s and new tokens/s by batch (``verbalize.llm.batch_size_gen``)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from hiea_ray.core.generate import chat, generate

    tok = AutoTokenizer.from_pretrained(assets / "llm")
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    cfg = AutoConfig.from_pretrained(assets / "llm")
    if dry:
        cfg.num_hidden_layers = 2
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(cfg, dtype=dtype).eval()
    words = words_from(tok, 3000)
    prompts = [chat(tok, "Describe the entity in one sentence. " + t, "") for t in entity_texts(words, n, 60, seed=1)]
    out = {"architecture": "SmolLM2-135M (random weights)" + (" 2 layers (dry run)" if dry else ""), "dtype": str(dtype),
           "prompts": n, "max_new_tokens": 48,
           "prompt_tokens_mean": float(np.mean([len(tok(p, add_special_tokens=False)["input_ids"]) for p in prompts]))}
    for b in batches:
        generate(model, tok, prompts[:b], 48, b)  # warm-up
        _sync(device)
        t0 = time.perf_counter()
        _, counts, _ = generate(model, tok, prompts, 48, b)
        _sync(device)
        dt = time.perf_counter() - t0
        out[f"batch_{b}"] = {"prompts_per_s": round(n / dt, 1), "new_tokens_per_s": round(sum(counts) / dt, 1),
                             "new_tokens_mean": round(float(np.mean(counts)), 1)}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--assets", type=Path, help="configs + tokenizers made by --pack (default: the installed packages)")
    ap.add_argument("--pack", type=Path, help="write the assets folder and exit")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "gpu_smoke.json")
    ap.add_argument("--dry-run", action="store_true", help="every section on the CPU with tiny sizes (tests the script)")
    ap.add_argument("--texts", type=int, default=65536)
    ap.add_argument("--sections", default="encoder,llm_equality,llm,generate")
    ap.add_argument("--commit", help="the commit measured (default: git rev-parse HEAD of this checkout)")
    args = ap.parse_args(argv)
    if args.pack:
        pack(args.pack)
        return 0
    import torch

    if not torch.cuda.is_available() and not args.dry_run:
        print(f"gpu_smoke: no CUDA GPU here (torch {torch.__version__} sees none); nothing measured")
        return 1
    device = "cuda" if not args.dry_run else "cpu"
    assets = args.assets
    if assets is None:
        assets = Path(tempfile.mkdtemp(prefix="gpu_smoke_assets_"))
        pack(assets)
    import transformers

    commit = args.commit
    if commit is None:
        try:
            commit = os.popen(f"git -C {ROOT} rev-parse --short HEAD 2>/dev/null").read().strip() or None
            dirty = os.popen(f"git -C {ROOT} status --porcelain --untracked-files=no 2>/dev/null").read().strip()
            commit = f"{commit}+uncommitted changes" if commit and dirty else commit
        except OSError:
            commit = None
    meta = {"command": " ".join(["python benchmarks/gpu_smoke.py", *(sys.argv[1:] if argv is None else argv)]),
            "date": time.strftime("%Y-%m-%d"), "commit": commit,
            "device": torch.cuda.get_device_name(0) if device == "cuda" else f"cpu ({platform.processor() or platform.machine()})",
            "cpus": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "ray": _has("ray"), "faiss": _has("faiss"),
            "note": "random weights built from configs: speed and memory only"}
    res = Results(args.out, meta)
    t_all = time.perf_counter()
    dry = args.dry_run
    sections = args.sections.split(",")
    runs = {
        "encoder": lambda: encoder_section(assets, device, 2048 if dry else args.texts, [256] if dry else [512, 2048],
                                           [2] if dry else [4, 8, 14], dry),
        "llm_equality": lambda: llm_equality_section(assets, device, 3 if dry else 30, dry),
        "llm": lambda: llm_section(assets, device, ["135m"] if dry else ["135m", "7b"], [1, 4] if dry else [1, 4, 8, 16, 32], dry),
        "generate": lambda: generate_section(assets, device, [2] if dry else [16, 64], 4 if dry else 256, dry),
    }
    for name in sections:
        t0 = time.perf_counter()
        try:
            value = runs[name]()
        except Exception as e:  # noqa: BLE001 - recorded; the other sections still run
            traceback.print_exc()
            value = {"error": f"{type(e).__name__}: {str(e)[:500]}"}
        value["wall_s"] = round(time.perf_counter() - t0, 1)
        res.put(name, value)
    res.doc["wall_s"] = round(time.perf_counter() - t_all, 1)
    res.save()
    print(f"gpu_smoke: wrote {args.out} in {res.doc['wall_s']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
