"""Synthetic scale run: ~100k entities per side through every stage; time and peak memory.

    .venv/bin/python benchmarks/scale_synthetic.py --entities 110000

Generates a synthetic pair (the world has --entities entities; each view keeps ~95%), builds a
tiny encoder (hiea_ray.core.tiny) so the run measures the pipeline rather than a big model,
then runs each stage of the Pipeline with the all-targets protocol (every KG1 entity against
every KG2 entity) and k=50, sampling the peak RSS of the driver and its Ray processes per stage.
Writes benchmarks/results/scale_synthetic.json and scale_synthetic.png.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import PeakRSS, provenance  # noqa: E402
from hiea_ray.config import load_config  # noqa: E402
from hiea_ray.kg.synthetic import generate  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--entities", type=int, default=110_000)
    ap.add_argument("--out", default=str(ROOT / "runs" / "scale"))
    ap.add_argument("--set", action="append", default=[])
    ap.add_argument("--result", default=str(ROOT / "benchmarks" / "results" / "scale_synthetic.json"))
    ap.add_argument("--data", help="an already generated synthetic pair folder to use (else generated into "
                    "OUT/data with --entities)")
    ap.add_argument("--until", help="stop after this stage; a later call with the same --out resumes and keeps "
                    "the measurements of the stages it reuses from --result")
    ap.add_argument("--dumps", metavar="KG1,KG2", help="read the pair from generated dumps of these formats "
                    "(wikidata-json, ntriples) through a pair spec instead of the OpenEA folder")
    ap.add_argument("--vectors", choices=["encoder", "random"], default="encoder",
                    help="random: the embed stage's parts are written beforehand as random unit vectors (--dim; a "
                    "linked pair's two vectors close), so the embed stage resumes with nothing left to embed: time "
                    "and memory of the stages after embed at sizes whose embedding would take hours here")
    ap.add_argument("--dim", type=int, default=64, help="with --vectors random")
    args = ap.parse_args(argv)
    import logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("hiea_ray").setLevel(logging.INFO)
    out = Path(args.out)
    data = Path(args.data) if args.data else out / "data"
    t0 = time.time()
    if not (data / "ent_links").is_file():
        generate(data, args.entities, seed=0)
    gen_s = time.time() - t0
    source = data
    if args.dumps:
        from hiea_ray.kg.dump_fixtures import write_dumps

        fmts = args.dumps.split(",")
        source = out / ("dumps-" + "-".join(fmts)) / "pair.yaml"
        if not source.is_file():
            write_dumps(data, source.parent, fmts[0], fmts[1], "gz", seed=0, shards=4)
    enc_dir = out / "tiny-encoder"
    if not (enc_dir / "config.json").is_file():
        from hiea_ray.core.tiny import build_tiny_encoder
        corpus = [line.split("\t")[0].rsplit("/", 1)[-1].replace("_", " ") for line in open(data / "ent_links")][:20000]
        corpus += [line.split("\t")[1].rsplit("/", 1)[-1].replace("_", " ") for line in open(data / "ent_links")][:20000]
        build_tiny_encoder(enc_dir, corpus, hidden=64, layers=2, heads=2)
    cfg = load_config(
        ROOT / "benchmarks" / "configs" / "scale-synthetic.yaml",
        [f"embed.model={enc_dir}", *args.set],
    )
    from hiea_ray.ops.data import init_ray
    from hiea_ray.pipeline import Pipeline
    from hiea_ray.stages import REGISTRY, STAGES

    init_ray(cfg)
    pipe = Pipeline(cfg, source, out)
    result = Path(args.result)
    # A resumed run (--until, then again) keeps the measurements of the stages it reuses.
    earlier = json.loads(result.read_text()) if result.is_file() else {}
    stages = {}
    res = {"generate_s": round(gen_s, 2), "stages": stages, "config": "benchmarks/configs/scale-synthetic.yaml",
           "overrides": args.set, "input": f"dumps ({args.dumps}) via pair spec" if args.dumps else "OpenEA folder"}
    if earlier.get("generate_s"):
        res["generate_s"] = earlier["generate_s"]
    for name in STAGES:
        if not REGISTRY[name].enabled(cfg):  # an optional stage that is off (retriever training)
            continue
        if name == "embed" and args.vectors == "random":
            random_embed_parts(pipe, args.dim)
        t1 = time.time()
        with PeakRSS() as mem:
            pipe.run_stage(name)
            if REGISTRY[name].publish is not None:  # evaluate: metrics.json to the run root
                REGISTRY[name].publish(pipe)
        m = json.loads((out / name / "manifest.json").read_text())
        reused = name in pipe.timings and pipe.timings[name]["reused"]
        if reused and name in earlier.get("stages", {}):
            stages[name] = earlier["stages"][name]
        else:
            stages[name] = {
                "wall_s": round(time.time() - t1, 2),
                "peak_rss_gib": mem.peak_gib,
                "driver_peak_rss_gib": mem.driver_peak_gib,
                # an offloaded stage (ray.offload): the Ray worker process that ran it; the ray
                # engines: the largest of their tasks and actors
                "worker_peak_rss_gib": (m["stats"].get("offloaded") or {}).get("worker_peak_rss_gib") or max(
                    [m["stats"].get(x) or 0 for x in ("finish_task_peak_rss_gib", "shard_peak_rss_gib",
                                                      "structure_task_peak_rss_gib")]) or None,
                # Ray started by this stage (the run's first Ray work: the stages before it reused)
                "ray_start_s": (m["stats"].get("offloaded") or {}).get("ray_start_s") or m["stats"].get("ray_start_s"),
                "rows": m["stats"].get("rows"),
                "rows_per_s": m["stats"].get("rows_per_s"),
                "reused": reused,
            }
        print(name, stages[name], flush=True)
        if name == "ingest":
            report = pipe.pair().report
            res.update(entities=report["entities"], rel_triples=report["rel_triples"], links=report["links"],
                       entities_per_side=max(report["entities"].values()), provenance=provenance())
        res["total_wall_s"] = round(sum(v["wall_s"] for v in stages.values()), 1)
        res["peak_rss_gib"] = max(v["peak_rss_gib"] for v in stages.values())
        res["driver_peak_rss_gib"] = max(v.get("driver_peak_rss_gib") or 0 for v in stages.values())
        result.write_text(json.dumps(res, indent=2))  # after every stage: a killed run leaves its numbers
        if name == args.until:
            return 0
    res["metrics"] = json.loads((out / "metrics.json").read_text())["all_protocols"]["metrics"]
    result.write_text(json.dumps(res, indent=2))
    _plot(stages, result.with_suffix(".png"), report["entities"])
    print(json.dumps(res, indent=2))
    return 0


def random_embed_parts(pipe, dim: int, noise: float = 1.0, rows_per_part: int = 200_000) -> None:
    """The embed stage's parts as random unit vectors, written into the stage's own resumable tmp
    folder (``manifest.Stage.begin``, the folder a killed embed stage resumes from): every id is then
    "already embedded" and the stage commits without running the encoder. A linked pair's KG2
    vector is its KG1 vector plus Gaussian noise (``noise`` per unit of norm), so the decoders work on
    lists that hold their golds. Does nothing when the stage is fresh or its parts are there."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from hiea_ray.io import embeddings_column
    from hiea_ray.manifest import Stage
    from hiea_ray.pipeline import stage_key
    from hiea_ray.stages import REGISTRY

    config_hash, inputs = stage_key(REGISTRY["embed"], pipe)
    st = Stage(pipe.run, "embed", config_hash, inputs)
    if st.fresh():
        return
    parts = st.begin(keep=True) / "parts"
    if parts.is_dir() and any(parts.glob("*.parquet")):
        return
    parts.mkdir(parents=True, exist_ok=True)
    pair = pipe.pair()
    ids, kg = pair.entities["id"].to_numpy(), pair.entities["kg"].to_numpy()
    rng = np.random.default_rng(0)
    vec = rng.standard_normal((len(ids), dim), dtype=np.float32)
    pos = {int(i): j for j, i in enumerate(ids)}
    links = pair.links
    s = np.array([pos[int(i)] for i in links["src"].to_numpy()])
    t = np.array([pos[int(i)] for i in links["tgt"].to_numpy()])
    vec[t] = vec[s] + noise * rng.standard_normal((len(t), dim), dtype=np.float32)
    vec /= np.linalg.norm(vec, axis=1, keepdims=True)
    for n, a in enumerate(range(0, len(ids), rows_per_part)):
        b = min(a + rows_per_part, len(ids))
        label = lambda v: pa.array([v] * (b - a), pa.string()).dictionary_encode()  # noqa: E731
        table = pa.table({"id": pa.array(ids[a:b], pa.int64()), "kg": pa.array(kg[a:b], pa.int8()),
                          "embedding": embeddings_column(vec[a:b]), "node": label("random-vectors"),
                          "worker": label("random-vectors:0"), "precision": label("random-vectors")})
        pq.write_table(table, parts / f"random-{n:05d}.parquet")


def _plot(stages: dict, path: Path, ents: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(stages)
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.5))
    a.bar(names, [stages[n]["wall_s"] for n in names], color="tab:blue")
    a.set_ylabel("wall time (s)")
    b.bar(names, [stages[n]["peak_rss_gib"] for n in names], color="tab:orange")
    b.set_ylabel("peak RSS, driver + Ray (GiB)")
    for ax in (a, b):
        ax.tick_params(axis="x", rotation=30)
    fig.suptitle(f"synthetic scale run: {ents['kg1']:,} x {ents['kg2']:,} entities, 2 CPU cores")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
