"""export (always on; cheap): the alignment a user takes away, in the graphs' own identifiers.

One decoder's one-to-one output (``output.decoder``: hiea when the LLM tier runs, else structure,
else sinkhorn) on one protocol (``output.protocol``: all-targets when evaluated), with the input's
identifiers (IRIs; Wikidata Q-ids), names, score, confidence (the router's probability that the
match is right for the decoder the router routes, else the decoder's score calibrated by the
calibrate stage on the labelled seed sources), tier (small / llm) and the margin to the second
candidate; thresholded on confidence (``output.min_confidence``, or the threshold that reaches
``output.target_precision`` on the labelled seed sources, out of fold). Outputs, also copied to ``RUN/alignment/``: ``links.parquet``, ``links.tsv``, ``links.nt``
(owl:sameAs N-Triples), ``unmatched.tsv`` (KG1 entities left without a link, with their best
candidate), ``summary.json`` (counts, decoder, threshold, estimated precision, and the measured
precision / recall where gold test links exist).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from hiea_ray.run.alignment import FILES, alignment, write
from hiea_ray.run import RunContext
from hiea_ray.stages.base import StageDef

def run(ctx: RunContext, tmp: Path) -> dict:
    links, un, summary = alignment(ctx)
    write(links, un, summary, tmp)
    return {"rows": links.num_rows, **{k: summary[k] for k in ("decoder", "protocol", "links", "unmatched")}}


def publish(ctx: RunContext) -> None:
    """The stage's files to RUN/alignment/ (what a user opens)."""
    dst = ctx.run / "alignment"
    if not dst.is_dir():
        dst.mkdir()
    for f in FILES:
        src = ctx.run / "export" / f
        if not (dst / f).is_file() or (dst / f).read_bytes() != src.read_bytes():
            shutil.copy(src, dst / f)


STAGE = StageDef(name="export", body=run, reads=("ingest", "decode", "calibrate", "route", "llm"),
                 config=("output", "decode.decoders", "evaluate.protocols", "llm.enabled", "llm.fusion", "route.enabled",
                         "route.primary"),
                 # 3: the seed links are handed back as given (tier "seed") and no prediction contradicts one
                 version=3, publish=publish)
