"""The stage runner: runs the registry's stages (``hiea_ray.stages``) in order, reusing fresh ones.

    ingest -> [verbalize_train] -> verbalize -> [train] -> embed -> retrieve -> [rerank_train -> rerank] -> decode
           -> [calibrate] -> [route -> llm_train -> llm] -> export -> evaluate

For each enabled stage the runner builds its key — the schema version, the hash of the config it
declares (``config.section_hash``: whole sections minus ``runtime`` fields, plus its ``extra`` and
``version``) and the fingerprints of the upstream stages it reads — and then either reuses the
finished stage (same key: a re-run is a no-op) or runs its body in ``<run>/.<stage>.tmp`` and
commits it by one rename (``hiea_ray.manifest``), so a killed run never leaves a half-written
stage and resumable stages (embed, rerank) keep their finished parts.

Run folder layout::

    ingest/     entities, rel_triples, attr_triples, links (.parquet), report.json
    verbalize_train/  model/ (LoRA verbalizer), history.json, curve.png  (verbalize.train_file, LLM modes)
    verbalize/  texts/*.parquet (id, kg, name, text); LLM modes: parts/, sample.md
    train/      model/ (fine-tuned HF encoder), history.json, curve.png  (only with train.enabled)
    embed/      parts/*.parquet (id, kg, embedding, node, precision)
    retrieve/   <protocol>/{s2t,t2s}.parquet (src, cand, score)
    rerank_train/  model/ (cross-encoder), history.json, curve.png  (rerank.enabled and rerank.train)
    rerank/     <protocol>/parts/*.parquet (src, cand, retr, rerank): top rerank.k per source
                (+ candidates.parquet when rerank.candidates=sinkhorn)
    decode/     <protocol>/<decoder>.parquet (ranked lists), <protocol>/<decoder>.match.parquet
    calibrate/  <protocol>/{labelled.parquet, calibration.json}  (the labelled seed sources, decoded out of fold)
    route/      <protocol>/{route.parquet, router.pkl, router.json, labelled.parquet}, report.json, route.png
    llm_train/  model/ (LoRA, knowledge adapter, score head, tokenizer, fusion.json), history.json, curve.png
    llm/        <protocol>/{prompts.parquet, parts/*.parquet (src, options, n_options, logp)}
    export/     links.{parquet,tsv,nt}, unmatched.tsv, summary.json  (also copied to RUN/alignment/)
    evaluate/   metrics.json, metrics.png  (metrics.json is also copied to the run root)
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

from hiea_ray.config import Config, section_hash
from hiea_ray.errors import UserError, check_terminated
from hiea_ray.manifest import Stage, run_lock
from hiea_ray.stages import REGISTRY, STAGES, RunContext, StageDef

log = logging.getLogger(__name__)

__all__ = ["Pipeline", "STAGES", "stage_key"]


def stage_key(sd: StageDef, ctx: RunContext) -> tuple[str, dict[str, str]]:
    """(config hash, input fingerprints) of a stage in this run."""
    cfg = ctx.cfg
    extra = {"version": sd.version}
    if sd.extra is not None and (e := sd.extra(cfg)) is not None:
        extra["extra"] = e
    inputs = dict(sd.external(ctx)) if sd.external else {}
    for up in sd.reads:
        if REGISTRY[up].enabled(cfg):
            inputs[up] = ctx.fingerprint(up)
    if sd.reads and sd.name != "verbalize" and (pseudo := ctx.pseudo_seeds()) is not None:
        inputs["pseudo_seeds"] = ctx.content_fingerprint(pseudo)  # a collaboration round's links
    return section_hash(cfg, *sd.config, extra=extra), inputs


class Pipeline(RunContext):
    """A run: the config, the data folder and the run folder; ``run_all`` runs the stages."""

    def __init__(self, cfg: Config, data: str | Path, run: str | Path):
        super().__init__(cfg, data, run)
        self.run.mkdir(parents=True, exist_ok=True)
        self.timings: dict[str, dict] = {}

    def run_stage(self, name: str) -> Stage:
        """Reuses the stage when fresh, else runs and commits it; returns its record."""
        sd = REGISTRY[name]
        config_hash, inputs = stage_key(sd, self)
        st = Stage(self.run, name, config_hash, inputs)
        reused = st.fresh()
        if not reused:
            if sd.check is not None:
                sd.check(self)
            tmp = st.begin(keep=sd.resumable)
            try:
                if name in self.cfg.ray.offload:
                    from hiea_ray.ops.data import offloaded

                    stats = offloaded(name, sd.body, self, tmp)
                else:
                    stats = sd.body(self, tmp)
            except BaseException as e:
                # nothing half-written is kept: a mistake in the input keeps nothing; other failures
                # keep only what a resumable stage continues from
                if isinstance(e, UserError) or not sd.resumable:
                    shutil.rmtree(tmp, ignore_errors=True)
                raise
            st.commit(stats, keep_if_identical=sd.early_cutoff)
        m = st.manifest() or {}
        self.timings[name] = {
            "reused": reused,
            "wall_s": m.get("wall_s"),
            **{k: v for k, v in (m.get("stats") or {}).items() if k in ("rows", "rows_per_s")},
        }
        log.info("stage %-12s %s (%.1fs)", name, "reused" if reused else "done", m.get("wall_s") or 0)
        return st

    def write_config(self) -> None:
        """The run's config as ``config.resolved.json`` (what ``hiea-ray serve``, ``open_run`` and the
        benchmarks read back); left alone when unchanged, so a finished read-only run still runs."""
        self.run.mkdir(parents=True, exist_ok=True)
        resolved = self.run / "config.resolved.json"
        text = json.dumps(self.cfg.to_dict(), indent=2)
        if not resolved.is_file() or resolved.read_text() != text:
            tmp = resolved.with_suffix(".json.tmp")
            tmp.write_text(text)
            os.replace(tmp, resolved)

    def run_all(self, until: str = "evaluate"):
        """Runs the enabled stages up to ``until``; returns metrics.json's content when evaluate
        ran, else the last stage's record. The run's config goes to ``config.resolved.json`` (what
        ``hiea-ray serve`` and the benchmarks read back)."""
        out = None
        with self.lock():
            self.write_config()
            for name in STAGES:
                sd = REGISTRY[name]
                if sd.enabled(self.cfg):
                    check_terminated()
                    out = self.run_stage(name)
                    if sd.publish is not None:
                        out = sd.publish(self)
                if name == until:
                    break
            check_terminated()
        return out

    def lock(self):
        """One pipeline at a time per run folder (``manifest.run_lock``)."""
        return run_lock(self.run)

