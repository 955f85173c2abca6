"""The Serve tier's work, Ray-free: what each deployment wraps, over a finished run's artifacts.

- ``ServeRun``: a run folder as the service reads it (its resolved config + ``serve`` overrides,
  the served protocol, its entities) and ``decoder_state``: the decoders' final state
  (``core.online``), rebuilt once per run into ``RUN/serve/<protocol>/`` and checked against the
  decode stage's lists (the service must decode as the run did).
- ``SmallTier`` (the Retriever deployment): an entity — a KG1 id, or a name with relations and
  attributes — verbalized as the run verbalized, encoded by the run's encoder, its top-k from a
  FAISS index over the protocol's target vectors (the run's vectors, not re-embedded), every
  decoder's list for it (``core.online``) and the router's features.
- ``RouterTier``: the run's certainty classifier and threshold (``route/<protocol>/router.*``).
- ``LLMTier``: the run's causal LM + LoRA + knowledge adapter; the routed entity's prompt (the
  run's ``llm`` stage prompt: same candidates, bridges, budget, option order) and one forward
  pass: a distribution over its candidates and "none".
- ``answer``: the response for one query from the tiers' outputs (``core.hiea.merge``).

For an entity of the run's protocol, each output equals what the run decided for it (tested:
``tests/test_serve.py``); for a new entity it is the row the run's decoders would give it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hiea_ray.config import Config, config_from_dict
from hiea_ray.errors import UserError
from hiea_ray.io import read_lists, rows_of, to_local
from hiea_ray.run import RunContext

log = logging.getLogger(__name__)


class UnknownEntity(LookupError):
    """A request named an entity id the run does not hold (HTTP 404); ``field`` names where."""

    def __init__(self, message: str, field: str = "id"):
        super().__init__(message)
        self.field = field


class BadQuery(ValueError):
    """A request field is invalid in a way the schema cannot see (HTTP 422); ``field`` names it."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field


# -- the run ---------------------------------------------------------------------------------------


class ServeRun(RunContext):
    """A finished run folder, read-only, with its config (+ overrides of any section, usually ``serve``)."""

    def __init__(self, run: str | Path, overrides: list[str] | None = None):
        run = Path(run)
        resolved = run / "config.resolved.json"
        if not resolved.is_file():
            raise UserError(f"{run}: not a finished hiea-ray run (no config.resolved.json; run `hiea-ray align` first)")
        cfg: Config = config_from_dict(json.loads(resolved.read_text()), str(resolved), overrides)
        super().__init__(cfg, run / "data", run)
        for stage in ("ingest", "verbalize", "embed", "retrieve", "decode"):
            if not (run / stage / "manifest.json").is_file():
                raise UserError(f"{run}: the run has no finished {stage} stage")
        if cfg.rerank.enabled:
            raise UserError(f"{run}: a run with rerank.enabled is not served yet (the cross-encoder has no "
                            "deployment); serve a run without the reranker")
        protos = cfg.evaluate.protocols
        sv = cfg.serve
        self.protocol = sv.protocol or ("all-targets" if "all-targets" in protos else protos[0])
        self.max_k = min(sv.max_k, cfg.retrieve.k)
        self.k = min(sv.k, self.max_k)
        route = run / "route" / self.protocol
        self.has_router = (route / "router.pkl").is_file()
        self.llm_model = (str(run / "llm_train" / "model") if cfg.llm.train else cfg.llm.trained) if cfg.llm.enabled else None
        self.has_llm = self.has_router and self.llm_model is not None and (Path(self.llm_model) / "hiea_llm.json").is_file()

    def describe(self) -> dict:
        # the run's name and its decode stage's fingerprint: what is served, not where it lies on the server's disk
        return {"run": self.run.name, "run_fingerprint": self.fingerprint("decode")[:16], "protocol": self.protocol, "router": self.has_router, "llm": self.has_llm,
                "decoders": self.cfg.decode.decoders, "k": self.k, "max_k": self.max_k}


def decoder_state(ctx: ServeRun):
    """The protocol's ``DecoderState``: loaded from ``RUN/serve/<protocol>/decoder_state.pkl`` when
    it was built from the same retrieve / decode outputs, else rebuilt (the run's decoders re-run
    once, their lists checked equal to the decode stage's) and written atomically."""
    from hiea_ray.core.decoders import run_decoders
    from hiea_ray.core.online import DecoderState
    from hiea_ray.core.structure import SeedGraphs
    from hiea_ray.run import candidate_lists

    p = ctx.protocol
    out = ctx.run / "serve" / p
    key = {s: ctx.fingerprint(s) for s in ("ingest", "retrieve", "decode")}
    key["route.primary"] = ctx.cfg.route.primary
    path, key_path = out / "decoder_state.pkl", out / "decoder_state.json"
    if path.is_file() and key_path.is_file():
        saved = json.loads(key_path.read_text())
        data = path.read_bytes()
        # unpickled only when it is the very file written with this key (its sha256 beside it);
        # otherwise it is rebuilt from the run's Parquet, as when the run changed
        if saved.get("key") == key and saved.get("sha256") == hashlib.sha256(data).hexdigest():
            return pickle.loads(data)
        log.warning("serve: %s is not the decoder state of this run as written (run changed or file replaced): rebuilding", path)
    t0 = time.time()
    c = ctx.cfg.decode
    q, b, s2t, s2t_score, t2s, t2s_score = candidate_lists(ctx, p)
    graphs = SeedGraphs.of(ctx.pair(), c.structure_anchors)
    state: dict = {}
    lists = {d.name: (d.idx, d.score) for d in run_decoders(c.decoders, s2t, s2t_score, t2s, t2s_score, q, b, c,
                                                            lambda: graphs, state=state)}
    for name, (idx, score) in lists.items():
        dq, ids, sc = read_lists(ctx.run / "decode" / p / f"{name}.parquet")
        if not (np.array_equal(dq, q) and np.array_equal(to_local(b, ids), idx) and np.allclose(sc, score, equal_nan=True)):
            raise UserError(f"{ctx.run}/decode/{p}/{name}.parquet: re-decoding the run's lists gives other lists "
                            "(the run was decoded by another hiea-ray version: re-run `hiea-ray align` on it)")
    st = DecoderState.of(c, ctx.cfg.route.primary, s2t, s2t_score, t2s, t2s_score, q, b, graphs, state, lists)
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / f".decoder_state.{os.getpid()}.tmp"
    data = pickle.dumps(st, protocol=pickle.HIGHEST_PROTOCOL)
    tmp.write_bytes(data)
    os.replace(tmp, path)
    key_path.write_text(json.dumps({"key": key, "sha256": hashlib.sha256(data).hexdigest()}, indent=2))
    log.info("serve: decoder state of %s built in %.1f s (%d sources, %d targets)", p, time.time() - t0, len(q), len(b))
    return st


# -- entities as queries ---------------------------------------------------------------------------


@dataclass
class Entity:
    """A query entity: a KG1 id of the run (``id`` >= 0) or a new one (id -1) with its facts."""

    id: int
    name: str
    text: str
    neighbours: np.ndarray  # adj_s rows of its KG1 neighbours
    relations: list  # (relation label, neighbour KG1 id or -1, neighbour name, outgoing)
    key: int  # seeds the prompt's option order


def name_key(name: str) -> int:
    return int(hashlib.sha1(name.encode()).hexdigest()[:12], 16)


class KG1:
    """The run's KG1 side: ids, names, texts, adjacency (for ids, neighbours and new entities' text)."""

    def __init__(self, ctx: RunContext):
        from hiea_ray.core.structure import SeedGraphs

        pair = ctx.pair()
        ent = pair.entities.sort_by("id")
        self.ids_all = ent["id"].to_numpy()
        self.names_all = ent["name"].to_pylist()
        self.kg_all = ent["kg"].to_numpy()
        texts = ctx.texts().sort_by("id")
        self.text_ids = texts["id"].to_numpy()
        self.texts = texts["text"].to_pylist()
        g = SeedGraphs.of(pair, ctx.cfg.decode.structure_anchors)
        self.ids_s, self.adj_s = g.ids_s, g.adj_s
        self.degree = np.zeros(len(self.ids_all), np.int64)  # triples per entity (the verbalizer's ordering)
        rel = pair.rel_triples
        for col in ("head", "tail"):
            np.add.at(self.degree, rows_of(self.ids_all, rel[col].to_numpy()), 1)
        by_name: dict[str, list[int]] = {}
        for i, n in zip(self.ids_all[self.kg_all == 1].tolist(), np.asarray(self.names_all, object)[self.kg_all == 1]):
            by_name.setdefault(n, []).append(i)
        self.by_name = {n: v[0] for n, v in by_name.items() if len(v) == 1}

    def known(self, i: int, kg: int | None = None) -> bool:
        if not -(2**63) <= i < 2**63:  # beyond int64: no entity of any run
            return False
        r = int(np.searchsorted(self.ids_all, i))
        return r < len(self.ids_all) and self.ids_all[r] == i and (kg is None or self.kg_all[r] == kg)

    def name(self, i: int) -> str:
        return self.names_all[int(np.searchsorted(self.ids_all, i))]

    def of_id(self, i: int) -> Entity:
        if not self.known(i, 1):
            raise UnknownEntity(f"id {i} is not a KG1 entity of this run")
        r = int(np.searchsorted(self.ids_s, i))
        nb = self.adj_s.indices[self.adj_s.indptr[r]:self.adj_s.indptr[r + 1]]
        return Entity(i, self.name(i), self.texts[int(np.searchsorted(self.text_ids, i))], nb, [], i)

    def of_request(self, e: dict, vcfg) -> Entity:
        """A new entity {name, relations: [{relation, neighbour, direction}], attributes: [{attribute,
        value}]} verbalized as the run verbalized its entities; a neighbour given by KG1 id (or by a
        name that is one KG1 entity's) joins the structure signal."""
        from hiea_ray.core.verbalize import relation_label, verbalize_row

        row = {"name": e["name"], "out_rel": [], "out_nbr": [], "out_deg": [], "in_rel": [], "in_nbr": [], "in_deg": [],
               "attr_key": [], "attr_val": []}
        rels, nb = [], []
        for j, r in enumerate(e.get("relations") or []):
            n = r["neighbour"]
            if isinstance(n, int):
                if not self.known(n, 1):
                    raise UnknownEntity(f"id {n} is not a KG1 entity of this run", f"entity.relations.{j}.neighbour")
                nid, nname = n, self.name(n)
            else:
                nid, nname = self.by_name.get(n, -1), n
            side = "out" if r.get("direction", "out") == "out" else "in"
            label = relation_label(r["relation"])
            row[f"{side}_rel"].append(label)
            row[f"{side}_nbr"].append(nname)
            row[f"{side}_deg"].append(int(self.degree[np.searchsorted(self.ids_all, nid)]) if nid >= 0 else 0)
            rels.append((label, nid, nname, side == "out"))
            if nid >= 0:
                nb.append(int(np.searchsorted(self.ids_s, nid)))
        for a in e.get("attributes") or []:
            row["attr_key"].append(relation_label(a["attribute"]))
            row["attr_val"].append(a["value"])
        text = verbalize_row(row, vcfg)
        return Entity(-1, e["name"], text, np.unique(np.asarray(nb, np.int64)), rels, name_key(e["name"]))


# -- the tiers ---------------------------------------------------------------------------------------


class SmallTier:
    """Encoder + FAISS over the protocol's targets + the run's decoders for one more row + features."""

    def __init__(self, ctx: ServeRun):
        from hiea_ray.core.encoder import Encoder, set_threads
        from hiea_ray.core.retrieval import build_index, factory_string

        import faiss

        set_threads(ctx.cfg.serve.torch_threads or os.cpu_count())
        faiss.omp_set_num_threads(ctx.cfg.serve.torch_threads or os.cpu_count())
        cfg = ctx.cfg
        self.ctx = ctx
        self.kg1 = KG1(ctx)
        self.state = decoder_state(ctx)
        q, run_ids, run_score = read_lists(ctx.run / "retrieve" / ctx.protocol / "s2t.parquet")
        b, _, _ = read_lists(ctx.run / "retrieve" / ctx.protocol / "t2s.parquet")
        self.q, self.b = q, b
        # a run entity's list is the run's own (its structural candidates included); every list then
        # takes the seed links as facts (decode.seeds_as_facts), as the decode stage's did
        self.run_s2t, self.run_s2t_score = to_local(b, run_ids), run_score
        self.seeds = None
        if cfg.decode.seeds_as_facts:
            from hiea_ray.run import seed_links

            sd = seed_links(ctx.pair())
            src, tgt = sd["src"].to_numpy(), sd["tgt"].to_numpy()
            pos = np.minimum(np.searchsorted(b, tgt), max(len(b) - 1, 0))
            inside = (b[pos] == tgt) if len(b) else np.zeros(len(tgt), bool)  # seed targets in the served pool
            taken = np.zeros(len(b), bool)
            taken[pos[inside]] = True
            self.seeds = (dict(zip(src[inside].tolist(), pos[inside].tolist())), taken)
        ids, _, vecs = ctx.embeddings()
        self.B = np.ascontiguousarray(vecs[rows_of(ids, b)], np.float32)
        self.index = build_index(self.B, cfg.retrieve)
        self.encoder = Encoder(ctx.encoder_model(), cfg.embed.pooling, cfg.embed.max_length, amp=cfg.embed.amp,
                               backend=cfg.embed.backend)
        self.encoder.encode(["warm-up"])  # the first forward pass allocates: not on a user's request
        self.exact = factory_string(cfg.retrieve, len(b)) == "Flat"

    def resolve(self, query: dict) -> Entity:
        return self.kg1.of_id(int(query["id"])) if query.get("id") is not None else \
            self.kg1.of_request(query["entity"], self.ctx.cfg.verbalize)

    def encode(self, entities: list[Entity]) -> np.ndarray:
        from hiea_ray.core.encoder import fuse

        e = self.ctx.cfg.embed
        vecs = self.encoder.encode([x.text for x in entities], e.batch_size)
        if e.name_weight > 0:
            vecs = fuse(self.encoder.encode([x.name for x in entities], e.batch_size), vecs, e.name_weight)
        return vecs

    def __call__(self, queries: list) -> list[dict]:
        """Per query (a request dict, or an already resolved ``Entity``): entity, vector, the primary
        decoder's list (target ids, scores), the router's features, the primary best (id or -1)."""
        t0 = time.perf_counter()
        entities = [x if isinstance(x, Entity) else self.resolve(x) for x in queries]
        vecs = self.encode(entities)
        k = self.state.k
        kk = min(k, len(self.b))
        d, i = self.index.search(vecs, kk)
        s2t = np.full((len(vecs), k), -1, np.int64)
        s2t_score = np.full((len(vecs), k), -np.inf, np.float32)
        s2t[:, :kk], s2t_score[:, :kk] = i, d
        s2t_score[s2t < 0] = -np.inf
        s2t[s2t < 0] = -1
        out = []
        primary = self.state.primary
        for j, ent in enumerate(entities):
            r = int(np.searchsorted(self.q, ent.id)) if ent.id >= 0 else -1
            src_row = r if 0 <= r < len(self.q) and self.q[r] == ent.id else -1
            sims = None if src_row >= 0 else self.B @ vecs[j]
            if sims is not None and self.seeds is not None:
                sims[self.seeds[1]] = -np.inf  # a seed target's reverse list is its seed source alone
            row, row_score = self._row(s2t[j], s2t_score[j], src_row, ent.id)
            qr = self.state.query(row, row_score, ent.neighbours, src_row, sims)
            lists = self.state.decode(qr)
            X, names, best = self.state.features(qr, lists)
            idx, score = lists[primary]
            out.append({"entity": ent, "vector": vecs[j], "ids": self.target_ids(idx[0]), "scores": score[0],
                        "best": int(self.b[best]) if best >= 0 else -1, "features": X[0], "feature_names": names,
                        "protocol_source": src_row >= 0})
        ms = 1000 * (time.perf_counter() - t0) / max(len(queries), 1)
        for o in out:
            o["ms"] = ms
        return out

    def _row(self, s2t: np.ndarray, score: np.ndarray, src_row: int, entity_id: int) -> tuple[np.ndarray, np.ndarray]:
        """The query's candidate row as the decode stage saw it: a run entity's own list from the
        retrieve stage (else the live search), with the seed links as facts."""
        if src_row >= 0:
            s2t, score = self.run_s2t[src_row], self.run_s2t_score[src_row]
        if self.seeds is None:
            return s2t, score
        from hiea_ray.core.candidates import facts_rows

        own, taken = self.seeds
        a, a_s = facts_rows(s2t[None, :], score[None, :], np.array([own.get(int(entity_id), -1)]), taken)
        return a[0], a_s[0]

    def target_ids(self, local: np.ndarray) -> np.ndarray:
        return np.where(local >= 0, self.b[np.maximum(local, 0)], -1)


class RouterTier:
    """The run's certainty classifier: P(the small models' top-1 is right) and the threshold."""

    def __init__(self, ctx: ServeRun):
        from threadpoolctl import threadpool_limits

        from hiea_ray.core.router import Router

        # one query at a time: OpenMP threads of the classifier only spin against the other replicas
        threadpool_limits(1)
        d = ctx.run / "route" / ctx.protocol
        from hiea_ray.manifest import verified_bytes

        self.router = Router(model=pickle.loads(verified_bytes(ctx.run, "route", f"{ctx.protocol}/router.pkl")))
        meta = json.loads((d / "router.json").read_text())
        self.threshold = float(meta["threshold"])
        self.features = list(meta["features"])

    def __call__(self, X: np.ndarray, names: list[str]) -> tuple[np.ndarray, np.ndarray]:
        if names != self.features:
            raise RuntimeError(f"feature mismatch: the router was fitted on {self.features}, got {names}")
        prob = self.router.predict(np.asarray(X, np.float32))
        return prob, prob >= self.threshold


class LLMTier:
    """The run's LoRA + knowledge-adapter LLM over the routed entities' prompts (one forward pass each)."""

    def __init__(self, ctx: ServeRun, device: str | None = None):
        import torch

        from hiea_ray.core.encoder import set_threads
        from hiea_ray.core.llm import llm_amp_dtype, load_hiea_llm, resolve_llm, weight_dtype
        from hiea_ray.run import prompt_format, seed_and_certain
        from hiea_ray.train.llm import neighbourhoods

        lc = ctx.cfg.llm
        set_threads(ctx.cfg.serve.torch_threads or os.cpu_count())
        self.lc = lc
        ids, _, vecs = ctx.embeddings()
        self.ids, self.vecs = ids, vecs
        self.nb = neighbourhoods(ctx.pair(), seed_and_certain(ctx, ctx.protocol), lc.max_facts)
        self.fmt = prompt_format(ctx.llm_model, lc.adapter_tokens)
        self.device = torch.device(device or ("cuda" if ctx.cfg.serve.llm_gpus > 0 and torch.cuda.is_available() else "cpu"))
        self.amp = llm_amp_dtype(self.device, lc.amp, lc.cpu_amp)
        self.model, self.tokenizer = load_hiea_llm(resolve_llm(lc.model), ctx.llm_model, int(vecs.shape[1]),
                                                   {k: v for k, v in vars(lc).items() if k != "scaling"}, trainable=False,
                                                   dtype=weight_dtype(lc.dtype, self.device))
        self.model.to(self.device)

    def prompt(self, ent: Entity, vector: np.ndarray, cand: np.ndarray) -> dict:
        """The entity's prompt as the llm stage builds it: text, slot vectors, options."""
        from hiea_ray.core.prompt import EntityView, fact
        from hiea_ray.core.verbalize import relation_label
        from hiea_ray.train.llm import one_prompt

        c = self.lc.candidates
        cand = [int(x) for x in cand[:c] if x >= 0]
        hide = frozenset((ent.id,)) if ent.id >= 0 else frozenset()
        view = lambda e: self.nb.view(int(e), relation_label, hide)  # noqa: E731
        if ent.id >= 0:
            src = view(ent.id)
        else:
            facts = [(cp is None, fact(rel, name, out, cp))
                     for rel, nid, name, out in ent.relations
                     for cp in [self.nb.counterpart.get(nid) if nid >= 0 else None]]
            facts.sort(key=lambda f: f[0])
            src = EntityView(-1, ent.name, [f for _, f in facts[: self.lc.max_facts]])
        p, shown = one_prompt(ent.key, src, cand, [view(x) for x in cand], self.fmt, self.lc.prompt_tokens,
                              self.lc.scaling.seed)
        slots = c + 1
        flat = np.zeros(slots * self.vecs.shape[1], np.float32)
        # slot 0 is the source: the live query vector (for a run entity, its vector re-encoded)
        v = np.concatenate([vector[None, :].astype(np.float32),
                            self.vecs[rows_of(self.ids, np.asarray(p.slot_ids[1:], np.int64))]])
        flat[: v.size] = v.ravel()
        options = np.full(c, -1, np.int64)
        options[: len(shown)] = shown
        return {"text": self.fmt.wrap(p.text), "vectors": flat, "n_options": len(shown) + 1, "options": options,
                "tokens": p.tokens}

    def score(self, prompts: list[dict]) -> np.ndarray:
        """(n, C + 1) log-probabilities of the options (and "none"), one forward pass per prompt."""
        from hiea_ray.core.llm import score

        return score(self.model, self.tokenizer, [p["text"] for p in prompts], [p["vectors"] for p in prompts],
                     [p["n_options"] for p in prompts], self.lc.candidates + 1, self.device, len(prompts), self.amp)


def answer(res: dict, k: int, names, prob: float | None, certain: bool | None, llm: dict | None = None,
           fusion: float = 0.0, uris=None) -> dict:
    """The response body for one query (``res``: a ``SmallTier`` row; ``llm``: options, n_options and
    logp of its LLM pass): ranked candidates (id, name, score = the primary decoder's, llm_prob when
    the LLM saw it), the match (null: the LLM chose "none"), the tier that answered, the router's
    confidence. The LLM's ranking and match are ``core.hiea.merge``'s, as the run's hiea decoder.
    ``uris``: id -> the input's identifier (IRI / Q-id): candidates and match carry it as kg2_id,
    a run entity's query as kg1_id."""
    from hiea_ray.core.hiea import merge

    ent = res["entity"]
    ids, score = res["ids"], res["scores"]
    llm_p: dict[int, float] = {}
    none_p = None
    if llm is not None:
        src = np.array([ent.id])
        m = merge(src, ids[None, :], score[None, :], np.zeros(0, np.int64), np.zeros(0, np.int64), src, src,
                  llm["options"][None, :], np.array([llm["n_options"]]), llm["logp"][None, :], fusion)
        ranked = m.cand[0]
        match = int(m.match_tgt[0]) if len(m.match_tgt) else -1
        p = np.exp(llm["logp"].astype(np.float64))
        llm_p = {int(t): float(p[j]) for j, t in enumerate(llm["options"]) if t >= 0}
        none_p = float(p[llm["n_options"] - 1])
        tier = "llm"
    else:
        ranked, match, tier = ids, res["best"], "small"
    pos = {int(t): j for j, t in enumerate(ids) if t >= 0}
    out = []
    for t in ranked:
        if t < 0 or len(out) >= k:
            continue
        row = {"id": int(t), "name": names(int(t)), "score": round(float(score[pos[int(t)]]), 7)}
        if uris is not None:
            row["kg2_id"] = uris(int(t))
        if int(t) in llm_p:
            row["llm_prob"] = round(llm_p[int(t)], 6)
        out.append(row)
    body = {"query": {"id": ent.id if ent.id >= 0 else None, "name": ent.name},
            "match": None if match < 0 else {"id": match, "name": names(match)},
            "abstained": match < 0, "tier": tier, "confidence": None if prob is None else round(float(prob), 6),
            "certain": None if certain is None else bool(certain), "candidates": out}
    if uris is not None:
        body["query"]["kg1_id"] = uris(ent.id) if ent.id >= 0 else None
        if body["match"] is not None:
            body["match"]["kg2_id"] = uris(match)
    if none_p is not None:
        body["llm_none_prob"] = round(none_p, 6)
    return body
