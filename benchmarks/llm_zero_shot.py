"""What the LLM tier's model does before any training: SmolLM2-135M-Instruct, one forward pass per
source, reading the option letters of the HIEA prompt, on the validation sources of a finished run.

    .venv/bin/python benchmarks/llm_zero_shot.py --run runs/zh_en-template [--n 200 --k 5 --budget 320]

The sources are the run's *validation* links (never test links), ranked by the run's all-targets
Sinkhorn lists (every KG1 entity against every KG2 entity, made exactly as the test sources'
lists). Each prompt shows the source and its top-k candidates in a seeded random order plus "none
of these", names and facts within the token budget, the train links as bridges. Reports the
LLM's Hits@1 (its arg-max option), the small model's Hits@1 on the same sources, how often the
gold is among the k, prompt tokens and forward passes per second on this machine. Writes
benchmarks/results/llm_zero_shot_<run name>.json (and 20 example prompts beside the run, not in
the repo: they show dataset content). A baseline for the LoRA + adapter training of
the HIEA tier, not a result of it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import pyarrow.compute as pc  # noqa: E402
import torch  # noqa: E402

from hiea_ray.core.llm import option_logprobs, resolve_llm  # noqa: E402
from hiea_ray.core.prompt import LETTERS, Neighbourhoods, build_prompt  # noqa: E402
from hiea_ray.core.verbalize import relation_label  # noqa: E402
from hiea_ray.io import read_lists  # noqa: E402
from hiea_ray.kg.model import KGPair  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", required=True)
    ap.add_argument("--n", type=int, default=200, help="validation sources")
    ap.add_argument("--k", type=int, default=5, help="candidates per prompt")
    ap.add_argument("--budget", type=int, default=320, help="prompt tokens")
    ap.add_argument("--model", default="default")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    run = Path(args.run)
    pair = KGPair.read(run / "ingest")
    q, cand, _ = read_lists(run / "decode" / "all-targets" / "sinkhorn.parquet")
    valid = pair.links_of("valid")
    rng = np.random.default_rng(args.seed)
    pick = np.sort(rng.choice(valid.num_rows, min(args.n, valid.num_rows), replace=False))
    src, gold = valid["src"].to_numpy()[pick], valid["tgt"].to_numpy()[pick]
    rows = np.searchsorted(q, src)
    assert np.array_equal(q[rows], src), "the run has no all-targets lists for the validation sources"
    top = cand[rows, : args.k]

    ent = pair.entities
    train = pair.links_of("train")
    names = dict(zip(ent["id"].to_pylist(), ent["name"].to_pylist()))
    bridges = {s: names[t] for s, t in zip(train["src"].to_pylist(), train["tgt"].to_pylist())}
    bridges.update({t: names[s] for s, t in zip(train["src"].to_pylist(), train["tgt"].to_pylist())})
    rel = pair.rel_triples
    nb = Neighbourhoods(ent["id"].to_numpy(), ent["name"].to_pylist(), rel["head"].to_numpy(), rel["relation"].to_pylist(),
                        rel["tail"].to_numpy(), counterpart=bridges)

    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = resolve_llm(args.model)
    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    tok.padding_side = "left"
    wrap = (lambda body: tok.apply_chat_template([{"role": "user", "content": body}], add_generation_prompt=True,
                                                 tokenize=False)) if tok.chat_template else (lambda body: body)
    overhead = len(tok(wrap(""), add_special_tokens=False)["input_ids"])

    def count(text: str) -> int:
        return len(tok(text, add_special_tokens=False)["input_ids"]) + overhead

    letters = [tok.encode(c, add_special_tokens=False) for c in LETTERS[: args.k + 1]]
    letters = [x[0] for x in letters]  # after the chat template's "assistant\n" the answer starts bare
    prompts, answers = [], []
    for i, (s, c, g) in enumerate(zip(src, top, gold)):
        views = [nb.view(int(x), relation_label) for x in c if x >= 0]
        p = build_prompt(nb.view(int(s), relation_label), views, count, args.budget, np.random.default_rng(args.seed + i),
                         gold=int(g))
        prompts.append(wrap(p.text))
        answers.append(p.answer)
    n_opt = args.k + 1
    t0 = time.time()
    picks, tokens = [], []
    with torch.inference_mode():
        for b in range(0, len(prompts), args.batch):
            enc = tok(prompts[b : b + args.batch], return_tensors="pt", padding=True, add_special_tokens=False)
            tokens += enc["attention_mask"].sum(1).tolist()
            logp = option_logprobs(model, enc["input_ids"], enc["attention_mask"], letters[:n_opt])
            picks += logp.argmax(1).tolist()
    wall = time.time() - t0
    answers = np.array(answers)
    picks = np.array(picks)
    res = {
        "run": str(run), "model": args.model, "sources": len(src), "k": args.k, "budget": args.budget,
        "gold_in_top_k": round(float((top == gold[:, None]).any(1).mean()), 4),
        "small_model_hits@1": round(float((top[:, 0] == gold).mean()), 4),
        # right = it picked the gold's letter (a gold outside the top k is a miss, as for the small model)
        "llm_hits@1": round(float(np.mean((picks == answers) & (answers < args.k))), 4),
        "llm_picked_none": round(float(np.mean(picks == args.k)), 4),
        "llm_option_histogram": np.bincount(picks, minlength=n_opt).tolist(),
        "prompt_tokens_mean": round(float(np.mean(tokens)), 1), "prompt_tokens_max": int(np.max(tokens)),
        "forward_passes_per_s": round(len(src) / wall, 2), "threads": args.threads,
    }
    out = ROOT / "benchmarks" / "results" / f"llm_zero_shot_{run.name}.json"
    out.write_text(json.dumps(res, indent=2))
    # the prompts show dataset content: they stay beside the run, never in the repo
    (run / "llm_zero_shot_prompts.txt").write_text("\n\n".join(prompts[:20]))
    print(json.dumps(res, indent=2))
    print(f"wrote {out} (example prompts: {run / 'llm_zero_shot_prompts.txt'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
