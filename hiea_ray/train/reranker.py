"""Cross-encoder reranker training on Ray Train (DERA stage 3).

- Data: the pipeline's entity embeddings (the retriever's, fine-tuned or not) rank every KG2
  entity for each train / validation source with FAISS. Each train link becomes one row
  (src text, gold text, ``negatives`` texts sampled from the top ``negative_depth``, gold excluded);
  each validation source keeps its top ``rerank.k`` list and the gold's position in it.
- Training: ``loop.fit`` with a ``RerankerTask`` (the shared Ray Train loop, ``rerank.scaling``) (listwise softmax cross-entropy over
  1 positive + N negatives, ``hiea_ray.core.cross_encoder``), validation Hits@1 / MRR of the
  reranked top-k every ``eval_every`` steps, best checkpoint by validation MRR, resume and
  ``FailureConfig`` as in the retriever job. The retriever's own Hits@1 on the same lists is the
  baseline written next to it.
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

from hiea_ray.config import Config
from hiea_ray.core import cross_encoder as ce
from hiea_ray.core.retrieval import knn
from hiea_ray.io import TextLookup
from hiea_ray.plots import plot_reranker_curve
from hiea_ray.train.tasks import RerankerTask

log = logging.getLogger(__name__)


def reranker_data(cfg: Config, texts: pa.Table, links: pa.Table, ids: np.ndarray, kg: np.ndarray, vecs: np.ndarray):
    """-> (train rows: src, pos, neg; validation rows: src, cand (k texts), gold_pos), as tables."""
    rc = cfg.rerank
    rng = np.random.default_rng(rc.scaling.seed)
    text = TextLookup(texts)
    kg2 = ids[kg == 2]
    kg2_vecs = vecs[kg == 2]

    def ranked(src: np.ndarray, depth: int) -> np.ndarray:
        _, idx = knn(vecs[np.searchsorted(ids, src)], kg2_vecs, min(depth, len(kg2)), cfg.retrieve)
        return np.where(idx >= 0, kg2[np.maximum(idx, 0)], -1)

    train = links.filter(pc.equal(links["split"], "train"))
    if rc.max_train_links and train.num_rows > rc.max_train_links:
        train = train.take(np.sort(rng.choice(train.num_rows, rc.max_train_links, replace=False)))
    src, gold = train["src"].to_numpy(), train["tgt"].to_numpy()
    neg = ce.sample_negatives(ranked(src, rc.negative_depth), gold, rc.negatives, rng)
    neg_text = np.array(text(np.maximum(neg.ravel(), 0)), dtype=object).reshape(neg.shape)
    rows = pa.table(
        {"src": text(src), "pos": text(gold), "neg": pa.array([list(r) for r in neg_text], pa.list_(pa.string()))}
    ).take(rng.permutation(len(src)))

    valid = links.filter(pc.equal(links["split"], "valid"))
    if valid.num_rows == 0:
        valid = links.filter(pc.equal(links["split"], "train"))  # no validation split: train links
        log.warning("rerank: no validation links; validating on train links")
    if valid.num_rows > rc.valid_links:
        valid = valid.take(np.sort(rng.choice(valid.num_rows, rc.valid_links, replace=False)))
    vsrc, vgold = valid["src"].to_numpy(), valid["tgt"].to_numpy()
    cand = ranked(vsrc, rc.k)
    hit = cand == vgold[:, None]
    gold_pos = np.where(hit.any(1), hit.argmax(1), -1)
    cand_text = np.array(text(np.maximum(cand.ravel(), 0)), dtype=object).reshape(cand.shape)
    vrows = pa.table({"src": text(vsrc), "cand": pa.array([list(r) for r in cand_text], pa.list_(pa.string())),
                      "gold_pos": pa.array(gold_pos.astype(np.int64))})
    return rows, vrows


def train_reranker(cfg: Config, texts: pa.Table, links: pa.Table, ids, kg, vecs, out: Path) -> dict:
    """Trains the reranker; the best model goes to ``out/model``, the history to ``out/history.json``."""
    from hiea_ray.core.encoder import resolve_model
    from hiea_ray.train.loop import fit
    from hiea_ray.train.tasks import valid_lists

    rc = cfg.rerank
    t0 = time.time()
    data, valid = reranker_data(cfg, texts, links, ids, kg, vecs)
    baseline = ce.retriever_metrics(valid_lists(valid))
    log.info(
        "reranker: %d train links x (1 + %d), %d validation lists; retriever valid Hits@1 %.4f",
        data.num_rows, rc.negatives, valid.num_rows, baseline["valid_hits@1"],
    )
    res = fit(RerankerTask(rc.max_length), asdict(rc), resolve_model(rc.model), data, valid, "reranker",
              (out / "ray").resolve(), out / "best")
    final = out / "model"
    shutil.rmtree(final, ignore_errors=True)
    shutil.move(str(out / "best"), final)
    history = {"retriever_valid": baseline, "wall_s": round(time.time() - t0, 1), "train_links": data.num_rows, **res}
    (out / "history.json").write_text(json.dumps(history, indent=2, default=str))
    plot_reranker_curve(history, out / "curve.png")
    return {"model": str(final), **history}
