"""Collaboration rounds (``collab.rounds`` > 1): the small models' certain answers of one round
become the pseudo-seeds of the next.

Round 1 is the run folder itself (the pipeline as configured, the LLM tier left for the last
round). Round r > 1 is a full run folder ``RUN/round<r>/``: its ``pseudo_seeds.parquet`` (src, tgt,
conf) holds round r-1's answers chosen by ``collab.pseudo_seeds`` (``core.collab``), which the
run's pair carries as links of split "pseudo" (``RunContext.pair``) and every stage past
verbalize keys on; the retriever fine-tunes from round r-1's model on seed + pseudo-seed links
(hard negatives re-mined with it), and embed, retrieve, decode (pseudo-seeds as extra structure
anchors), calibrate, route, export and evaluate run again; the router's labelled sources stay the
seed links. ingest / verbalize are round 1's (hard links). Every round is keyed and resumable like
any run; a re-run reuses what is fresh.

After the last round, its ``alignment/`` and ``metrics.json`` are copied to the run root, and
``RUN/collab.json`` records per round the pseudo-seed count (and, for information only, their
precision on the test links), Hits@1 / MRR per decoder and protocol, and the round's stage time.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from hiea_ray.config import Config
from hiea_ray.core.collab import mutual_best, select
from hiea_ray.core.router import primary_decoder
from hiea_ray.io import read_lists
from hiea_ray.kg.model import KGPair

log = logging.getLogger(__name__)

SHARED = ("ingest", "verbalize_train", "verbalize")  # the same in every round: round 1's


def round_dir(run: Path, r: int) -> Path:
    return run if r == 1 else run / f"round{r}"


def round_config(cfg: Config, run: Path, r: int) -> Config:
    """Round r's config: from round 2 the retriever starts from the previous round's model; the
    LLM tier runs in the last round only (the router runs in every round)."""
    c = cfg
    if r > 1 and cfg.train.enabled:
        c = dataclasses.replace(c, embed=dataclasses.replace(c.embed, model=str(round_dir(run, r - 1) / "train" / "model")))
    if r < cfg.collab.rounds and cfg.llm.enabled:
        c = dataclasses.replace(c, llm=dataclasses.replace(c.llm, enabled=False),
                                route=dataclasses.replace(c.route, enabled=True),
                                output=dataclasses.replace(c.output, decoder="auto" if c.output.decoder == "hiea"
                                                           else c.output.decoder))
    return c


# Where pseudo-seeds come from: the all-targets decode (every KG1 entity against every KG2 entity),
# the one a label-free run has. The standard protocol ranks the test sources against the gold test
# targets only: answers chosen there carry knowledge of the test set and never train a next round.
PSEUDO_SEED_PROTOCOL = "all-targets"


def pseudo_seeds(cfg: Config, prev: Path) -> tuple[pa.Table, dict]:
    """Round ``prev``'s pseudo-seeds for the next round (from its all-targets decode), and their report."""
    cc, protocol = cfg.collab, PSEUDO_SEED_PROTOCOL
    primary = primary_decoder(cfg.route.primary, cfg.decode.decoders)
    q, cand, score = read_lists(prev / "decode" / protocol / f"{primary}.parquet")
    mutual = mutual_best(q, cand, score)
    answer, conf, keep = cand[:, 0], score[:, 0].astype(np.float64), mutual >= 0
    if cc.pseudo_seeds != "mutual":
        r = pq.read_table(prev / "route" / protocol / "route.parquet")
        rows = np.searchsorted(q, r["src"].to_numpy())
        certain = np.zeros(len(q), bool)
        certain[rows] = r["certain"].to_numpy(zero_copy_only=False)
        answer, conf = answer.copy(), np.zeros(len(q))
        answer[rows], conf[rows] = r["answer"].to_numpy(), r["prob"].to_numpy()
        keep = certain if cc.pseudo_seeds == "certain" else certain & (mutual == answer)
    links = KGPair.read(prev / "ingest").links
    seeds = links.filter(pc.is_in(links["split"], pa.array(["train", "valid"])))
    n_train = int(pc.sum(pc.equal(seeds["split"], "train")).as_py() or 0)
    cap = None if cc.max_per_seed is None else int(cc.max_per_seed * n_train)
    s, t, c = select(q, answer, conf, keep, seeds["src"].to_numpy(), seeds["tgt"].to_numpy(), cap)
    test = links.filter(pc.equal(links["split"], "test"))
    gold = dict(zip(test["src"].to_pylist(), test["tgt"].to_pylist()))
    right = [gold.get(a) == b for a, b in zip(s.tolist(), t.tolist()) if a in gold]
    report = {"mode": cc.pseudo_seeds, "protocol": protocol, "decoder": primary, "candidates": int(keep.sum()),
              "pseudo_seeds": int(len(s)), "cap": cap,
              "precision_on_test": round(float(np.mean(right)), 4) if right else None}  # information only
    return pa.table({"src": s, "tgt": t, "conf": c.astype(np.float32)}), report


def link_tree(src: Path, dst: Path) -> None:
    """A finished stage folder into another run by hard links (copies across file systems)."""
    tmp = dst.with_name(dst.name + ".link.tmp")
    shutil.rmtree(tmp, ignore_errors=True)

    def link(a, b):
        try:
            os.link(a, b)
        except OSError:
            shutil.copy2(a, b)

    shutil.copytree(src, tmp, copy_function=link)
    os.replace(tmp, dst)


def _write_if_changed(table: pa.Table, path: Path) -> None:
    if path.is_file() and pq.read_table(path).equals(table):
        return  # unchanged: the round's stages stay fresh
    tmp = path.with_suffix(".parquet.tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, path)


def _round_summary(d: Path, metrics: dict) -> dict:
    walls = {}
    for m in sorted(d.glob("*/manifest.json")):
        if m.parent.name not in SHARED:
            walls[m.parent.name] = json.loads(m.read_text()).get("wall_s")
    hits = {p: {dec: {"hits@1": round(v["hits@1"], 4), "mrr": round(v["mrr"], 4)} for dec, v in pm.items()
                if isinstance(v, dict) and "hits@1" in v}
            for p, pm in metrics["all_protocols"]["metrics"].items()}
    return {"folder": str(d), "metrics": hits, "stage_wall_s": round(sum(w or 0 for w in walls.values()), 1),
            "stages": walls}


def run_rounds(cfg: Config, data: Path, run: Path, until: str = "evaluate"):
    """Runs (or resumes) every round; returns the last round's metrics.json content (or record)."""
    from hiea_ray.pipeline import Pipeline

    rounds = cfg.collab.rounds
    summary: dict = {"rounds": []}
    out = None
    for r in range(1, rounds + 1):
        d = round_dir(run, r)
        report = None
        if r > 1:
            d.mkdir(parents=True, exist_ok=True)
            for name in SHARED:
                if (run / name / "manifest.json").is_file() and not (d / name).exists():
                    link_tree(run / name, d / name)
            table, report = pseudo_seeds(round_config(cfg, run, r - 1), round_dir(run, r - 1))
            if not len(table):
                log.warning("collab round %d: no pseudo-seeds from round %d; stopping", r, r - 1)
                break
            _write_if_changed(table, d / "pseudo_seeds.parquet")
            log.info("collab round %d: %d pseudo-seeds (%s; precision on the test links, for information: %s)",
                     r, report["pseudo_seeds"], report["mode"], report["precision_on_test"])
        last = r == rounds
        out = Pipeline(round_config(cfg, run, r), data, d).run_all(until=until if last else "evaluate")
        m = d / "evaluate" / "metrics.json"  # the round's own (the root's holds the last round's)
        if m.is_file():
            summary["rounds"].append({"round": r, "pseudo_seeds": report, **_round_summary(d, json.loads(m.read_text()))})
    if rounds > 1 and until == "evaluate" and summary["rounds"]:
        last_dir = Path(summary["rounds"][-1]["folder"])
        (run / "collab.json").write_text(json.dumps(summary, indent=2))
        if last_dir != run:
            metrics = {**json.loads((last_dir / "metrics.json").read_text()), "collab": summary}
            (run / "metrics.json").write_text(json.dumps(metrics, indent=2))
            if (last_dir / "alignment").is_dir():
                shutil.copytree(last_dir / "alignment", run / "alignment", dirs_exist_ok=True)
            out = metrics
    return out
