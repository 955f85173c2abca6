"""What a stage declares (the run context its body works in is ``hiea_ray.run.RunContext``).

A stage module defines one ``StageDef``: its name, the upstream stages it reads (their
fingerprints go into its key), the config it reads (whole sections, or single fields of other
sections, hashed by ``config.section_hash`` without the ``runtime`` fields), when it is enabled,
and its body. The body writes its outputs into the tmp folder it is given and returns stats for
the manifest; the runner (``hiea_ray.pipeline``) does fresh / begin / commit / reuse for all.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hiea_ray.config import Config
from hiea_ray.run import RunContext


def always(cfg: Config) -> bool:
    return True


@dataclass(frozen=True)
class StageDef:
    # Folder name in the run, and the name --until takes.
    name: str
    # body(ctx, tmp) -> stats: writes the stage's outputs under tmp.
    body: Callable[["RunContext", Path], dict]
    # Upstream stages whose fingerprints key this one (those disabled by the config are left out).
    reads: tuple[str, ...] = ()
    # Config selectors hashed into the key: "section" (whole, minus runtime fields) or "section.field".
    config: tuple[str, ...] = ()
    # Whether the config runs this stage at all.
    enabled: Callable[[Config], bool] = always
    # Anything else the outputs depend on (a function of the config), hashed into the key.
    extra: Callable[[Config], Any] | None = None
    # Bumped when the stage's output semantics change: finished runs re-run it instead of reusing it.
    version: int = 1
    # Checks of user input made on the driver before the stage starts (e.g. that a model folder
    # exists): a UserError here leaves nothing behind, not even the tmp folder.
    check: Callable[["RunContext"], None] | None = None
    # Fingerprints of inputs from outside the run (ingest: the data folder).
    external: Callable[["RunContext"], dict] | None = None
    # Its tmp folder holds work a re-run continues from (finished parts, training checkpoints):
    # kept when the stage fails; other stages' tmp folders are removed on failure.
    resumable: bool = False
    # A commit whose outputs are byte-identical to the previous ones keeps the old fingerprint.
    early_cutoff: bool = False
    # Called after the stage is committed or found fresh (evaluate: metrics.json to the run root).
    publish: Callable[["RunContext"], Any] | None = None
