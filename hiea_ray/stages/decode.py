"""decode (in this process, or ``decode.engine: ray``: ``ops.decode``): the configured decoders over each protocol's candidate lists, and their 1-to-1 matching.

Reads the retriever's lists (with ``rerank.enabled``, the whole candidate graph with fused
scores: ``core.fusion.fused_lists``); runs ``core.decoders.run_decoders``; writes
``<protocol>/<decoder>.parquet`` (ranked lists) and ``<protocol>/<decoder>.match.parquet``
(src, tgt, score). Memory O(n * k); the structure decoder also holds both KGs' adjacency.
Resumable per decoder: a killed stage keeps each finished decoder's outputs (``<decoder>.done.json``
marks them) and runs only the others again (at 10^6 sources a decoder takes minutes).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from hiea_ray.core.decoders import run_decoders
from hiea_ray.core.structure import SeedGraphs
from hiea_ray.io import read_lists, to_local, write_decoded
from hiea_ray.run import RunContext, candidate_lists
from hiea_ray.stages.base import StageDef

log = logging.getLogger(__name__)


def run(ctx: RunContext, tmp: Path) -> dict:
    c = ctx.cfg.decode
    if c.engine == "ray":  # distributed: hiea_ray.ops.decode
        from hiea_ray.ops.decode import decode_distributed

        return decode_distributed(ctx, tmp)
    rows = 0
    t0 = time.time()
    timing = {}
    graphs = None  # the structure decoder's KG graphs, built once for all protocols

    def seed_graphs() -> SeedGraphs:
        nonlocal graphs
        if graphs is None:
            graphs = SeedGraphs.of(ctx.pair(), [*c.structure_anchors, "pseudo"])
        return graphs

    for protocol in ctx.cfg.evaluate.protocols:
        q, b, s2t, s2t_score, t2s, t2s_score = candidate_lists(ctx, protocol)
        out = tmp / protocol
        out.mkdir(parents=True, exist_ok=True)
        # resumable: a decoder whose outputs a killed attempt finished (same key) is not run again
        done = {d: json.loads((out / f"{d}.done.json").read_text()) for d in c.decoders
                if (out / f"{d}.done.json").is_file()}
        todo = [d for d in c.decoders if d not in done]
        sink = None
        if "sinkhorn" in done and "structure" in todo:  # the structure decoder starts from it
            _, ids, score = read_lists(out / "sinkhorn.parquet")
            sink = (to_local(b, ids), score)
        for d, rec in done.items():
            timing[f"{protocol}/{d}"] = rec["wall_s"]
            log.info("decode %s: %s reused from the interrupted attempt", protocol, d)
            rows += len(q)
        for j, d in enumerate(run_decoders(todo, s2t, s2t_score, t2s, t2s_score, q, b, c, seed_graphs, sink=sink)):
            timing[f"{protocol}/{d.name}"] = d.wall_s
            log.info("decode %s: %s done in %.1f s (%d of %d decoders, %s sources)", protocol, d.name, d.wall_s,
                     len(done) + j + 1, len(c.decoders), f"{len(q):,}")
            write_decoded(out, q, b, d)
            rows += len(q)
    wall = time.time() - t0
    return {"rows": rows, "rows_per_s": round(rows / max(wall, 1e-9), 1), "decoder_wall_s": timing}


# ``version`` changes when the decoders' output for a config changes: finished runs then decode
# again (seconds to minutes) instead of reusing lists an older decoder wrote.
STAGE = StageDef(name="decode", body=run, reads=("retrieve", "rerank"), config=("decode",), version=3, resumable=True)
