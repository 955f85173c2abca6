"""ingest: a DBP15K / SRPRS / OpenEA folder -> the four Arrow tables (ids shuffled, validation carved).

Output: ``entities``, ``rel_triples``, ``attr_triples``, ``links`` (.parquet) and ``report.json``.
The key holds the data folder's content fingerprint (bytes, not mtimes: a copy with new mtimes
is the same input, a same-size edit is not); early cutoff keeps the stage's fingerprint when its
outputs come out byte-identical, so trained models downstream stay fresh.
"""

from __future__ import annotations

from pathlib import Path

from hiea_ray.kg.readers import read_pair
from hiea_ray.stages.base import RunContext, StageDef


def run(ctx: RunContext, tmp: Path) -> dict:
    pair = read_pair(ctx.data, ctx.cfg.data)
    pair.write(tmp)
    return {"rows": pair.entities.num_rows, **pair.report}


STAGE = StageDef(
    name="ingest",
    body=run,
    config=("data",),
    external=lambda ctx: {"data": ctx.content_fingerprint(ctx.data)},
    early_cutoff=True,
)
