"""The HIEA tier's one prompt: a source entity and its candidates as lettered options; Ray-free.

    Which option is the same entity as the source? Answer with one letter.
    Source: Yao Ming <ent> | born in: Shanghai (= Shanghai); plays for: Houston Rockets
    A. Yao Ming <ent> | birth place: Shanghai; team: Houston Rockets
    B. Wang Zhizhi <ent> | team: Dallas Mavericks
    C. none of these
    Answer:

- Each entity is its name, a slot token (``SLOT``) where the knowledge adapter puts the entity's
  soft token(s), and as many of its facts as the budget allows ("relation: neighbour"). A
  neighbour the small models aligned with certainty is shown with its counterpart
  ("Shanghai (= Shanghai)"): the certain answers become bridges for the uncertain ones.
- The candidates appear in a seeded random order (the LLM must not learn "A is the retriever's
  top-1"), followed by a "none of these" option.
- A hard token budget: names and slots always, then facts added round-robin over the entities
  (so every candidate gets its first fact before any gets a second) while the prompt fits.
- The answer is one letter: the LLM stage reads the next-token logits of the option letters at
  the end of the prompt (``llm.option_logprobs``), one forward pass, no generation. Or
  (``llm.readout: slots``) each candidate's score is read at its own slot, moved to the end of
  its line, and "none"'s at the end of the prompt: still one pass (``llm.HieaLLM``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

SLOT = "<ent>"
NONE = "none of these"
HEADER = "Which option is the same entity as the source? Answer with one letter."
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


@dataclass
class EntityView:
    """What the prompt shows of one entity: its name and facts, most useful first."""

    id: int
    name: str
    facts: list[str] = field(default_factory=list)


@dataclass
class Prompt:
    text: str
    # option i (letter LETTERS[i]) shows candidates[order[i]]; the last option is "none"
    order: list[int]
    # entity id of each slot, in the order the slots appear in the text (source first)
    slot_ids: list[int]
    # letter index of the gold candidate (the "none" option when the gold is not among them)
    answer: int | None
    tokens: int


def _line(prefix: str, e: EntityView, n_facts: int, slot: str = SLOT, slot_last: bool = False) -> str:
    facts = "; ".join(e.facts[:n_facts])
    if slot_last:  # the slot closes the line: its position has read the whole entity (llm.readout: slots)
        return f"{prefix}{e.name}" + (f" | {facts}" if facts else "") + f" {slot}"
    return f"{prefix}{e.name} {slot}" + (f" | {facts}" if facts else "")


def build_prompt(
    source: EntityView,
    candidates: Sequence[EntityView],
    count_tokens: Callable[[str], int],
    budget: int,
    rng: np.random.Generator,
    gold: int | None = None,
    slot: str = SLOT,
    slot_last: bool = False,
) -> Prompt:
    """The prompt for one source and its candidates, within ``budget`` tokens (``count_tokens``).

    gold: the candidate id that is right (training / evaluation), or None. slot: what marks each
    entity's soft tokens (``SLOT`` once per adapter token); slot_last: at the end of each entity's
    line instead of after its name (``llm.readout: slots`` reads each candidate's score there). Raises ValueError when
    even the names do not fit the budget, or when there are more options than letters."""
    if len(candidates) + 1 > len(LETTERS):
        raise ValueError(f"{len(candidates)} candidates: at most {len(LETTERS) - 1} fit the option letters")
    order = [int(i) for i in rng.permutation(len(candidates))]
    shown = [candidates[i] for i in order]
    entities = [source, *shown]
    n_facts = [0] * len(entities)

    def render() -> str:
        lines = [HEADER, _line("Source: ", source, n_facts[0], slot, slot_last)]
        lines += [_line(f"{LETTERS[i]}. ", e, n_facts[i + 1], slot, slot_last) for i, e in enumerate(shown)]
        lines += [f"{LETTERS[len(shown)]}. {NONE}", "Answer:"]
        return "\n".join(lines)

    text = render()
    used = count_tokens(text)
    if used > budget:
        raise ValueError(f"the names alone take {used} tokens, over the budget of {budget}")
    grew = True
    while grew:  # round-robin: one more fact per entity per pass, while it fits
        grew = False
        for j, e in enumerate(entities):
            if n_facts[j] >= len(e.facts):
                continue
            n_facts[j] += 1
            trial = render()
            t = count_tokens(trial)
            if t <= budget:
                text, used, grew = trial, t, True
            else:
                n_facts[j] -= 1
    answer = None
    if gold is not None:
        hit = [i for i, e in enumerate(shown) if e.id == gold]
        answer = hit[0] if hit else len(shown)
    return Prompt(text, order, [e.id for e in entities], answer, used)


def fact(relation: str, neighbour: str, outgoing: bool, counterpart: str | None = None) -> str:
    """One fact as the prompt shows it: "relation: neighbour" (outgoing) or "relation of:
    neighbour" (incoming), with "(= counterpart)" when the neighbour's counterpart is known."""
    shown = f"{neighbour} (= {counterpart})" if counterpart is not None else neighbour
    return f"{relation}: {shown}" if outgoing else f"{relation} of: {shown}"


def facts_of(entity: int, out_edges: dict, in_edges: dict, names: dict, counterpart: dict | None = None,
             limit: int = 16) -> list[str]:
    """An entity's facts (``fact``) from edge dicts, neighbours with a certain counterpart
    (``counterpart``: id -> name on the other side) first. out_edges / in_edges: entity id ->
    list of (relation label, neighbour id)."""
    counterpart = counterpart or {}
    edges = [(rel, n, True) for rel, n in out_edges.get(entity, [])] + [(rel, n, False) for rel, n in in_edges.get(entity, [])]
    edges.sort(key=lambda e: (e[1] not in counterpart, not e[2], e[0]))  # bridges first, then out, then in
    return [fact(rel, names.get(n, str(n)), out, counterpart.get(n)) for rel, n, out in edges][:limit]


class Neighbourhoods:
    """Entity id -> ``EntityView`` (name + facts) over a KG pair's tables, for prompts; CSR arrays
    (memory O(triples)), facts built on demand for the entities a prompt shows.

    ``counterpart``: entity id -> the name of its certain counterpart in the other KG (seed links,
    and the small models' certain answers): shown as bridges, first."""

    def __init__(self, ids: np.ndarray, names: list[str], head: np.ndarray, relation: list[str], tail: np.ndarray,
                 counterpart: dict[int, str] | None = None, max_facts: int = 12):
        order = np.argsort(ids, kind="stable")
        self.ids = np.asarray(ids)[order]
        self.names = [names[i] for i in order]
        self.rel_names, rel_idx = np.unique(np.asarray(relation, dtype=object), return_inverse=True)
        self.counterpart = counterpart or {}
        self.max_facts = max_facts
        h, t = np.searchsorted(self.ids, head), np.searchsorted(self.ids, tail)
        # both directions: (entity row, relation, neighbour row, outgoing?)
        ent = np.concatenate([h, t])
        self.nbr = np.concatenate([t, h])
        self.rel = np.concatenate([rel_idx, rel_idx])
        self.out = np.concatenate([np.ones(len(h), bool), np.zeros(len(t), bool)])
        o = np.argsort(ent, kind="stable")
        ent, self.nbr, self.rel, self.out = ent[o], self.nbr[o], self.rel[o], self.out[o]
        self.start = np.searchsorted(ent, np.arange(len(self.ids) + 1))

    def name(self, entity: int) -> str:
        return self.names[int(np.searchsorted(self.ids, entity))]

    def view(self, entity: int, relation_label=lambda r: r, hide: frozenset = frozenset()) -> EntityView:
        """hide: entities whose counterpart is not shown (a training example's own link: its
        source and gold are bridges elsewhere, but here they would give the answer away)."""
        r = int(np.searchsorted(self.ids, entity))
        lo, hi = self.start[r], self.start[r + 1]
        facts = []
        for j in range(lo, hi):
            nid = int(self.ids[self.nbr[j]])
            rel = relation_label(str(self.rel_names[self.rel[j]]))
            cp = None if nid in hide else self.counterpart.get(nid)
            facts.append((cp is None, fact(rel, self.names[self.nbr[j]], bool(self.out[j]), cp)))
        facts.sort(key=lambda f: f[0])  # bridges first, then the KG's order
        return EntityView(int(entity), self.names[r], [f for _, f in facts[: self.max_facts]])


@dataclass
class Example:
    """One prompt as the LLM tier trains on / scores it."""

    src: int
    text: str
    slot_ids: list[int]
    # letter index of the answer (the gold's option, or the "none" option), -1 when unknown
    answer: int
    # options shown (candidates + "none")
    n_options: int
    tokens: int
    # candidate ids in option order (without "none")
    options: list[int]


def training_candidates(ranked: np.ndarray, gold: np.ndarray, c: int, none_fraction: float,
                        rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(candidates (n, c), has_gold (n,)) for training examples from each source's ranked list
    (-1 padded): the top c, the gold put at a random slot when the list missed it; for a share
    ``none_fraction`` the gold is removed (the next ranked entity fills its slot; answer "none")."""
    n = len(gold)
    out = np.full((n, c), -1, np.int64)
    has_gold = rng.random(n) >= none_fraction
    for i in range(n):
        row = [int(x) for x in ranked[i] if x >= 0 and x != gold[i]]
        pick = row[:c]
        if has_gold[i]:
            pick = row[: c - 1]
            pick.insert(int(rng.integers(0, len(pick) + 1)), int(gold[i]))
        out[i, : len(pick)] = pick
    return out, has_gold
