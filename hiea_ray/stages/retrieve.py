"""retrieve (FAISS on the driver, or ``retrieve.engine: ray``: ``ops.retrieve``): top ``retrieve.k`` candidates per source and per target.

For each evaluation protocol (``core.metrics.protocol_sets``): ``<protocol>/s2t.parquet`` (each
source's ranked targets) and ``t2s.parquet`` (each target's ranked sources), in the ranked-list
contract of ``hiea_ray.io``. With ``retrieve.structural_k`` the lists also hold the structural
candidates (``core.candidates``: neighbours of the anchored neighbours' counterparts, ranked by
cosine with the dense ones), and ``structural.parquet`` the sources' structural channel alone.
Memory: the vectors plus O(query_batch * k), and the lists O(n * (k + structural_k)).
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

from hiea_ray.core.candidates import with_structural
from hiea_ray.core.metrics import protocol_sets
from hiea_ray.core.retrieval import factory_string, knn
from hiea_ray.io import ids_or_pad, rows_of, write_lists
from hiea_ray.progress import Progress
from hiea_ray.run import RunContext
from hiea_ray.stages.base import StageDef

log = logging.getLogger(__name__)


def run(ctx: RunContext, tmp: Path) -> dict:
    if ctx.cfg.retrieve.engine == "ray":  # distributed: hiea_ray.ops.retrieve
        from hiea_ray.ops.retrieve import retrieve_distributed

        return retrieve_distributed(ctx, tmp)
    for leftover in [*tmp.glob("*/*.parts"), *tmp.glob("*/*.index*")]:  # a killed attempt of the ray engine
        shutil.rmtree(leftover) if leftover.is_dir() else leftover.unlink()
    test = ctx.pair().links_of("test")
    ids, kg, vecs = ctx.embeddings()
    k = ctx.cfg.retrieve.k
    rows = 0
    index = {}  # the FAISS index each direction searched (the auto alias resolved)
    rc = ctx.cfg.retrieve
    graphs = None
    if rc.structural_k:
        from hiea_ray.core.structure import SeedGraphs

        graphs = SeedGraphs.of(ctx.pair(), [*ctx.cfg.decode.structure_anchors, "pseudo"])
    t0 = time.time()
    for protocol in ctx.cfg.evaluate.protocols:
        q, b = protocol_sets(protocol, test["src"].to_numpy(), test["tgt"].to_numpy(), ids, kg)
        Q, B = vecs[rows_of(ids, q)], vecs[rows_of(ids, b)]
        d = tmp / protocol
        d.mkdir(parents=True, exist_ok=True)
        bar = Progress(f"retrieve {protocol}", (len(q) + len(b)) * (2 if graphs else 1), unit="queries")
        s, i = knn(Q, B, k, rc, progress=bar.update)
        s2, i2 = knn(B, Q, k, rc, progress=bar.update)
        if graphs is not None:
            i, s, i2, s2, (si, sc) = with_structural(graphs, q, b, Q, B, i, s, i2, s2, rc.structural_k,
                                                     rc.structural_hub_degree, progress=bar.update)
            write_lists(d / "structural.parquet", q, ids_or_pad(b, si), sc)
        bar.close()
        write_lists(d / "s2t.parquet", q, ids_or_pad(b, i), s)
        write_lists(d / "t2s.parquet", b, ids_or_pad(q, i2), s2)
        rows += len(q) + len(b)
        index[protocol] = {"s2t": factory_string(ctx.cfg.retrieve, len(b)), "t2s": factory_string(ctx.cfg.retrieve, len(q))}
    wall = time.time() - t0
    return {"rows": rows, "rows_per_s": round(rows / max(wall, 1e-9), 1), "k": k, "index": index}


# ``version`` changes when the lists a config gives change (then finished runs search again);
# early cutoff: lists byte-identical to the previous version's keep their fingerprint, so only runs
# whose lists changed re-run what reads them.
STAGE = StageDef(name="retrieve", body=run, reads=("embed",),
                 config=("retrieve", "evaluate.protocols", "decode.structure_anchors"), version=3, early_cutoff=True,
                 resumable=True)
