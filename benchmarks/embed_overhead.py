"""Cost of Ray on the embed stage: Ray Data actor pool vs a plain single-process encode.

    .venv/bin/python benchmarks/embed_overhead.py --run runs/zh_en-template --n 6000

Takes the first N texts (by id) of a finished run's verbalize output, then times
(a) plain: Encoder(...) loaded in this process, encode(texts) with all cores, and
(b) ray: the pipeline's embed chain (read Parquet -> ActorPoolStrategy(EmbedStage) -> write
Parquet) on a local Ray with one actor, the same encoder, batch size and threads.
Both timings include loading the model. Ray's start (ray.init) is reported apart. Writes
benchmarks/results/embed_overhead.json. Target: ray time <= 1.2 x plain time.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from hiea_ray.config import load_config  # noqa: E402
from hiea_ray.core.encoder import Encoder, set_threads  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", default=str(ROOT / "runs" / "zh_en-template"))
    ap.add_argument("--n", type=int, default=6000)
    ap.add_argument("--set", action="append", default=[])
    ap.add_argument("--result", default=str(ROOT / "benchmarks" / "results" / "embed_overhead.json"))
    args = ap.parse_args(argv)
    cfg = load_config(overrides=args.set)
    e = cfg.embed
    texts = pq.read_table(Path(args.run) / "verbalize" / "texts").sort_by("id").slice(0, args.n)
    n = texts.num_rows

    set_threads(e.torch_threads or os.cpu_count())
    t0 = time.perf_counter()
    enc = Encoder(e.model, e.pooling, e.max_length, amp=e.amp)
    plain_vecs = enc.encode(texts["text"].to_pylist(), e.batch_size)
    plain = time.perf_counter() - t0
    del enc

    import ray

    from hiea_ray.io import column_to_numpy, read_dir
    from hiea_ray.ops.embed import embed_dataset

    t0 = time.perf_counter()
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False)
    ray_start = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp:
        tdir, parts = Path(tmp) / "texts", Path(tmp) / "parts"
        tdir.mkdir()
        step = cfg.verbalize.batch_size
        for i in range(0, n, step):
            pq.write_table(texts.slice(i, step), tdir / f"part-{i // step:05d}.parquet")
        t0 = time.perf_counter()
        embed_dataset(tdir, parts, e)
        ray_wall = time.perf_counter() - t0
        out = read_dir(parts).sort_by("id")
        ray_vecs = column_to_numpy(out["embedding"])
    ray.shutdown()
    same = bool(np.allclose(ray_vecs, plain_vecs, atol=1e-4))
    res = {
        "texts": n,
        "mean_words": float(np.mean([len(t.split()) for t in texts["text"].to_pylist()])),
        "model": e.model,
        "batch_size": e.batch_size,
        "cpus": os.cpu_count(),
        "plain_s": round(plain, 2),
        "plain_texts_per_s": round(n / plain, 1),
        "ray_s": round(ray_wall, 2),
        "ray_texts_per_s": round(n / ray_wall, 1),
        "ray_init_s": round(ray_start, 2),
        "ray_over_plain": round(ray_wall / plain, 3),
        "throughput_ratio": round(plain / ray_wall, 3),
        "same_vectors": same,
    }
    Path(args.result).parent.mkdir(parents=True, exist_ok=True)
    Path(args.result).write_text(json.dumps(res, indent=2))
    print(json.dumps(res, indent=2))
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
