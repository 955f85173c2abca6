"""verbalize (Ray Data): one text per entity — name, relations with neighbour names, attributes.

``Verbalizer`` is the callable class Ray Data maps over blocks of context rows
(``core.verbalize.build_contexts``); output ``texts/*.parquet`` (id, kg, name, text), one file per
``verbalize.batch_size`` rows so that the embed stage's actor pool has blocks to spread.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import asdict
from pathlib import Path

from hiea_ray.config import VerbalizeConfig
from hiea_ray.core.verbalize import build_contexts, verbalize_table, word_count_stats
from hiea_ray.data import MapSpec
from hiea_ray.io import read_dir
from hiea_ray.stages.base import RunContext, StageDef


class Verbalizer:
    """Context rows (``verbalize.build_contexts``) -> (id, kg, name, text)."""

    def __init__(self, cfg: dict):
        self.cfg = VerbalizeConfig(**cfg)

    def __call__(self, batch):
        return verbalize_table(batch, self.cfg)


def verbalize_spec(cfg: VerbalizeConfig) -> MapSpec:
    return MapSpec(Verbalizer, {"cfg": asdict(cfg)}, {"batch_size": cfg.batch_size, "batch_format": "pyarrow", "num_cpus": 1})


def run(ctx: RunContext, tmp: Path) -> dict:
    from hiea_ray.data import init_ray, map_blocks

    init_ray(ctx.cfg)
    t0 = time.time()
    contexts = build_contexts(ctx.pair())
    step = max(1, ctx.cfg.verbalize.batch_size)
    blocks = [contexts.slice(i, step) for i in range(0, max(contexts.num_rows, 1), step)]
    out = tmp / "texts"
    shutil.rmtree(out, ignore_errors=True)
    map_blocks(blocks, out, verbalize_spec(ctx.cfg.verbalize), ctx.cfg.verbalize.num_actors)
    texts = read_dir(out)
    wall = time.time() - t0
    return {"rows": texts.num_rows, "rows_per_s": round(texts.num_rows / max(wall, 1e-9), 1),
            **word_count_stats(texts["text"].to_pylist())}


STAGE = StageDef(name="verbalize", body=run, reads=("ingest",), config=("verbalize",))
