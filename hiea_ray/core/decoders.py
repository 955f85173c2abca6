"""The configured decoders over one protocol's candidate lists, and the one-to-one matcher; Ray-free.

    top1       the lists as retrieved (or fused with the reranker)
    csls       cross-domain similarity local scaling (``decode.csls``)
    sinkhorn   sparse Sinkhorn on the candidate graph (``decode.sinkhorn``)
    structure  Sinkhorn with neighbour consistency folded in, the seed links as anchors
               (``structure.structure_sinkhorn``), started from the Sinkhorn lists

Lists are in local indices (rows of the sorted source ids q, targets as rows of the sorted target
ids b), as the decode stage reads them (``hiea_ray.io``). Memory O(n * k) throughout.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from hiea_ray.core import decode as dec
from hiea_ray.core.structure import SeedGraphs, structure_sinkhorn

DECODERS = ("top1", "csls", "sinkhorn", "structure")


@dataclass
class Decoded:
    """One decoder's output: ranked lists (n, k) and its one-to-one matching (rows, cols, scores)."""

    name: str
    idx: np.ndarray
    score: np.ndarray
    match_rows: np.ndarray
    match_cols: np.ndarray
    match_score: np.ndarray
    wall_s: float


def match(idx: np.ndarray, score: np.ndarray, c) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One-to-one matching of ranked lists with ``decode.matcher`` (greedy | hungarian)."""
    if c.matcher == "hungarian":
        return dec.hungarian_blocks(idx, score, c.match_threshold, c.hungarian_max_block)
    return dec.greedy_match(idx, score, c.match_threshold)


def run_decoders(
    names: list[str], s2t, s2t_score, t2s, t2s_score, q: np.ndarray, b: np.ndarray, c,
    graphs: Callable[[], SeedGraphs] | None = None, state: dict | None = None,
    sink: tuple[np.ndarray, np.ndarray] | None = None,
) -> Iterator[Decoded]:
    """Runs each named decoder (``DecodeConfig`` c) on the lists of sources q and targets b.

    ``graphs`` gives the whole KGs' adjacency and seed anchors, built on first use (structure only).
    ``state``: receives each Sinkhorn-type decoder's final state (``state[name]``, see
    ``decode.sinkhorn`` / ``structure_sinkhorn``): what the online decoder (Serve) reads.
    ``sink``: the sinkhorn lists (local indices) when already computed (a resumed decode stage),
    the structure decoder's start; otherwise computed here and shared by both."""
    for name in names:
        t0 = time.time()
        if name == "top1":
            idx, score = s2t, s2t_score
        elif name == "csls":
            idx, score = dec.csls(s2t, s2t_score, t2s, t2s_score, c.csls_k)
        elif name in ("sinkhorn", "structure"):
            if sink is None:
                st = None if state is None else state.setdefault("sinkhorn", {})
                sink = dec.sinkhorn(s2t, s2t_score, t2s, t2s_score, len(b), tau=c.sinkhorn_tau, iters=c.sinkhorn_iters,
                                    state=st, rows=c.sinkhorn_block_rows)
            idx, score = sink
            if name == "structure":
                if graphs is None:
                    raise ValueError("the structure decoder needs the KG graphs")
                g = graphs()
                src_rows, tgt_rows = g.rows(q, b)
                idx, score = structure_sinkhorn(
                    s2t, s2t_score, t2s, t2s_score, g.adj_s, g.adj_t, c.structure_rounds, c.structure_beta,
                    c.sinkhorn_tau, c.sinkhorn_iters, src_rows, tgt_rows, g.anchors, start=sink,
                    state=None if state is None else state.setdefault("structure", {}),
                )
        else:
            raise ValueError(f"unknown decoder {name!r}")
        r, col, w = match(idx, score, c)
        yield Decoded(name, idx, score, r, col, w, round(time.time() - t0, 3))
