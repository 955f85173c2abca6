"""The alignment pipeline: ingest -> verbalize -> [train] -> embed -> retrieve -> [rerank_train -> rerank]
-> decode -> evaluate.

Each stage reads the previous stages' Parquet outputs and writes its own folder with a manifest
(``hiea_ray.manifest``); a stage whose config sections and inputs are unchanged is reused, so a
re-run is a no-op and a killed run resumes. Verbalize and embed are Ray Data stages (they shard
over the cluster); retrieve, decode and evaluate run on the driver over O(n * k) arrays.

Run folder layout::

    ingest/     entities, rel_triples, attr_triples, links (.parquet), report.json
    verbalize/  texts/*.parquet (id, kg, name, text)
    train/      model/ (fine-tuned HF encoder), history.json, curve.png  (only with train.enabled)
    embed/      parts/*.parquet (id, kg, embedding, node)
    retrieve/   <protocol>/{s2t,t2s}.parquet (src, cand, score) + sets.json
    rerank_train/  model/ (cross-encoder), history.json, curve.png  (rerank.enabled and rerank.train)
    rerank/     <protocol>/parts/*.parquet (src, cand, retr, rerank): top rerank.k per source
                (+ candidates.parquet when rerank.candidates=sinkhorn)
    decode/     <protocol>/<decoder>.parquet (ranked lists), <protocol>/<decoder>.match.parquet
    evaluate/   metrics.json, metrics.png  (metrics.json is also copied to the run root)
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from tqdm import tqdm

from hiea_ray.config import Config, section_hash
from hiea_ray.core import decode as dec
from hiea_ray.core.encoder import resolve_model
from hiea_ray.core.metrics import matching_metrics, ranking_metrics
from hiea_ray.core.retrieval import knn
from hiea_ray.core.structure import SeedGraphs, structure_sinkhorn
from hiea_ray.core.verbalize import build_contexts, word_count_stats
from hiea_ray.kg.model import KGPair
from hiea_ray.kg.readers import read_pair
from hiea_ray.manifest import Stage, fingerprint_files
from hiea_ray.ray_layer.stages import column_to_numpy, embed_spec, rerank_spec, resolve, verbalize_spec

log = logging.getLogger("hiea_ray")

# What the decode stage writes for the same inputs and config changed (v2: the structure decoder
# folds consistency into Sinkhorn; reranked decoding keeps the whole candidate graph): finished
# runs re-decode (seconds) instead of reusing outputs of the old semantics.
DECODE_VERSION = 2

STAGES = ["ingest", "verbalize", "train", "embed", "retrieve", "rerank_train", "rerank", "decode", "evaluate"]


def init_ray(cfg: Config) -> None:
    """Join the cluster at ray.address / $RAY_ADDRESS (as under `ray job submit`), else start a local one."""
    import ray

    if ray.is_initialized():
        return
    kwargs = {"ignore_reinit_error": True, "log_to_driver": True}
    if cfg.ray.address:
        ray.init(address=cfg.ray.address, **kwargs)
    else:
        import os

        if os.environ.get("RAY_ADDRESS"):
            ray.init(**kwargs)
        else:
            # "local": always a new instance; never attach to another one found on this machine.
            ray.init(address="local", num_cpus=cfg.ray.num_cpus, include_dashboard=False, **kwargs)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = True


def _read_dir(folder: Path) -> pa.Table:
    files = sorted(folder.glob("*.parquet"))
    return pa.concat_tables([pq.read_table(f) for f in files]) if files else None


class Pipeline:
    def __init__(self, cfg: Config, data: str | Path, run: str | Path):
        self.cfg = cfg
        self.data = Path(data)
        self.run = Path(run)
        self.run.mkdir(parents=True, exist_ok=True)
        self.timings: dict[str, dict] = {}

    # -- stage bookkeeping -------------------------------------------------------------------
    def _stage(self, name: str, sections: tuple[str, ...], inputs: dict[str, str], extra=None) -> Stage:
        return Stage(self.run, name, section_hash(self.cfg, *sections, extra=extra), inputs)

    def _fingerprint(self, name: str) -> str:
        """Fingerprint of a finished upstream stage (from its manifest)."""
        return Stage(self.run, name, "", {}).fingerprint()

    def _done(self, stage: Stage, reused: bool, stats: dict | None = None) -> None:
        m = stage.manifest() or {}
        self.timings[stage.name] = {
            "reused": reused,
            "wall_s": m.get("wall_s"),
            **{k: v for k, v in (m.get("stats") or {}).items() if k in ("rows", "rows_per_s")},
        }
        log.info("stage %-9s %s (%.1fs)", stage.name, "reused" if reused else "done", m.get("wall_s") or 0)

    def run_all(self, until: str = "evaluate") -> dict:
        out = None
        for name in STAGES:
            out = getattr(self, name)()
            if name == until:
                break
        return out

    # -- 1. ingest ---------------------------------------------------------------------------
    def ingest(self) -> Stage:
        st = self._stage("ingest", ("data",), {"data": fingerprint_files(self.data)})
        if st.fresh():
            self._done(st, True)
            return st
        tmp = st.begin()
        pair = read_pair(self.data, self.cfg.data)
        pair.write(tmp)
        rows = pair.entities.num_rows
        st.commit({"rows": rows, **pair.report}, keep_if_identical=True)
        self._done(st, False)
        return st

    def pair(self) -> KGPair:
        return KGPair.read(self.run / "ingest")

    # -- 2. verbalize (Ray Data) -------------------------------------------------------------
    def verbalize(self) -> Stage:
        st = self._stage(
            "verbalize", (), {"ingest": self._fingerprint("ingest")}, extra=asdict_no(self.cfg.verbalize, "batch_size", "num_actors")
        )
        if st.fresh():
            self._done(st, True)
            return st
        import ray

        init_ray(self.cfg)
        tmp = st.begin()
        t0 = time.time()
        contexts = build_contexts(self.pair())
        spec = verbalize_spec(self.cfg.verbalize)
        # One block (and so one texts file) per verbalize batch: the embed stage then reads many
        # blocks that its actor pool spreads over the nodes.
        step = max(1, self.cfg.verbalize.batch_size)
        blocks = [contexts.slice(i, step) for i in range(0, max(contexts.num_rows, 1), step)]
        ds = ray.data.from_arrow(blocks).map_batches(
            spec.cls, fn_constructor_kwargs=spec.constructor_kwargs, compute=ray.data.ActorPoolStrategy(size=self.cfg.verbalize.num_actors),
            **spec.map_batches_kwargs,
        )
        out = tmp / "texts"
        shutil.rmtree(out, ignore_errors=True)
        ds.write_parquet(str(out))
        texts = _read_dir(out)
        wall = time.time() - t0
        st.commit(
            {"rows": texts.num_rows, "rows_per_s": round(texts.num_rows / max(wall, 1e-9), 1), **word_count_stats(texts["text"].to_pylist())}
        )
        self._done(st, False)
        return st

    # -- 3. train the retriever (Ray Train; optional) -----------------------------------------
    def train(self) -> Stage | None:
        if not self.cfg.train.enabled:
            return None
        e = self.cfg.embed
        base = {k: getattr(e, k) for k in ("model", "max_length")}
        st = self._stage("train", ("train",), {"verbalize": self._fingerprint("verbalize")}, extra=base)
        if st.fresh():
            self._done(st, True)
            return st
        from hiea_ray.ray_layer.train_retriever import train_retriever

        init_ray(self.cfg)
        tmp = st.begin()
        texts = _read_dir(self.run / "verbalize" / "texts")
        res = train_retriever(self.cfg, texts, self.pair().links, tmp)
        shutil.rmtree(tmp / "ray", ignore_errors=True)  # Ray Train's checkpoints: only the best model is kept
        for d in tmp.glob("round*-best"):
            shutil.rmtree(d)
        last = res["history"][-1]
        rounds = [{k: v for k, v in h.items() if k != "curve"} for h in res["history"]]
        st.commit({"initial": res["initial"], "rounds": rounds, "best_valid_mrr": last["best"]["valid_mrr"]})
        self._done(st, False)
        return st

    def encoder_model(self) -> str:
        """The trained model when retriever training is on, else the configured encoder."""
        return str(self.run / "train" / "model") if self.cfg.train.enabled else self.cfg.embed.model

    # -- 4. embed (Ray Data, actor pool, resumable) ------------------------------------------
    def embed(self) -> Stage:
        e = self.cfg.embed
        output_fields = {k: getattr(e, k) for k in ("model", "pooling", "batch_size", "max_length", "name_weight")}
        inputs = {"verbalize": self._fingerprint("verbalize")}
        if self.cfg.train.enabled:
            inputs["train"] = self._fingerprint("train")
            e = e.__class__(**{**asdict(e), "model": self.encoder_model()})
        st = self._stage("embed", (), inputs, extra=output_fields)
        if st.fresh():
            self._done(st, True)
            return st
        # A missing model folder is a user error: check it here on the driver, where it reaches the
        # CLI as a UserError (one line, status 2), not inside the encoder actors' constructors,
        # where Ray turns it into an ActorDiedError with a traceback.
        resolve_model(e.model)
        init_ray(self.cfg)
        tmp = st.begin()
        parts = tmp / "parts"
        parts.mkdir(exist_ok=True)
        done = _finished_ids(parts)
        texts_dir = self.run / "verbalize" / "texts"
        total = sum(pq.ParquetFile(f).metadata.num_rows for f in texts_dir.glob("*.parquet"))
        t0 = time.time()
        if len(done) < total:
            if len(done):
                log.info("embed: resuming, %d of %d rows already embedded", len(done), total)
            embed_dataset(texts_dir, parts, e, done)
        wall = time.time() - t0
        table = _read_dir(parts)
        ids = table["id"].to_numpy()
        if len(np.unique(ids)) != total or len(ids) != total:
            raise RuntimeError(f"embed: expected {total} unique rows, found {len(ids)} ({len(np.unique(ids))} unique)")
        per_node = pc.value_counts(table["node"].cast(pa.string())).to_pylist()
        new_rows = total - len(done)
        st.commit(
            {
                "rows": total,
                "rows_embedded_now": new_rows,
                "rows_per_s": round(new_rows / max(wall, 1e-9), 1),
                "rows_per_node": {d["values"]: d["counts"] for d in per_node},
                "dim": table["embedding"].type.list_size,
            }
        )
        self._done(st, False)
        return st

    def embeddings(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(ids, kg, vectors) sorted by id."""
        t = _read_dir(self.run / "embed" / "parts").sort_by("id")
        return t["id"].to_numpy(), t["kg"].to_numpy(), column_to_numpy(t["embedding"])

    # -- 5. retrieve (FAISS on the driver) ---------------------------------------------------
    def _protocol_sets(self, pair: KGPair, ids: np.ndarray, kg: np.ndarray, protocol: str):
        test = pair.links_of("test")
        if protocol == "standard":
            q = test["src"].to_numpy()
            b = np.unique(test["tgt"].to_numpy())
        else:
            q = ids[kg == 1]
            b = ids[kg == 2]
        return np.sort(q), np.sort(b)

    def retrieve(self) -> Stage:
        st = self._stage("retrieve", ("retrieve",), {"embed": self._fingerprint("embed")}, extra=self.cfg.evaluate.protocols)
        if st.fresh():
            self._done(st, True)
            return st
        tmp = st.begin()
        pair = self.pair()
        ids, kg, vecs = self.embeddings()
        row_of = _Index(ids)
        k = self.cfg.retrieve.k
        rows = 0
        t0 = time.time()
        for protocol in self.cfg.evaluate.protocols:
            q, b = self._protocol_sets(pair, ids, kg, protocol)
            Q, B = vecs[row_of(q)], vecs[row_of(b)]
            d = tmp / protocol
            d.mkdir(parents=True, exist_ok=True)
            with tqdm(total=len(q) + len(b), desc=f"retrieve {protocol}", unit="ent", leave=False) as bar:
                s, i = knn(Q, B, k, self.cfg.retrieve, progress=bar.update)
                s2, i2 = knn(B, Q, k, self.cfg.retrieve, progress=bar.update)
            _write_lists(d / "s2t.parquet", q, _ids_or_pad(b, i), s)
            _write_lists(d / "t2s.parquet", b, _ids_or_pad(q, i2), s2)
            rows += len(q) + len(b)
        wall = time.time() - t0
        st.commit({"rows": rows, "rows_per_s": round(rows / max(wall, 1e-9), 1), "k": k})
        self._done(st, False)
        return st

    # -- 6. reranker training (Ray Train; optional) -------------------------------------------
    def rerank_train(self) -> Stage | None:
        rc = self.cfg.rerank
        if not (rc.enabled and rc.train):
            return None
        fields = asdict_no(rc, "enabled", "infer_batch_size", "rows_per_batch", "num_actors", "cpus_per_actor", "gpus_per_actor",
                           "fusion_weight", "score_scale")
        inputs = {"embed": self._fingerprint("embed"), "verbalize": self._fingerprint("verbalize")}
        st = self._stage("rerank_train", ("retrieve",), inputs, extra=fields)
        if st.fresh():
            self._done(st, True)
            return st
        from hiea_ray.ray_layer.train_reranker import train_reranker

        init_ray(self.cfg)
        tmp = st.begin()
        ids, kg, vecs = self.embeddings()
        texts = _read_dir(self.run / "verbalize" / "texts")
        res = train_reranker(self.cfg, texts, self.pair().links, ids, kg, vecs, tmp)
        shutil.rmtree(tmp / "ray", ignore_errors=True)  # Ray Train's checkpoints: only the best model is kept
        st.commit({"retriever_valid": res["retriever_valid"], "best": res["best"], "train_links": res["train_links"]})
        self._done(st, False)
        return st

    def reranker_model(self) -> str:
        rc = self.cfg.rerank
        return str(self.run / "rerank_train" / "model") if rc.train else rc.model

    # -- 7. batch reranking (Ray Data actor pool over the candidate Parquet; resumable) ---------
    def rerank(self) -> Stage | None:
        rc = self.cfg.rerank
        if not rc.enabled:
            return None
        inputs = {"retrieve": self._fingerprint("retrieve"), "verbalize": self._fingerprint("verbalize")}
        if rc.train:
            inputs["rerank_train"] = self._fingerprint("rerank_train")
        extra = {"model": rc.model, "k": rc.k, "max_length": rc.max_length, "candidates": rc.candidates}
        if rc.candidates == "sinkhorn":
            extra["sinkhorn"] = [self.cfg.decode.sinkhorn_tau, self.cfg.decode.sinkhorn_iters]
        st = self._stage("rerank", (), inputs, extra=extra)
        if st.fresh():
            self._done(st, True)
            return st
        import ray

        model = self.reranker_model()
        resolve_model(model)  # a missing folder is a user error, here on the driver
        init_ray(self.cfg)
        tmp = st.begin()
        texts = ray.put(_read_dir(self.run / "verbalize" / "texts").select(["id", "text"]))
        t0 = time.time()
        pairs = 0
        for protocol in self.cfg.evaluate.protocols:
            parts = tmp / protocol / "parts"
            parts.mkdir(parents=True, exist_ok=True)
            done = _finished_ids(parts, "src")
            s2t = self._rerank_candidates(protocol, tmp / protocol)
            total = pq.ParquetFile(s2t).metadata.num_rows
            if len(done) < total:
                if len(done):
                    log.info("rerank %s: resuming, %d of %d sources already reranked", protocol, len(done), total)
                map_parquet(s2t, parts, rerank_spec(rc, model, texts), rc.num_actors, rc.rows_per_batch, done, "src")
                c = pq.read_table(s2t, columns=["cand"])["cand"].combine_chunks().flatten().to_numpy()
                pairs += int((c.reshape(total, -1)[:, : rc.k] >= 0).sum() * (total - len(done)) / max(total, 1))
            got = _finished_ids(parts, "src")
            if len(np.unique(got)) != total or len(got) != total:
                raise RuntimeError(f"rerank {protocol}: expected {total} unique sources, found {len(got)}")
        wall = time.time() - t0
        st.commit({"pairs": pairs, "pairs_per_s": round(pairs / max(wall, 1e-9), 1), "rows_per_s": round(pairs / max(wall, 1e-9), 1)})
        self._done(st, False)
        return st

    def _rerank_candidates(self, protocol: str, out: Path) -> Path:
        """The candidate Parquet the reranker reads: the retriever's lists, or the sparse Sinkhorn
        decoder's top rerank.k with the pairs' cosines (written to out/candidates.parquet)."""
        d = self.run / "retrieve" / protocol
        if self.cfg.rerank.candidates == "retrieve":
            return d / "s2t.parquet"
        c = self.cfg.decode
        q, s2t_ids, s2t_score = _read_lists(d / "s2t.parquet")
        b, t2s_ids, t2s_score = _read_lists(d / "t2s.parquet")
        s2t, t2s = _local(b, s2t_ids), _local(q, t2s_ids)
        idx, _ = dec.sinkhorn(s2t, s2t_score, t2s, t2s_score, len(b), tau=c.sinkhorn_tau, iters=c.sinkhorn_iters,
                              k=self.cfg.rerank.k)
        cos = dec.candidate_graph(s2t, s2t_score, t2s, t2s_score, len(b))
        rows = np.repeat(np.arange(len(q)), idx.shape[1])
        ok = idx.ravel() >= 0
        score = np.full(idx.size, -np.inf, np.float32)
        score[ok] = np.asarray(cos[rows[ok], idx.ravel()[ok]]).ravel()
        path = out / "candidates.parquet"
        _write_lists(path, q, _ids_or_pad(b, idx), score.reshape(idx.shape))
        return path

    def _candidate_lists(self, protocol: str):
        """(q, b, s2t, s2t_score, t2s, t2s_score) in local indices: the retriever's lists, or with
        reranking the whole candidate graph with fused scores (``cross_encoder.fuse_lists``): each
        source's reranked candidates and its retriever list, the reverse lists fused alike."""
        d = self.run / "retrieve" / protocol
        q, s2t_ids, s2t_score = _read_lists(d / "s2t.parquet")
        b, t2s_ids, t2s_score = _read_lists(d / "t2s.parquet")
        s2t, t2s = _local(b, s2t_ids), _local(q, t2s_ids)
        rc = self.cfg.rerank
        if not rc.enabled:
            return q, b, s2t, s2t_score, t2s, t2s_score
        from hiea_ray.core.cross_encoder import fuse_lists

        t = _read_dir(self.run / "rerank" / protocol / "parts").sort_by("src")
        if not np.array_equal(t["src"].to_numpy(), q):
            raise RuntimeError(f"rerank {protocol}: reranked sources differ from the retrieved ones")
        cand, logits = _local(b, column_to_numpy(t["cand"])), column_to_numpy(t["rerank"])
        # the reranked edges (Sinkhorn candidates may lie outside the retriever's s2t list) + the list
        idx, score = dec.dedupe_rows(np.hstack([cand, s2t]), np.hstack([column_to_numpy(t["retr"]), s2t_score]))
        s2t, s2t_score = dec.sort_rows(idx, fuse_lists(idx, score, cand, logits, rc.fusion_weight, rc.score_scale))
        t2s_score = fuse_lists(t2s, t2s_score, cand, logits, rc.fusion_weight, rc.score_scale, by_target=True)
        t2s, t2s_score = dec.sort_rows(t2s, t2s_score)
        return q, b, s2t, s2t_score, t2s, t2s_score

    # -- 8. decode ---------------------------------------------------------------------------
    def decode(self) -> Stage:
        rc = self.cfg.rerank
        inputs = {"retrieve": self._fingerprint("retrieve")}
        extra = {"version": DECODE_VERSION}
        if rc.enabled:
            inputs["rerank"] = self._fingerprint("rerank")
            extra.update(fusion_weight=rc.fusion_weight, score_scale=rc.score_scale)
        st = self._stage("decode", ("decode",), inputs, extra=extra)
        if st.fresh():
            self._done(st, True)
            return st
        tmp = st.begin()
        c = self.cfg.decode
        rows = 0
        t0 = time.time()
        timing = {}
        graphs = None  # the structure decoder's KG graphs, built once for all protocols
        for protocol in self.cfg.evaluate.protocols:
            # local indices: rows of q (sources), rows of b (targets); both sorted
            q, b, s2t, s2t_score, t2s, t2s_score = self._candidate_lists(protocol)
            out = tmp / protocol
            out.mkdir(parents=True, exist_ok=True)
            sink = None  # the sinkhorn lists, shared by the sinkhorn and structure decoders
            for name in c.decoders:
                t1 = time.time()
                if name == "top1":
                    idx, score = s2t, s2t_score
                elif name == "csls":
                    idx, score = dec.csls(s2t, s2t_score, t2s, t2s_score, c.csls_k)
                else:
                    if sink is None:
                        sink = dec.sinkhorn(
                            s2t, s2t_score, t2s, t2s_score, len(b), tau=c.sinkhorn_tau, iters=c.sinkhorn_iters
                        )
                    idx, score = sink
                    if name == "structure":  # over the whole KGs, the seed links as anchors
                        if graphs is None:
                            graphs = SeedGraphs.of(self.pair(), c.structure_anchors)
                        src_rows, tgt_rows = graphs.rows(q, b)
                        idx, score = structure_sinkhorn(
                            s2t, s2t_score, t2s, t2s_score, graphs.adj_s, graphs.adj_t, c.structure_rounds,
                            c.structure_beta, c.sinkhorn_tau, c.sinkhorn_iters, src_rows, tgt_rows, graphs.anchors,
                            start=sink,
                        )
                if c.matcher == "hungarian":
                    r, col, w = dec.hungarian_blocks(idx, score, c.match_threshold, c.hungarian_max_block)
                else:
                    r, col, w = dec.greedy_match(idx, score, c.match_threshold)
                timing[f"{protocol}/{name}"] = round(time.time() - t1, 3)
                _write_lists(out / f"{name}.parquet", q, _ids_or_pad(b, idx), score)
                pq.write_table(
                    pa.table({"src": q[r], "tgt": b[col], "score": w.astype(np.float32)}), out / f"{name}.match.parquet"
                )
                rows += len(q)
        wall = time.time() - t0
        st.commit({"rows": rows, "rows_per_s": round(rows / max(wall, 1e-9), 1), "decoder_wall_s": timing})
        self._done(st, False)
        return st

    # -- 9. evaluate -------------------------------------------------------------------------
    def evaluate(self) -> dict:
        st = self._stage("evaluate", ("evaluate",), {"decode": self._fingerprint("decode")})
        if st.fresh():
            self._done(st, True)
            return json.loads((self.run / "evaluate" / "metrics.json").read_text())
        tmp = st.begin()
        test = self.pair().links_of("test")
        gold_src, gold_tgt = test["src"].to_numpy(), test["tgt"].to_numpy()
        metrics: dict = {}
        for protocol in self.cfg.evaluate.protocols:
            d = self.run / "decode" / protocol
            for name in self.cfg.decode.decoders:
                q, cand, _ = _read_lists(d / f"{name}.parquet")
                rows = _Index(q)(gold_src)
                m = ranking_metrics(cand[rows], gold_tgt, self.cfg.evaluate.hits_at)
                match = pq.read_table(d / f"{name}.match.parquet")
                m.update(matching_metrics(match["src"].to_numpy(), match["tgt"].to_numpy(), gold_src, gold_tgt))
                metrics.setdefault(protocol, {})[name] = m
        result = {
            "protocols": {
                "standard": "rank among the test links' target entities",
                "all-targets": "rank among every KG2 entity; 1-to-1 matching over all KG1 x KG2 entities",
            },
            "note": "ranks beyond the top-k candidate list count as misses (reciprocal rank 0)",
            "k": self.cfg.retrieve.k,
            "metrics": metrics,
        }
        # The contract: <out>/metrics.json maps decoder -> metrics (primary protocol),
        # plus the protocol used and the other protocols in full.
        primary = self.cfg.evaluate.protocols[0]
        flat = {name: metrics[primary][name] for name in self.cfg.decode.decoders}
        flat["protocol"] = primary
        flat["all_protocols"] = result
        (tmp / "metrics.json").write_text(json.dumps(flat, indent=2, sort_keys=True))
        _plot(metrics, tmp / "metrics.png")
        st.commit({"rows": len(gold_src)})
        shutil.copy(self.run / "evaluate" / "metrics.json", self.run / "metrics.json")
        self._done(st, False)
        return flat


def embed_dataset(texts_dir: Path, parts: Path, e, done: np.ndarray | None = None) -> None:
    """The embed chain: read texts -> (drop done ids) -> encoder actor pool -> Parquet parts."""
    map_parquet(texts_dir, parts, embed_spec(e), e.num_actors, e.rows_per_batch, done)


def map_parquet(src: Path, parts: Path, spec, num_actors: int, rows_per_block: int, done: np.ndarray | None = None,
                column: str = "id") -> None:
    """A resumable Ray Data stage: read Parquet -> drop rows whose ``column`` is in ``done`` ->
    the stage class on an actor pool -> Parquet part files in ``parts``."""
    import ray

    ds = ray.data.read_parquet(str(src))
    if done is not None and len(done):
        ds = ds.map_batches(
            _DropDone,
            fn_constructor_kwargs={"done": ray.put(done), "column": column},
            batch_format="pyarrow",
            compute=ray.data.ActorPoolStrategy(size=1),
            num_cpus=0,
        )
    # The Parquet reader bundles small files into one read task (one block), and an actor pool
    # hands whole blocks to actors: without this, every row went to a single actor whatever
    # num_actors was, and the stage wrote a single part file (nothing to resume).
    # Streaming repartition: blocks of <= rows_per_block rows, spread over the actors/nodes.
    ds = ds.repartition(target_num_rows_per_block=max(1, rows_per_block))
    ds = ds.map_batches(
        spec.cls,
        fn_constructor_kwargs=spec.constructor_kwargs,
        compute=ray.data.ActorPoolStrategy(size=num_actors),
        **spec.map_batches_kwargs,
    )
    ds.write_parquet(str(parts))


# -- helpers -----------------------------------------------------------------------------------
def asdict_no(obj, *skip) -> dict:
    return {k: v for k, v in asdict(obj).items() if k not in skip}


class _DropDone:
    """Filters out rows whose id (``column``) was already processed (resume)."""

    def __init__(self, done, column: str = "id"):
        self.done = pa.array(resolve(done))
        self.column = column

    def __call__(self, batch: pa.Table) -> pa.Table:
        return batch.filter(pc.invert(pc.is_in(batch[self.column], value_set=self.done)))


def _finished_ids(parts: Path, column: str = "id") -> np.ndarray:
    """Ids in readable part files; unreadable (half-written) parts are deleted."""
    ids = []
    for f in sorted(parts.glob("*.parquet")):
        try:
            ids.append(pq.read_table(f, columns=[column])[column].to_numpy())
        except Exception:  # noqa: BLE001 - a part cut off by a kill has no footer
            log.warning("dropping unreadable part %s", f)
            f.unlink()
    return np.concatenate(ids) if ids else np.zeros(0, np.int64)


class _Index:
    """Maps entity ids to rows of a sorted id array."""

    def __init__(self, sorted_ids: np.ndarray):
        self.ids = sorted_ids

    def __call__(self, ids: np.ndarray) -> np.ndarray:
        rows = np.searchsorted(self.ids, ids)
        rows = np.minimum(rows, len(self.ids) - 1)
        if not np.array_equal(self.ids[rows], ids):
            raise KeyError("ids missing from index")
        return rows


def _ids_or_pad(ids: np.ndarray, local: np.ndarray) -> np.ndarray:
    return np.where(local >= 0, ids[np.maximum(local, 0)], -1)


def _local(sorted_ids: np.ndarray, ids: np.ndarray) -> np.ndarray:
    rows = np.searchsorted(sorted_ids, np.maximum(ids, 0))
    rows = np.minimum(rows, len(sorted_ids) - 1)
    return np.where(ids >= 0, rows, -1)


def _write_lists(path: Path, src: np.ndarray, cand: np.ndarray, score: np.ndarray) -> None:
    k = cand.shape[1]
    table = pa.table(
        {
            "src": src,
            "cand": pa.FixedSizeListArray.from_arrays(pa.array(cand.reshape(-1)), k),
            "score": pa.FixedSizeListArray.from_arrays(pa.array(score.astype(np.float32).reshape(-1)), k),
        }
    )
    pq.write_table(table, path)


def _read_lists(path: Path):
    t = pq.read_table(path)
    k = t["cand"].type.list_size
    cand = t["cand"].combine_chunks().flatten().to_numpy().reshape(-1, k)
    score = t["score"].combine_chunks().flatten().to_numpy().reshape(-1, k)
    return t["src"].to_numpy(), cand, score


def _plot(metrics: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    protocols = list(metrics)
    fig, axes = plt.subplots(1, len(protocols), figsize=(5 * len(protocols), 3.5), squeeze=False)
    for ax, p in zip(axes[0], protocols):
        names = list(metrics[p])
        keys = ["hits@1", "hits@10", "mrr", "f1"]
        width = 0.8 / len(keys)
        for j, key in enumerate(keys):
            vals = [metrics[p][n].get(key, 0) for n in names]
            ax.bar(np.arange(len(names)) + j * width, vals, width, label=key)
            for x, v in zip(np.arange(len(names)) + j * width, vals):
                ax.text(x, v + 0.01, f"{v:.3f}", ha="center", va="bottom", fontsize=6, rotation=90)
        ax.set_xticks(np.arange(len(names)) + 0.4 - width / 2, names)
        ax.set_ylim(0, 1.25)
        ax.set_yticks(np.linspace(0, 1, 6))
        ax.set_title(p)
        ax.legend(fontsize=7, loc="upper center", ncol=len(keys), frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
