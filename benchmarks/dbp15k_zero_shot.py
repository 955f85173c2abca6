"""DBP15K zero-shot: Hits@1/10/MRR per decoder for names-only text and template verbalization.

    .venv/bin/python benchmarks/dbp15k_zero_shot.py [--pairs zh_en fr_en] [--variants names template]

Runs `hiea-ray align` (the same Pipeline) per pair and variant with the configs in
benchmarks/configs/dbp15k-<variant>.yaml, on ../shared/datasets/DBP15K/<pair>. Run folders go to
runs/<pair>-<variant> (reused when unchanged). Writes benchmarks/results/dbp15k_zero_shot.json
(metrics + per-stage wall time and throughput from the manifests) and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hiea_ray.cli import main  # noqa: E402

DATA = ROOT.parent / "shared" / "datasets" / "DBP15K"


def stage_stats(run: Path) -> dict:
    out = {}
    for st in ("ingest", "verbalize", "embed", "retrieve", "decode", "evaluate"):
        m = json.loads((run / st / "manifest.json").read_text())
        out[st] = {"wall_s": m["wall_s"], **{k: v for k, v in m["stats"].items() if k in ("rows", "rows_per_s")}}
    return out


def main_(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", nargs="+", default=["zh_en", "fr_en"])
    ap.add_argument("--variants", nargs="+", default=["names", "template"])
    ap.add_argument("--data", default=str(DATA))
    ap.add_argument("--result", default=str(ROOT / "benchmarks" / "results" / "dbp15k_zero_shot.json"))
    args = ap.parse_args(argv)
    results = json.loads(Path(args.result).read_text()) if Path(args.result).is_file() else {}
    for pair in args.pairs:
        for variant in args.variants:
            run = ROOT / "runs" / f"{pair}-{variant}"
            cfg = ROOT / "benchmarks" / "configs" / f"dbp15k-{variant}.yaml"
            rc = main(["align", "--data", f"{args.data}/{pair}", "--out", str(run), "--config", str(cfg), "-q"])
            if rc:
                return rc
            metrics = json.loads((run / "metrics.json").read_text())["all_protocols"]["metrics"]
            results[f"{pair}/{variant}"] = {"config": str(cfg.relative_to(ROOT)), "metrics": metrics, "stages": stage_stats(run)}
            Path(args.result).parent.mkdir(parents=True, exist_ok=True)
            Path(args.result).write_text(json.dumps(results, indent=2, sort_keys=True))
    print("\n| pair | text | protocol | decoder | Hits@1 | Hits@10 | MRR | F1 (1-to-1) |\n|---|---|---|---|---|---|---|---|")
    for key, r in sorted(results.items()):
        pair, variant = key.split("/")
        for protocol, decs in r["metrics"].items():
            for dec, m in decs.items():
                print(f"| {pair} | {variant} | {protocol} | {dec} | {m['hits@1']:.3f} | {m['hits@10']:.3f} | {m['mrr']:.3f} | {m['f1']:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main_())
