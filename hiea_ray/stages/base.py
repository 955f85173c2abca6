"""What a stage declares, and the run context its body works in.

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

import numpy as np

from hiea_ray.config import Config
from hiea_ray.io import column_to_numpy, read_dir
from hiea_ray.kg.model import KGPair
from hiea_ray.manifest import Stage


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


class RunContext:
    """A run folder and its config: what stage bodies read (upstream outputs) and key on."""

    def __init__(self, cfg: Config, data: str | Path, run: str | Path):
        self.cfg = cfg
        self.data = Path(data)
        self.run = Path(run)

    def stage(self, name: str) -> Stage:
        """A finished stage's record (manifest, fingerprint)."""
        return Stage(self.run, name, "", {})

    def fingerprint(self, name: str) -> str:
        return self.stage(name).fingerprint()

    def content_fingerprint(self, path: str | Path) -> str:
        """Content fingerprint of an input file or folder (digests cached in the run folder)."""
        from hiea_ray.manifest import fingerprint_files

        return fingerprint_files(Path(path), self.run / ".cache" / "digests.json")

    def model_fingerprint(self, model: str) -> str:
        """A model named in the config, by content when it is a folder (the packaged default
        included), so new weights at the same path re-run what used the old ones; a hub id by
        its name (its files live in the HF cache)."""
        from hiea_ray.core.encoder import resolve_model

        path = Path(resolve_model(model))
        return self.content_fingerprint(path) if path.exists() else f"hub:{model}"

    def pair(self) -> KGPair:
        return KGPair.read(self.run / "ingest")

    def texts(self):
        """The verbalize stage's (id, kg, name, text) table."""
        return read_dir(self.run / "verbalize" / "texts")

    def embeddings(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(ids, kg, vectors) of the embed stage, sorted by id."""
        t = read_dir(self.run / "embed" / "parts").sort_by("id")
        return t["id"].to_numpy(), t["kg"].to_numpy(), column_to_numpy(t["embedding"])

    def encoder_model(self) -> str:
        """The trained model when retriever training is on, else the configured encoder."""
        return str(self.run / "train" / "model") if self.cfg.train.enabled else self.cfg.embed.model

    def reranker_model(self) -> str:
        rc = self.cfg.rerank
        return str(self.run / "rerank_train" / "model") if rc.train else rc.model
