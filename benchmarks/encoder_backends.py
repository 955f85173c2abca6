"""Encoder inference backends on CPU: speed against plain sentence-transformers, and what they do
to zero-shot DBP15K accuracy.

    .venv/bin/python benchmarks/encoder_backends.py --pairs zh_en --models default \\
        --backends torch torch-int8 onnx onnx-int8
    .venv/bin/python benchmarks/encoder_backends.py --pairs zh_en fr_en --models default all-mpnet-base-v2 \\
        --backends onnx-int8

Per model, once: (a) speed, in this process on --threads cores: the same --speed-texts template
texts of zh_en (a seeded sample of the run's verbalize output) encoded by sentence-transformers'
``SentenceTransformer.encode`` (the plain baseline) and by ``hiea_ray.core.encoder.Encoder`` with
each backend (batch 64, max 128 tokens), texts/s and the cosine of each vector to the baseline's.
Per pair, model and backend: (b) accuracy, `hiea-ray align` with benchmarks/configs/dbp15k-template.yaml
and ``embed.backend`` / ``embed.model`` set, decoders top1, csls, sinkhorn and structure, standard
protocol; the embed stage's own throughput from its manifest (Ray Data, the whole pair).
Writes benchmarks/results/encoder_backends.json after every measurement.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import load_result  # noqa: E402
from hiea_ray.cli import main as cli  # noqa: E402

DATA = ROOT.parent / "shared" / "datasets" / "DBP15K"
CONFIG = ROOT / "benchmarks" / "configs" / "dbp15k-template.yaml"
DECODERS = "decode.decoders=[top1,csls,sinkhorn,structure]"


def speed(model: str, backends: list[str], texts: list[str], threads: int) -> dict:
    import numpy as np
    import torch
    from sentence_transformers import SentenceTransformer

    from hiea_ray.core.encoder import Encoder, resolve_model, set_threads

    set_threads(threads)
    path = resolve_model(model)
    out = {}
    st = SentenceTransformer(path, device="cpu")
    st.max_seq_length = 128
    st.encode(texts[:64], batch_size=64)  # warm-up
    t0 = time.perf_counter()
    ref = st.encode(texts, batch_size=64, normalize_embeddings=True, convert_to_numpy=True)
    dt = time.perf_counter() - t0
    out["sentence-transformers"] = {"texts_per_s": round(len(texts) / dt, 1), "speedup": 1.0}
    print(model, "sentence-transformers", out["sentence-transformers"], flush=True)
    base = len(texts) / dt
    del st
    for b in backends:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            t0 = time.perf_counter()
            enc = Encoder(model, max_length=128, backend=b, threads=threads)
            load_s = time.perf_counter() - t0
            enc.encode(texts[:64], 64)
        t0 = time.perf_counter()
        v = enc.encode(texts, 64)
        dt = time.perf_counter() - t0
        cos = (v * ref).sum(1)
        out[b] = {"texts_per_s": round(len(texts) / dt, 1), "speedup": round(len(texts) / dt / base, 2),
                  "cos_to_plain_mean": round(float(cos.mean()), 5), "cos_to_plain_min": round(float(cos.min()), 5),
                  "load_s": round(load_s, 1)}
        print(model, b, out[b], flush=True)
        del enc
        torch.set_num_threads(threads)
    assert np.isfinite(ref).all()
    return out


def rerank_speed(texts: list[str], threads: int, group: int = 10) -> dict:
    """The reranker's cross-encoder (the packaged MiniLM with a fresh seeded head, as rerank.model
    default starts) scoring (source, candidate) pairs in groups of ``group`` candidates, fp32 against
    bf16 autocast on CPU: pairs/s, the largest logit difference, and how often the best candidate
    of a group is the same."""
    import numpy as np
    import torch

    from hiea_ray.core.cross_encoder import load_reranker, score_pairs
    from hiea_ray.core.encoder import set_threads

    set_threads(threads)
    torch.manual_seed(0)
    model, tok = load_reranker("default")
    n = len(texts) // (group + 1)
    src = [texts[i] for i in range(n) for _ in range(group)]
    cand = [texts[n + i * group + j] for i in range(n) for j in range(group)]
    out = {}
    for name, dt in (("torch", None), ("torch-bf16", torch.bfloat16)):
        score_pairs(model, tok, src[:64], cand[:64], 128, torch.device("cpu"), 64, dt)
        t0 = time.perf_counter()
        out[name] = score_pairs(model, tok, src, cand, 128, torch.device("cpu"), 64, dt)
        out[f"{name}_pairs_per_s"] = round(len(src) / (time.perf_counter() - t0), 1)
    a, b = out.pop("torch"), out.pop("torch-bf16")
    out.update(pairs=len(src), speedup=round(out["torch-bf16_pairs_per_s"] / out["torch_pairs_per_s"], 2),
               max_abs_logit_diff=round(float(np.abs(a - b).max()), 4), logit_range=round(float(a.max() - a.min()), 3),
               same_best_candidate=round(float(np.mean(a.reshape(n, group).argmax(1) == b.reshape(n, group).argmax(1))), 4))
    print("rerank", out, flush=True)
    return out


def sample_texts(pair: str, n: int, seed: int = 0) -> list[str]:
    import pyarrow.parquet as pq

    run = ROOT / "runs" / f"{pair}-template"
    if cli(["align", "--data", str(DATA / pair), "--out", str(run), "--config", str(CONFIG), "--until", "verbalize",
            "-q"]):
        raise SystemExit("verbalize failed")
    texts = pq.read_table(run / "verbalize" / "texts", columns=["text"])["text"].to_pylist()
    random.Random(seed).shuffle(texts)
    return texts[:n]


def accuracy(pair: str, model: str, backend: str) -> dict:
    tag = "minilm" if model == "default" else model
    run = ROOT / "runs" / f"{pair}-template-{tag}-{backend}"
    t0 = time.time()
    rc = cli(["align", "--data", str(DATA / pair), "--out", str(run), "--config", str(CONFIG), "-q",
              "--set", f"embed.backend={backend}", "--set", f"embed.model={model}", "--set", DECODERS])
    if rc:
        raise SystemExit(f"align {pair} {model} {backend} failed ({rc})")
    metrics = json.loads((run / "metrics.json").read_text())["all_protocols"]["metrics"]["standard"]
    embed = json.loads((run / "embed" / "manifest.json").read_text())
    return {"hits@1": {d: round(m["hits@1"], 4) for d, m in metrics.items()},
            "mrr": {d: round(m["mrr"], 4) for d, m in metrics.items()},
            "embed_wall_s": embed["wall_s"], "embed_rows_per_s": embed["stats"]["rows_per_s"],
            "run_wall_s": round(time.time() - t0, 1), "run": str(run.relative_to(ROOT))}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", nargs="+", default=["zh_en"])
    ap.add_argument("--models", nargs="*", default=["default"])
    ap.add_argument("--backends", nargs="+", default=["torch", "torch-bf16", "torch-int8", "onnx", "onnx-int8"])
    ap.add_argument("--speed-texts", type=int, default=2000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-speed", action="store_true")
    ap.add_argument("--no-accuracy", action="store_true")
    ap.add_argument("--rerank", action="store_true", help="also the reranker's cross-encoder, fp32 vs bf16")
    ap.add_argument("--result", default=str(ROOT / "benchmarks" / "results" / "encoder_backends.json"))
    args = ap.parse_args(argv)
    result, res = load_result(args.result, "speed", "accuracy")

    def save():
        result.write_text(json.dumps(res, indent=2, sort_keys=True))

    if not args.no_speed:
        texts = sample_texts("zh_en", args.speed_texts)
        for model in args.models:
            got = speed(model, args.backends, texts, args.threads)
            res["speed"].setdefault(model, {}).update(got)
            res["speed_setup"] = {"texts": len(texts), "source": "DBP15K zh_en template texts (seeded sample)",
                                  "threads": args.threads, "batch_size": 64, "max_length": 128}
            save()
        if args.rerank:
            res["rerank_speed"] = rerank_speed(texts, args.threads)
            save()
    if not args.no_accuracy:
        for pair in args.pairs:
            for model in args.models:
                for b in args.backends:
                    got = accuracy(pair, model, b)
                    res["accuracy"].setdefault(pair, {}).setdefault(model, {})[b] = got
                    print(pair, model, b, json.dumps(got), flush=True)
                    save()
    save()
    return 0


if __name__ == "__main__":
    sys.exit(main())
