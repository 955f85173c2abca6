"""ingest: a DBP15K / SRPRS / OpenEA folder -> the four Arrow tables (ids shuffled, validation carved).

Output: ``entities``, ``rel_triples``, ``attr_triples``, ``links`` (.parquet) and ``report.json``.
Early cutoff: a dataset copied anew (new mtimes, same bytes) keeps the fingerprint, so trained
models downstream stay fresh.
"""

from __future__ import annotations

from pathlib import Path

from hiea_ray.kg.readers import read_pair
from hiea_ray.manifest import fingerprint_files
from hiea_ray.stages.base import RunContext, StageDef


def run(ctx: RunContext, tmp: Path) -> dict:
    pair = read_pair(ctx.data, ctx.cfg.data)
    pair.write(tmp)
    return {"rows": pair.entities.num_rows, **pair.report}


STAGE = StageDef(
    name="ingest",
    body=run,
    config=("data",),
    external=lambda ctx: {"data": fingerprint_files(ctx.data)},
    early_cutoff=True,
)
