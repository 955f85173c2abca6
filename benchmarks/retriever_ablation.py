"""Retriever training ablation on DBP15K: which negatives matter, and 1 vs 2 Ray Train workers.

    .venv/bin/python benchmarks/retriever_ablation.py --run runs/zh_en-template [--steps 40]

Reads the texts and links of a finished run (its verbalize + ingest stages, any DBP15K pair),
mines hard negatives once with the base encoder (the pipeline's Ray Data embed chain + FAISS,
ranks 2..200, as in dbp15k-retriever.yaml), then trains the same budget (``--steps`` steps of a
global batch of 32 train links, the same links in the same order) per variant with the real
Ray Train job (``train_loop.fit``) and reports the validation MRR / Hits@1 (each validation source
ranked against all validation targets) and the training throughput:

    in-batch            (a)            1 worker
    in-batch + hard     (a) + (c)      1 worker
    hard only           (c)            1 worker
    (a) + (c), 2 workers, negatives local to each worker   (no (b))
    (a) + (b) + (c), 2 workers, negatives all-gathered     (full)

Writes benchmarks/results/retriever_ablation_<pair>.json and .png. The numbers measure a short
budget (the full run trains 126 steps), so read them as the direction of each part's effect.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pyarrow.compute as pc

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

VARIANTS = {
    "in-batch (a)": dict(in_batch=True, cross_device=False, hard_negatives=0, num_workers=1),
    "in-batch + hard (a+c)": dict(in_batch=True, cross_device=False, hard_negatives=2, num_workers=1),
    "hard only (c)": dict(in_batch=False, cross_device=False, hard_negatives=2, num_workers=1),
    "2 workers, local negatives (a+c)": dict(in_batch=True, cross_device=False, hard_negatives=2, num_workers=2),
    "2 workers, all-gathered (a+b+c)": dict(in_batch=True, cross_device=True, hard_negatives=2, num_workers=2),
}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", required=True, help="a finished run folder (ingest + verbalize)")
    ap.add_argument("--config", default=str(ROOT / "benchmarks" / "configs" / "dbp15k-retriever.yaml"))
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS))
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)

    import ray

    from hiea_ray.config import load_config
    from hiea_ray.core.encoder import resolve_model
    from hiea_ray.kg.model import KGPair
    from hiea_ray.ops.data import init_ray
    from hiea_ray.io import read_dir
    from hiea_ray.train.loop import fit
    from hiea_ray.train.retriever import link_texts, mine_hard_negatives, retriever_task, valid_metrics

    run = Path(args.run)
    pair_name = run.name.split("-")[0]
    out = Path(args.out or ROOT / "benchmarks" / "results" / f"retriever_ablation_{pair_name}.json")
    cfg = load_config(args.config)
    tc = cfg.train
    init_ray(cfg)
    texts = read_dir(run / "verbalize" / "texts")
    links = KGPair.read(run / "ingest").links
    train = link_texts(texts, links.filter(pc.equal(links["split"], "train")))
    valid = link_texts(texts, links.filter(pc.equal(links["split"], "valid")))
    model = resolve_model(cfg.embed.model)
    n = args.steps * tc.batch_size
    train = train.take(np.random.default_rng(0).permutation(train.num_rows)[:n])
    t0 = time.time()
    mined = mine_hard_negatives(model, texts, train, cfg, tc, seed=tc.scaling.seed)
    mine_s = time.time() - t0
    task = retriever_task(cfg)
    initial = valid_metrics(model, valid, task)
    results = json.loads(out.read_text()) if out.is_file() else {}
    results.update({"run": str(run), "steps": args.steps, "batch_size": tc.batch_size, "initial": initial, "mine_s": round(mine_s, 1)})
    results.setdefault("variants", {})
    for name in args.variants:
        v = VARIANTS[name]
        scaling = {**asdict(tc.scaling), "num_workers": v["num_workers"], "use_gpu": False, "cpus_per_worker": 1,
                   "max_failures": 0, "torch_threads": 2 // v["num_workers"]}
        knobs = {k: x for k, x in v.items() if k != "num_workers"}
        opts = {**asdict(tc), **knobs, "scaling": scaling, "epochs": 1, "eval_every": 10**9, "warmup_steps": 4}
        data = mined.select(["src", "tgt", "neg"] if v["hard_negatives"] else ["src", "tgt"])
        storage = (ROOT / "runs" / "ablation" / pair_name / name.replace(" ", "_").replace("/", "")).resolve()
        import shutil

        shutil.rmtree(storage, ignore_errors=True)
        t1 = time.time()
        res = fit(task, opts, model, data, valid.select(["src", "tgt"]), "ablation", storage / "ray", storage / "best")
        wall = time.time() - t1
        last = res["last"]
        results["variants"][name] = {
            **v, "valid_mrr": last["valid_mrr"], "valid_hits@1": last["valid_hits@1"], "pairs_per_s": last["pairs_per_s"],
            "final_loss": float(np.mean([c[1] for c in res["curve"][-5:]])), "wall_s": round(wall, 1),
        }
        print(f"{name:36s} valid MRR {last['valid_mrr']:.4f} Hits@1 {last['valid_hits@1']:.4f} {last['pairs_per_s']:.2f} pairs/s", flush=True)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=2))
        shutil.rmtree(storage, ignore_errors=True)
    plot(results, out.with_suffix(".png"))
    print(f"\nbase model: valid MRR {initial['valid_mrr']:.4f} Hits@1 {initial['valid_hits@1']:.4f}")
    print("| variant | valid MRR | valid Hits@1 | pairs/s |\n|---|---|---|---|")
    for name, r in results["variants"].items():
        print(f"| {name} | {r['valid_mrr']:.4f} | {r['valid_hits@1']:.4f} | {r['pairs_per_s']:.2f} |")
    ray.shutdown()
    return 0


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results["variants"])
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 3.8))
    vals = [results["variants"][n]["valid_hits@1"] for n in names]
    a.barh(names, vals, color="#37c")
    a.axvline(results["initial"]["valid_hits@1"], color="k", ls="--", lw=1, label="base model")
    a.set_xlim(min(vals + [results["initial"]["valid_hits@1"]]) - 0.02, 1.0)
    a.set_xlabel(f"validation Hits@1 after {results['steps']} steps")
    a.legend(fontsize=7)
    b.barh(names, [results["variants"][n]["pairs_per_s"] for n in names], color="#999")
    b.set_xlabel("train links / s (2 CPU cores)")
    b.set_yticks([])
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
