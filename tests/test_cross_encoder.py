"""The cross-encoder reranker's Ray-free parts: loss, negative sampling, metrics, fusion, the
reverse lists built from reranked lists, the train step, and the Ray Data stage class called
directly."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch

from hiea_ray.core import cross_encoder as ce
from hiea_ray.core import fusion
from hiea_ray.core.decode import transpose_lists


def test_listwise_loss_is_softmax_cross_entropy_of_column_zero():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 3.0, 0.0]])
    expected = -torch.log_softmax(logits, 1)[:, 0].mean()
    assert torch.isclose(ce.listwise_loss(logits), expected)
    assert ce.listwise_loss(torch.tensor([[50.0, 0.0, 0.0]])) < 1e-6


def test_sample_negatives_excludes_gold_and_padding():
    rng = np.random.default_rng(0)
    cand = np.array([[5, 7, 9, 11, -1], [3, -1, -1, -1, -1], [-1, -1, -1, -1, -1], [4, 4, 8, 2, 6]])
    gold = np.array([7, 3, 1, 8])
    neg = ce.sample_negatives(cand, gold, 3, rng)
    assert neg.shape == (4, 3)
    assert set(neg[0]) <= {5, 9, 11} and len(set(neg[0])) == 3  # enough: without replacement
    assert (neg[1] == -1).all() and (neg[2] == -1).all()  # nothing usable
    assert 8 not in neg[3] and set(neg[3]) <= {4, 2, 6}
    one = ce.sample_negatives(np.array([[1, 2]]), np.array([1]), 3, rng)
    assert (one == 2).all()  # a pool smaller than n repeats


def test_group_metrics_rank_of_gold_and_misses():
    scores = np.array([[0.1, 0.9, 0.3], [0.5, 0.2, 0.1], [0.3, 0.2, 0.1]], np.float32)
    gold = np.array([1, 2, -1])  # hit at 1; rank 3; gold not in the list
    m = ce.group_metrics(scores, gold)
    assert m["valid_hits@1"] == pytest.approx(1 / 3)
    assert m["valid_mrr"] == pytest.approx((1 + 1 / 3 + 0) / 3)
    base = ce.retriever_metrics({"cand": [["a", "b", "c"]] * 3, "gold_pos": [0, 1, -1]})
    assert base == {"valid_hits@1": pytest.approx(1 / 3), "valid_mrr": pytest.approx(0.5)}


def test_fuse_weights_and_missing_scores():
    retr = np.array([[0.9, 0.8, -np.inf]], np.float32)
    rer = np.array([[1.0, 10.0, 2.0]], np.float32)
    assert np.allclose(fusion.fuse(retr, rer, 0.0, 0.05)[0, :2], [0.9, 0.8])
    assert np.allclose(fusion.fuse(retr, rer, 1.0, 0.05)[0, :2], [0.05, 0.5])
    assert fusion.fuse(retr, rer, 0.5, 0.05)[0, 2] == -np.inf
    assert fusion.fuse(np.array([[np.nan]]), np.array([[1.0]]), 0.5, 0.05)[0, 0] == -np.inf


def test_fuse_lists_keeps_the_whole_graph():
    """Reranked edges fuse their own logit, other edges their source's lowest logit, a source
    with nothing reranked keeps its cosines; the reverse lists get the same value per edge."""
    idx = np.array([[0, 1, 2, -1], [2, 0, 1, 3], [1, 3, -1, -1]])
    cos = np.array([[0.9, 0.8, 0.7, -np.inf], [0.6, 0.5, 0.4, 0.3], [0.9, 0.1, -np.inf, -np.inf]], np.float32)
    cand = np.array([[1, 0], [0, -1], [-1, -1]])  # source 0: targets 1 and 0; source 1: target 0
    logit = np.array([[10.0, 2.0], [4.0, -np.inf], [-np.inf, -np.inf]], np.float32)
    f = fusion.fuse_lists(idx, cos, cand, logit, 0.5, 0.1)
    want = np.array([
        [0.5 * 0.9 + 0.05 * 2, 0.5 * 0.8 + 0.05 * 10, 0.5 * 0.7 + 0.05 * 2, -np.inf],  # low of s0 = 2
        [0.5 * 0.6 + 0.05 * 4, 0.5 * 0.5 + 0.05 * 4, 0.5 * 0.4 + 0.05 * 4, 0.5 * 0.3 + 0.05 * 4],
        [0.9, 0.1, -np.inf, -np.inf],  # nothing reranked: the cosines
    ], np.float32)
    np.testing.assert_allclose(f, want, rtol=1e-6)
    # by target: each edge gets the value its source row gave it
    t_idx, t_cos = transpose_lists(idx, cos, 4, 3)
    ft = fusion.fuse_lists(t_idx, t_cos, cand, logit, 0.5, 0.1, by_target=True)
    value = {(s, t): f[s, j] for s in range(3) for j, t in enumerate(idx[s]) if t >= 0}
    for t in range(4):
        for j, s in enumerate(t_idx[t]):
            if s >= 0:
                assert ft[t, j] == pytest.approx(value[(s, t)])
    assert fusion.fuse_lists(idx, cos, cand, logit, 0.0, 0.1)[0, 0] == pytest.approx(0.9)  # w = 0: the cosines


def test_dedupe_rows_keeps_the_first_entry():
    from hiea_ray.core.decode import dedupe_rows

    idx = np.array([[3, 1, 3, -1, -1, 1], [0, 1, 2, 3, 4, 5]])
    score = np.arange(12, dtype=np.float32).reshape(2, 6)
    d_idx, d_score = dedupe_rows(idx, score)
    assert d_idx.tolist() == [[3, 1, -1, -1, -1, -1], [0, 1, 2, 3, 4, 5]]
    assert d_score[0, :2].tolist() == [0, 1] and np.isneginf(d_score[0, 2]) and np.isneginf(d_score[0, 5])
    assert d_score[0, 3] == 3 and d_score[1].tolist() == score[1].tolist()  # padding keeps its score


def test_transpose_lists_matches_brute_force():
    rng = np.random.default_rng(1)
    n, m, k = 30, 12, 5
    idx = np.stack([rng.choice(m, k, replace=False) for _ in range(n)])
    idx[3, 2:] = -1
    score = rng.normal(size=(n, k)).astype(np.float32)
    t_idx, t_score = transpose_lists(idx, score, m, 4)
    for t in range(m):
        edges = sorted(((score[s, j], s) for s in range(n) for j in range(k) if idx[s, j] == t), reverse=True)[:4]
        got = [(t_score[t, j], t_idx[t, j]) for j in range(4) if t_idx[t, j] >= 0]
        assert [s for _, s in got] == [s for _, s in edges]
        assert np.allclose([v for v, _ in got], [v for v, _ in edges])


@pytest.fixture(scope="module")
def tiny_reranker(tiny_encoder_dir):
    torch.manual_seed(0)
    return ce.load_reranker(str(tiny_encoder_dir))


def test_load_reranker_adds_a_fresh_single_logit_head(tiny_encoder_dir):
    m, tok = ce.load_reranker(str(tiny_encoder_dir))
    assert m.config.num_labels == 1
    logits = ce.score_pairs(m, tok, ["a b", "c"], ["a b", "d e f"], 32)
    assert logits.shape == (2,) and np.isfinite(logits).all()


def test_score_pairs_independent_of_batching(tiny_reranker):
    m, tok = tiny_reranker
    src = ["alpha city", "beta person born in gamma", "delta", "epsilon org"] * 3
    cand = ["alpha", "beta", "delta town with a long text " * 3, "e"] * 3
    a = ce.score_pairs(m, tok, src, cand, 48, batch_size=2)
    b = ce.score_pairs(m, tok, src, cand, 48, batch_size=64)
    assert np.allclose(a, b, atol=1e-5)
    assert np.allclose(a[:4], a[4:8], atol=1e-5)


def test_score_pairs_under_cpu_bf16_stay_close_to_fp32(tiny_reranker):
    """rerank.backend=torch-bf16: the same logits within bf16's precision, the same order."""
    m, tok = tiny_reranker
    src = ["alpha city", "beta person born in gamma", "delta", "epsilon org"] * 3
    cand = ["alpha", "beta", "delta town with a long text " * 3, "e"] * 3
    a = ce.score_pairs(m, tok, src, cand, 48)
    b = ce.score_pairs(m, tok, src, cand, 48, amp_dtype=torch.bfloat16)
    assert b.dtype == np.float32 and np.allclose(a, b, atol=0.05 * max(1.0, float(np.abs(a).max())))


def test_unknown_rerank_backend_is_one_line():
    from hiea_ray.config import load_config
    from hiea_ray.errors import UserError

    with pytest.raises(UserError, match=r"rerank.backend: 'onnx' is not one of"):
        load_config(overrides=["rerank.backend=onnx"])


def test_train_step_fits_a_batch(tiny_encoder_dir):
    torch.manual_seed(0)
    m, tok = ce.load_reranker(str(tiny_encoder_dir))
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3)
    batch = {
        "src": ["karo city", "mila person", "tenvo org"],
        "pos": ["karo city", "mila person", "tenvo org"],
        "neg": [["mila person", "tenvo org"], ["karo city", "tenvo org"], ["karo city", "mila person"]],
    }
    head_before = m.classifier.weight.detach().clone()
    losses = [ce.train_step(m, tok, opt, None, batch, {"max_length": 32}, torch.device("cpu")) for _ in range(30)]
    assert losses[0] > 0.5 and losses[-1] < 0.6 * losses[0], losses
    assert not torch.equal(head_before, m.classifier.weight)


def test_rerank_stage_scores_top_k_and_pads(tiny_encoder_dir):
    from dataclasses import asdict

    from hiea_ray.config import RerankConfig
    from hiea_ray.io import column_to_numpy, embeddings_column
    from hiea_ray.ops.rerank import Reranker

    texts = pa.table({"id": [10, 11, 20, 21, 22], "text": ["karo city", "mila person", "karo town", "mila", "tenvo"], "kg": [1, 1, 2, 2, 2]})
    cfg = RerankConfig(k=2, max_length=32, cpus_per_actor=1, backend="torch")  # fp32: compared with score_pairs
    torch.manual_seed(0)
    stage = Reranker(asdict(cfg), str(tiny_encoder_dir), texts)
    batch = pa.table(
        {
            "src": [10, 11],
            "cand": embeddings_column(np.array([[20, 22, 21], [21, -1, -1]], np.int64)),
            "score": embeddings_column(np.array([[0.9, 0.5, 0.1], [0.7, -np.inf, -np.inf]], np.float32)),
        }
    )
    out = stage(batch)
    assert out.column_names == ["src", "cand", "retr", "rerank"]
    cand, retr, rer = (column_to_numpy(out[c]) for c in ("cand", "retr", "rerank"))
    assert cand.tolist() == [[20, 22], [21, -1]]
    assert np.allclose(retr[0], [0.9, 0.5])
    assert rer[1, 1] == -np.inf and np.isfinite(rer[0]).all() and np.isfinite(rer[1, 0])
    expected = ce.score_pairs(stage.model, stage.tokenizer, ["karo city", "karo city", "mila person"], ["karo town", "tenvo", "mila"], 32)
    assert np.allclose([rer[0, 0], rer[0, 1], rer[1, 0]], expected, atol=1e-5)
    with pytest.raises(KeyError, match="missing"):
        stage(pa.table({"src": [10], "cand": embeddings_column(np.array([[99, 20]], np.int64)),
                        "score": embeddings_column(np.array([[0.1, 0.2]], np.float32))}))
    # rerank.tokenize: stage — the pairs' token ids from a CPU actor, scored from ids: the same logits
    from hiea_ray.ops.rerank import RerankTokenize, rerank_spec

    ids = RerankTokenize(asdict(cfg), str(tiny_encoder_dir), texts)(batch)
    assert ids.column_names == ["src", "cand", "score", "pair_ids", "pair_types"]
    assert [len(x) for x in ids["pair_ids"].to_pylist()[1]] [1] == 0  # padding: no pair
    from_ids = column_to_numpy(Reranker(asdict(cfg), str(tiny_encoder_dir), texts, tokenized=True)(ids)["rerank"])
    assert from_ids[1, 1] == -np.inf and np.abs(from_ids[np.isfinite(from_ids)] - rer[np.isfinite(rer)]).max() <= 1e-5
    assert [x.cls.__name__ for x in rerank_spec(cfg, "m", texts)] == ["Reranker"]
    assert [x.cls.__name__ for x in rerank_spec(RerankConfig(gpus_per_actor=1), "m", texts)] == ["RerankTokenize", "Reranker"]
