"""The labelled seed sources, decoded out of fold (a run reader, like ``hiea_ray.run``).

What tells a run how far to trust an answer: the seed links no small model trained on
(``labelled_splits``), in ``route.folds`` folds; fold j is decoded (the protocol's pool plus fold
j's links, every decoder) with every other seed link as a structure anchor, so a labelled source's
lists are made as a test source's are and its answer is not trivially right (``labelled_decode``).
The ``calibrate`` stage writes them; the ``route`` stage fits the certainty classifier on their
confidence features (``features``), and ``export`` maps each decoder's score to a probability of
being right on them (``core.export.Calibration``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from hiea_ray.core.candidates import known_out_of_pool, with_structural
from hiea_ray.core.decoders import run_decoders
from hiea_ray.core.metrics import protocol_sets
from hiea_ray.core.retrieval import knn
from hiea_ray.core.router import anchor_folds, confidence_features, neighbour_consistency
from hiea_ray.core.structure import SeedGraphs
from hiea_ray.errors import UserError
from hiea_ray.io import read_lists, rows_of, to_local
from hiea_ray.run import RunContext, seed_links

# how much of each labelled source's primary list is kept (the LLM tier shows <= 25)
LABELLED_LIST = 32


def labelled_splits(cfg, anchors: list[str]) -> list[str]:
    """``route.labelled``, "auto" ([]) resolved: the anchor splits no small model trained on."""
    if cfg.route.labelled:
        bad = sorted(set(cfg.route.labelled) - set(anchors))
        if bad:
            raise UserError(f"config field route.labelled: {', '.join(bad)} not among the structure anchors "
                            f"(decode.structure_anchors: {', '.join(anchors)})")
        return list(cfg.route.labelled)
    trained = {"train"} if cfg.train.enabled or cfg.rerank.enabled else set()
    splits = [s for s in anchors if s not in trained]
    if not splits:
        raise UserError(f"route: every anchor split ({', '.join(anchors)}) trained a small model, so none can label "
                        "the certainty classifier; add validation links (data.valid_fraction) or set route.labelled")
    return splits


def features(lists: dict, t2s, t2s_score, q: np.ndarray, b: np.ndarray, graphs: SeedGraphs, primary: str):
    """(X, names, best local target of the primary decoder) for sources q against targets b."""
    src_rows, tgt_rows = graphs.rows(q, b)
    idx, score = lists[primary]
    p_best = best_of(idx, score)
    best_rows = np.where(p_best >= 0, tgt_rows[np.maximum(p_best, 0)], -1)
    cons = neighbour_consistency(best_rows, src_rows, graphs.adj_s, graphs.adj_t, graphs.anchors)
    degree = np.diff(graphs.adj_s.indptr)[src_rows]
    return confidence_features(lists, primary, t2s=t2s, t2s_score=t2s_score, consistency=cons, degree=degree)


def best_of(idx: np.ndarray, score: np.ndarray) -> np.ndarray:
    """Each row's best-scored entry of a (-1 padded) list; -1 for an empty list."""
    return idx[np.arange(len(idx)), np.argmax(np.where(idx >= 0, score, -np.inf), axis=1)]


def decoded_lists(ctx: RunContext, protocol: str):
    """The decode stage's lists of a protocol in local indices: (q, b, {decoder: (idx, score)}, t2s, t2s_score)."""
    r = ctx.run / "retrieve" / protocol
    q, _, _ = read_lists(r / "s2t.parquet")
    b, t2s_ids, t2s_score = read_lists(r / "t2s.parquet")
    lists = {}
    for name in ctx.cfg.decode.decoders:
        path = ctx.run / "decode" / protocol / f"{name}.parquet"
        if not path.is_file():
            raise UserError(f"{path}: the run has no decoded lists (run the decode stage first)")
        dq, ids, score = read_lists(path)
        if not np.array_equal(dq, q):
            raise RuntimeError(f"{path}: its sources differ from the retrieved ones")
        lists[name] = (to_local(b, ids), score)
    return q, b, lists, to_local(q, t2s_ids), t2s_score


@dataclass
class Seeds:
    """The seed links the labelled decode uses: anchors, and the fold of each (-1: an anchor of
    every fold's decode, never labelled). ``graphs.anchors`` are the seed links in that order, then
    a collaboration round's pseudo-seeds (anchors of every fold)."""

    graphs: SeedGraphs
    links: pa.Table
    fold: np.ndarray
    splits: list[str]


def seeds_of(ctx: RunContext) -> Seeds:
    """The run's seed links in folds (``route.folds`` of ``labelled_splits``, seeded by ``route.seed``)."""
    cfg, rc = ctx.cfg, ctx.cfg.route
    pair = ctx.pair()
    anchors = cfg.decode.structure_anchors or ["train", "valid"]
    seeds = pair.links.filter(pc.is_in(pair.links["split"], pa.array(anchors, pa.string())))
    splits = labelled_splits(cfg, anchors)
    is_lab = pc.is_in(seeds["split"], pa.array(splits, pa.string())).to_numpy(zero_copy_only=False)
    n_lab = int(is_lab.sum())
    if n_lab < 2 * rc.folds:
        raise UserError(f"route: {n_lab} seed links ({', '.join(splits)}) are too few to label "
                        f"{rc.folds} folds of labelled sources (route.folds)")
    fold = np.full(seeds.num_rows, -1, np.int64)
    fold[is_lab] = anchor_folds(n_lab, rc.folds, rc.seed)
    # a collaboration round's pseudo-seeds (the last links) anchor every fold's decode, labelled never
    return Seeds(SeedGraphs.of(pair, [*anchors, "pseudo"]), seeds, fold, splits)


@dataclass
class Labelled:
    """The labelled sources of one protocol: their seed link, the primary decoder's confidence
    features and list, and every decoder's one-to-one answer (what export hands over) and its score."""

    src: np.ndarray  # (n,) KG1 ids
    tgt: np.ndarray  # (n,) their gold KG2 ids
    X: np.ndarray  # (n, f) the primary decoder's confidence features
    names: list[str]
    cand: np.ndarray  # (n, <= LABELLED_LIST) the primary decoder's list, global ids, -1 padded
    score: np.ndarray
    answer: dict[str, np.ndarray]  # decoder -> (n,) its one-to-one match (global id, -1: none)
    answer_score: dict[str, np.ndarray]  # decoder -> (n,) that pair's score (NaN: none)
    dangling: np.ndarray  # (n,) decoded with its gold target hidden: a source without a counterpart

    def right(self, decoder: str) -> np.ndarray:
        """Whether the decoder's one-to-one match of each source is its gold target."""
        return self.answer[decoder] == self.tgt

    def list_right(self) -> np.ndarray:
        """Whether the head of the primary decoder's list is the gold target (the router's label)."""
        return self.cand[:, 0] == self.tgt


def labelled_decode(ctx: RunContext, protocol: str, seeds: Seeds, primary: str, vectors, hide: float = 0.0,
                    seed: int = 0) -> Labelled:
    """The seed links of every fold, each fold decoded without its own links as anchors. ``hide``:
    the share of each fold's sources whose gold target is left out of that fold's targets (seeded):
    simulated dangling sources, whose answers show what the output holds for an entity without a
    counterpart."""
    cfg = ctx.cfg
    ids, kg, vecs = vectors
    test = ctx.pair().links_of("test")
    t_src, t_tgt = test["src"].to_numpy(), test["tgt"].to_numpy()
    s_src, s_tgt = seeds.links["src"].to_numpy(), seeds.links["tgt"].to_numpy()
    known_links = seed_links(ctx.pair())
    k_src, k_tgt = known_links["src"].to_numpy(), known_links["tgt"].to_numpy()
    parts: dict[str, list] = {k: [] for k in ("src", "tgt", "X", "cand", "score", "dangling")}
    answer: dict[str, list] = {d: [] for d in cfg.decode.decoders}
    answer_score: dict[str, list] = {d: [] for d in cfg.decode.decoders}
    names: list[str] = []
    # the anchors' folds: the seed links', then -1 for a collaboration round's pseudo-seeds (the last anchors)
    anchor_fold = np.concatenate([seeds.fold, np.full(len(seeds.graphs.anchors) - len(seeds.fold), -1, np.int64)])
    for j in range(int(seeds.fold.max()) + 1 if len(seeds.fold) else 0):
        f_src, f_tgt = s_src[seeds.fold == j], s_tgt[seeds.fold == j]
        # the protocol's pool with fold j's links in it (all-targets: the pool already holds them)
        q, b = protocol_sets(protocol, np.concatenate([t_src, f_src]), np.concatenate([t_tgt, f_tgt]), ids, kg)
        dangling = np.zeros(len(f_src), bool)
        if hide > 0:
            rng = np.random.default_rng([seed, j])
            dangling[rng.permutation(len(f_src))[:int(round(hide * len(f_src)))]] = True
            b = np.setdiff1d(b, f_tgt[dangling])  # their counterparts are not in this fold's KG2
        Q, B = vecs[rows_of(ids, q)], vecs[rows_of(ids, b)]
        s2t_score, s2t = knn(Q, B, cfg.retrieve.k, cfg.retrieve)
        t2s_score, t2s = knn(B, Q, cfg.retrieve.k, cfg.retrieve)
        g = dataclasses.replace(seeds.graphs, anchors=seeds.graphs.anchors[anchor_fold != j])
        # the lists as the retrieve and decode stages make a test source's: structural candidates
        # from the other folds' anchors, and the other folds' seed links as facts (fold j's are not)
        if cfg.retrieve.structural_k:
            s2t, s2t_score, t2s, t2s_score, _ = with_structural(g, q, b, Q, B, s2t, s2t_score, t2s, t2s_score,
                                                                cfg.retrieve.structural_k, cfg.retrieve.structural_hub_degree)
        if cfg.decode.seeds_as_facts:
            known = ~np.isin(k_src, f_src)
            s2t, s2t_score, t2s, t2s_score = known_out_of_pool(s2t, s2t_score, t2s, t2s_score, q, b,
                                                               k_src[known], k_tgt[known])
        decoded = list(run_decoders(cfg.decode.decoders, s2t, s2t_score, t2s, t2s_score, q, b, cfg.decode, lambda: g))
        lists = {d.name: (d.idx, d.score) for d in decoded}
        X, names, _ = features(lists, t2s, t2s_score, q, b, g, primary)
        rows = rows_of(q, f_src)
        parts["X"].append(X[rows])
        parts["src"].append(f_src)
        parts["tgt"].append(f_tgt)
        parts["dangling"].append(dangling)
        for d in decoded:  # the fold's sources' one-to-one answers, made with the pool's as a test source's are
            tgt, w = np.full(len(q), -1, np.int64), np.full(len(q), np.nan, np.float32)
            tgt[d.match_rows], w[d.match_rows] = b[d.match_cols], d.match_score
            answer[d.name].append(tgt[rows])
            answer_score[d.name].append(w[rows])
        idx, score = lists[primary]
        keep = min(LABELLED_LIST, idx.shape[1])
        top = np.argsort(-np.where(idx[rows] >= 0, score[rows], -np.inf), axis=1, kind="stable")[:, :keep]
        li = np.take_along_axis(idx[rows], top, 1)
        parts["cand"].append(np.where(li >= 0, b[np.maximum(li, 0)], -1))
        parts["score"].append(np.take_along_axis(score[rows], top, 1).astype(np.float32))
    cat = {k: np.concatenate(v) for k, v in parts.items()}
    return Labelled(src=cat["src"], tgt=cat["tgt"], X=cat["X"], names=list(names), cand=cat["cand"],
                    score=cat["score"], answer={d: np.concatenate(v) for d, v in answer.items()},
                    answer_score={d: np.concatenate(v) for d, v in answer_score.items()}, dangling=cat["dangling"])
