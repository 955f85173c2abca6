"""The HIEA tier's prompts as data: training / validation examples (``llm_train``) and the routed
sources' prompts (``llm``), built on the driver from the KG pair and the small models' lists.

- Bridges: a neighbour whose counterpart is known — a seed link, or a source the router judged
  certain (its small-model answer) — is shown with it (``core.prompt.Neighbourhoods``).
- Training examples: train links (``llm.max_train_links``, seeded sample); candidates = the top C
  of the retriever's ranking over *all* KG2 entities (the gold put at a random slot when missed; a
  share ``llm.none_fraction`` with the gold removed: answer "none"). Validation
  (``llm.validation``): "routed" — the labelled sources the router would route (the route stage's
  out-of-fold ``labelled.parquet``), a share held out of training and shown exactly the candidates
  a routed test source gets; the rest of them join the training examples — or "links" — the valid
  links built as the training ones. ``small`` is the option the small model ranks first (its
  accuracy on the same examples is the baseline the LLM must beat).
- A prompt row: src, text (chat-wrapped), vectors (the slot entities' retriever vectors, flattened,
  zero-padded to C + 1 slots), n_options (candidates + "none"), answer (-1 at inference), options
  (candidate ids in option order, -1 padded), tokens.
"""

from __future__ import annotations

import logging

import numpy as np
import pyarrow as pa

from hiea_ray.core.prompt import EntityView, Neighbourhoods, Prompt, build_prompt, training_candidates
from hiea_ray.core.verbalize import relation_label
from hiea_ray.io import embeddings_column, rows_of

log = logging.getLogger("hiea_ray")


def neighbourhoods(pair, counterpart_links: list[tuple[np.ndarray, np.ndarray]], max_facts: int) -> Neighbourhoods:
    """The pair's entities as prompt views; ``counterpart_links``: (src ids, tgt ids) arrays whose
    pairs are known or certain matches (shown as bridges both ways)."""
    ent = pair.entities
    ids = ent["id"].to_numpy()
    names = ent["name"].to_pylist()
    name_of = dict(zip(ids.tolist(), names))
    bridges: dict[int, str] = {}
    for s, t in counterpart_links:
        for a, b in zip(s.tolist(), t.tolist()):
            if a >= 0 and b >= 0:
                bridges[a] = name_of[b]
                bridges[b] = name_of[a]
    rel = pair.rel_triples
    return Neighbourhoods(ids, names, rel["head"].to_numpy(), rel["relation"].to_pylist(), rel["tail"].to_numpy(),
                          counterpart=bridges, max_facts=max_facts)


def one_prompt(key: int, source: EntityView, cand: list[int], cand_views: list[EntityView], fmt, budget: int, seed: int,
               gold: int | None = None) -> tuple[Prompt, list[int]]:
    """One source's prompt (options in a seeded order: ``key`` + ``seed``) and the candidate ids
    in option order; what ``prompt_table`` and the Serve tier's LLM deployment both build."""
    p = build_prompt(source, cand_views, fmt.count, budget, np.random.default_rng([seed, key]), gold=gold, slot=fmt.slot,
                     slot_last=getattr(fmt, "slot_last", False))
    return p, [cand[j] for j in p.order]


def prompt_table(src: np.ndarray, cands: np.ndarray, gold: np.ndarray | None, nb: Neighbourhoods, fmt, budget: int,
                 ids: np.ndarray, vecs: np.ndarray, c: int, seed: int, small_first: np.ndarray | None = None) -> pa.Table:
    """One prompt row per source (see the module doc). cands: (n, >= c) candidate ids, -1 padded;
    gold: the right target per source (training / validation) or None; small_first: the id the
    small model ranks first (for the ``small`` baseline column)."""
    slots = c + 1
    dim = vecs.shape[1]
    rows: dict[str, list] = {k: [] for k in ("src", "text", "n_options", "answer", "tokens", "small")}
    flat = np.zeros((len(src), slots * dim), np.float32)
    options = np.full((len(src), c), -1, np.int64)
    for i, s in enumerate(src):
        cand = [int(x) for x in cands[i, :c] if x >= 0]
        # the example's own link is never shown as a bridge (at inference a routed source has none)
        hide = frozenset((int(s),) if gold is None else (int(s), int(gold[i])))
        view = lambda e: nb.view(int(e), relation_label, hide)  # noqa: E731
        p, shown = one_prompt(int(s), view(s), cand, [view(x) for x in cand], fmt, budget, seed,
                              None if gold is None else int(gold[i]))
        options[i, : len(shown)] = shown
        v = vecs[rows_of(ids, np.asarray(p.slot_ids, np.int64))]
        flat[i, : v.size] = v.ravel()
        rows["src"].append(int(s))
        rows["text"].append(fmt.wrap(p.text))
        rows["n_options"].append(len(shown) + 1)
        rows["answer"].append(-1 if p.answer is None else p.answer)
        rows["tokens"].append(p.tokens)
        first = -1 if small_first is None else int(small_first[i])
        rows["small"].append(shown.index(first) if first in shown else -1)
    return pa.table({
        "src": pa.array(rows["src"], pa.int64()), "text": pa.array(rows["text"], pa.string()),
        "vectors": embeddings_column(flat), "n_options": pa.array(rows["n_options"], pa.int64()),
        "answer": pa.array(rows["answer"], pa.int64()), "options": embeddings_column(options),
        "tokens": pa.array(rows["tokens"], pa.int64()), "small": pa.array(rows["small"], pa.int64()),
    })


def routed_split(labelled: pa.Table, opts) -> tuple[pa.Table, pa.Table]:
    """(train part, validation part) of the route stage's labelled sources (``labelled.parquet``)
    that the router would send to the LLM: the examples made exactly as a routed test source's
    (out-of-fold primary lists). A seeded share ``llm.routed_valid_fraction`` (at most
    ``llm.valid_links``) is held out for validation; the rest trains."""
    routed = labelled.filter(labelled["routed"])
    rng = np.random.default_rng([opts.scaling.seed, 1])
    n_valid = int(round(opts.routed_valid_fraction * routed.num_rows))
    if opts.valid_links:
        n_valid = min(n_valid, opts.valid_links)
    is_valid = np.zeros(routed.num_rows, bool)
    is_valid[rng.choice(routed.num_rows, n_valid, replace=False)] = True
    return routed.filter(pa.array(~is_valid)), routed.filter(pa.array(is_valid)).sort_by("src")


def training_tables(links: pa.Table, ranked_of, nb: Neighbourhoods, fmt, opts, ids, vecs,
                    routed: tuple[pa.Table, pa.Table] | None = None) -> tuple[pa.Table, pa.Table]:
    """(train rows, validation rows). ranked_of(src ids, depth) -> (n, depth) target ids ranked by
    the retriever over all KG2 entities.

    Without ``routed`` (``llm.validation: links``): train rows from the train links, validation
    rows from the valid links, both with the retriever's candidates (gold inserted when missed).
    With ``routed`` (``routed_split``; ``llm.validation: routed``): the train links minus the
    held-out sources, plus the routed training part with their own primary lists (gold inserted
    when missed, as any training example); validation = the held-out part with exactly the
    candidates a routed test source gets (the primary list's top C; the gold is not inserted:
    "none" is the right answer when the list missed it), ``small`` = the primary decoder's top-1."""
    import pyarrow.compute as pc

    seed = opts.scaling.seed
    rng = np.random.default_rng(seed)
    c = opts.candidates
    out = []
    held = set() if routed is None else set(routed[1]["src"].to_pylist())
    splits = [("train", opts.max_train_links)] + ([("valid", opts.valid_links)] if routed is None else [])
    for split, cap in splits:
        t = links.filter(pc.equal(links["split"], split))
        if held:
            t = t.filter(pc.invert(pc.is_in(t["src"], pa.array(sorted(held), pa.int64()))))
        if split == "valid" and t.num_rows == 0:
            log.warning("llm_train: no validation links; validating on train links")
            t = links.filter(pc.equal(links["split"], "train"))
        if cap and t.num_rows > cap:
            t = t.take(np.sort(rng.choice(t.num_rows, cap, replace=False)))
        src, gold = t["src"].to_numpy(), t["tgt"].to_numpy()
        ranked = ranked_of(src, c + 8)
        cands, _ = training_candidates(ranked, gold, c, opts.none_fraction, rng)
        out.append(prompt_table(src, cands, gold, nb, fmt, opts.prompt_tokens, ids, vecs, c, seed, small_first=ranked[:, 0]))
    if routed is not None:
        from hiea_ray.io import column_to_numpy

        hard, valid = routed
        if hard.num_rows:
            src, gold, ranked = hard["src"].to_numpy(), hard["tgt"].to_numpy(), column_to_numpy(hard["cand"])
            cands, _ = training_candidates(ranked, gold, c, opts.none_fraction, rng)
            out[0] = pa.concat_tables([out[0], prompt_table(src, cands, gold, nb, fmt, opts.prompt_tokens, ids, vecs, c,
                                                            seed, small_first=ranked[:, 0])])
        ranked = column_to_numpy(valid["cand"]) if valid.num_rows else np.zeros((0, c), np.int64)
        out.append(prompt_table(valid["src"].to_numpy(), ranked, valid["tgt"].to_numpy(), nb, fmt, opts.prompt_tokens,
                                ids, vecs, c, seed, small_first=ranked[:, 0] if len(ranked) else None))
    train = out[0]
    return train.take(rng.permutation(train.num_rows)), out[1]
