"""Texts/s of one tokenize worker: the tokenizer's ``__call__`` (Python lists of every field) against
``core.encoder.token_ids`` (the Rust backend's ``encode_batch`` on texts cut before a character
budget), the same ids checked, on a run's verbalized texts.

    .venv/bin/python benchmarks/tokenize_speed.py --run runs/seed_facts/zh_en-on --n 20000

Alternates the two ``--repeats`` times per max_length (the machine is noisy: the ratio of the
medians is the figure); writes benchmarks/results/tokenize_speed.json (command, commit, date, machine).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import provenance  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", required=True, help="a run folder with verbalize/texts")
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--max-lengths", type=int, nargs="+", default=[128, 64])
    args = ap.parse_args(argv)
    from hiea_ray.core.encoder import load_tokenizer, resolve_model, token_ids
    from hiea_ray.io import read_dir

    texts = read_dir(Path(args.run) / "verbalize" / "texts").sort_by("id")["text"].to_pylist()[: args.n]
    tok = load_tokenizer(resolve_model("default"))
    doc = {**provenance(), "texts": len(texts), "tokenizer": "all-MiniLM-L6-v2 (fast, WordPiece)", "rows": []}
    for ml in args.max_lengths:
        a_s, b_s = [], []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            a = tok(texts, truncation=True, max_length=ml, padding=False)["input_ids"]
            a_s.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            b = token_ids(tok, texts, ml)
            b_s.append(time.perf_counter() - t0)
            if a != b:
                print(f"max_length {ml}: token_ids differ from the tokenizer's own", file=sys.stderr)
                return 1
        call, fast = len(texts) / statistics.median(a_s), len(texts) / statistics.median(b_s)
        doc["rows"].append({"max_length": ml, "call_texts_per_s": round(call), "token_ids_texts_per_s": round(fast),
                            "speedup": round(fast / call, 2), "same_ids": True})
        print(doc["rows"][-1], flush=True)
    (ROOT / "benchmarks" / "results" / "tokenize_speed.json").write_text(json.dumps(doc, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
