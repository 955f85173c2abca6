"""The alignment a user takes away, Ray-free: links in the graphs' own identifiers.

``links_table`` turns a one-to-one match over internal ids into rows of the input's identifiers
(IRIs; Wikidata Q-ids), names, score, confidence, tier, decoder and the margin to the second
candidate; ``ntriples`` writes them as ``owl:sameAs`` statements any RDF parser reads;
``precision_threshold`` picks the confidence a target precision needs on labelled sources.
"""

from __future__ import annotations

import re
from urllib.parse import quote

import numpy as np
import pyarrow as pa

SAME_AS = "http://www.w3.org/2002/07/owl#sameAs"
WIKIDATA = "http://www.wikidata.org/entity/"

LINKS = pa.schema([
    ("kg1_id", pa.string()), ("kg2_id", pa.string()), ("kg1_name", pa.string()), ("kg2_name", pa.string()),
    ("score", pa.float32()), ("confidence", pa.float32()), ("tier", pa.string()), ("decoder", pa.string()),
    ("rank2_margin", pa.float32()), ("src", pa.int64()), ("tgt", pa.int64()),
])


def iri(identifier: str) -> str:
    """An input identifier as an absolute IRI: a Wikidata Q/P-id -> its entity IRI; an IRI as it
    is, with the characters N-Triples forbids in IRIs percent-encoded; anything else (a bare name)
    -> a ``urn:hiea-ray:`` IRI of it."""
    if re.fullmatch(r"[QP]\d+", identifier):
        return WIKIDATA + identifier
    if re.match(r"[A-Za-z][A-Za-z0-9+.-]*:", identifier):
        return re.sub(r'[\x00-\x20<>"{}|^`\\]', lambda m: quote(m.group(0)), identifier)
    return "urn:hiea-ray:" + quote(identifier, safe="")


def links_table(src: np.ndarray, tgt: np.ndarray, score: np.ndarray, confidence: np.ndarray, tier: np.ndarray,
                margin: np.ndarray, decoder: str, entities: pa.Table) -> pa.Table:
    """One row per matched KG1 entity, in the input's identifiers (``entities``: id, uri, name)."""
    ids = entities["id"].to_numpy()
    order = np.argsort(ids)
    uri = np.asarray(entities["uri"].to_pylist(), dtype=object)[order]
    name = np.asarray(entities["name"].to_pylist(), dtype=object)[order]
    sid = np.sort(ids)

    def at(x):
        pos = np.searchsorted(sid, x)
        if len(x) and (pos.max(initial=0) >= len(sid) or not np.array_equal(sid[np.minimum(pos, len(sid) - 1)], x)):
            raise ValueError("a matched id is not an entity of the run")
        return pos

    a, b = at(src), at(tgt)
    return pa.table({
        "kg1_id": uri[a].tolist(), "kg2_id": uri[b].tolist(), "kg1_name": name[a].tolist(), "kg2_name": name[b].tolist(),
        "score": np.asarray(score, np.float32), "confidence": np.asarray(confidence, np.float32),
        "tier": np.asarray(tier, object).tolist(), "decoder": [decoder] * len(src),
        "rank2_margin": np.asarray(margin, np.float32), "src": np.asarray(src, np.int64), "tgt": np.asarray(tgt, np.int64),
    }, schema=LINKS)


def ntriples(links: pa.Table) -> str:
    """The links as ``<kg1> owl:sameAs <kg2> .`` N-Triples lines."""
    return "".join(f"<{iri(a)}> <{SAME_AS}> <{iri(b)}> .\n"
                   for a, b in zip(links["kg1_id"].to_pylist(), links["kg2_id"].to_pylist()))


def precision_threshold(prob: np.ndarray, right: np.ndarray, target: float) -> tuple[float, float | None]:
    """(threshold, estimated precision): the lowest confidence whose kept labelled sources (prob >=
    threshold) are right at rate >= target — the most links at that precision; (inf, None) when no
    threshold reaches it."""
    order = np.argsort(-prob, kind="stable")
    p, r = prob[order], right[order].astype(np.float64)
    prec = np.cumsum(r) / np.arange(1, len(r) + 1)
    boundary = np.append(p[:-1] > p[1:], True) if len(p) else np.zeros(0, bool)  # a cut between distinct values
    ok = np.flatnonzero((prec >= target) & boundary)
    if not len(ok):
        return float("inf"), None
    i = int(ok.max())
    return float(p[i]), float(prec[i])
