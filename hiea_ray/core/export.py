"""The alignment a user takes away, Ray-free: links in the graphs' own identifiers.

``links_table`` turns a one-to-one match over internal ids into rows of the input's identifiers
(IRIs; Wikidata Q-ids), names, score, confidence, tier, decoder and the margin to the second
candidate; ``ntriples`` writes them as ``owl:sameAs`` statements any RDF parser reads;
``expected_precision_threshold`` picks the cut where the expected precision of unlabelled links
reaches a target (the labelled cut is ``metrics.precision_threshold``, shared with the router);
``Calibration`` maps a decoder's score to the probability that its answer is right (isotonic
regression on labelled sources), the confidence of a run, or of a decoder, without a router.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
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


@dataclass
class Calibration:
    """A decoder's score -> P(its answer is right): a monotone step-linear map (scikit-learn's
    isotonic regression on labelled sources), kept as its breakpoints so it is stored as JSON and
    applied with ``np.interp``; NaN (no answer) -> 0."""

    x: np.ndarray
    y: np.ndarray

    @classmethod
    def fit(cls, score: np.ndarray, right: np.ndarray) -> "Calibration":
        from sklearn.isotonic import IsotonicRegression

        score, right = np.asarray(score, np.float64), np.asarray(right, np.float64)
        ok = np.isfinite(score)
        if not ok.any():
            return cls(np.zeros(1), np.zeros(1))
        if len(np.unique(right[ok])) < 2 or len(np.unique(score[ok])) < 2:
            return cls(np.zeros(1), np.full(1, right[ok].mean()))
        iso = IsotonicRegression(y_min=0.0, y_max=1.0, increasing=True, out_of_bounds="clip").fit(score[ok], right[ok])
        return cls(np.asarray(iso.X_thresholds_, np.float64), np.asarray(iso.y_thresholds_, np.float64))

    def __call__(self, score: np.ndarray) -> np.ndarray:
        s = np.asarray(score, np.float64)
        out = np.interp(np.nan_to_num(s, nan=0.0), self.x, self.y) if len(self.x) > 1 else np.full(s.shape, self.y[0])
        return np.where(np.isfinite(s), out, 0.0).astype(np.float32)

    def to_json(self) -> dict:
        return {"x": self.x.tolist(), "y": self.y.tolist()}

    @classmethod
    def from_json(cls, d: dict) -> "Calibration":
        return cls(np.asarray(d["x"], np.float64), np.asarray(d["y"], np.float64))


def calibrate_out_of_fold(score: np.ndarray, right: np.ndarray, folds: int, seed: int) -> tuple[Calibration, np.ndarray]:
    """(the calibration fit on every labelled source, each source's calibrated score from a fit
    without its own fold): the out-of-fold scores are what a threshold is chosen and its
    precision estimated on."""
    from sklearn.model_selection import KFold

    score, right = np.asarray(score, np.float64), np.asarray(right, bool)
    oof = np.zeros(len(score), np.float32)
    k = max(2, min(folds, len(score)))
    if len(score) >= 2:
        for tr, te in KFold(k, shuffle=True, random_state=seed).split(score):
            oof[te] = Calibration.fit(score[tr], right[tr])(score[te])
    return Calibration.fit(score, right), oof


def matchable_prior(prob: np.ndarray, trained_prior: float, iters: int = 200, tol: float = 1e-6) -> tuple[np.ndarray, float, int]:
    """(posteriors, estimated share, iterations): the share of matchable sources among unlabelled
    ones, by the EM of Saerens, Latinne & Decaestecker (2002): ``prob`` is P(matchable | x) of a
    classifier trained where the matchable share was ``trained_prior``; each round re-weighs the
    posteriors to the current share and re-estimates it as their mean."""
    p = np.clip(np.asarray(prob, np.float64), 1e-6, 1 - 1e-6)
    t = float(np.clip(trained_prior, 1e-6, 1 - 1e-6))
    pi, post = t, p
    for i in range(1, iters + 1):
        a, b = (pi / t) * p, ((1 - pi) / (1 - t)) * (1 - p)
        post = a / (a + b)
        new = float(post.mean()) if len(post) else t
        if abs(new - pi) < tol:
            return post, new, i
        pi = new
    return post, pi, iters


def expected_precision_threshold(conf: np.ndarray, target: float) -> tuple[float, float | None]:
    """(threshold, estimated precision) on the output's own links when ``conf`` is a calibrated
    probability of each link being right: the lowest confidence t whose links (conf >= t) have a
    mean confidence (the expected share right) >= target; (inf, None) when none does."""
    c = np.sort(np.nan_to_num(np.asarray(conf, np.float64), nan=0.0))[::-1]
    mean = np.cumsum(c) / np.arange(1, len(c) + 1)
    boundary = np.append(c[:-1] > c[1:], True) if len(c) else np.zeros(0, bool)
    ok = np.flatnonzero((mean >= target) & boundary)
    if not len(ok):
        return float("inf"), None
    i = int(ok.max())
    return float(c[i]), float(mean[i])
