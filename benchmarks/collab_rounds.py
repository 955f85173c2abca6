"""Collaboration rounds on DBP15K: Hits@1 per round when the router's certain answers become
pseudo-seeds (``collab.rounds``; issue 31).

    .venv/bin/python benchmarks/collab_rounds.py --pairs zh_en fr_en [--rounds 3] [--set collab.pseudo_seeds=mutual]

Per pair: ``hiea-ray align --config benchmarks/configs/dbp15k-collab.yaml`` into runs/collab/<pair>
(``--tag`` names a variant: runs/collab/<pair>-<tag>; round 1 does not depend on it). Round 1 is the run of dbp15k-retriever.yaml
+ route.enabled=true: when runs/precision/<pair> (benchmarks/export_precision.py) has it, its
finished stages are linked in and reused (same keys), so only rounds 2.. run. Every round is
resumable: a killed benchmark continues where it stopped. Reads RUN/collab.json: per round the
pseudo-seed count and their precision on the test links (information only: they are chosen without
labels), Hits@1 / MRR per decoder, the round's stage time. Writes benchmarks/results/collab_rounds.json
(after every pair) and collab_rounds.png (Hits@1 per round per pair and decoder).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
CONFIG = ROOT / "benchmarks" / "configs" / "dbp15k-collab.yaml"
ROUND1 = ("ingest", "verbalize", "train", "embed", "retrieve", "decode", "calibrate", "route", "export", "evaluate")


def seed_round_one(run: Path, src: Path) -> list[str]:
    """Links the finished stages of the plain routed run into the collab run (the runner reuses
    them only when their keys match, i.e. the config is the same)."""
    from hiea_ray.collab import link_tree

    linked = []
    for name in ROUND1:
        if (src / name / "manifest.json").is_file() and not (run / name).exists():
            run.mkdir(parents=True, exist_ok=True)
            link_tree(src / name, run / name)
            linked.append(name)
    return linked


def plot(doc: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pairs = list(doc["pairs"])
    fig, axes = plt.subplots(1, max(1, len(pairs)), figsize=(8 * max(1, len(pairs)), 4.2), squeeze=False)
    for ax, pair in zip(axes[0], pairs):
        rounds = doc["pairs"][pair]["rounds"]
        xs = [r["round"] for r in rounds]
        protocols = [p for p in ("standard", "all-targets") if p in rounds[0]["metrics"]] or list(rounds[0]["metrics"])
        colors = {}
        for protocol, style in zip(protocols, ("-", "--", ":")):
            for dec in rounds[0]["metrics"][protocol]:
                line, = ax.plot(xs, [r["metrics"][protocol][dec]["hits@1"] for r in rounds], style, marker="o",
                                color=colors.get(dec), label=f"{dec} ({protocol})")
                colors[dec] = line.get_color()
        labels = [f"{r['round']}" + ("" if not r["pseudo_seeds"] else
                  f"\n{r['pseudo_seeds']['pseudo_seeds']:,} pseudo-seeds\nP {r['pseudo_seeds']['precision_on_test']} on test")
                  for r in rounds]
        ax.set(title=f"DBP15K {pair}", xlabel="round", ylabel="Hits@1 (test links)", xticks=xs)
        ax.set_xticklabels(labels, fontsize=8)
        ax.set_xlim(xs[0] - 0.3, xs[-1] + 0.3)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", nargs="+", default=["zh_en", "fr_en"])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--set", action="append", default=[], help="config overrides (section.field=value)")
    ap.add_argument("--tag", default="", help="names a variant's run folders and result key")
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "datasets" / "DBP15K"))
    ap.add_argument("--plot-only", action="store_true")
    args = ap.parse_args(argv)
    out = ROOT / "benchmarks" / "results" / "collab_rounds.json"
    doc = json.loads(out.read_text()) if out.is_file() else {"config": str(CONFIG.relative_to(ROOT)), "pairs": {}}
    exe = Path(sys.executable).with_name("hiea-ray")
    for pair in [] if args.plot_only else args.pairs:
        key = f"{pair}-{args.tag}" if args.tag else pair
        run = ROOT / "runs" / "collab" / key
        linked = seed_round_one(run, ROOT / "runs" / "precision" / pair)
        sets = [f"collab.rounds={args.rounds}", *args.set]
        cmd = [str(exe), "align", "--data", f"{args.data}/{pair}", "--out", str(run), "--config", str(CONFIG)]
        cmd += [x for s in sets for x in ("--set", s)]
        print(" ".join(cmd), flush=True)
        t0 = time.time()
        rc = subprocess.run(cmd).returncode
        if rc:
            print(f"{pair}: align failed (rc {rc})", file=sys.stderr)
            return rc
        summary = json.loads((run / "collab.json").read_text())
        doc["pairs"][key] = {"run": str(run.relative_to(ROOT)), "overrides": sets, "round1_linked_from_runs_precision": linked,
                             "wall_s_this_call": round(time.time() - t0, 1), "date": time.strftime("%Y-%m-%d"),
                             "rounds": [{k: v for k, v in r.items() if k != "folder"} for r in summary["rounds"]]}
        for r in summary["rounds"]:
            m = r["metrics"][next(iter(r["metrics"]))]
            ps = r["pseudo_seeds"] or {}
            print(f"{key} round {r['round']}: " + ", ".join(f"{d} {v['hits@1']:.4f}" for d, v in m.items())
                  + f"; pseudo-seeds {ps.get('pseudo_seeds')} (P {ps.get('precision_on_test')}); {r['stage_wall_s'] / 60:.1f} min",
                  flush=True)
        out.write_text(json.dumps(doc, indent=1) + "\n")
    if doc["pairs"]:
        plot(doc, out.with_suffix(".png"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
