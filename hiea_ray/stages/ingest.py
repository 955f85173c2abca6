"""ingest: the input -> the four Arrow tables (ids shuffled, validation carved).

The input (``--data``) is a DBP15K / SRPRS / OpenEA folder (read in this process by
``hiea_ray.kg.readers``) or a pair spec, ``PAIR.yaml`` (``hiea_ray.kg.pairspec``): two dumps
(Wikidata JSON, N-Triples; .gz / .bz2) and their gold links, read with Ray Data
(``hiea_ray.ops.dump_ingest``) without the driver holding the dump.

Output: ``entities``, ``rel_triples``, ``attr_triples``, ``links`` (.parquet) and ``report.json``.
The key holds the input's content fingerprint (bytes, not mtimes: a copy with new mtimes is the
same input, a same-size edit is not; for a spec, the spec and every file it names); early cutoff
keeps the stage's fingerprint when its outputs come out byte-identical, so trained models
downstream stay fresh.
"""

from __future__ import annotations

import os
from pathlib import Path

from hiea_ray.kg.pairspec import is_spec, load_pair_spec
from hiea_ray.kg.readers import read_pair
from hiea_ray.run import RunContext
from hiea_ray.stages.base import StageDef


def run(ctx: RunContext, tmp: Path) -> dict:
    if is_spec(ctx.data):
        spec = load_pair_spec(ctx.data)
        if spec.release:
            return _write_release(spec.release_path, ctx, tmp)
        from hiea_ray.ops.data import init_ray
        from hiea_ray.ops.dump_ingest import ingest_dumps

        init_ray(ctx.cfg)
        report = ingest_dumps(spec, ctx.cfg.data, tmp)
        return {"rows": report["entities"]["kg1"] + report["entities"]["kg2"], **report}
    return _write_release(ctx.data, ctx, tmp)


def _write_release(folder, ctx: RunContext, tmp: Path) -> dict:
    pair = read_pair(folder, ctx.cfg.data)
    pair.write(tmp)
    return {"rows": pair.entities.num_rows, **pair.report}


def _external(ctx: RunContext) -> dict:
    if not is_spec(ctx.data):
        return {"data": ctx.content_fingerprint(ctx.data)}
    spec = load_pair_spec(ctx.data)
    files = [spec.release_path] if spec.release else spec.all_files()
    where = ctx.data.parent
    return {"data": ctx.content_fingerprint(ctx.data),
            "files": {os.path.relpath(f, where): ctx.content_fingerprint(f) for f in files}}


STAGE = StageDef(
    name="ingest",
    body=run,
    config=("data",),
    external=_external,
    early_cutoff=True,
)
