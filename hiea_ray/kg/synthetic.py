"""Seeded synthetic KG pairs: two noisy views of one generated world, written in OpenEA format.

The world has people, cities, countries, organisations and works with typed relations and
attributes. Each view keeps a random subset of the world's triples and adds spurious ones, uses
its own relation and attribute vocabulary, and some entities exist in one view only (dangling).
View 2 renames entities: transliteration-like spelling changes, typos, reordered or abbreviated
person names, and homonyms exist, so names alone do not solve it and structure helps.

``generate(out, n_entities=..., seed=...)`` writes rel_triples_{1,2}, attr_triples_{1,2},
ent_links and 721_5fold/1/{train,valid,test}_links (20% / 10% / 70% of the links).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hiea_ray.errors import UserError

SYL = ["ka", "lo", "mi", "ra", "ten", "vo", "shi", "dan", "el", "por", "ru", "bek", "ia", "zor",
       "nel", "ha", "qui", "ost", "la", "mar", "ti", "fen", "go", "wyn", "cha", "ul", "ber", "sa",
       "phi", "dro", "yen", "kas", "mo", "thu", "ver", "li", "ang", "bo", "cel", "ou"]
CITY_SUFFIX = ["burg", "ville", "stad", "grad", "ton", "polis", "field", "haven"]
ORG_WORDS = ["Systems", "Records", "Motors", "Institute", "University", "Bank", "Press", "Studios", "Club", "Airlines"]
WORK_ADJ = ["Silent", "Broken", "Golden", "Last", "Hidden", "Red", "Endless", "Northern", "Lost", "Quiet"]
WORK_NOUN = ["River", "Garden", "Empire", "Song", "Winter", "Machine", "Harbor", "Dream", "Mirror", "Road"]

TYPES = ["person", "city", "country", "org", "work"]
# Fewer entities leave no train / valid / test links to split (and the world generator fails).
MIN_ENTITIES = 50
TYPE_SHARE = [0.4, 0.2, 0.03, 0.15, 0.22]
# (name, head type, tail type): relation vocabularies differ between the views.
RELATIONS = [
    ("born_in", "person", "city", "birthPlace", "placeOfBirth"),
    ("citizen_of", "person", "country", "nationality", "countryOfCitizenship"),
    ("works_for", "person", "org", "employer", "memberOf"),
    ("located_in", "city", "country", "country", "locatedInCountry"),
    ("hq_in", "org", "city", "headquarter", "headquartersLocation"),
    ("created_by", "work", "person", "author", "creator"),
    ("published_by", "work", "org", "publisher", "publishedBy"),
    ("capital", "country", "city", "capital", "capitalCity"),
    ("spouse", "person", "person", "spouse", "marriedTo"),
]
ATTRS = {
    "person": ("birthYear", "yearOfBirth", 1900, 2005),
    "city": ("populationTotal", "population", 1_000, 9_000_000),
    "org": ("foundingYear", "inception", 1800, 2020),
    "work": ("releaseYear", "publicationDate", 1950, 2024),
    "country": ("areaTotal", "area", 1_000, 9_000_000),
}
SUBST = [("c", "k"), ("ph", "f"), ("y", "i"), ("w", "v"), ("ou", "u"), ("th", "t"), ("sh", "sch"),
         ("qu", "kw"), ("ch", "tsch"), ("ei", "ai"), ("oo", "u"), ("x", "ks")]


@dataclass
class World:
    types: np.ndarray  # (n,) index into TYPES
    names: list[str]
    triples: np.ndarray  # (t, 3): head, relation index, tail
    attr_values: np.ndarray  # (n,) int


def _word(rng, lo=2, hi=3) -> str:
    return "".join(rng.choice(SYL, rng.integers(lo, hi + 1))).capitalize()


def make_world(n: int, rng: np.random.Generator, avg_degree: float = 4.0) -> World:
    types = rng.choice(len(TYPES), size=n, p=TYPE_SHARE)
    types[: len(TYPES)] = np.arange(len(TYPES))  # every type present
    # Arrays, not lists: rng.choice converts a list on every call (quadratic at 10^6 entities).
    first = np.array([_word(rng, 1, 2) for _ in range(max(20, n // 40))], dtype=object)
    last = np.array([_word(rng, 2, 3) for _ in range(max(40, n // 8))], dtype=object)
    names = []
    for t in types:
        kind = TYPES[t]
        if kind == "person":
            names.append(f"{rng.choice(first)} {rng.choice(last)}")
        elif kind == "city":
            names.append(_word(rng, 1, 2) + str(rng.choice(CITY_SUFFIX)))
        elif kind == "country":
            names.append(_word(rng, 2, 3) + "ia")
        elif kind == "org":
            names.append(f"{_word(rng, 2, 2)} {rng.choice(ORG_WORDS)}")
        else:
            names.append(f"The {rng.choice(WORK_ADJ)} {rng.choice(WORK_NOUN)} of {_word(rng, 2, 2)}")
    by_type = {i: np.flatnonzero(types == i) for i in range(len(TYPES))}
    triples = []
    heads_per_rel = max(1, int(avg_degree * n / 2 / len(RELATIONS)))
    for r, (_, ht, tt, _, _) in enumerate(RELATIONS):
        hs = by_type[TYPES.index(ht)]
        ts = by_type[TYPES.index(tt)]
        m = min(heads_per_rel * 2, len(hs) * 2)
        h = rng.choice(hs, m)
        # preferential attachment on tails: popular cities/countries/orgs
        w = rng.zipf(1.6, len(ts)).astype(float)
        t = rng.choice(ts, m, p=w / w.sum())
        triples.append(np.stack([h, np.full(m, r), t], 1))
    tr = np.unique(np.concatenate(triples), axis=0)
    tr = tr[tr[:, 0] != tr[:, 2]]
    lo = np.array([ATTRS[TYPES[t]][2] for t in types])
    hi = np.array([ATTRS[TYPES[t]][3] for t in types])
    values = rng.integers(lo, hi)
    return World(types, names, tr, values)


def _rename(name: str, kind: str, rng: np.random.Generator) -> str:
    s = name.lower()
    for a, b in SUBST:
        if a in s and rng.random() < 0.6:
            s = s.replace(a, b)
    if rng.random() < 0.3 and len(s) > 4:  # a typo
        i = int(rng.integers(1, len(s) - 1))
        s = s[:i] + s[i + 1 :] if rng.random() < 0.5 else s[:i] + s[i] + s[i:]
    parts = s.split()
    if kind == "person" and len(parts) == 2:
        u = rng.random()
        if u < 0.15:
            parts = [parts[1] + ",", parts[0]]
        elif u < 0.3:
            parts = [parts[0][0] + ".", parts[1]]
    return " ".join(p.capitalize() for p in parts)


def _uris(names: list[str], base: str) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for n in names:
        key = n.replace(" ", "_").replace(",", "")
        c = seen.get(key, 0)
        seen[key] = c + 1
        out.append(f"{base}{key}" + (f"_({c + 1})" if c else ""))
    return out


def generate(
    out: str | Path,
    n_entities: int = 3000,
    seed: int = 0,
    dangling: float = 0.1,
    keep: tuple[float, float] = (0.85, 0.8),
    spurious: float = 0.05,
) -> dict:
    """Write a synthetic pair in OpenEA format to ``out``; returns its counts."""
    rng = np.random.default_rng(seed)
    if n_entities < MIN_ENTITIES:
        raise UserError(f"--entities {n_entities}: a synthetic pair needs at least {MIN_ENTITIES} entities")
    w = make_world(n_entities, rng)
    n = len(w.names)
    side = rng.random(n)
    in1 = side >= dangling / 2  # the first dangling/2 share exists only in view 2
    in2 = side < 1 - dangling / 2  # the last dangling/2 share only in view 1
    names1 = list(w.names)
    names2 = [_rename(nm, TYPES[t], rng) for nm, t in zip(w.names, w.types)]
    uris = {1: _uris(names1, "http://kg1.example.org/resource/"), 2: _uris(names2, "http://kg2.example.org/wiki/")}
    out = Path(out)
    (out / "721_5fold" / "1").mkdir(parents=True, exist_ok=True)
    counts = {}
    for view, present, p_keep in ((1, in1, keep[0]), (2, in2, keep[1])):
        tr = w.triples[present[w.triples[:, 0]] & present[w.triples[:, 2]]]
        tr = tr[rng.random(len(tr)) < p_keep]
        members = np.flatnonzero(present)
        n_sp = int(spurious * len(tr))
        sp = np.stack([rng.choice(members, n_sp), rng.integers(0, len(RELATIONS), n_sp), rng.choice(members, n_sp)], 1)
        tr = np.unique(np.concatenate([tr, sp]), axis=0)
        tr = tr[tr[:, 0] != tr[:, 2]]
        rel_names = [r[3 if view == 1 else 4] for r in RELATIONS]
        ns = "http://kg1.example.org/ontology/" if view == 1 else "http://kg2.example.org/prop/"
        with open(out / f"rel_triples_{view}", "w") as f:
            for h, r, t in tr:
                f.write(f"{uris[view][h]}\t{ns}{rel_names[r]}\t{uris[view][t]}\n")
        has_triple = np.zeros(n, dtype=bool)
        has_triple[tr[:, 0]] = has_triple[tr[:, 2]] = True
        with open(out / f"attr_triples_{view}", "w") as f:
            for e in members:
                if rng.random() < 0.7 or not has_triple[e]:  # every entity appears somewhere
                    a1, a2 = ATTRS[TYPES[w.types[e]]][:2]
                    v = int(w.attr_values[e])
                    value = str(v) if view == 1 else (f"{v}-01-01" if "Year" in a1 else f"{v:,}")
                    f.write(f"{uris[view][e]}\t{ns}{a1 if view == 1 else a2}\t{value}\n")
        counts[f"kg{view}"] = {"entities": int(present.sum()), "rel_triples": int(len(tr))}
    both = np.flatnonzero(in1 & in2)
    both = both[rng.permutation(len(both))]
    links = [(uris[1][e], uris[2][e]) for e in both]
    with open(out / "ent_links", "w") as f:
        f.writelines(f"{a}\t{b}\n" for a, b in links)
    n_train, n_valid = int(0.2 * len(links)), int(0.1 * len(links))
    splits = {"train": links[:n_train], "valid": links[n_train : n_train + n_valid], "test": links[n_train + n_valid :]}
    for split, rows in splits.items():
        with open(out / "721_5fold" / "1" / f"{split}_links", "w") as f:
            f.writelines(f"{a}\t{b}\n" for a, b in rows)
    counts["links"] = {k: len(v) for k, v in splits.items()}
    counts["dangling"] = {"kg1_only": int((in1 & ~in2).sum()), "kg2_only": int((in2 & ~in1).sum())}
    return counts
