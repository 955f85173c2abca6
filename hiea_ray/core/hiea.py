"""The "hiea" decoder: the small models' answers where the router is certain, the LLM's where it
is not; Ray-free.

- Ranked lists: a certain source keeps the primary decoder's list. An uncertain source's first C
  entries (the candidates its prompt showed) are re-ranked by
  ``(1 - fusion) * P_llm(candidate) + fusion * P_small(candidate)`` (P_small: the primary
  decoder's scores over the same C, clipped at 0 and normalised); the rest of its list follows
  unchanged. The "none" option is left out of the ranking.
- One-to-one output: the primary decoder's matches of certain sources; then each uncertain source
  whose best candidate beats "none" takes it (most confident first) when no one holds that target
  yet; a source whose "none" wins abstains (no pair: counts against recall, not precision).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hiea_ray.io import rows_of


@dataclass
class Merged:
    cand: np.ndarray  # (n, k) ids, the hiea ranked lists of sources q
    match_src: np.ndarray
    match_tgt: np.ndarray
    abstained: np.ndarray  # source ids whose LLM answer was "none"
    llm_pick: np.ndarray  # per LLM row: the picked target id (-1 = none), arg-max of the LLM alone


def merge(q: np.ndarray, cand: np.ndarray, score: np.ndarray, match_src: np.ndarray, match_tgt: np.ndarray,
          uncertain: np.ndarray, llm_src: np.ndarray, options: np.ndarray, n_options: np.ndarray, logp: np.ndarray,
          fusion: float = 0.0) -> Merged:
    """q (n,) sorted source ids with the primary decoder's lists cand / score (n, k) and matches;
    uncertain: the routed source ids; per LLM row: its source, options (C candidate ids in option
    order, -1 padded), n_options (candidates + none) and logp (C + 1, -inf padded)."""
    out = cand.copy()
    rows = rows_of(q, llm_src)
    c = options.shape[1]
    p_llm = np.exp(logp.astype(np.float64))
    none_p = p_llm[np.arange(len(rows)), n_options - 1]
    cand_p = p_llm[:, :c].copy()
    have = np.arange(c)[None, :] < (n_options - 1)[:, None]
    cand_p[~have] = -1.0
    if fusion > 0:
        small = small_probs(options, cand[rows], score[rows])
        cand_p = np.where(have, (1 - fusion) * cand_p + fusion * small, -1.0)
    order = np.argsort(-cand_p, axis=1, kind="stable")
    ranked = np.take_along_axis(options, order, axis=1)
    for i, r in enumerate(rows):
        head = [int(t) for t in ranked[i] if t >= 0]
        shown = set(head)
        tail = [int(t) for t in cand[r] if t >= 0 and int(t) not in shown]
        row = (head + tail)[: cand.shape[1]]
        out[r] = -1
        out[r, : len(row)] = row
    best_p = cand_p.max(1)
    answers = np.where(best_p > none_p, ranked[:, 0], -1)
    llm_alone = p_llm[:, :c].copy()
    llm_alone[~have] = -1.0
    llm_pick = np.where(llm_alone.max(1) > none_p, options[np.arange(len(rows)), llm_alone.argmax(1)], -1)
    # one-to-one: certain sources' matches, then the LLM's answers by confidence
    keep = ~np.isin(match_src, uncertain)
    ms, mt = list(match_src[keep]), list(match_tgt[keep])
    taken = set(mt)
    for i in np.argsort(-best_p, kind="stable"):
        t = int(answers[i])
        if t >= 0 and t not in taken:
            ms.append(int(llm_src[i]))
            mt.append(t)
            taken.add(t)
    return Merged(out, np.asarray(ms, np.int64), np.asarray(mt, np.int64), llm_src[answers < 0], llm_pick)


def small_probs(options: np.ndarray, cand: np.ndarray, score: np.ndarray) -> np.ndarray:
    """(n, C) the small model's distribution over each prompt's options: the primary decoder's
    score of each option (looked up in the source's list cand / score, (n, k)), clipped at 0 and
    normalised; 0 for padding and for options not in the list."""
    small = np.zeros(options.shape, np.float64)
    for i in range(len(options)):
        pos = {int(t): j for j, t in enumerate(cand[i]) if t >= 0}
        small[i] = [max(float(score[i, pos[int(t)]]), 0.0) if int(t) >= 0 and int(t) in pos else 0.0 for t in options[i]]
    return small / np.maximum(small.sum(1, keepdims=True), 1e-12)


FUSION_GRID = tuple(round(w, 2) for w in np.linspace(0.0, 1.0, 11))


def choose_fusion(logp: np.ndarray, n_options: np.ndarray, small: np.ndarray, answer: np.ndarray,
                  grid=FUSION_GRID) -> tuple[float, dict]:
    """``llm.fusion: auto``: the weight w of the merge's ``(1 - w) * P_llm + w * P_small`` whose
    top option is right most often on labelled examples (logp (n, C + 1) the LLM's, with "none"
    at n_options - 1; small (n, C); answer: the right option, n_options - 1 = none, which no
    candidate ranking gets right). Ties go to the larger weight (nearer the small model, whose
    accuracy w = 1 is). Returns (w, {w: Hits@1})."""
    c = small.shape[1]
    p = np.exp(logp[:, :c].astype(np.float64))
    have = np.arange(c)[None, :] < (n_options - 1)[:, None]
    acc = {}
    for w in grid:
        mixed = np.where(have, (1 - w) * p + w * small, -1.0)
        acc[float(w)] = round(float(np.mean(mixed.argmax(1) == answer)), 4) if len(answer) else 0.0
    best = max(acc, key=lambda w: (acc[w], w))
    return best, acc


def fusion_weight(fusion, model_folder) -> float:
    """The merge's fusion weight: ``llm.fusion`` as a number, or "auto" = the weight llm_train
    chose on its routed validation examples (``fusion.json`` in the trained model folder)."""
    import json
    from pathlib import Path

    from hiea_ray.errors import UserError

    if fusion != "auto":
        return float(fusion)
    path = Path(model_folder) / "fusion.json" if model_folder else None
    if path is None or not path.is_file():
        raise UserError(f"llm.fusion=auto: {path or 'the LLM model folder'} has no fusion.json (a model trained with "
                        "llm.validation=routed writes it); set llm.fusion to a number")
    return float(json.loads(path.read_text())["fusion"])
