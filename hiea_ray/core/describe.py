"""The LLM verbalizer's prompts and outputs (DERA's entity verbalization by a causal LM); Ray-free.

- ``describe_body(name, facts)``: the instruction, the entity's name and its facts, one per line —
  the same facts the template verbalizes (``core.verbalize.entity_facts``), in the same order.
- ``fit_facts``: the body within a token budget (chat template included): facts are added in order
  while they fit; a fact that does not fit is skipped and shorter ones after it still go in.
- ``facts_from_triples``: a training line's ``[subject, relation, object]`` triples as the same
  kind of facts (``rel: o1, o2`` for the entity's own triples, ``rel of: s`` for triples that point
  at it), so a tuned verbalizer sees at inference the prompts it was trained on.
- ``read_train_file``: the JSONL training file, checked line by line (a bad line is a ``UserError``
  naming the file and line).
- ``clean``: a generation -> one line of text (first paragraph, whitespace collapsed, clipped).

``PROMPT_VERSION`` goes into the verbalize stage's key: bump it when the prompt's wording or layout
changes, and runs re-generate their texts instead of reusing ones made from the old prompt.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

PROMPT_VERSION = 1
INSTRUCTION = ("Describe the entity in one short English sentence, using only the facts below. "
               "Keep its name and the names in the facts.")
MAX_NAME_WORDS = 24


def short_name(name: str | None) -> str:
    """The name as the prompt shows it (and the answer starts with it): at most MAX_NAME_WORDS words."""
    return " ".join((name or "").split()[:MAX_NAME_WORDS])


def answer_prefix(name: str | None) -> str:
    """How the answer starts when the name is prefilled: "<name> is". A bare name reads as a title
    (SmolLM2 ended 42% of its answers with a line break right after it); "<name> is" makes it
    define the entity, and the name is always in the text."""
    n = short_name(name)
    return f"{n} is" if n else ""


def describe_body(name: str, facts: list[str]) -> str:
    lines = [INSTRUCTION, f"Entity: {name}"]
    if facts:
        lines.append("Facts:")
        lines += [f"- {f}" for f in facts]
    return "\n".join(lines)


def fit_facts(name: str, facts: list[str], count: Callable[[str], int], budget: int) -> tuple[str, list[str]]:
    """(prompt body, the facts it holds) with ``count(body) <= budget`` (``count`` includes the chat
    template): each fact in order goes in when the body with it is still within the budget (exact
    counts; a prompt is a few hundred tokens). A name alone over the budget is cut to fit."""
    name = short_name(name)
    base = count(describe_body(name, []))
    while base > budget and name:
        name = " ".join(name.split()[:-1])
        base = count(describe_body(name, []))
    if base > budget:
        raise ValueError(f"verbalize.llm.prompt_tokens={budget} is below the instruction's own {base} tokens")
    used: list[str] = []
    for f in facts:
        if count(describe_body(name, used + [f])) <= budget:
            used.append(f)
    return describe_body(name, used), used


def facts_from_triples(triples: list, entity: str | None = None) -> tuple[str, list[str]]:
    """(name, facts) of a training line. The entity is ``entity`` when given, else the most
    frequent subject; relations keep first-seen order, values their order."""
    if entity is None:
        counts: dict[str, int] = {}
        for s, _, _ in triples:
            counts[s] = counts.get(s, 0) + 1
        entity = max(counts, key=lambda k: (counts[k], -list(counts).index(k)))
    groups: dict[str, list[str]] = {}
    for s, r, o in triples:
        if s == entity:
            groups.setdefault(r, []).append(o)
        elif o == entity:
            groups.setdefault(f"{r} of", []).append(s)
        else:
            groups.setdefault(r, []).append(f"{s} -> {o}")
    return entity, [f"{r}: {', '.join(vs)}" for r, vs in groups.items()]


def read_train_file(path: str | Path) -> list[dict]:
    """JSONL rows ``{"triples": [[s, r, o], ...], "text": str, "entity"?: str}`` -> [{name, facts,
    text}]; blank lines are skipped; anything else wrong is a ``UserError`` naming file:line."""
    from hiea_ray.errors import UserError

    p = Path(path)
    if not p.is_file():
        raise UserError(f"{p}: verbalize.train_file not found")
    rows = []
    with open(p, encoding="utf-8", errors="strict") as f:
        for n, line in enumerate(f, 1):
            where = f"{p}:{n}"
            if not line.strip():
                continue
            try:
                d = json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(f"{where}: not JSON ({e.msg} at column {e.colno})") from None
            if not isinstance(d, dict):
                raise UserError(f"{where}: expected an object with \"triples\" and \"text\"")
            triples, text = d.get("triples"), d.get("text")
            if not isinstance(text, str) or not text.strip():
                raise UserError(f"{where}: field \"text\" must be a non-empty string")
            if not isinstance(triples, list) or not triples or not all(
                    isinstance(t, list) and len(t) == 3 and all(isinstance(x, str) for x in t) for t in triples):
                raise UserError(f"{where}: field \"triples\" must be a non-empty list of [subject, relation, object] "
                                "strings")
            entity = d.get("entity")
            if entity is not None and not isinstance(entity, str):
                raise UserError(f"{where}: field \"entity\" must be a string")
            name, facts = facts_from_triples(triples, entity)
            rows.append({"name": name, "facts": facts, "text": " ".join(text.split())})
    if not rows:
        raise UserError(f"{p}: verbalize.train_file holds no examples")
    return rows


_SPACE = re.compile(r"\s+")
_LEAD = re.compile(r"^(?:(?:sure|okay|certainly)[,!.]?\s*|here(?: is|'s)[^:]*:\s*|description:\s*)+", re.IGNORECASE)


def clean(generated: str, max_words: int = 64) -> str:
    """A generation -> one line: the first paragraph with words in it once a leading "Sure, here
    is ...:" is cut, quotes around it dropped, whitespace collapsed, at most ``max_words`` words."""
    for para in re.split(r"\n", generated or ""):
        text = _LEAD.sub("", _SPACE.sub(" ", para).strip()).strip().strip('"').strip()
        if text:
            return " ".join(text.split()[:max_words])
    return ""
