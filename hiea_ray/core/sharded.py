"""Decoding over row shards of one protocol's candidate lists, the global state small; Ray-free.

A ``ListShard`` holds the source rows [lo, hi) of the lists: their s2t lists and the t2s edges
whose source falls in the range, read in batches from the two list files (the seed links as facts
when given, as ``run.candidate_lists`` applies them). ``decode_sharded`` drives any number of
shards through ``call(method, *args) -> [each shard's answer]`` (shards in this process in the
tests, Ray actors in ``hiea_ray.ops.decode``); what passes between them is O(m), never O(n k):

    top1       each shard's rows as they are
    csls       r_S(t) of every target (m floats, each shard reads it off the t2s file), rows scored alone
    sinkhorn   per iteration the target scaling v (m floats) out, each shard's column sums (m floats
               per block of ``core.decode.SUM_ROWS`` rows) back and added in the single process's
               order, so the lists are its bits; the plan's top k per row at the end
    matching   rounds of locally dominant edges: each shard's best alive edge per column (score,
               row) merged, then each shard matches its rows whose best alive edge is its column's
               best: ``core.decode.greedy_match``'s matching, in its order

Memory per shard O((hi - lo) k) plus its graph; the driver O(m) and the matches.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from hiea_ray.core import decode as dec
from hiea_ray.core.candidates import facts_rows, known_rows
from hiea_ray.io import column_to_numpy, ids_or_pad, to_local

SHARDED = ("top1", "csls", "sinkhorn")  # the decoders run over shards; structure runs in one process


def list_batches(path: Path, rows: int = 65536) -> Iterator[tuple[int, np.ndarray, np.ndarray, np.ndarray]]:
    """A ranked-list file (``io.write_lists``) in batches: (first row, src ids, cand ids, scores)."""
    start = 0
    for rb in pq.ParquetFile(path).iter_batches(batch_size=rows):
        t = pa.Table.from_batches([rb])
        yield start, t["src"].to_numpy(), column_to_numpy(t["cand"]), column_to_numpy(t["score"])
        start += t.num_rows


class Facts:
    """The seed links (ids) as masks over the sorted source ids q and target ids b: each entity's
    own counterpart (-1: none) and which entities are taken (``core.candidates.known_out_of_pool``)."""

    def __init__(self, q: np.ndarray, b: np.ndarray, known_src: np.ndarray, known_tgt: np.ndarray):
        qi, bi = known_rows(q, b, known_src, known_tgt)
        self.own_s, self.own_t = np.full(len(q), -1, np.int64), np.full(len(b), -1, np.int64)
        self.own_s[qi], self.own_t[bi] = bi, qi
        self.taken_s, self.taken_t = np.zeros(len(q), bool), np.zeros(len(b), bool)
        self.taken_s[qi], self.taken_t[bi] = True, True


class ListShard:
    """Source rows [lo, hi) of a protocol's lists (``s2t`` / ``t2s`` files, sorted ids q / b)."""

    def __init__(self, s2t: str, t2s: str, q: np.ndarray, b: np.ndarray, lo: int, hi: int, csls_k: int,
                 facts: Facts | None = None, batch_rows: int = 65536):
        self.q, self.b, self.lo, self.hi, self.m = q, b, lo, hi, len(b)
        idx, score = [], []
        for start, _, cand, sc in list_batches(Path(s2t), batch_rows):
            a, z = max(lo, start), min(hi, start + len(cand))
            if a < z:
                idx.append(to_local(b, cand[a - start:z - start]))
                score.append(sc[a - start:z - start])
        width = idx[0].shape[1] if idx else 1
        self.s2t = np.concatenate(idx) if idx else np.full((0, width), -1, np.int64)
        self.s2t_score = np.concatenate(score) if score else np.zeros((0, width), np.float32)
        if len(self.s2t) != hi - lo:
            raise RuntimeError(f"decode: {s2t} holds {len(self.s2t)} of the rows {lo}..{hi}")
        if facts is not None:
            self.s2t, self.s2t_score = facts_rows(self.s2t, self.s2t_score, facts.own_s[lo:hi], facts.taken_t)
        self._reverse_edges(Path(t2s), csls_k, facts, batch_rows)
        self.lists: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def _reverse_edges(self, t2s: Path, csls_k: int, facts: Facts | None, batch_rows: int) -> None:
        """The t2s edges into this shard's rows, grouped by row in the t2s files' order; and every
        target's r_S(t) (CSLS), both as ``run.candidate_lists`` + ``core.decode`` compute them."""
        self.r_tgt = np.zeros(self.m, np.float32)
        rows, tgts, vals = [], [], []
        for start, _, cand, sc in list_batches(t2s, batch_rows):
            idx = to_local(self.q, cand)
            if facts is not None:
                idx, sc = facts_rows(idx, sc, facts.own_t[start:start + len(idx)], facts.taken_s)
            self.r_tgt[start:start + len(idx)] = dec.topk_mean(sc, csls_k)
            src, flat = idx.ravel(), sc.ravel()
            pos = np.flatnonzero((src >= self.lo) & (src < self.hi) & np.isfinite(flat))
            rows.append(src[pos] - self.lo)
            tgts.append(start + pos // idx.shape[1])
            vals.append(flat[pos])
        r = np.concatenate(rows) if rows else np.zeros(0, np.int64)
        o = np.argsort(r, kind="stable")
        self.rev_rows, self.rev_tgt = r[o], (np.concatenate(tgts) if tgts else np.zeros(0, np.int64))[o]
        self.rev_val = (np.concatenate(vals) if vals else np.zeros(0, np.float32))[o]
        self.rev_ptr = np.zeros(self.hi - self.lo + 1, np.int64)
        np.cumsum(np.bincount(self.rev_rows, minlength=self.hi - self.lo), out=self.rev_ptr[1:])

    def graph(self):
        """This shard's rows of ``core.decode.candidate_graph`` (the same rows, edges and order)."""
        def reverse(lo: int, hi: int):
            a, z = self.rev_ptr[lo], self.rev_ptr[hi]
            return self.rev_rows[a:z] - lo, self.rev_tgt[a:z], self.rev_val[a:z]
        return dec.graph_of(self.s2t, self.s2t_score, self.m, len(self.rev_rows), reverse)

    # decoders
    def decode(self, name: str, csls_k: int) -> None:
        if name == "top1":
            self.lists[name] = (self.s2t, self.s2t_score)
        elif name == "csls":
            self.lists[name] = dec.csls_rows(self.s2t, self.s2t_score, self.r_tgt, csls_k)
        else:
            raise ValueError(f"decoder {name!r} is not row-wise")

    def sink_begin(self, tau: float, rows: int | None = None) -> None:
        self.g = dec.kernel(self.graph(), tau)
        self.blocks = dec.column_blocks(self.g, self.lo, rows)

    def sink_step(self, v: np.ndarray) -> list[np.ndarray]:
        """One Sinkhorn iteration's share: this shard's rows scaled by v -> each of its row blocks'
        column sums (m,) (``core.decode.column_blocks``: the driver adds them in block order)."""
        return dec.column_sums(self.blocks, dec.reciprocal(self.g @ v))

    def sink_end(self, v: np.ndarray) -> None:
        self.lists["sinkhorn"] = dec.plan_topk(self.g, v, self.s2t.shape[1])
        del self.g, self.blocks

    def write(self, name: str, out_dir: str) -> str:
        """This shard's rows of decoder ``name``'s lists -> ``out_dir/part-<lo>.parquet`` (ids)."""
        from hiea_ray.io import write_lists

        idx, score = self.lists[name]
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        path = Path(out_dir) / f"part-{self.lo:012d}.parquet"
        tmp = path.with_suffix(".tmp")
        write_lists(tmp, self.q[self.lo:self.hi], ids_or_pad(self.b, idx), score)
        tmp.replace(path)
        return str(path)

    # greedy matching in rounds (see the module docstring)
    def match_begin(self, name: str, threshold: float | None) -> None:
        idx, score = self.lists[name]
        k = idx.shape[1]
        r = np.repeat(np.arange(self.lo, self.hi, dtype=np.int64), k)
        c, w = idx.ravel(), score.ravel().astype(np.float64)
        ok = (c >= 0) & np.isfinite(w)
        if threshold is not None:
            ok &= w >= threshold
        self.er, self.ec, self.ew = r[ok], c[ok], w[ok]
        self.by_row = np.lexsort((self.ec, -self.ew, self.er))  # per row best first (score, then column)
        self.by_col = np.lexsort((self.er, -self.ew, self.ec))  # per column best first (score, then row)
        self.alive = np.ones(len(self.er), bool)
        self.used_c = np.zeros(self.m, bool)

    def col_best(self, taken_cols: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The columns matched in the last round are taken; -> per column, this shard's best alive
        edge (columns, scores, rows)."""
        self.used_c[taken_cols] = True
        self.alive &= ~self.used_c[self.ec]
        pos = self.by_col[self.alive[self.by_col]]
        c = self.ec[pos]
        first = pos[np.r_[True, c[1:] != c[:-1]]] if len(pos) else pos
        return self.ec[first], self.ew[first], self.er[first]

    def take(self, cols: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Given each column's best alive edge over all shards (its row): this shard's rows whose
        best alive edge is its column's best are matched -> (rows, columns, scores)."""
        best_row = np.full(self.m, -1, np.int64)
        best_row[cols] = rows
        pos = self.by_row[self.alive[self.by_row]]
        r = self.er[pos]
        first = pos[np.r_[True, r[1:] != r[:-1]]] if len(pos) else pos
        dom = first[best_row[self.ec[first]] == self.er[first]]
        self.used_c[self.ec[dom]] = True
        used_r = np.zeros(self.hi - self.lo, bool)
        used_r[self.er[dom] - self.lo] = True
        self.alive &= ~(used_r[self.er - self.lo] | self.used_c[self.ec])
        return self.er[dom], self.ec[dom], self.ew[dom]


Call = Callable[..., list]


def sinkhorn_sharded(call: Call, m: int, tau: float, iters: int, progress=None, rows: int | None = None) -> np.ndarray:
    """``core.decode.sinkhorn`` over the shards (in row order, each starting at a multiple of
    ``rows``): the driver holds v and adds the row blocks' column sums in the single process's order;
    -> the final target scaling v (``decode.sinkhorn``'s ``state["v"]``, the same bits)."""
    call("sink_begin", tau, rows)
    v = np.ones(m)
    for _ in range(iters):
        v = dec.reciprocal(dec.add_in_order((p for parts in call("sink_step", v) for p in parts), m))
        if progress is not None:
            progress(1)
    call("sink_end", v)
    return v


def greedy_sharded(call: Call, m: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``core.decode.greedy_match`` over the shards (after ``match_begin``): the same pairs, in the
    same order (round by round, each round by descending score, then row, then column)."""
    out_r, out_c, out_w = [], [], []
    taken = np.zeros(0, np.int64)
    while True:
        parts = call("col_best", taken)
        c = np.concatenate([p[0] for p in parts])
        if len(c) == 0:
            break
        w, r = np.concatenate([p[1] for p in parts]), np.concatenate([p[2] for p in parts])
        o = np.lexsort((r, -w, c))
        first = o[np.r_[True, c[o][1:] != c[o][:-1]]]
        got = call("take", c[first], r[first])
        rr, cc, ww = (np.concatenate([g[i] for g in got]) for i in range(3))
        o = np.lexsort((cc, rr, -ww))
        out_r.append(rr[o])
        out_c.append(cc[o])
        out_w.append(ww[o])
        taken = cc
    if not out_r:
        e = np.array([], dtype=np.int64)
        return e, e, np.array([], dtype=np.float64)
    return np.concatenate(out_r), np.concatenate(out_c), np.concatenate(out_w)


def shard_bounds(n: int, shards: int, rows: int | None = None) -> list[int]:
    """Row bounds of at most ``shards`` shards of n rows, each starting at a multiple of ``rows``
    (Sinkhorn's column-sum blocks), as even as the blocks allow."""
    rows = rows or dec.SUM_ROWS
    blocks = -(-n // rows)
    cuts = np.unique(np.round(np.linspace(0, blocks, min(shards, max(blocks, 1)) + 1)).astype(int))
    return sorted({min(n, int(c) * rows) for c in cuts} | {0, n})


def decode_sharded(call: Call, names: list[str], m: int, c, progress=None,
                   rows: int | None = None) -> Iterator[tuple[str, tuple]]:
    """Runs each named row-wise or Sinkhorn decoder (``SHARDED``) over the shards (``shard_bounds``
    with ``rows``), leaving its lists in them (``write``), and yields (name, its greedy matching
    (rows, columns, scores))."""
    for name in names:
        if name == "sinkhorn":
            sinkhorn_sharded(call, m, c.sinkhorn_tau, c.sinkhorn_iters, progress, rows)
        else:
            call("decode", name, c.csls_k)
        call("match_begin", name, c.match_threshold)
        yield name, greedy_sharded(call, m)
