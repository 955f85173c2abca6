"""A run folder read back: what stage bodies, training, serving and benchmarks read of a run.

``RunContext`` (a run folder and its config: upstream outputs, model fingerprints, which encoder,
reranker and LLM the run uses) and the readers several layers share: ``candidate_lists`` (the
retriever's lists, fused with the reranker's scores when it ran), ``seed_and_certain`` (the seed
links and the router's certain answers), ``prompt_format`` and ``trained_model`` (the LLM tier's).
Imports no stage: stages, ``train``, ``serve`` and benchmarks import this.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from hiea_ray.config import Config
from hiea_ray.core.fusion import fused_lists
from hiea_ray.core.hiea import Merged
from hiea_ray.io import column_to_numpy, read_dir, read_lists, to_local
from hiea_ray.kg.model import KGPair
from hiea_ray.manifest import Stage


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
        """The ingested pair; in a collaboration round (``hiea_ray.collab``) its links also hold the
        round's pseudo-seeds (split "pseudo": trained on and anchored like seeds, never labelled)."""
        pair = KGPair.read(self.run / "ingest")
        if (pseudo := self.pseudo_seeds()) is not None:
            extra = pq.read_table(pseudo, columns=["src", "tgt"])
            extra = extra.append_column("split", pa.array(["pseudo"] * extra.num_rows, pa.string()))
            pair.links = pa.concat_tables([pair.links, extra.cast(pair.links.schema)])
        return pair

    def pseudo_seeds(self) -> Path | None:
        """``pseudo_seeds.parquet`` of a collaboration round's run folder (None in a plain run)."""
        p = self.run / "pseudo_seeds.parquet"
        return p if p.is_file() else None

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


def candidate_lists(ctx: RunContext, protocol: str):
    """(q, b, s2t, s2t_score, t2s, t2s_score) in local indices: the retriever's lists, or with
    reranking the whole candidate graph with fused scores; with ``decode.seeds_as_facts`` the seed
    links as facts (``core.candidates.known_out_of_pool``)."""
    d = ctx.run / "retrieve" / protocol
    q, s2t_ids, s2t_score = read_lists(d / "s2t.parquet")
    b, t2s_ids, t2s_score = read_lists(d / "t2s.parquet")
    s2t, t2s = to_local(b, s2t_ids), to_local(q, t2s_ids)
    if ctx.cfg.rerank.enabled:
        t = read_dir(ctx.run / "rerank" / protocol / "parts").sort_by("src")
        if not np.array_equal(t["src"].to_numpy(), q):
            raise RuntimeError(f"rerank {protocol}: reranked sources differ from the retrieved ones")
        c = ctx.cfg.decode
        cand = to_local(b, column_to_numpy(t["cand"]))
        s2t, s2t_score, t2s, t2s_score = fused_lists(s2t, s2t_score, t2s, t2s_score, cand, column_to_numpy(t["retr"]),
                                                     column_to_numpy(t["rerank"]), c.fusion_weight, c.score_scale)
    if ctx.cfg.decode.seeds_as_facts:
        from hiea_ray.core.candidates import known_out_of_pool

        seeds = seed_links(ctx.pair())
        s2t, s2t_score, t2s, t2s_score = known_out_of_pool(s2t, s2t_score, t2s, t2s_score, q, b,
                                                           seeds["src"].to_numpy(), seeds["tgt"].to_numpy())
    return q, b, s2t, s2t_score, t2s, t2s_score


SEED_SPLITS = ("train", "valid")  # the user's own links (test links are the evaluation's; pseudo the run's)


def seed_links(pair) -> pa.Table:
    """The user's seed links (splits train and valid): facts the output hands back as given."""
    return pair.links.filter(pc.is_in(pair.links["split"], pa.array(SEED_SPLITS, pa.string())))


def seed_and_certain(ctx: RunContext, protocol: str) -> list[tuple[np.ndarray, np.ndarray]]:
    """(src, tgt) arrays of known matches: the seed links and the router's certain answers."""
    pair = ctx.pair()
    out = [(t["src"].to_numpy(), t["tgt"].to_numpy()) for t in (pair.links_of(s) for s in ("train", "valid"))]
    r = pq.read_table(ctx.run / "route" / protocol / "route.parquet")
    certain = r["certain"].to_numpy(zero_copy_only=False)
    out.append((r["src"].to_numpy()[certain], r["answer"].to_numpy()[certain]))
    return out


def prompt_format(base: str, adapter_tokens: int, readout: str | None = None):
    """The prompts' format for a tokenizer folder; readout None = the one the model folder
    ``base`` was trained with (``llm.readout`` when training a new one)."""
    from hiea_ray.core.llm import PromptFormat, load_tokenizer, model_readout

    return PromptFormat(load_tokenizer(base), adapter_tokens, readout or model_readout(base))


def trained_model(ctx: RunContext) -> str:
    lc = ctx.cfg.llm
    return str(ctx.run / "llm_train" / "model") if lc.train else lc.trained


@dataclass
class HieaMerged:
    """The "hiea" decoder of a protocol, as evaluate and export read it."""
    primary: str
    q: np.ndarray  # sorted source ids
    cand: np.ndarray  # the primary decoder's lists (n, k) and scores
    score: np.ndarray
    merged: Merged
    llm: pa.Table  # the llm stage's rows, by src
    uncertain: np.ndarray  # the routed sources
    fusion: float


def hiea_merged(ctx: RunContext, protocol: str) -> HieaMerged:
    """The primary decoder's lists and matches merged with the LLM tier's answers (``core.hiea.merge``)."""
    from hiea_ray.core.hiea import fusion_weight, merge
    from hiea_ray.core.router import primary_decoder

    cfg = ctx.cfg
    primary = primary_decoder(cfg.route.primary, cfg.decode.decoders)
    d = ctx.run / "decode" / protocol
    q, cand, score = read_lists(d / f"{primary}.parquet")
    match = pq.read_table(d / f"{primary}.match.parquet")
    route = pq.read_table(ctx.run / "route" / protocol / "route.parquet")
    uncertain = route["src"].to_numpy()[~route["certain"].to_numpy(zero_copy_only=False)]
    llm = read_dir(ctx.run / "llm" / protocol / "parts").sort_by("src")
    fusion = fusion_weight(cfg.llm.fusion, trained_model(ctx))
    m = merge(q, cand, score, match["src"].to_numpy(), match["tgt"].to_numpy(), uncertain, llm["src"].to_numpy(),
              column_to_numpy(llm["options"]), llm["n_options"].to_numpy(), column_to_numpy(llm["logp"]), fusion)
    return HieaMerged(primary, q, cand, score, m, llm, uncertain, fusion)
