"""Bi-encoder fine-tuning on Ray Train, with hard negatives mined by Ray Data + FAISS.

    rounds:  mine(model_r) -> TorchTrainer.fit (epochs_per_round) -> best checkpoint = model_{r+1}

- Mining: the current model embeds the train sources and every KG2 entity (the pipeline's Ray
  Data embed chain), FAISS ranks KG2 for each source, and ``hard_negatives`` targets are sampled
  per source from ranks ``hard_rank_from..hard_rank_to`` (the gold target excluded).
- Training: ``loop.fit`` with a ``RetrieverTask`` (the shared Ray Train loop and contract,
  ``train.scaling``): each worker reads its Ray Data shard of (src, tgt, neg) rows and runs the
  plain ``train_step`` (``hiea_ray.core.bi_encoder_train``) with the pooling the embed stage
  uses (``embed.pooling``, resolved against the base model's folder), rank 0 validates every
  ``eval_every`` steps; a restarted run resumes at the saved step. The best checkpoint by
  validation MRR becomes a normal HF folder (pooling recorded) used by the embed stage.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from hiea_ray.config import Config, TrainRetrieverConfig
from hiea_ray.core.encoder import pooling_mode, resolve_model
from hiea_ray.io import column_to_numpy, read_dir

from hiea_ray.plots import plot_retriever_curve
from hiea_ray.train.tasks import RetrieverTask

log = logging.getLogger(__name__)


def link_texts(texts: pa.Table, links: pa.Table) -> pa.Table:
    """links (src, tgt) -> (src_id, tgt_id, src, tgt) with the verbalized texts."""
    t = texts.sort_by("id")
    ids = t["id"].to_numpy()
    txt = t["text"]
    s = np.searchsorted(ids, links["src"].to_numpy())
    g = np.searchsorted(ids, links["tgt"].to_numpy())
    return pa.table({"src_id": links["src"], "tgt_id": links["tgt"], "src": pc.take(txt, s), "tgt": pc.take(txt, g)})


def mine_hard_negatives(model: str, texts: pa.Table, train: pa.Table, cfg: Config, tc: TrainRetrieverConfig, seed: int) -> pa.Table:
    """Adds a ``neg`` column: hard_negatives texts per train link, from ranks [from, to] of the current model."""
    from hiea_ray.core.retrieval import knn
    from hiea_ray.ops.embed import embed_dataset

    kg2 = texts.filter(pc.equal(texts["kg"], 2)).sort_by("id")
    srcs = texts.filter(pc.is_in(texts["id"], value_set=train["src_id"]))
    e = cfg.embed.__class__(**{**asdict(cfg.embed), "model": model, "name_weight": 0.0})
    with tempfile.TemporaryDirectory() as tmp:
        tdir = Path(tmp) / "texts"
        tdir.mkdir()
        both = pa.concat_tables([kg2, srcs])
        step = cfg.verbalize.batch_size
        for i in range(0, both.num_rows, step):
            pq.write_table(both.slice(i, step), tdir / f"p{i // step:05d}.parquet")
        embed_dataset(tdir, Path(tmp) / "parts", e)
        emb = read_dir(Path(tmp) / "parts").sort_by("id")
    ids = emb["id"].to_numpy()
    vecs = column_to_numpy(emb["embedding"])
    kg2_ids = kg2["id"].to_numpy()
    kg2_rows = np.searchsorted(ids, kg2_ids)
    src_rows = np.searchsorted(ids, train["src_id"].to_numpy())
    depth = min(tc.hard_rank_to, len(kg2_ids))
    _, idx = knn(vecs[src_rows], vecs[kg2_rows], depth, cfg.retrieve)
    cand = kg2_ids[np.maximum(idx, 0)]
    gold = train["tgt_id"].to_numpy()
    rng = np.random.default_rng(seed)
    kg2_text = kg2["text"].to_pylist()
    negs = []
    lo = max(tc.hard_rank_from - 1, 0)
    for i in range(len(gold)):
        pool = [j for j, c in zip(idx[i, lo:depth], cand[i, lo:depth]) if c != gold[i] and j >= 0]
        pick = rng.choice(len(pool), size=min(tc.hard_negatives, len(pool)), replace=False) if pool else []
        chosen = [kg2_text[pool[p]] for p in sorted(pick)]
        while len(chosen) < tc.hard_negatives:  # tiny KGs: pad with random targets
            chosen.append(kg2_text[int(rng.integers(len(kg2_text)))])
        negs.append(chosen)
    return train.append_column("neg", pa.array(negs, pa.list_(pa.string())))


def retriever_task(cfg: Config) -> RetrieverTask:
    """The task with the pooling the embed stage will use for the base model (auto resolved)."""
    return RetrieverTask(pooling_mode(resolve_model(cfg.embed.model), cfg.embed.pooling), cfg.embed.max_length)


def train_retriever(cfg: Config, texts: pa.Table, links: pa.Table, out: Path) -> dict:
    """Runs all rounds; writes the best model to ``out/model`` and the history to ``out/history.json``."""
    from hiea_ray.train.loop import fit

    tc = cfg.train
    # "pseudo": a collaboration round's pseudo-seeds (hiea_ray.collab), trained on like seed links
    train = link_texts(texts, links.filter(pc.is_in(links["split"], pa.array(["train", "pseudo"]))))
    valid = link_texts(texts, links.filter(pc.equal(links["split"], "valid")))
    model = resolve_model(cfg.embed.model)
    task = retriever_task(cfg)
    initial = valid_metrics(model, valid, task)
    log.info("retriever before training: valid MRR %.4f, Hits@1 %.4f", initial["valid_mrr"], initial["valid_hits@1"])
    history = []
    storage = (out / "ray").resolve()
    for r in range(tc.rounds):
        best_dir = out / f"round{r}-best"
        done_marker = out / f"round{r}.json"
        if done_marker.is_file() and best_dir.is_dir():  # finished before an interruption
            history.append(json.loads(done_marker.read_text()))
            model = str(best_dir)
            continue
        t_round = time.time()
        if tc.hard_negatives > 0:
            data = mine_hard_negatives(model, texts, train, cfg, tc, seed=tc.scaling.seed + r)
        else:
            data = train
        data = data.take(np.random.default_rng(tc.scaling.seed + 100 + r).permutation(data.num_rows))
        mined_s = time.time() - t_round
        res = fit(
            task,
            {**asdict(tc), "epochs": tc.epochs_per_round},
            model,
            data.select([c for c in ("src", "tgt", "neg") if c in data.column_names]),
            valid.select(["src", "tgt"]),
            f"round{r}",
            storage,
            best_dir,
        )
        model = str(best_dir)
        entry = {"round": r, "mine_s": round(mined_s, 1), "wall_s": round(time.time() - t_round, 1),
                 **res}
        done_marker.write_text(json.dumps(entry, default=str))
        history.append(entry)
        log.info("retriever round %d: best valid MRR %.4f (step %s)", r, res["best"]["valid_mrr"], res["best"]["step"])
    final = out / "model"
    shutil.rmtree(final, ignore_errors=True)
    shutil.copytree(model, final)
    (out / "history.json").write_text(json.dumps({"initial": initial, "rounds": history}, indent=2, default=str))
    plot_retriever_curve(initial, history, out / "curve.png")
    return {"model": str(final), "initial": initial, "history": history}


def valid_metrics(model: str, valid: pa.Table, task: RetrieverTask) -> dict:
    """Validation MRR / Hits@1 of a model folder, on the driver (validation sets are small)."""
    import torch

    m, tok = task.load(model)
    return task.evaluate(m, tok, valid, {}, torch.device("cpu"))
