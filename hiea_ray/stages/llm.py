"""llm (Ray Data actor pool, resumable; ``llm.enabled``): one forward pass per uncertain source.

Per protocol: the sources the router did not judge certain, each with the top ``llm.candidates``
of the primary decoder's list, become prompts (``<protocol>/prompts.parquet``, built on the
driver; bridges from the seed links and the certain answers). ``ops.llm.LLMScorer`` (the causal LM +
LoRA + knowledge adapter loaded once per actor; bf16 and a GPU per actor by config) reads each
prompt's option-letter logits at its last position: a distribution over its candidates and
"none" — no generation, no parsing, no invalid answer. Output ``<protocol>/parts/*.parquet``
(src, options, n_options, logp); finished parts are kept when a run is killed. Stats: LLM calls
(= routed sources), prompt tokens, wall time, entities/s.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq

from hiea_ray.io import finished_ids, read_lists, rows_of
from hiea_ray.ops.llm import llm_spec
from hiea_ray.run import RunContext, trained_model
from hiea_ray.stages.base import StageDef

log = logging.getLogger(__name__)


def prompts(ctx: RunContext, protocol: str, base: str, out: Path) -> Path:
    """The routed sources' prompts of a protocol (built once; a resumed run reuses the file)."""
    from hiea_ray.core.router import primary_decoder
    from hiea_ray.run import prompt_format, seed_and_certain
    from hiea_ray.train.llm import neighbourhoods, prompt_table

    path = out / "prompts.parquet"
    if path.is_file():
        return path
    lc = ctx.cfg.llm
    r = pq.read_table(ctx.run / "route" / protocol / "route.parquet")
    routed = r.filter(pc.invert(r["certain"]))["src"].to_numpy()
    primary = primary_decoder(ctx.cfg.route.primary, ctx.cfg.decode.decoders)
    q, cand, _ = read_lists(ctx.run / "decode" / protocol / f"{primary}.parquet")
    ids, _, vecs = ctx.embeddings()
    nb = neighbourhoods(ctx.pair(), seed_and_certain(ctx, protocol), lc.max_facts)
    fmt = prompt_format(trained_model(ctx), lc.adapter_tokens)
    t0 = time.time()
    table = prompt_table(routed, cand[rows_of(q, routed)], None, nb, fmt, lc.prompt_tokens, ids, vecs, lc.candidates,
                         lc.scaling.seed)
    log.info("llm %s: %d prompts built in %.0f s", protocol, table.num_rows, time.time() - t0)
    tmp = out / ".prompts.parquet.tmp"
    pq.write_table(table, tmp)
    os.replace(tmp, path)
    return path


def run(ctx: RunContext, tmp: Path) -> dict:
    from hiea_ray.core.llm import resolve_llm
    from hiea_ray.ops.data import init_ray, map_parquet

    lc = ctx.cfg.llm
    base = resolve_llm(lc.model)
    trained = trained_model(ctx)
    _, _, vecs = ctx.embeddings()
    init_ray(ctx.cfg)
    stats: dict = {}
    for protocol in ctx.cfg.evaluate.protocols:
        out = tmp / protocol
        parts = out / "parts"
        parts.mkdir(parents=True, exist_ok=True)
        path = prompts(ctx, protocol, base, out)
        table = pq.read_table(path, columns=["src", "tokens"])
        total = table.num_rows
        done = finished_ids(parts, "src")
        t0 = time.time()
        if total and len(done) < total:
            if len(done):
                log.info("llm %s: resuming, %d of %d sources already scored", protocol, len(done), total)
            spec = llm_spec(lc, base, trained, int(vecs.shape[1]))
            map_parquet(path, parts, spec, lc.num_actors, lc.rows_per_batch, done, "src", progress=(f"llm {protocol}", total))
        wall = time.time() - t0
        got = finished_ids(parts, "src")
        if len(got) != total or len(np.unique(got)) != total:
            raise RuntimeError(f"llm {protocol}: expected {total} unique sources, found {len(got)}")
        tokens = table["tokens"].to_numpy()
        scored = total - len(done)
        stats[protocol] = {"llm_calls": int(total), "prompt_tokens_mean": round(float(tokens.mean()), 1) if total else 0.0,
                           "prompt_tokens_max": int(tokens.max()) if total else 0, "wall_s": round(wall, 1),
                           "entities_per_s": round(scored / max(wall, 1e-9), 2) if scored else None}
        log.info("llm %s: %d LLM calls (one forward pass each), %.1f entities/s", protocol, total,
                 stats[protocol]["entities_per_s"] or 0.0)
    return {"protocols": stats}


def check(ctx: RunContext) -> None:
    from hiea_ray.core.llm import resolve_llm
    from hiea_ray.errors import UserError

    resolve_llm(ctx.cfg.llm.model)
    if not ctx.cfg.llm.train and not (Path(ctx.cfg.llm.trained) / "hiea_llm.json").is_file():
        raise UserError(f"config field llm.trained: {ctx.cfg.llm.trained} is not an llm_train model folder "
                        "(no hiea_llm.json)")


STAGE = StageDef(
    resumable=True,
    name="llm",
    check=check,
    body=run,
    reads=("route", "decode", "embed", "llm_train"),
    config=("llm", "route.primary", "evaluate.protocols"),
    enabled=lambda cfg: cfg.llm.enabled,
    external=lambda ctx: {} if ctx.cfg.llm.train else {"trained": ctx.content_fingerprint(ctx.cfg.llm.trained)},
)
