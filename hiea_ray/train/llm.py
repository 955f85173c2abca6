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

log = logging.getLogger(__name__)


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
    """(train part, validation part) of the route stage's labelled sources (``labelled.parquet``):
    examples made exactly as a routed test source's (out-of-fold primary lists, no small model
    trained on them). Of those the router would send to the LLM, a seeded share
    ``llm.routed_valid_fraction`` (at most ``llm.valid_links``) is held out for validation. The
    train part: the other routed ones (``llm.train_on: train``), or every labelled source not held
    out (``labelled`` / ``both``)."""
    routed = labelled.filter(labelled["routed"])
    rng = np.random.default_rng([opts.scaling.seed, 1])
    n_valid = int(round(opts.routed_valid_fraction * routed.num_rows))
    if opts.valid_links:
        n_valid = min(n_valid, opts.valid_links)
    is_valid = np.zeros(routed.num_rows, bool)
    is_valid[rng.choice(routed.num_rows, n_valid, replace=False)] = True
    valid = routed.filter(pa.array(is_valid)).sort_by("src")
    if opts.train_on == "train":
        return routed.filter(pa.array(~is_valid)), valid
    held = np.isin(labelled["src"].to_numpy(), valid["src"].to_numpy())
    return labelled.filter(pa.array(~held)), valid


def training_tables(links: pa.Table, ranked_of, nb: Neighbourhoods, fmt, opts, ids, vecs,
                    routed: tuple[pa.Table, pa.Table] | None = None) -> tuple[pa.Table, pa.Table]:
    """(train rows, validation rows). ranked_of(src ids, depth) -> (n, depth) target ids ranked by
    the retriever over all KG2 entities.

    Without ``routed`` (``llm.validation: links``): train rows from the train links (and a
    collaboration round's pseudo-seed links, split "pseudo"), validation
    rows from the valid links, both with the retriever's candidates (gold inserted when missed).
    With ``routed`` (``routed_split``; ``llm.validation: routed``): the train links minus the
    held-out sources (unless ``llm.train_on: labelled``), plus the labelled training part with
    their own primary lists (gold inserted when missed, as any training example); validation = the
    held-out part with exactly the candidates a routed test source gets (the primary list's top C;
    the gold is not inserted: "none" is the right answer when the list missed it), ``small`` = the
    primary decoder's top-1."""
    import pyarrow.compute as pc

    from hiea_ray.io import column_to_numpy

    seed = opts.scaling.seed
    rng = np.random.default_rng(seed)
    c = opts.candidates

    def table(src, gold, ranked, insert_gold=True):
        cands = training_candidates(ranked, gold, c, opts.none_fraction, rng)[0] if insert_gold else ranked
        return prompt_table(src, cands, gold, nb, fmt, opts.prompt_tokens, ids, vecs, c, seed,
                            small_first=ranked[:, 0] if len(ranked) else None)

    def link_rows(split: str, cap: int, held: np.ndarray) -> pa.Table:
        # a collaboration round's pseudo-seeds (split "pseudo") train like the train links
        splits = ["train", "pseudo"] if split == "train" else [split]
        t = links.filter(pc.is_in(links["split"], pa.array(splits)))
        t = t.filter(pc.invert(pc.is_in(t["src"], pa.array(held, pa.int64()))))
        if split == "valid" and t.num_rows == 0:
            log.warning("llm_train: no validation links; validating on train links")
            t = links.filter(pc.equal(links["split"], "train"))
        if cap and t.num_rows > cap:
            t = t.take(np.sort(rng.choice(t.num_rows, cap, replace=False)))
        src, gold = t["src"].to_numpy(), t["tgt"].to_numpy()
        return table(src, gold, ranked_of(src, c + 8))

    if routed is None:
        none_held = np.zeros(0, np.int64)
        train, valid = link_rows("train", opts.max_train_links, none_held), link_rows("valid", opts.valid_links, none_held)
    else:
        part, held = routed
        parts = [] if opts.train_on == "labelled" else [link_rows("train", opts.max_train_links, held["src"].to_numpy())]
        if part.num_rows:
            parts.append(table(part["src"].to_numpy(), part["tgt"].to_numpy(), column_to_numpy(part["cand"])))
        if not parts:
            from hiea_ray.errors import UserError

            raise UserError("llm.train_on: labelled, but every labelled source is held out for validation: lower "
                            "llm.routed_valid_fraction or use llm.train_on: both")
        train = pa.concat_tables(parts)
        ranked = column_to_numpy(held["cand"])[:, :c] if held.num_rows else np.zeros((0, c), np.int64)
        valid = table(held["src"].to_numpy(), held["tgt"].to_numpy(), ranked, insert_gold=False)
    return train.take(rng.permutation(train.num_rows)), valid
