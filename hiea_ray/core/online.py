"""Online decoding: a finished run's decoders applied to one more source row (the Serve tier); Ray-free.

The decode stage's decoders are global — Sinkhorn balances every source against every target, the
structure decoder reads every neighbour's match — but each ends on a step that is local to a row
once the rest of the solve is fixed:

    top1       the row's retrieved list
    csls       2 s(q, t) - r_S(q) - r_T(t), with r_T of each target from the run's t2s lists
    sinkhorn   the solve ends on a row normalization: plan[q, t] = K[q, t] v[t] / sum_t' K[q, t'] v[t']
               over the row's candidate edges, v the targets' scaling of the converged solve
    structure  the same with K on s + beta * c(q, t), c the neighbour consistency under the last
               round's matches (best_t of every KG1 entity, best_s of every KG2 entity)

``DecoderState.of`` records that state while re-running the run's decoders (the lists it gets
back must equal the decode stage's: checked by the caller). For a source of the run, its row then
comes out as the decode stage wrote it (within float tolerance of a re-encoded vector); for a new
entity (or a KG1 entity outside the protocol's sources) it is the row the same solve would give
it with the targets' scaling held fixed. The router's features come from those lists
(``features``) exactly as ``hiea_ray.run.labelled.features`` makes them.

A row's candidate edges: its top-k targets and the targets whose own top-k lists it is in (the
run's t2s lists for a source of the run; for a new query, the targets it would enter: similarity
above the last entry of their list). Memory: O(m) per target array, O(entities) for the matches.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp

from hiea_ray.core import decode as dec
from hiea_ray.core.router import confidence_features, primary_decoder


@dataclass
class Query:
    """One source row: its top-k targets (local indices, -1 padded) with similarities; its reverse
    edges (targets whose lists hold it) and their similarities; its neighbours (adj_s rows); its
    row among the run's sources (-1: not one of them)."""

    s2t: np.ndarray
    s2t_score: np.ndarray
    rev: np.ndarray
    rev_score: np.ndarray
    neighbours: np.ndarray
    src_row: int = -1


@dataclass
class DecoderState:
    """What decodes one more row as the run decoded its rows (see the module doc)."""

    decoders: list[str]
    primary: str
    k: int
    csls_k: int
    tau: float
    beta: float
    rounds: int
    tgt_rows: np.ndarray  # (m,) adj_t row of each local target
    r_tgt: np.ndarray  # (m,) CSLS r_T
    t2s_top: np.ndarray  # (m,) each target's best source (local row, -1 none) and its similarity
    t2s_top_score: np.ndarray
    t2s_last: np.ndarray  # (m,) the similarity of the last entry of a full t2s list (-inf: not full)
    adj_s: sp.csr_matrix
    adj_t: sp.csr_matrix
    match_t: np.ndarray  # (n_s,) adj_t row matched to each adj_s row for the consistency feature (-1)
    v_sink: np.ndarray | None = None
    v_struct: np.ndarray | None = None
    best_t: np.ndarray | None = None  # (n_s,) structure's last-round matches
    best_s: np.ndarray | None = None  # (n_t,)
    rev_of: dict = field(default_factory=dict)  # source row -> (targets, sims) from the t2s lists

    @classmethod
    def of(cls, c, route_primary: str, s2t, s2t_score, t2s, t2s_score, q, b, graphs, state: dict,
           lists: dict) -> "DecoderState":
        """From the run's retrieved lists, its decoders' ``state`` (``run_decoders(state=...)``) and
        their output ``lists`` (decoder -> (idx, score)); ``graphs``: the SeedGraphs used."""
        from hiea_ray.core.router import top2

        m = len(b)
        primary = primary_decoder(route_primary, c.decoders)
        src_rows, tgt_rows = graphs.rows(q, b)
        tb, ts, _ = top2(t2s, t2s_score)
        full = (t2s >= 0).all(axis=1) if t2s.shape[1] else np.zeros(m, bool)
        last = np.where(full, t2s_score[:, -1] if t2s.shape[1] else -np.inf, -np.inf).astype(np.float32)
        # the consistency feature's matches: the sources' primary best, then the anchors (first wins)
        idx, score = lists[primary]
        p_best = idx[np.arange(len(idx)), np.argmax(np.where(idx >= 0, score, -np.inf), axis=1)]
        ok = p_best >= 0
        m_row = np.concatenate([src_rows[ok], graphs.anchors[:, 0]])
        m_col = np.concatenate([tgt_rows[p_best[ok]], graphs.anchors[:, 1]])
        m_row, keep = np.unique(m_row, return_index=True)
        match_t = np.full(graphs.adj_s.shape[0], -1, np.int64)
        match_t[m_row] = m_col[keep]
        # reverse edges: for each source row, the targets whose t2s lists hold it
        r, cidx = t2s.ravel(), np.repeat(np.arange(m, dtype=np.int64), t2s.shape[1])
        w = t2s_score.ravel()
        ok = r >= 0
        order = np.argsort(r[ok], kind="stable")
        rr, cc, ww = r[ok][order], cidx[ok][order], w[ok][order]
        bounds = np.searchsorted(rr, np.arange(len(q) + 1))
        rev_of = {i: (cc[bounds[i]:bounds[i + 1]], ww[bounds[i]:bounds[i + 1]]) for i in range(len(q))}
        st = state.get("structure", {})
        return cls(
            decoders=list(c.decoders), primary=primary, k=s2t.shape[1], csls_k=c.csls_k, tau=c.sinkhorn_tau,
            beta=c.structure_beta, rounds=c.structure_rounds, tgt_rows=tgt_rows,
            r_tgt=dec.topk_mean(t2s_score, c.csls_k), t2s_top=tb, t2s_top_score=ts.astype(np.float32),
            t2s_last=last, adj_s=graphs.adj_s, adj_t=graphs.adj_t, match_t=match_t,
            v_sink=state.get("sinkhorn", {}).get("v"), v_struct=st.get("v"), best_t=st.get("best_t"),
            best_s=st.get("best_s"), rev_of=rev_of,
        )

    # --- queries -------------------------------------------------------------------------------

    def query(self, s2t: np.ndarray, s2t_score: np.ndarray, neighbours: np.ndarray, src_row: int = -1,
              sims: np.ndarray | None = None) -> Query:
        """A row from its retrieved top-k. Reverse edges: the run's for a source of the run; else
        the targets whose (full) t2s list it would enter, from ``sims`` (m,) = its similarity to
        every target (None: none)."""
        if src_row >= 0:
            rev, rev_score = self.rev_of[src_row]
        elif sims is not None:
            rev = np.flatnonzero(sims > self.t2s_last)
            rev_score = sims[rev].astype(np.float32)
        else:
            rev, rev_score = np.zeros(0, np.int64), np.zeros(0, np.float32)
        return Query(np.asarray(s2t, np.int64), np.asarray(s2t_score, np.float32), np.asarray(rev, np.int64),
                     np.asarray(rev_score, np.float32), np.unique(np.asarray(neighbours, np.int64)), src_row)

    def _plan_row(self, qr: Query, score_fn, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One row of the plan (as ``decode.sinkhorn`` scales it), its top k."""
        cols = np.concatenate([qr.s2t, qr.rev])
        vals = np.concatenate([score_fn(qr.s2t, qr.s2t_score), score_fn(qr.rev, qr.rev_score)])
        ok = (cols >= 0) & np.isfinite(vals)
        cols, vals = cols[ok], vals[ok]
        cols, first = np.unique(cols, return_index=True)  # one edge per target, the top-k's value first
        g = sp.csr_matrix((np.exp((vals[first].astype(np.float64) - 1.0) / self.tau),
                           (np.zeros(len(cols), np.int64), cols)), shape=(1, len(v)))
        kv = g @ v
        u = np.divide(1.0, kv, out=np.zeros_like(kv), where=kv > 0)
        g.data *= np.repeat(u, np.diff(g.indptr))
        g.data *= v[g.indices]
        return dec.csr_topk(g, self.k)

    def consistency(self, qr: Query, targets: np.ndarray) -> np.ndarray:
        """c(q, t) for local targets (``structure.consistency`` for one row whose neighbours are given)."""
        out = np.zeros(len(targets), np.float32)
        ok = targets >= 0
        if not ok.any():
            return out
        rows = self.tgt_rows[targets[ok]]
        nb = qr.neighbours
        at = self.adj_t
        mapped = self.best_t[nb]
        mapped = mapped[mapped >= 0]  # s' in N(q) whose match lies in N(t): counted with multiplicity
        fwd = np.asarray(at[rows][:, mapped].sum(axis=1)).ravel() if len(mapped) else np.zeros(len(rows))
        in_nb = np.zeros(self.adj_s.shape[0], bool)
        in_nb[nb] = True
        rev = np.zeros(len(rows))
        for i, t in enumerate(rows):  # t' in N(t) whose match lies in N(q)
            bs = self.best_s[at.indices[at.indptr[t]:at.indptr[t + 1]]]
            rev[i] = in_nb[bs[bs >= 0]].sum()
        deg_s = np.int64(max(len(nb), 1))
        deg_t = np.maximum(np.diff(at.indptr)[rows], 1).astype(np.int64)
        # the same arithmetic as structure.consistency (float32 counts over int degrees)
        out[ok] = 0.5 * (fwd.astype(np.float32) / deg_s + rev.astype(np.float32) / deg_t)
        return out

    def decode(self, qr: Query) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """decoder -> (idx (1, k) local targets, score (1, k)) for one row, as the run's decoders."""
        s2t, s = qr.s2t[None, :], qr.s2t_score[None, :]
        out: dict = {}
        sink = None
        for name in self.decoders:
            if name == "top1":
                out[name] = (s2t, s)
            elif name == "csls":
                out[name] = dec.csls_rows(s2t, s, self.r_tgt, self.csls_k)
            elif name in ("sinkhorn", "structure"):
                if sink is None:
                    sink = self._plan_row(qr, lambda t, w: w, self.v_sink)
                out[name] = sink
                if name == "structure" and self.rounds > 0:
                    b = np.float32(self.beta)
                    out[name] = self._plan_row(
                        qr, lambda t, w: (w + b * self.consistency(qr, t)).astype(np.float32), self.v_struct)
            else:
                raise ValueError(f"unknown decoder {name!r}")
        return out

    def features(self, qr: Query, lists: dict) -> tuple[np.ndarray, list[str], int]:
        """(X (1, f), feature names, the primary decoder's best local target or -1), as ``hiea_ray.run.labelled.features``."""
        idx, score = lists[self.primary]
        s = np.where(idx >= 0, score, -np.inf)
        p = int(idx[0, int(np.argmax(s[0]))]) if np.isfinite(s).any() else -1
        if p < 0:
            mutual = np.array([False])
        elif qr.src_row >= 0:
            mutual = np.array([self.t2s_top[p] == qr.src_row])
        else:  # a new row is the target's best source only when it beats the current best
            sim = qr.s2t_score[qr.s2t == p]
            mutual = np.array([bool(len(sim)) and float(sim[0]) > float(self.t2s_top_score[p])])
        cons = np.array([np.nan])
        if p >= 0:
            mapped = self.match_t[qr.neighbours]
            mapped = mapped[mapped >= 0]
            if len(mapped):
                row = self.tgt_rows[p]
                nbr_t = self.adj_t.indices[self.adj_t.indptr[row]:self.adj_t.indptr[row + 1]]
                cons = np.array([np.isin(mapped, nbr_t).sum() / len(mapped)])
        X, names, _ = confidence_features(lists, self.primary, consistency=cons, degree=np.array([len(qr.neighbours)]),
                                          mutual=mutual)
        return X, names, p
