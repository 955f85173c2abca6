"""The ``data`` section of the config: its fields (a comment on each: its help) and ``rules``, the checks
between its fields and the rest of the config (``Config.validate`` runs every section's)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from hiea_ray.config.fields import bounded, hashed_if_set, runtime


@dataclass
class DataConfig:
    # Input format of --data: auto | dbp15k | srprs | openea (auto looks at the file names).
    format: Literal["auto", "dbp15k", "srprs", "openea"] = "auto"
    # Entity names: "translated" uses ent_names_translated_{1,2} when the release has them, else URIs;
    # "uri" always uses the last URI segment.
    names: Literal["translated", "uri"] = "translated"
    # Fraction of the train links carved off (seeded) as validation links when the release has none.
    valid_fraction: float = bounded(0.1, ge=0, lt=1)
    # Seed of the id shuffle and of the validation split.
    seed: int = 0
    # Skip malformed lines (counted in the ingest report) instead of stopping at the first one.
    skip_bad_lines: bool = False
    # Keep gold links whose source (or target) is linked to another entity already (1-to-many
    # gold); counted in the ingest report. Off: such a link is an error naming both lines.
    one_to_many: bool = False
    # OpenEA only: which 721_5fold/N split to use.
    openea_fold: int = bounded(1, ge=1)
    # "required": the release's test links are the gold of evaluation (an empty test file is an
    # error). "none": a label-free run — the test links are not read (the file may be empty or
    # absent), every KG1 entity is aligned against every KG2 entity (evaluate.protocols: [all-targets])
    # and metrics.json gives label-free figures; the seed links (train / valid) still train and anchor.
    test_links: Literal["required", "none"] = hashed_if_set(default="required")
    # Dumps (--data PAIR.yaml): parse tasks running at once (Ray Data), one per chunk.
    dump_workers: int = runtime(2, ge=1)
    # Dumps: plain-text and multistream .bz2 files are cut into chunks of about this many MB (of the
    # file on disk); gzip, single-stream bz2 and Turtle files are read whole, one task each.
    chunk_mb: float = runtime(64.0, gt=0)
    # Dumps: hash partitions of the id assignment and of the joins (more for bigger dumps / clusters).
    partitions: int = runtime(8, ge=1)
    # Dumps: Ray Data's target block size (MB) while ingesting; the driver streams the sorted tables
    # into their files a block or two at a time, so this bounds its memory.
    block_mb: float = runtime(32.0, gt=0)
