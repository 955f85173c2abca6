"""llm (Ray Data actor pool, resumable; ``llm.enabled``): one forward pass per uncertain source.

Per protocol: the sources the router did not judge certain, each with the top ``llm.candidates``
of the primary decoder's list, become prompts (``<protocol>/prompts.parquet``, built on the
driver; bridges from the seed links and the certain answers). ``LLMScorer`` (the causal LM +
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
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from hiea_ray.config import LLMConfig
from hiea_ray.core.encoder import set_threads
from hiea_ray.data import MapSpec
from hiea_ray.io import column_to_numpy, embeddings_column, finished_ids, read_lists, rows_of
from hiea_ray.stages.base import RunContext, StageDef

log = logging.getLogger("hiea_ray")


class LLMScorer:
    """Prompt rows (src, text, vectors, n_options, options) -> (src, options, n_options, logp)."""

    def __init__(self, cfg: dict, base: str, trained: str, vector_dim: int):
        import torch

        from hiea_ray.core.llm import llm_amp_dtype, load_hiea_llm, weight_dtype

        self.cfg = LLMConfig(**{k: v for k, v in cfg.items() if k != "scaling"})
        set_threads(self.cfg.torch_threads or os.cpu_count())
        self.device = torch.device("cuda" if self.cfg.gpus_per_actor > 0 and torch.cuda.is_available() else "cpu")
        self.amp = llm_amp_dtype(self.device, self.cfg.amp, self.cfg.cpu_amp)
        self.model, self.tokenizer = load_hiea_llm(base, trained, vector_dim, cfg, trainable=False,
                                                   dtype=weight_dtype(self.cfg.dtype, self.device))
        self.model.to(self.device)

    def __call__(self, batch: pa.Table) -> pa.Table:
        from hiea_ray.core.llm import score

        slots = self.cfg.candidates + 1
        vectors = list(column_to_numpy(batch["vectors"]))
        logp = score(self.model, self.tokenizer, batch["text"].to_pylist(), vectors, batch["n_options"].to_pylist(),
                     slots, self.device, self.cfg.infer_batch_size, self.amp)
        return pa.table({"src": batch["src"], "options": batch["options"], "n_options": batch["n_options"],
                         "logp": embeddings_column(logp.astype(np.float32))})


def trained_model(ctx: RunContext) -> str:
    lc = ctx.cfg.llm
    return str(ctx.run / "llm_train" / "model") if lc.train else lc.trained


def prompts(ctx: RunContext, protocol: str, base: str, out: Path) -> Path:
    """The routed sources' prompts of a protocol (built once; a resumed run reuses the file)."""
    from hiea_ray.core.router import primary_decoder
    from hiea_ray.stages.train_llm import prompt_format, seed_and_certain
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
    from hiea_ray.data import init_ray, map_parquet

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
            spec = MapSpec(LLMScorer, {"cfg": asdict(lc), "base": base, "trained": trained, "vector_dim": int(vecs.shape[1])},
                           {"batch_size": lc.rows_per_batch, "batch_format": "pyarrow", "num_cpus": lc.cpus_per_actor,
                            "num_gpus": lc.gpus_per_actor})
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
