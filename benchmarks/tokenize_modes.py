"""embed.tokenize on the CPU: the embed chain on Ray Data with the tokenizer in the encoder actor
(``actor``) vs in a CPU stage of its own (``stage``), the same texts and encoder.

    .venv/bin/hiea-ray align --data ../shared/datasets/DBP15K/zh_en --out runs/zh_en-template \\
        --config benchmarks/configs/dbp15k-template.yaml --until verbalize
    .venv/bin/python benchmarks/tokenize_modes.py --run runs/zh_en-template --n 6000

Takes the first N texts (by id) of a run's verbalize output; runs each mode ``--repeats`` times
(alternating, on one local Ray instance: its start is not counted; each time includes loading the
model in the actors) and writes texts/s (median) and the max abs difference of the vectors to
benchmarks/results/tokenize_modes_cpu.json. The GPU side of the same question is
benchmarks/gpu_smoke.py's ``encoder`` section.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from hiea_ray.config import load_config  # noqa: E402
from hiea_ray.io import column_to_numpy, read_dir  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", default=str(ROOT / "runs" / "zh_en-template"))
    ap.add_argument("--n", type=int, default=6000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--set", action="append", default=[])
    ap.add_argument("--result", default=str(ROOT / "benchmarks" / "results" / "tokenize_modes_cpu.json"))
    args = ap.parse_args(argv)
    from dataclasses import replace

    import ray

    from hiea_ray.core.encoder import Encoder, cpu_has_bf16
    from hiea_ray.ops.data import init_ray
    from hiea_ray.ops.embed import embed_dataset

    cfg = load_config(overrides=args.set)
    texts = pq.read_table(Path(args.run) / "verbalize" / "texts").sort_by("id").slice(0, args.n)
    tmp = Path(tempfile.mkdtemp(prefix="tokenize_modes_"))
    (tmp / "texts").mkdir()
    for i in range(0, texts.num_rows, 1000):
        pq.write_table(texts.slice(i, 1000), tmp / "texts" / f"{i:08d}.parquet")
    init_ray(cfg)
    cpus = int(ray.cluster_resources().get("CPU", 1))
    # half a logical CPU for the encoder actor and for the tokenize actor: a whole one is left for Ray
    # Data's read / write tasks on a 2-CPU machine (torch uses every core in the encoder actor either way)
    modes = {
        "actor": replace(cfg.embed, tokenize="actor", cpus_per_actor=0.5),
        "stage": replace(cfg.embed, tokenize="stage", cpus_per_actor=0.5, tokenize_actors=1, tokenize_cpus=0.5),
    }
    times: dict = {m: [] for m in modes}
    vecs = {}
    for r in range(args.repeats):
        for m, e in modes.items():
            out = tmp / f"{m}-{r}"
            t0 = time.perf_counter()
            embed_dataset(tmp / "texts", out, e)
            times[m].append(time.perf_counter() - t0)
            vecs[m] = read_dir(out).sort_by("id")
            shutil.rmtree(out)
    a, b = (column_to_numpy(vecs[m]["embedding"]) for m in ("actor", "stage"))
    precision = Encoder(cfg.embed.model, backend=cfg.embed.backend).precision
    doc = {
        "command": "python benchmarks/tokenize_modes.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()}, {os.cpu_count()} cores, native bf16: {cpu_has_bf16()}",
        "ray_cpus": cpus, "texts": texts.num_rows, "model": cfg.embed.model, "precision": precision,
        "max_length": cfg.embed.max_length, "batch_size": cfg.embed.batch_size,
        "seconds": {m: [round(t, 2) for t in v] for m, v in times.items()},
        "texts_per_s_median": {m: round(texts.num_rows / float(np.median(v)), 1) for m, v in times.items()},
        "stage_over_actor_time_median": round(float(np.median(np.array(times["stage"]) / np.array(times["actor"]))), 3),
        "max_abs_diff": float(np.abs(a - b).max()),
        "same_ids": bool(np.array_equal(vecs["actor"]["id"].to_numpy(), vecs["stage"]["id"].to_numpy())),
    }
    Path(args.result).write_text(json.dumps(doc, indent=1) + "\n")
    print(json.dumps(doc, indent=1))
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
