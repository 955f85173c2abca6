"""A real DBP15K-format pair hidden in a haystack of confusable distractor entities; Ray-free.

``make_haystack(pair_dir, out_dir, n, pools)`` keeps every real entity, relation triple and link of
the pair and adds ``n`` distractor entities to each side, written in the same DBP15K format (so the
pipeline reads the result unchanged) plus ``distractors_1`` / ``distractors_2`` (their ids, which
the pipeline does not read) and ``haystack.json`` (what was generated, with which seed).

Distractor names come from real name pools (every ``ent_names_translated_*`` / ``ent_ids_*`` file
given), in each side's own style (KG1: the pool of machine-translated KG1 names; KG2: the pool of
English names):

- a share ``homonym_share`` are near-homonyms of the pair's own entities on that side: the real name
  plus a qualifier (a real DBpedia disambiguator such as ``film`` or ``band``, or a pool token), or
  the real name with one token replaced by a pool token;
- the rest are token-wise recombinations of pool names: a length drawn from the side's real name
  lengths, token i taken from the i-th token of a random pool name.

Relation triples use the side's own relation vocabulary and frequencies; each distractor gets a
degree drawn from the side's real degree distribution and half of it as new triples (the other half
arrives from later distractors), the other endpoint chosen proportionally to degree among real
entities and distractors alike (a configuration-model form of preferential attachment), so the
structure signal sees them and real entities gain distractor neighbours. Distractors have no gold
links: the right output for them is no match. Deterministic for a seed.
"""

from __future__ import annotations

import json
import re
import shutil
from collections import Counter
from pathlib import Path

import numpy as np

_PAREN = re.compile(r"\(([^()]{2,40})\)")
_TOKEN_SPLIT = re.compile(r"[\s_]+")


def _name_of_uri(uri: str) -> str:
    tail = uri.rstrip("/").rsplit("/", 1)[-1]
    return " ".join(t for t in _TOKEN_SPLIT.split(_PAREN.sub(" ", tail).lower()) if t)


def _rows(path: Path):
    with open(path, encoding="utf-8") as f:
        for line in f:
            parts = line.rstrip("\n").split("\t")
            if len(parts) >= 2:
                yield parts


def name_pools(files: list[Path]) -> tuple[list[str], list[str], list[str]]:
    """(KG1-style names, KG2-style names, qualifiers) from real files: ``ent_names_translated_1``
    feed the KG1 pool, ``ent_names_translated_2`` and the URIs of English DBpedia ``ent_ids_*`` the
    KG2 pool; qualifiers are the parenthesised disambiguators of every URI seen."""
    kg1, kg2, quals = set(), set(), Counter()
    for path in files:
        side = path.name[-1]
        for parts in _rows(path):
            value = parts[1].strip()
            if path.name.startswith("ent_names_translated_"):
                (kg1 if side == "1" else kg2).add(" ".join(value.lower().split()))
            elif path.name.startswith("ent_ids_"):
                for q in _PAREN.findall(value.rsplit("/", 1)[-1]):
                    quals[" ".join(_TOKEN_SPLIT.split(q.lower())).strip()] += 1
                if value.startswith("http://dbpedia.org/resource/"):
                    kg2.add(_name_of_uri(value))
    kg1.discard("")
    kg2.discard("")
    common = [q for q, c in quals.most_common() if c >= 3 and q]
    return sorted(kg1), sorted(kg2), common


def _side_names(real: list[str], pool: list[str], quals: list[str], n: int, homonym_share: float,
                rng: np.random.Generator) -> tuple[list[str], int]:
    pool_tokens = [p.split() for p in pool]
    lengths = np.array([max(1, len(r.split())) for r in real])
    n_hom = int(round(homonym_share * n))
    names: list[str] = []
    # near-homonyms of the pair's own entities
    src = rng.integers(0, len(real), n_hom)
    kind = rng.random(n_hom)
    picks = rng.integers(0, len(pool_tokens), (n_hom, 2))
    qpick = rng.integers(0, max(1, len(quals)), n_hom)
    for i in range(n_hom):
        toks = real[src[i]].split() or ["x"]
        extra = pool_tokens[picks[i, 0]]
        tok = extra[rng.integers(0, len(extra))] if extra else "x"
        if kind[i] < 0.35 and quals:
            toks = toks + quals[qpick[i]].split()
        elif kind[i] < 0.5 or len(toks) == 1:
            toks = toks + [tok]
        else:
            j = int(rng.integers(0, len(toks)))
            toks = toks[:j] + [tok] + toks[j + 1:]
        names.append(" ".join(toks))
    # token-wise recombinations with the real length distribution
    rest = n - n_hom
    lens = lengths[rng.integers(0, len(lengths), rest)]
    donors = rng.integers(0, len(pool_tokens), (rest, int(lens.max()) if rest else 1))
    for i in range(rest):
        toks = []
        for j in range(int(lens[i])):
            d = pool_tokens[donors[i, j]]
            toks.append(d[min(j, len(d) - 1)] if d else "x")
        names.append(" ".join(toks))
    return names, n_hom


def _side_triples(triples: np.ndarray, real_ids: np.ndarray, dist_ids: np.ndarray,
                  rng: np.random.Generator) -> np.ndarray:
    """(m, 3) new (head, relation, tail) rows wiring the distractors in."""
    if len(dist_ids) == 0 or len(triples) == 0:
        return np.zeros((0, 3), dtype=np.int64)
    ends = np.concatenate([triples[:, 0], triples[:, 2]])
    deg = Counter(ends.tolist())
    real_deg = np.array([deg.get(int(e), 0) for e in real_ids], dtype=np.int64)
    target = real_deg[rng.integers(0, len(real_deg), len(dist_ids))]
    new_per = np.maximum(1, (target + 1) // 2)
    # endpoint pool proportional to degree: real endpoints as they are, distractors by target degree
    pool = np.concatenate([ends, np.repeat(dist_ids, np.maximum(target, 1))])
    heads = np.repeat(dist_ids, new_per)
    others = pool[rng.integers(0, len(pool), len(heads))]
    rels = triples[rng.integers(0, len(triples), len(heads)), 1]
    flip = rng.random(len(heads)) < 0.5
    h = np.where(flip, others, heads)
    t = np.where(flip, heads, others)
    out = np.stack([h, rels, t], axis=1)
    out = out[out[:, 0] != out[:, 2]]
    return np.unique(out, axis=0)


def make_haystack(pair_dir: str | Path, out_dir: str | Path, n: int, pool_files: list[Path],
                  seed: int = 0, homonym_share: float = 0.25) -> dict:
    """Write the pair plus ``n`` distractors per side to ``out_dir``; returns the description."""
    pair_dir, out_dir = Path(pair_dir), Path(out_dir)
    rng = np.random.default_rng(seed)
    pool1, pool2, quals = name_pools(pool_files)
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    for f in ("rel_ids_1", "rel_ids_2", "sup_pairs", "ref_pairs"):
        shutil.copyfile(pair_dir / f, tmp / f)
    ids = {kg: [int(p[0]) for p in _rows(pair_dir / f"ent_ids_{kg}")] for kg in (1, 2)}
    next_id = max(max(ids[1]), max(ids[2])) + 1
    desc = {"pair": f"{pair_dir.parent.name}/{pair_dir.name}", "distractors_per_side": n, "seed": seed, "homonym_share": homonym_share,
            "name_pools": {"kg1": len(pool1), "kg2": len(pool2), "qualifiers": len(quals)}, "sides": {}}
    for kg, pool in ((1, pool1), (2, pool2)):
        names_path = pair_dir / f"ent_names_translated_{kg}"
        real_names = dict((p[0], p[1]) for p in _rows(names_path)) if names_path.is_file() else {}
        uris = dict((p[0], p[1]) for p in _rows(pair_dir / f"ent_ids_{kg}"))
        real = [real_names.get(str(e)) or _name_of_uri(uris[str(e)]) for e in ids[kg]]
        names, n_hom = _side_names(real, pool, quals, n, homonym_share, rng)
        dist = np.arange(next_id, next_id + n, dtype=np.int64)
        next_id += n
        triples = np.loadtxt(pair_dir / f"triples_{kg}", dtype=np.int64, delimiter="\t", ndmin=2)
        extra = _side_triples(triples, np.array(ids[kg], dtype=np.int64), dist, rng)
        shutil.copyfile(pair_dir / f"ent_ids_{kg}", tmp / f"ent_ids_{kg}")
        with open(tmp / f"ent_ids_{kg}", "a", encoding="utf-8") as f:
            f.writelines(f"{d}\thttp://haystack.invalid/kg{kg}/{d}\n" for d in dist.tolist())
        with open(tmp / f"ent_names_translated_{kg}", "w", encoding="utf-8") as f:
            f.writelines(f"{e}\t{nm}\n" for e, nm in zip(ids[kg], real))
            f.writelines(f"{d}\t{nm}\n" for d, nm in zip(dist.tolist(), names))
        shutil.copyfile(pair_dir / f"triples_{kg}", tmp / f"triples_{kg}")
        with open(tmp / f"triples_{kg}", "a", encoding="utf-8") as f:
            np.savetxt(f, extra, fmt="%d", delimiter="\t")
        np.savetxt(tmp / f"distractors_{kg}", dist, fmt="%d")
        real_set = set(real)
        desc["sides"][f"kg{kg}"] = {
            "real_entities": len(ids[kg]), "distractors": n, "near_homonyms": n_hom,
            "exact_real_name_collisions": sum(nm in real_set for nm in names),
            "real_triples": int(len(triples)), "distractor_triples": int(len(extra)),
            "distractor_triples_touching_real": int(np.isin(extra[:, [0, 2]], ids[kg]).any(axis=1).sum()),
        }
    (tmp / "haystack.json").write_text(json.dumps(desc, indent=2) + "\n")
    if out_dir.exists():
        shutil.rmtree(out_dir)
    tmp.rename(out_dir)
    return desc


def pool_files(datasets: str | Path) -> list[Path]:
    """Every real name/URI file under a datasets folder (DBP15K and SRPRS releases)."""
    root = Path(datasets)
    return sorted(p for p in root.rglob("*") if p.is_file() and re.fullmatch(r"ent_(ids|names_translated)_[12]", p.name))
