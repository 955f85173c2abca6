"""The Python API: align a pair, open a finished run, take its links.

    from hiea_ray import align, open_run

    run = align("../shared/datasets/DBP15K/zh_en", "runs/zh_en", config="benchmarks/configs/dbp15k-template.yaml",
                embed__batch_size=64)             # section__field=value, as --set section.field=value
    links = run.links()                           # pyarrow Table: kg1_id, kg2_id, names, score, confidence, tier, ...
    links.to_pandas()                             # with pandas installed
    run.metrics["sinkhorn"]["hits@1"]
    sure = run.links(target_precision=0.95)       # re-thresholded without re-running the pipeline
    run.unmatched()

The CLI (``hiea-ray align`` / ``hiea-ray export``) calls the same functions.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from hiea_ray.config import Config, config_from_dict, load_config
from hiea_ray.errors import UserError


class Run:
    """A finished (or partly finished) run folder and its config."""

    def __init__(self, path: str | Path, overrides: list[str] | None = None):
        self.path = Path(path)
        resolved = self.path / "config.resolved.json"
        if not resolved.is_file():
            raise UserError(f"{self.path}: not a hiea-ray run (no config.resolved.json; run `hiea-ray align` first)")
        self.config: Config = config_from_dict(json.loads(resolved.read_text()), str(resolved), overrides)

    @property
    def metrics(self) -> dict | None:
        """metrics.json (every decoder, every protocol), or None before the evaluate stage."""
        p = self.path / "metrics.json"
        return json.loads(p.read_text()) if p.is_file() else None

    def export(self, decoder: str | None = None, protocol: str | None = None, min_confidence: float | None = None,
               target_precision: float | None = None) -> tuple[pa.Table, pa.Table, dict]:
        """(links, unmatched, summary) made now from the run's decoded outputs with these settings
        (None: the run's ``output`` config); bad values are one UserError naming the field."""
        from hiea_ray.run import RunContext
        from hiea_ray.run.alignment import alignment

        sets = [f"output.{k}={json.dumps(v)}" for k, v in (("decoder", decoder), ("protocol", protocol),
                                                           ("min_confidence", min_confidence),
                                                           ("target_precision", target_precision)) if v is not None]
        cfg = config_from_dict(self.config.to_dict(), f"{self.path}/config.resolved.json", sets)
        return alignment(RunContext(cfg, self.path / "data", self.path))

    def links(self, decoder: str | None = None, protocol: str | None = None, min_confidence: float | None = None,
              target_precision: float | None = None) -> pa.Table:
        """The alignment's links (RUN/alignment/links.parquet), or, with any argument, the same
        export made now from the run's decoded outputs with those settings."""
        args = (decoder, protocol, min_confidence, target_precision)
        stored = self.path / "alignment" / "links.parquet"
        if all(a is None for a in args) and stored.is_file():
            return pq.read_table(stored)
        return self.export(*args)[0]

    def unmatched(self, **kwargs) -> pa.Table:
        """KG1 entities without a link, with their best candidate and its confidence."""
        return self.export(kwargs.get("decoder"), kwargs.get("protocol"), kwargs.get("min_confidence"),
                               kwargs.get("target_precision"))[1]

    def summary(self, **kwargs) -> dict:
        """Counts, decoder, threshold, estimated and (where gold test links exist) measured precision."""
        stored = self.path / "alignment" / "summary.json"
        if not kwargs and stored.is_file():
            return json.loads(stored.read_text())
        return self.export(kwargs.get("decoder"), kwargs.get("protocol"), kwargs.get("min_confidence"),
                               kwargs.get("target_precision"))[2]


def open_run(path: str | Path) -> Run:
    """A run folder written by ``align`` / ``hiea-ray align``."""
    return Run(path)


def align(data: str | Path, out: str | Path, config: str | Path | list | None = None, until: str = "evaluate",
          **overrides) -> Run:
    """Run (or resume) the pipeline on a pair into ``out``; ``overrides``: ``section__field=value``
    (``embed__batch_size=64``; nested: ``llm__scaling__num_workers=2``). Returns the run."""
    from hiea_ray.pipeline import Pipeline

    sets = [f"{k.replace('__', '.')}={json.dumps(v)}" for k, v in overrides.items()]
    cfg = load_config(config, sets)
    if cfg.collab.rounds > 1:
        from hiea_ray.collab import run_rounds

        run_rounds(cfg, Path(data), Path(out), until=until)
        if until == "evaluate":  # the last round's run folder is the answer
            return Run(json.loads((Path(out) / "collab.json").read_text())["rounds"][-1]["folder"])
    else:
        Pipeline(cfg, Path(data), Path(out)).run_all(until=until)
    return Run(out)
