"""DBP15K, the whole chain, as DERA's Table 5: retrieval -> + reranking -> + OT / structure decoding.

    .venv/bin/python benchmarks/dbp15k_full.py --pair zh_en --run runs/zh_en-full [--set key=value ...]

Runs `hiea-ray align --config benchmarks/configs/dbp15k-full.yaml` on
../shared/datasets/DBP15K/<pair> into --run (stages reused when unchanged), then re-decodes the
same run three ways, which only re-runs decode + evaluate:

    retrieval only      rerank.enabled=false   (the retriever's top-k lists, cosine)
    reranker only       decode.fusion_weight=1 (the cross-encoder's logits on the reranked top-k)
    fused               the config's fusion weight

Each row reports Hits@1/10/MRR per decoder (top1 = the list's own order, csls, sinkhorn, structure).
The run is left decoded with the config as given. Writes benchmarks/results/dbp15k_full_<pair>.json
with the rerank stage's throughput and the per-stage wall times.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hiea_ray.cli import main as cli  # noqa: E402

DATA = ROOT.parent / "shared" / "datasets" / "DBP15K"


def _manifest_stats(run: Path) -> dict:
    out = {}
    for m in sorted(run.glob("*/manifest.json")):
        d = json.loads(m.read_text())
        out[m.parent.name] = {"wall_s": d.get("wall_s"), **{k: v for k, v in (d.get("stats") or {}).items()
                                                         if k in ("rows", "rows_per_s", "pairs", "pairs_per_s", "best", "retriever_valid")}}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pair", required=True)
    ap.add_argument("--run", required=True)
    ap.add_argument("--data", default=str(DATA))
    ap.add_argument("--config", default=str(ROOT / "benchmarks" / "configs" / "dbp15k-full.yaml"))
    ap.add_argument("--set", action="append", default=[], dest="overrides")
    args = ap.parse_args(argv)
    run = Path(args.run)
    base = ["align", "--data", f"{args.data}/{args.pair}", "--out", str(run), "--config", args.config, "-q"]
    for o in args.overrides:
        base += ["--set", o]
    rc = cli(base)  # the full run (train, embed, retrieve, rerank_train, rerank, decode, evaluate)
    if rc:
        return rc
    stages = _manifest_stats(run)
    from hiea_ray.config import load_config

    cfg = load_config(args.config, args.overrides)
    rows = {}
    for name, extra in (
        ("retrieval only", ["rerank.enabled=false"]),
        ("reranker only", ["decode.fusion_weight=1.0"]),
        (f"fused (w={cfg.decode.fusion_weight})", []),
    ):
        sets = [x for e in extra for x in ("--set", e)]
        rc = cli(base + sets)
        if rc:
            return rc
        m = json.loads((run / "metrics.json").read_text())
        rows[name] = {d: {k: m[d][k] for k in ("hits@1", "hits@10", "mrr", "f1")} for d in cfg.decode.decoders}
    out = ROOT / "benchmarks" / "results" / f"dbp15k_full_{args.pair}.json"
    cmd = "benchmarks/dbp15k_full.py " + " ".join(sys.argv[1:] if argv is None else argv)
    out.write_text(json.dumps({"command": cmd, "config": args.config, "overrides": args.overrides,
                               "protocol": cfg.evaluate.protocols[0], "rows": rows, "stages": stages}, indent=2))
    print(f"\n{args.pair} ({cfg.evaluate.protocols[0]} protocol), Hits@1 / Hits@10 / MRR")
    print("| scores | " + " | ".join(cfg.decode.decoders) + " |\n|---|" + "---|" * len(cfg.decode.decoders))
    for name, r in rows.items():
        print(f"| {name} | " + " | ".join(f"{r[d]['hits@1']:.3f} / {r[d]['hits@10']:.3f} / {r[d]['mrr']:.3f}" for d in r) + " |")
    rr = stages.get("rerank", {})
    print(f"\nrerank: {rr.get('pairs')} pairs in {rr.get('wall_s')} s = {rr.get('pairs_per_s')} pairs/s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
