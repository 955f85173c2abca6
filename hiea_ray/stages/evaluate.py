"""evaluate: Hits@k / MRR of every decoder's lists and P/R/F1 of its 1-to-1 output, per protocol.

Output ``metrics.json`` (decoder -> metrics of the first protocol, every protocol in full under
``all_protocols``; also copied to the run root) and ``metrics.png``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow.parquet as pq

from hiea_ray.core.metrics import decoder_metrics, metrics_document
from hiea_ray.io import read_lists
from hiea_ray.plots import plot_metrics
from hiea_ray.stages.base import RunContext, StageDef


def run(ctx: RunContext, tmp: Path) -> dict:
    cfg = ctx.cfg
    test = ctx.pair().links_of("test")
    gold_src, gold_tgt = test["src"].to_numpy(), test["tgt"].to_numpy()
    metrics: dict = {}
    for protocol in cfg.evaluate.protocols:
        d = ctx.run / "decode" / protocol
        for name in cfg.decode.decoders:
            q, cand, _ = read_lists(d / f"{name}.parquet")
            match = pq.read_table(d / f"{name}.match.parquet")
            metrics.setdefault(protocol, {})[name] = decoder_metrics(
                q, cand, match["src"].to_numpy(), match["tgt"].to_numpy(), gold_src, gold_tgt, cfg.evaluate.hits_at
            )
    doc = metrics_document(metrics, cfg.retrieve.k, cfg.decode.decoders, cfg.evaluate.protocols)
    (tmp / "metrics.json").write_text(json.dumps(doc, indent=2, sort_keys=True))
    plot_metrics(metrics, tmp / "metrics.png")
    return {"rows": len(gold_src)}


def publish(ctx: RunContext) -> dict:
    """metrics.json to the run root; returns it."""
    src = ctx.run / "evaluate" / "metrics.json"
    dst = ctx.run / "metrics.json"
    if not dst.is_file() or dst.read_bytes() != src.read_bytes():
        shutil.copy(src, dst)
    return json.loads(src.read_text())


STAGE = StageDef(name="evaluate", body=run, reads=("decode",), config=("evaluate",), publish=publish)
