"""What batching can give the LLM tier on this machine: one forward pass of the default LLM
(SmolLM2-135M-Instruct + LoRA, the tier's readout) over B prompts of T tokens, fp32 and bf16
autocast, prompts/s against B = 1. The ceiling of any batching (Ray Serve's ``@serve.batch``, the
``llm`` stage's ``infer_batch_size``): on a CPU the pass is compute-bound, so a batch of B costs
nearly B prompts; on a GPU one pass of B prompts costs about one.

    .venv/bin/python benchmarks/llm_batching.py [--tokens 256] [--batches 1,2,4,8,16,32]

Writes benchmarks/results/llm_batching.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--batches", default="1,2,4,8,16,32")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=8.0, help="time measured per setting (after one warm-up pass)")
    args = ap.parse_args(argv)
    import torch

    from hiea_ray.core.encoder import cpu_has_bf16
    from hiea_ray.core.llm import load_hiea_llm, option_logits, resolve_llm

    torch.set_num_threads(args.threads)
    opts = {"lora_r": 8, "lora_alpha": 16, "lora_dropout": 0.0, "lora_targets": ["q_proj", "k_proj", "v_proj", "o_proj"],
            "adapter_tokens": 0, "candidates": 5}
    model, tok = load_hiea_llm(resolve_llm("default"), None, 384, opts, trainable=False)
    model.eval()
    gen = torch.Generator().manual_seed(0)
    rows = []
    for dtype in (None, torch.bfloat16):
        base = None
        for b in [int(x) for x in args.batches.split(",")]:
            ids = torch.randint(100, 40000, (b, args.tokens), generator=gen)
            mask = torch.ones_like(ids)
            with torch.no_grad(), torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
                option_logits(model.lm, mask, model.option_ids, input_ids=ids)  # warm-up
                n, t0 = 0, time.perf_counter()
                while time.perf_counter() - t0 < args.seconds or n < 2:
                    option_logits(model.lm, mask, model.option_ids, input_ids=ids)
                    n += 1
                dt = (time.perf_counter() - t0) / n
            pps = b / dt
            base = base or pps
            row = {"dtype": "bf16" if dtype else "fp32", "batch": b, "s_per_pass": round(dt, 4),
                   "prompts_per_s": round(pps, 2), "speedup_vs_batch_1": round(pps / base, 2)}
            rows.append(row)
            print(json.dumps(row), flush=True)
    res = {"model": "SmolLM2-135M-Instruct + LoRA r8 (untrained: speed only)", "tokens": args.tokens,
           "threads": args.threads, "cpu_native_bf16": cpu_has_bf16(), "rows": rows,
           "best_speedup": {d: max(r["speedup_vs_batch_1"] for r in rows if r["dtype"] == d) for d in ("fp32", "bf16")}}
    out = ROOT / "benchmarks" / "results" / "llm_batching.json"
    out.write_text(json.dumps(res, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
