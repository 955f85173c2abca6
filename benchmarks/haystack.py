"""The haystack benchmark: a real DBP15K pair's answer key among N distractor entities per side.

    .venv/bin/python benchmarks/haystack.py --pair zh_en --sizes 0 100000 1000000
    .venv/bin/python benchmarks/haystack.py --pair zh_en --plot-only

For each N, ``hiea_ray.kg.haystack`` writes the pair plus N confusable distractors per side
(runs/haystack/data/<pair>-<N>, DBP15K format, never committed); then, per variant, the pipeline runs
with benchmarks/configs/haystack.yaml in a fresh process, stage by stage, sampling the peak RSS of the
driver and its Ray workers (runs/haystack/<pair>-<N>-<variant>; a killed run resumes: reused stages
keep their earlier measurements):

- ``zero-shot``: all-MiniLM-L6-v2 as packaged;
- ``fine-tuned``: at N = 0 the retriever is fine-tuned on the real train links (``train.enabled``);
  every N > 0 reuses that model (``embed.model`` = the N = 0 run's ``train/model``).

Per decoder (all-targets protocol: every KG1 entity, distractors included, against every KG2 entity):
Hits@1/10, MRR and recall@k of the real test links from metrics.json; the 1-to-1 output (the run's
own export at ``output.target_precision``, ``hiea_ray.run.alignment``: confidence = P(has a
counterpart) x the calibrated decoder score, ``output.dangling_share``), scored on the test links
with every KG1 distractor dangling (a link from one is a false positive), its estimated precision
beside; and the estimated share of KG1 sources with a counterpart against the true one. Writes benchmarks/results/haystack_<pair>.json after every run
and haystack_<pair>.png (Hits@1 and F1 against N per decoder and variant; time and memory against N).
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
PY = sys.executable
DATASETS = ROOT.parent / "shared" / "datasets"
CONFIG = ROOT / "benchmarks" / "configs" / "haystack.yaml"
DECODERS = ("top1", "csls", "sinkhorn", "structure")
# zero-shot: the packaged encoder; fine-tuned: trained once at N = 0 and transferred to every N;
# trained-on-pair: trained at each N on that haystack's train links, hard negatives mined from its
# whole KG2 pool (distractors included), as a user fine-tunes on the pair they align
VARIANTS = ("zero-shot", "fine-tuned", "trained-on-pair")


def haystack_data(pair: str, n: int, seed: int) -> Path:
    from hiea_ray.kg.haystack import make_haystack, pool_files

    out = ROOT / "runs" / "haystack" / "data" / f"{pair}-{n}"
    desc = out / "haystack.json"
    if desc.is_file():
        d = json.loads(desc.read_text())
        if d["distractors_per_side"] == n and d["seed"] == seed:
            return out
    t0 = time.time()
    d = make_haystack(DATASETS / "DBP15K" / pair, out, n, pool_files(DATASETS), seed=seed)
    print(f"haystack {pair} N={n}: generated in {time.time() - t0:.1f} s: {json.dumps(d['sides'])}", flush=True)
    return out


def run_one(data: Path, out: Path, result: Path, sets: list[str], until: str | None = None) -> int:
    """The pipeline stage by stage in this process, peak RSS per stage (driver + Ray workers);
    ``until``: the last stage to run (a later call resumes from there)."""
    import logging

    from benchmarks.common import PeakRSS
    from hiea_ray.config import load_config
    from hiea_ray.ops.data import init_ray
    from hiea_ray.pipeline import Pipeline
    from hiea_ray.stages import REGISTRY, STAGES

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("hiea_ray").setLevel(logging.INFO)
    cfg = load_config(CONFIG, sets)
    init_ray(cfg)
    pipe = Pipeline(cfg, data, out)
    pipe.write_config()
    earlier = json.loads(result.read_text()) if result.is_file() else {}
    res = {"config": str(CONFIG.relative_to(ROOT)), "overrides": [x.replace(f"{ROOT}/", "") for x in sets], "stages": {}}
    for name in STAGES:
        if not REGISTRY[name].enabled(cfg):
            continue
        t1 = time.time()
        with PeakRSS() as mem:
            pipe.run_stage(name)
            if REGISTRY[name].publish is not None:
                REGISTRY[name].publish(pipe)
        reused = name in pipe.timings and pipe.timings[name]["reused"]
        m = json.loads((out / name / "manifest.json").read_text())
        if reused and name in earlier.get("stages", {}):
            res["stages"][name] = earlier["stages"][name]
        else:
            res["stages"][name] = {"wall_s": round(time.time() - t1, 2), "peak_rss_gib": mem.peak_gib,
                                   "rows": m["stats"].get("rows"), "rows_per_s": m["stats"].get("rows_per_s")}
        print(name, res["stages"][name], flush=True)
        result.write_text(json.dumps(res, indent=2))
        if name == until:
            break
    return 0


def thresholded(run: Path, target: float) -> dict:
    """Per decoder: the run's own 1-to-1 export at ``output.target_precision`` (its confidence and
    threshold as a user gets them: with ``output.dangling_share``, P(has a counterpart) x the
    calibrated score, cut where the expected precision of its own links reaches the target), scored
    on the test links with every KG1 distractor dangling (a link from one is a false positive)."""
    import numpy as np
    import pyarrow.compute as pc

    from hiea_ray.api import open_run
    from hiea_ray.core.metrics import matching_metrics
    from hiea_ray.kg.model import KGPair

    from hiea_ray.api import Run

    done, unthresholded = open_run(run), Run(run, overrides=["output.target_precision=null"])
    pair = KGPair.read(run / "ingest")
    ents = pair.entities
    dist = ents.filter(pc.and_(pc.equal(ents["kg"], 1), pc.starts_with(ents["uri"], "http://haystack.invalid/")))
    dangling = dist["id"].to_numpy()
    test = pair.links_of("test")
    gs, gt = test["src"].to_numpy(), test["tgt"].to_numpy()
    out = {}
    for d in DECODERS:
        links, _, s = done.export(decoder=d, protocol="all-targets", target_precision=target)
        every, _, _ = unthresholded.export(decoder=d, protocol="all-targets")
        src, tgt = links["src"].to_numpy(), links["tgt"].to_numpy()
        out[d] = {"threshold": s["threshold"], "confidence": s["confidence"], "estimated_precision": s["estimated_precision"],
                  "thresholded": matching_metrics(src, tgt, gs, gt, dangling_src=dangling),
                  "all_links": matching_metrics(every["src"].to_numpy(), every["tgt"].to_numpy(), gs, gt, dangling_src=dangling),
                  "distractor_links_kept": int(np.isin(src, dangling).sum()), "links": int(len(src))}
    cal = run / "calibrate" / "all-targets" / "calibration.json"
    if cal.is_file():
        rep = json.loads(cal.read_text()).get("dangling")
        if rep is not None:  # the estimated share with a counterpart against the truth (the real test sources)
            import pyarrow.parquet as pq

            m = pq.read_table(run / "calibrate" / "all-targets" / "matchable.parquet")
            own = ~np.isin(m["src"].to_numpy(), pair.links.filter(pc.invert(pc.equal(pair.links["split"], "test")))["src"].to_numpy())
            rep["true_share_of_test_sources"] = round(float(np.isin(m["src"].to_numpy()[own], gs).mean()), 4)
        out["dangling_model"] = rep
    return out


def retrieve_metrics(run: Path) -> dict:
    """Hits@1/10, MRR and recall of the real test links in the retrieve stage's own lists (the
    top1 decoder before decoding): what a run whose decode has not finished already shows. Recall
    per candidate channel: ``dense`` (the first retrieve.k entries: with exact search the lists are
    ranked by cosine, so these are the dense top-k), ``structural`` (structural.parquet, when the
    run has the channel) and ``merged`` (the whole list)."""
    import numpy as np
    import pyarrow.parquet as pq

    from hiea_ray.kg.model import KGPair

    test = KGPair.read(run / "ingest").links_of("test")
    gold = dict(zip(test["src"].to_pylist(), test["tgt"].to_pylist()))
    k = json.loads((run / "config.resolved.json").read_text())["retrieve"]["k"]

    def found(path: Path) -> dict:
        hit = {}
        for b in pq.ParquetFile(path).iter_batches(50_000, columns=["src", "cand"]):
            src, cand = b.column("src").to_numpy(), b.column("cand")
            for i in np.nonzero(np.isin(src, list(gold)))[0]:
                c, g = cand[int(i)].as_py(), gold[int(src[i])]
                hit[int(src[i])] = c.index(g) if g in c else None
        return hit

    out = {}
    for protocol in ("standard", "all-targets"):
        d = run / "retrieve" / protocol
        if not (d / "s2t.parquet").is_file():
            continue
        pos = found(d / "s2t.parquet")
        n = len(pos)
        ranks = [p for p in pos.values() if p is not None]
        out[protocol] = {"n": n, "hits@1": round(sum(p == 0 for p in ranks) / n, 4),
                         "hits@10": round(sum(p < 10 for p in ranks) / n, 4),
                         "mrr": round(sum(1.0 / (p + 1) for p in ranks) / n, 4), "recall@k": round(len(ranks) / n, 4),
                         "channels": {"dense": round(sum(p < k for p in ranks) / n, 4), "merged": round(len(ranks) / n, 4)}}
        if (d / "structural.parquet").is_file():
            st = found(d / "structural.parquet")
            out[protocol]["channels"]["structural"] = round(sum(p is not None for p in st.values()) / n, 4)
            out[protocol]["channels"]["structural_only"] = round(
                sum(st.get(s) is not None and (p is None or p >= k) for s, p in pos.items()) / n, 4)
    return out


def exact_check(run: Path, sample: int, seed: int = 0) -> dict:
    """Is a loss of recall the index's or the encoder's? For ``sample`` random real test sources
    (all-targets), exact top-k by inner product over every KG2 vector (FAISS Flat) against the
    retrieve stage's lists: recall@k of the gold in each, and the share of the exact top-k the
    index found (the ANN's recall on these vectors)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from hiea_ray.config import RetrieveConfig
    from hiea_ray.core.retrieval import knn
    from hiea_ray.io import column_to_numpy
    from hiea_ray.kg.model import KGPair
    from hiea_ray.run import RunContext

    t0 = time.time()
    test = KGPair.read(run / "ingest").links_of("test")
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(test.num_rows, min(sample, test.num_rows), replace=False))
    src, gold = test["src"].to_numpy()[pick], test["tgt"].to_numpy()[pick]
    lists = pq.read_table(run / "retrieve" / "all-targets" / "s2t.parquet", columns=["src", "cand"])
    lists = lists.filter(pc.is_in(lists["src"], pa.array(src))).sort_by("src")
    order = np.argsort(src)
    src, gold = src[order], gold[order]
    assert np.array_equal(lists["src"].to_numpy(), src)
    cand = column_to_numpy(lists["cand"])
    k = cand.shape[1]
    ids, kg, vecs = RunContext(None, "", run).embeddings()
    kg2 = ids[kg == 2]
    _, idx = knn(vecs[np.searchsorted(ids, src)], vecs[kg == 2], k, RetrieveConfig(index="Flat"))
    exact = kg2[idx]
    overlap = np.mean([len(np.intersect1d(a, b)) / k for a, b in zip(exact, cand)])
    return {"sources": int(len(src)), "k": int(k), "kg2_entities": int(len(kg2)),
            "recall@k_index": round(float(np.mean([g in c for g, c in zip(gold, cand)])), 4),
            "recall@k_exact": round(float(np.mean([g in c for g, c in zip(gold, exact)])), 4),
            "hits@1_index": round(float(np.mean(cand[:, 0] == gold)), 4),
            "hits@1_exact": round(float(np.mean(exact[:, 0] == gold)), 4),
            "index_recall_of_exact_topk": round(float(overlap), 4), "wall_s": round(time.time() - t0, 1)}


from benchmarks.common import provenance  # noqa: E402


def summarize(run: Path, result: Path, target: float) -> dict:
    res = json.loads(result.read_text())
    metrics = json.loads((run / "metrics.json").read_text())["all_protocols"]["metrics"]
    res["metrics"] = metrics
    res["output"] = thresholded(run, target)
    res["retrieve"] = retrieve_metrics(run)
    res["target_precision"] = target
    res["total_wall_s"] = round(sum(v["wall_s"] for v in res["stages"].values()), 1)
    res["peak_rss_gib"] = max(v["peak_rss_gib"] for v in res["stages"].values())
    result.write_text(json.dumps(res, indent=2))
    return res


def plot(results: dict, path: Path, pair: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 3, figsize=(16, 4.6))
    for variant, style in (("zero-shot", "--"), ("fine-tuned", "-"), ("trained-on-pair", ":")):
        runs = sorted(((int(k.split("/")[0]), v) for k, v in results["runs"].items()
                       if k.endswith("/" + variant) and "output" in v), key=lambda x: x[0])
        if not runs:
            continue
        xs = [max(n, 1e3) for n, _ in runs]  # N = 0 drawn at 10^3 on the log axis
        for d in DECODERS:
            ax[0].plot(xs, [r["metrics"]["all-targets"][d]["hits@1"] for _, r in runs], style, marker="o", label=f"{d} {variant}")
            ax[1].plot(xs, [r["output"][d]["thresholded"]["f1"] for _, r in runs], style, marker="o", label=f"{d} {variant}")
        ax[2].plot(xs, [r["total_wall_s"] / 60 for _, r in runs], style, marker="o", color="tab:blue", label=f"wall min {variant}")
        ax[2].plot(xs, [r["peak_rss_gib"] for _, r in runs], style, marker="s", color="tab:orange", label=f"peak GiB {variant}")
    ax[0].set_title(f"{pair}: Hits@1 of the real test links (all-targets)")
    ax[1].set_title(f"F1 of the run's output at target precision {results.get('target_precision', 0.95)}")
    ax[2].set_title("wall time (min) and peak RSS (GiB)")
    for a in ax:
        a.set_xscale("log")
        a.set_xlabel("distractors per side (N = 0 at 10^3)")
        a.grid(alpha=0.3)
        a.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pair", default="zh_en")
    ap.add_argument("--sizes", nargs="+", type=int, default=[0, 100_000, 1_000_000])
    ap.add_argument("--variants", nargs="+", default=["zero-shot", "fine-tuned"], choices=VARIANTS)
    ap.add_argument("--until", metavar="STAGE", help="run each pipeline up to this stage only (a later call resumes)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--target-precision", type=float, default=0.95)
    ap.add_argument("--plot-only", action="store_true")
    ap.add_argument("--summarize-only", action="store_true",
                    help="score the finished runs of --sizes / --variants again with the current code (no stage runs)")
    ap.add_argument("--score-retrieve", metavar="RUN",
                    help="score a run's retrieve stage alone (its decode unfinished) into the results' 'retrieve_only'")
    ap.add_argument("--exact-sample", type=int, default=0, metavar="N",
                    help="with --score-retrieve: exact search for N random test sources against the index's lists")
    ap.add_argument("--one", nargs=3, metavar=("DATA", "OUT", "RESULT"), help=argparse.SUPPRESS)
    ap.add_argument("--set", action="append", default=[], help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.one:
        return run_one(Path(args.one[0]), Path(args.one[1]), Path(args.one[2]), args.set, args.until)
    path = ROOT / "benchmarks" / "results" / f"haystack_{args.pair}.json"
    results = json.loads(path.read_text()) if path.is_file() else {}
    if args.score_retrieve:
        run = Path(args.score_retrieve).resolve()
        r = {"run": str(run.relative_to(ROOT)), "metrics": retrieve_metrics(run),
             "stages": json.loads((run / "bench.json").read_text())["stages"]}
        if args.exact_sample:
            r["exact_check"] = exact_check(run, args.exact_sample, args.seed)
        results.setdefault("retrieve_only", {})[run.name] = r
        path.write_text(json.dumps(results, indent=2) + "\n")
        print(json.dumps({k: r[k] for k in ("metrics", "exact_check") if k in r}))
        return 0
    results.update(pair=args.pair, config=str(CONFIG.relative_to(ROOT)), target_precision=args.target_precision, **provenance())
    results.setdefault("runs", {})
    if not args.plot_only:
        for n in args.sizes:
            data = haystack_data(args.pair, n, args.seed)
            results.setdefault("haystacks", {})[str(n)] = json.loads((data / "haystack.json").read_text())
            for variant in args.variants:
                run = ROOT / "runs" / "haystack" / f"{args.pair}-{n}-{variant}"
                sets = []
                if variant == "trained-on-pair":  # trained at this N: negatives mined among the distractors
                    sets = ["train.enabled=true"]
                elif variant == "fine-tuned":
                    base = ROOT / "runs" / "haystack" / f"{args.pair}-0-fine-tuned"
                    sets = ["train.enabled=true"] if n == 0 else [f"embed.model={base / 'train' / 'model'}"]
                    if n and not (base / "train" / "model" / "config.json").is_file():
                        print(f"fine-tuned N={n} needs the N = 0 fine-tuned run first (--sizes 0)", file=sys.stderr)
                        return 2
                run.mkdir(parents=True, exist_ok=True)
                one = run / "bench.json"
                if args.summarize_only and not (run / "metrics.json").is_file():
                    continue
                cmd = [PY, __file__, "--one", str(data), str(run), str(one)] + [x for s in sets for x in ("--set", s)]
                cmd += ["--until", args.until] if args.until else []
                print(" ".join(cmd), flush=True)
                with open(run / "bench.log", "a") as log:
                    rc = 0 if args.summarize_only else subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT).returncode
                if rc:
                    print(f"run failed (rc {rc}): see {run / 'bench.log'}", file=sys.stderr)
                    return rc
                if args.until:
                    continue
                r = summarize(run, one, args.target_precision)
                r["provenance"] = provenance()
                r["entities_per_side"] = results["haystacks"][str(n)]["sides"]["kg1"]["real_entities"] + n
                results["runs"][f"{n}/{variant}"] = r
                path.write_text(json.dumps(results, indent=2) + "\n")
                at = r["metrics"]["all-targets"]
                print(f"N={n} {variant}: " + ", ".join(
                    f"{d} H@1 {at[d]['hits@1']:.4f} F1 {r['output'][d]['thresholded']['f1']:.4f}" for d in DECODERS)
                    + f"; {r['total_wall_s'] / 60:.1f} min, peak {r['peak_rss_gib']} GiB", flush=True)
    path.write_text(json.dumps(results, indent=2) + "\n")
    plot(results, path.with_suffix(".png"), args.pair)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
