"""The user's seed links as facts (``decode.seeds_as_facts``): DBP15K pairs aligned on the
all-targets protocol (every KG1 entity against every KG2 entity, as a label-free run aligns),
with the switch on and off.

    .venv/bin/python benchmarks/seed_facts.py [--pairs zh_en fr_en] [--target 0.95]
    .venv/bin/python benchmarks/seed_facts.py --runs runs/haystack --only zh_en-100000-trained-on-pair \
        --data runs/haystack/data/zh_en-100000 --config benchmarks/configs/haystack.yaml --set train.enabled=true

Per pair: ``hiea-ray align`` with benchmarks/configs/dbp15k-template.yaml (zero-shot, as the
issue's trial) + all-targets + the four decoders into runs/seed_facts/<pair>-on; the same stages
up to retrieve hard-linked into <pair>-off and aligned again with ``decode.seeds_as_facts=false``
(``--only RUN``: an existing run folder instead, its -off copy made beside it). Per switch and
decoder: Hits@1 / MRR of the test links (metrics.json), the export at ``--target`` precision
(measured P / R / F1 on the test links, estimated precision), the seed links in the output (present
as given, contradicted) and the predictions that contradicted a seed before the export dropped them.
Writes benchmarks/results/seed_facts.json (command, commit, date, machine).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import provenance  # noqa: E402

DECODERS = ("top1", "csls", "sinkhorn", "structure")
SHARED = ("ingest", "verbalize", "train", "embed", "retrieve")


def hardlink_stages(src: Path, dst: Path) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    for name in SHARED:
        if (src / name).is_dir() and not (dst / name).exists():
            shutil.copytree(src / name, dst / name, copy_function=os.link)


def score(run: Path, target: float) -> dict:
    import numpy as np

    from hiea_ray.api import open_run
    from hiea_ray.kg.model import KGPair

    done = open_run(run)
    pair = KGPair.read(run / "ingest")
    links = pair.links
    split = np.array(links["split"].to_pylist())
    seed = np.isin(split, ["train", "valid"])
    given = dict(zip(links["src"].to_numpy()[seed].tolist(), links["tgt"].to_numpy()[seed].tolist()))
    taken = set(given.values())
    metrics = json.loads((run / "metrics.json").read_text())["all_protocols"]["metrics"]["all-targets"]
    import pyarrow.compute as pc

    from hiea_ray.core.metrics import matching_metrics

    ents = pair.entities  # a haystack's KG1 distractors have no counterpart: a link from one is wrong
    dangling = ents.filter(pc.and_(pc.equal(ents["kg"], 1), pc.starts_with(ents["uri"], "http://haystack.invalid/")))
    dangling = dangling["id"].to_numpy()
    test = pair.links_of("test")
    out = {}
    for d in DECODERS:
        t, _, s = done.export(decoder=d, protocol="all-targets", target_precision=target)
        src, tgt = t["src"].to_pylist(), t["tgt"].to_pylist()
        pairs = set(zip(src, tgt))
        out[d] = {
            "hits@1": metrics[d]["hits@1"], "mrr": metrics[d]["mrr"],
            "export": {k: s["measured"][k] for k in ("precision", "recall", "f1", "predicted", "correct")},
            "estimated_precision": s["estimated_precision"], "threshold": s["threshold"], "links": s["links"],
            "seed_links": len(given), "seed_links_present_as_given": sum((a, b) in pairs for a, b in given.items()),
            "links_contradicting_a_seed": sum((a in given and given[a] != b) or (a not in given and b in taken)
                                              for a, b in zip(src, tgt)),
            "predictions_contradicting_a_seed_dropped": s["predictions_contradicting_a_seed_dropped"],
        }
        if len(dangling):
            out[d]["export_distractors_dangling"] = matching_metrics(
                t["src"].to_numpy(), t["tgt"].to_numpy(), test["src"].to_numpy(), test["tgt"].to_numpy(),
                dangling_src=dangling)
    return out


def table(doc: dict) -> str:
    """The results page's table: per run and decoder, switch off -> on."""
    rows = ["| run | decoder | Hits@1 off → on | export P off → on | export R off → on | export F1 off → on | "
            "seed links back as given (on) | contradicted (on) | predictions contradicting a seed (off) |",
            "|---|---|---|---|---|---|---|---|---|"]
    names = sorted({k.rsplit("/", 1)[0] for k in doc.get("rows", {})})
    for name in names:
        off, on = doc["rows"].get(f"{name}/off"), doc["rows"].get(f"{name}/on")
        if not (off and on):
            continue
        for d in DECODERS:
            a, b = off["decoders"][d], on["decoders"][d]
            # a haystack's export is scored with its KG1 distractors dangling (a link from one is wrong)
            ea, eb = (x.get("export_distractors_dangling", x["export"]) for x in (a, b))
            rows.append(f"| {name} | {d} | {a['hits@1']:.4f} → {b['hits@1']:.4f} | {ea['precision']:.3f} → "
                        f"{eb['precision']:.3f} | {ea['recall']:.3f} → {eb['recall']:.3f} | "
                        f"{ea['f1']:.3f} → {eb['f1']:.3f} | {b['seed_links_present_as_given']:,} of "
                        f"{b['seed_links']:,} | {b['links_contradicting_a_seed']} | "
                        f"{a['predictions_contradicting_a_seed_dropped']:,} |")
    return "\n".join(rows)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", nargs="+", default=["zh_en", "fr_en"])
    ap.add_argument("--target", type=float, default=0.95)
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "datasets" / "DBP15K"))
    ap.add_argument("--runs", default=str(ROOT / "runs" / "seed_facts"))
    ap.add_argument("--only", help="an existing run folder under --runs (aligned with the switch on): score it and its "
                    "-off copy; --data is then the pair's folder and --config / --set the run's own")
    ap.add_argument("--config", help="with --only: the run's config file")
    ap.add_argument("--set", action="append", default=[], help="with --only: the run's --set items")
    ap.add_argument("--table", action="store_true", help="print the results page's table from the JSON and exit")
    args = ap.parse_args(argv)
    path = ROOT / "benchmarks" / "results" / "seed_facts.json"
    doc = json.loads(path.read_text()) if path.is_file() else {}
    if args.table:
        print(table(doc))
        return 0
    doc.setdefault("rows", {})
    exe = Path(sys.executable).with_name("hiea-ray")
    names = [args.only] if args.only else args.pairs
    for name in names:
        on = Path(args.runs) / (name if args.only else f"{name}-on")
        off = Path(args.runs) / f"{name}-off"
        base = ([] if args.only else
                ["--data", f"{args.data}/{name}", "--config", str(ROOT / "benchmarks" / "configs" / "dbp15k-template.yaml"),
                 "--set", "evaluate.protocols=[all-targets]", "--set", "decode.decoders=[top1,csls,sinkhorn,structure]",
                 "--set", f"output.target_precision={args.target}"])
        for run, switch in ((on, "true"), (off, "false")):
            if args.only:
                cmd = [str(exe), "align", "--data", args.data, "--config", args.config,
                       *[x for kv in args.set for x in ("--set", kv)]]
            else:
                cmd = [str(exe), "align", *base]
            if switch == "false":
                hardlink_stages(on, off)
            cmd += ["--out", str(run), "--set", f"decode.seeds_as_facts={switch}", "-q"]
            print(" ".join(cmd), flush=True)
            r = subprocess.run(cmd, capture_output=True, text=True)
            if r.returncode != 0:
                print(r.stderr[-3000:], file=sys.stderr)
                return 1
            doc["rows"][f"{name}/{'on' if switch == 'true' else 'off'}"] = {
                "run": str(run.relative_to(ROOT)) if run.is_relative_to(ROOT) else str(run),
                "seeds_as_facts": switch == "true", "target_precision": args.target, "decoders": score(run, args.target),
                "provenance": provenance()}
            doc.update(provenance())
            path.write_text(json.dumps(doc, indent=2) + "\n")
            s = doc["rows"][f"{name}/{'on' if switch == 'true' else 'off'}"]["decoders"]["structure"]
            print(f"{name} seeds_as_facts={switch}: structure H@1 {s['hits@1']:.4f}, export P/R/F1 "
                  f"{s['export']['precision']:.3f}/{s['export']['recall']:.3f}/{s['export']['f1']:.3f}, seeds "
                  f"{s['seed_links_present_as_given']}/{s['seed_links']} as given, {s['links_contradicting_a_seed']} "
                  f"contradicted, {s['predictions_contradicting_a_seed_dropped']} predictions dropped", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
