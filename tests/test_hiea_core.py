"""The HIEA tier's Ray-free pieces: the merge into the "hiea" decoder (against a hand-computed toy
case), training candidates (gold inserted / removed), the router's anchor folds and neighbour
consistency, and the LoRA + adapter model folder (save -> load gives the same distribution; an
adapter of another dimension is a user error)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from hiea_ray.core.hiea import merge
from hiea_ray.core.metrics import decoder_metrics
from hiea_ray.core.prompt import SLOT, EntityView, build_prompt, training_candidates
from hiea_ray.core.router import anchor_folds, neighbour_consistency
from hiea_ray.errors import UserError


def test_merge_matches_a_hand_computed_toy_case():
    # sources 1..4, targets 11..16; the small model (primary decoder) ranks 3 candidates each
    q = np.array([1, 2, 3, 4])
    cand = np.array([[11, 12, 13], [12, 11, 14], [13, 15, 16], [14, 16, 15]])
    score = np.array([[0.9, 0.1, 0.0], [0.5, 0.4, 0.1], [0.6, 0.3, 0.1], [0.5, 0.45, 0.05]])
    match_src, match_tgt = np.array([1, 2, 3, 4]), np.array([11, 12, 13, 14])
    # sources 2, 3 and 4 are uncertain; the LLM saw 2 candidates each (option order shuffled) + none
    llm_src = np.array([2, 3, 4])
    options = np.array([[11, 12], [15, 13], [16, 14]])
    n_options = np.array([3, 3, 3])
    p = np.array([[0.7, 0.2, 0.1],   # 2 -> 11 (the small model said 12)
                  [0.1, 0.2, 0.7],   # 3 -> none: abstains
                  [0.6, 0.3, 0.1]])  # 4 -> 16
    m = merge(q, cand, score, match_src, match_tgt, np.array([2, 3, 4]), llm_src, options, n_options, np.log(p))
    # hand-computed: certain source 1 unchanged; 2: [11, 12] then the rest [14]; 3: [13, 15] (by
    # P: 0.2 > 0.1) then [16]; 4: [16, 14] then [15]
    assert m.cand.tolist() == [[11, 12, 13], [11, 12, 14], [13, 15, 16], [16, 14, 15]]
    # one-to-one: 1 -> 11 (certain) holds 11, so 2's answer 11 is dropped; 3 abstains; 4 -> 16
    assert sorted(zip(m.match_src.tolist(), m.match_tgt.tolist())) == [(1, 11), (4, 16)]
    assert m.abstained.tolist() == [3]
    assert m.llm_pick.tolist() == [11, -1, 16]
    gold_src, gold_tgt = np.array([1, 2, 3, 4]), np.array([11, 11, 15, 16])
    got = decoder_metrics(q, m.cand, m.match_src, m.match_tgt, gold_src, gold_tgt, [1])
    assert got["hits@1"] == pytest.approx(3 / 4)  # 1, 2 and 4 right at rank 1; 3's gold is at rank 2
    assert got["precision"] == 1.0 and got["recall"] == pytest.approx(2 / 4)
    # fusion with the small model: 2's scores 0.5 (12) vs 0.4 (11) over its 2 options -> P_small
    # 12: 5/9, 11: 4/9; at fusion 0.9: 11 -> 0.1*0.7 + 0.9*4/9 = 0.47 < 12 -> 0.1*0.2 + 0.9*5/9 = 0.52
    f = merge(q, cand, score, match_src, match_tgt, np.array([2, 3, 4]), llm_src, options, n_options, np.log(p), 0.9)
    assert f.cand[1].tolist() == [12, 11, 14]


def test_training_candidates_insert_or_remove_the_gold():
    rng = np.random.default_rng(0)
    ranked = np.array([[5, 6, 7, 8, 9]] * 400)
    gold = np.array([7] * 200 + [42] * 200)  # in the list / missed by the retriever
    cands, has = training_candidates(ranked, gold, 3, 0.25, rng)
    assert cands.shape == (400, 3)
    assert np.all((cands == gold[:, None]).any(1) == has)  # gold shown exactly when the example has it
    assert 0.15 < 1 - has.mean() < 0.35  # ~25% "none" examples
    assert len({int(np.flatnonzero(r == 42)[0]) for r, h in zip(cands[200:], has[200:]) if h}) == 3  # random slot
    assert np.all((cands[~has] != gold[~has, None]).all(1)) and np.all(cands >= 0)


def test_anchor_folds_are_balanced_and_seeded():
    f = anchor_folds(103, 5, 0)
    assert sorted(np.bincount(f).tolist()) == [20, 20, 21, 21, 21]
    assert np.array_equal(f, anchor_folds(103, 5, 0)) and not np.array_equal(f, anchor_folds(103, 5, 1))


def test_neighbour_consistency_counts_neighbours_whose_match_neighbours_the_best_target():
    # KG1: 0-1, 0-2 ; KG2: 0-1 (2 is not a neighbour of 0)
    adj_s = sp.csr_matrix(np.array([[0, 1, 1], [1, 0, 0], [1, 0, 0]]))
    adj_t = sp.csr_matrix(np.array([[0, 1, 0], [1, 0, 0], [0, 0, 0]]))
    anchors = np.array([[1, 1], [2, 2]])  # 1 <-> 1, 2 <-> 2 are seeds
    got = neighbour_consistency(np.array([0, -1]), np.array([0, 1]), adj_s, adj_t, anchors)
    assert got[0] == pytest.approx(0.5)  # neighbours 1 and 2 matched; only 1's match neighbours target 0
    assert np.isnan(got[1])  # no best target


def test_prompt_slot_string_repeats_for_several_adapter_tokens():
    src = EntityView(0, "a", ["r: x"])
    p = build_prompt(src, [EntityView(1, "b")], lambda t: len(t.split()), 100, np.random.default_rng(0),
                     slot=f"{SLOT} {SLOT}")
    assert p.text.count(SLOT) == 4


@pytest.fixture(scope="module")
def tiny_llm(tmp_path_factory):
    from hiea_ray.core.tiny import build_tiny_causal_lm

    corpus = ["Which option is the same entity as the source? Answer with one letter. Source: A B C D none of these"]
    return build_tiny_causal_lm(tmp_path_factory.mktemp("llm"), corpus, hidden=32, layers=1)


OPTS = {"lora_r": 4, "lora_alpha": 8, "lora_dropout": 0.0, "lora_targets": ["q_proj", "v_proj"], "adapter_tokens": 2,
        "candidates": 2}


@pytest.mark.parametrize("readout", ["letters", "slots"])
def test_saved_lora_and_adapter_reload_to_the_same_distribution(tiny_llm, tmp_path, readout):
    from hiea_ray.core.llm import PromptFormat, load_hiea_llm, model_readout, score

    torch.manual_seed(0)
    opts = {**OPTS, "readout": readout}
    model, tok = load_hiea_llm(tiny_llm, None, 8, opts, trainable=True)
    with torch.no_grad():  # make LoRA and the adapter non-trivial
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.1 * torch.randn_like(p))
    fmt = PromptFormat(tok, 2, readout)
    prompt = build_prompt(EntityView(0, "A"), [EntityView(1, "B"), EntityView(2, "C")], fmt.count, 200,
                          np.random.default_rng(0), slot=fmt.slot, slot_last=fmt.slot_last)
    texts = [fmt.wrap(prompt.text)]
    vec = [np.random.default_rng(1).normal(size=3 * 8).astype(np.float32)]
    before = score(model, tok, texts, vec, [3], 3, torch.device("cpu"))
    model.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    # the saved folder's readout wins over the options a later run passes
    again, tok2 = load_hiea_llm(tiny_llm, str(tmp_path / "m"), 8, {**OPTS, "readout": "letters"}, trainable=False)
    assert again.readout == readout == model_readout(tmp_path / "m")
    after = score(again, tok2, texts, vec, [3], 3, torch.device("cpu"))
    assert np.allclose(before, after, atol=1e-5) and np.isclose(np.exp(after).sum(), 1.0, atol=1e-5)
    fresh, _ = load_hiea_llm(tiny_llm, None, 8, opts, trainable=False)
    assert not np.allclose(score(fresh, tok, texts, vec, [3], 3, torch.device("cpu")), before, atol=1e-4)
    with pytest.raises(UserError, match="takes 8-dim entity vectors; this run's encoder gives 16-dim"):
        load_hiea_llm(tiny_llm, str(tmp_path / "m"), 16, OPTS, trainable=False)


def test_slot_readout_scores_each_candidate_at_its_line_end_and_none_at_the_prompt_end(tiny_llm):
    """llm.readout=slots: candidate j's score = the head on the hidden state at its (last) slot
    token, which closes its line; "none" at the last position; the letters' column layout (a prompt
    with fewer candidates: none at n_options - 1, -inf after); gradients reach head, LoRA, adapter."""
    from hiea_ray.core.llm import PromptFormat, encode, load_hiea_llm

    torch.manual_seed(0)
    opts = {**OPTS, "candidates": 3, "readout": "slots"}
    model, tok = load_hiea_llm(tiny_llm, None, 8, opts, trainable=True)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.1 * torch.randn_like(p))
    fmt = PromptFormat(tok, 2, "slots")
    prompt = build_prompt(EntityView(0, "A"), [EntityView(1, "B", ["r: C"]), EntityView(2, "C")], fmt.count, 200,
                          np.random.default_rng(0), slot=fmt.slot, slot_last=True)
    assert all(line.endswith(fmt.slot) for line in prompt.text.splitlines()[1:4])
    vec = np.random.default_rng(1).normal(size=4 * 8).astype(np.float32)
    ids, mask, v, have = encode(tok, [fmt.wrap(prompt.text)], [vec], [3], 4, torch.device("cpu"))
    logp = model(ids, mask, v, have, have)
    assert logp.shape == (1, 4) and torch.isinf(logp[0, 3]) and torch.isclose(logp.exp().sum(), torch.tensor(1.0))
    with torch.no_grad():  # by hand: the full forward's last hidden states at the slot groups' last tokens
        embeds = model.lm.get_input_embeddings()(ids)
        from hiea_ray.core.llm import inject

        embeds = inject(embeds, ids, model.slot_id, model.adapter(v), have)
        h = model.lm(inputs_embeds=embeds, attention_mask=mask, output_hidden_states=True).hidden_states[-1][0]
        slot_pos = (ids[0] == model.slot_id).nonzero().flatten().tolist()[1::2]  # 2 tokens per slot: the second
        want = [float(model.score_head.cand(h[p])) for p in slot_pos[1:]] + [float(model.score_head.none(h[-1]))]
    np.testing.assert_allclose((logp[0, :3] - logp[0, :3].logsumexp(0)).detach().numpy(),
                               torch.log_softmax(torch.tensor(want), 0).numpy(), atol=1e-5)
    logp[0, 0].backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    assert all(g is not None and g.abs().sum() > 0 for n, g in grads.items() if "score_head.cand" in n or "adapter" in n)
    assert any("lora" in n and g is not None and g.abs().sum() > 0 for n, g in grads.items())


def test_a_training_example_never_shows_its_own_link_as_a_bridge():
    from hiea_ray.core.prompt import Neighbourhoods

    # KG1: 1 -r-> 2 ; KG2: 11 -r-> 12 ; links 1-11 (the example) and 2-12 (another seed)
    nb = Neighbourhoods(np.array([1, 2, 11, 12]), ["s", "sn", "t", "tn"], np.array([1, 11]), ["r", "r"],
                        np.array([2, 12]), counterpart={1: "t", 11: "s", 2: "tn", 12: "sn"})
    assert nb.view(12).facts == ["r of: t (= s)"]  # the gold's neighbour 11 would name the source
    assert nb.view(12, hide=frozenset({1, 11})).facts == ["r of: t"]
    assert nb.view(11, hide=frozenset({1, 11})).facts == ["r: tn (= sn)"]  # other bridges stay


def test_small_probs_and_choose_fusion_on_a_toy_case():
    from hiea_ray.core.hiea import choose_fusion, small_probs

    options = np.array([[7, 5, -1], [4, 9, 6]])
    cand = np.array([[5, 7, 8], [9, 6, 3]])
    score = np.array([[0.6, 0.2, 0.1], [0.5, -0.1, 0.3]])  # option 4 of row 1 is not in its list; -0.1 clips to 0
    small = small_probs(options, cand, score)
    np.testing.assert_allclose(small, [[0.25, 0.75, 0.0], [0.0, 1.0, 0.0]])
    # the LLM is right on row 0 (option 0) where the small model is wrong; row 1: gold = option 0, which
    # the small model gives 0 and the LLM 0.6
    logp = np.log(np.array([[0.7, 0.2, 0.0 + 1e-12, 0.1], [0.6, 0.3, 0.05, 0.05]]))
    n_opt = np.array([3, 4])
    answer = np.array([0, 0])
    w, acc = choose_fusion(logp, n_opt, small, answer)
    assert acc[0.0] == 1.0 and acc[1.0] == 0.0
    # row 0 stays right while 0.7 - 0.45 w > 0.2 + 0.55 w (w < 0.5); row 1 while 0.6 (1 - w) > 0.3 + 0.7 w
    # (w < 0.23): the largest weight with both right is 0.2
    assert w == 0.2 and acc[0.2] == 1.0 and acc[0.3] == acc[0.4] == 0.5 and acc[0.6] == 0.0
    # "none" as the right answer is no hit for any weight
    w, acc = choose_fusion(logp, n_opt, small, np.array([2, 3]))
    assert w == 1.0 and set(acc.values()) == {0.0}


def test_fusion_weight_auto_reads_the_trained_models_choice(tmp_path):
    import json

    from hiea_ray.core.hiea import fusion_weight

    assert fusion_weight(0.3, None) == 0.3
    with pytest.raises(UserError, match="fusion.json"):
        fusion_weight("auto", tmp_path)
    (tmp_path / "fusion.json").write_text(json.dumps({"fusion": 0.7}))
    assert fusion_weight("auto", tmp_path) == 0.7


def test_routed_validation_holds_its_sources_out_of_training_and_shows_test_like_candidates():
    """llm.validation=routed: the labelled sources the router routes, split; held-out ones never train
    and get their primary list's top C (no gold inserted: "none" is right when it is missing)."""
    import pyarrow as pa

    from hiea_ray.config import LLMConfig
    from hiea_ray.core.prompt import Neighbourhoods
    from hiea_ray.io import embeddings_column
    from hiea_ray.train.llm import routed_split, training_tables

    n = 40  # KG1 ids 0..39, KG2 ids 100..139; link i -> 100 + i
    ids = np.concatenate([np.arange(n), 100 + np.arange(n)])
    names = [f"e{i}" for i in ids]
    nb = Neighbourhoods(ids, names, np.array([0, 1]), ["r", "r"], np.array([1, 2]), max_facts=2)
    vecs = np.random.default_rng(0).normal(size=(len(ids), 4)).astype(np.float32)

    class Fmt:  # whitespace tokens, no chat template
        slot = SLOT
        wrap = staticmethod(lambda t: t)
        count = staticmethod(lambda t: len(t.split()))

    src = np.arange(n)
    links = pa.table({"src": src, "tgt": 100 + src, "split": ["train"] * 30 + ["valid"] * 10})
    # every labelled source's primary list: a wrong target first; the gold second for even sources only
    cand = np.stack([[100 + (i + 1) % n, 100 + i if i % 2 == 0 else 100 + (i + 2) % n, 100 + (i + 3) % n,
                      100 + (i + 4) % n] for i in src])
    labelled = pa.table({"src": src, "tgt": 100 + src, "prob": np.linspace(0, 1, n).astype(np.float32),
                         "routed": src < 24, "right": np.zeros(n, bool), "cand": embeddings_column(cand),
                         "score": embeddings_column(np.tile([0.9, 0.8, 0.7, 0.6], (n, 1)))})
    lc = LLMConfig(candidates=3, prompt_tokens=200, valid_links=8, routed_valid_fraction=0.5, none_fraction=0.0)
    hard, held = routed_split(labelled, lc)
    assert held.num_rows == 8 and hard.num_rows == 16  # min(0.5 * 24, valid_links)
    assert set(held["src"].to_pylist()).isdisjoint(hard["src"].to_pylist()) and max(held["src"].to_pylist()) < 24
    # routed_valid_fraction 1: every routed one validates (few routed: none is spared for training)
    import dataclasses

    all_hard, all_held = routed_split(labelled, dataclasses.replace(lc, routed_valid_fraction=1.0, valid_links=300))
    assert all_hard.num_rows == 0 and all_held["src"].to_pylist() == list(range(24))
    assert training_tables(links, lambda s, d: np.stack([100 + (np.asarray(s) + j) % n for j in range(d)], axis=1), nb,
                           Fmt(), lc, ids, vecs, (all_hard, all_held))[0].num_rows == 30 - 24  # train links minus the held 0..23

    def ranked_of(s, depth):
        return np.stack([100 + (np.asarray(s) + j) % n for j in range(depth)], axis=1)

    train, valid = training_tables(links, ranked_of, nb, Fmt(), lc, ids, vecs, (hard, held))
    assert set(train["src"].to_pylist()).isdisjoint(held["src"].to_pylist())
    assert train.num_rows == 30 - int(np.isin(held["src"].to_numpy(), np.arange(30)).sum()) + hard.num_rows
    assert valid["src"].to_pylist() == held["src"].to_pylist()
    from hiea_ray.io import column_to_numpy

    opts = column_to_numpy(valid["options"])
    for s, o, a, k in zip(valid["src"].to_pylist(), opts, valid["answer"].to_pylist(), valid["n_options"].to_pylist()):
        assert sorted(o.tolist()) == sorted(cand[s, :3].tolist())  # exactly the list's top 3
        if s % 2 == 0:
            assert o[a] == 100 + s
        else:
            assert a == k - 1  # gold missed: "none" is right
        assert valid["small"].to_pylist()[valid["src"].to_pylist().index(s)] == o.tolist().index(cand[s, 0])

    # llm.train_on: the labelled sources not held out, each with its own primary list (made as a
    # test source's), with ("both") or without ("labelled") the train links
    labelled_only, held2 = routed_split(labelled, dataclasses.replace(lc, train_on="labelled"))
    assert held2["src"].to_pylist() == held["src"].to_pylist()
    assert sorted(labelled_only["src"].to_pylist()) == sorted(set(range(n)) - set(held["src"].to_pylist()))
    for mode, want in (("labelled", set(labelled_only["src"].to_pylist())),
                       ("both", set(labelled_only["src"].to_pylist()) | (set(range(30)) - set(held["src"].to_pylist())))):
        o = dataclasses.replace(lc, train_on=mode)
        t, v = training_tables(links, ranked_of, nb, Fmt(), o, ids, vecs, routed_split(labelled, o))
        assert set(t["src"].to_pylist()) == want and v["src"].to_pylist() == held["src"].to_pylist()
        rows = t.filter(pa.compute.is_in(t["src"], pa.array(sorted(set(range(30, n)) - set(held["src"].to_pylist())))))
        for s, o_ in zip(rows["src"].to_pylist(), column_to_numpy(rows["options"])):  # valid links: their own list
            assert set(o_.tolist()) - {100 + s} <= set(cand[s].tolist())
    everything_held = dataclasses.replace(lc, train_on="labelled", routed_valid_fraction=1.0, valid_links=300)
    only = labelled.filter(labelled["routed"])
    with pytest.raises(UserError, match="every labelled source is held out"):
        training_tables(links, ranked_of, nb, Fmt(), everything_held, ids, vecs, routed_split(only, everything_held))


def test_llm_examples_include_a_collaboration_rounds_pseudo_seed_links():
    """collab rounds: the last round's LLM tier trains on seed + pseudo-seed links (split "pseudo"),
    validates on the valid links only."""
    import pyarrow as pa

    from hiea_ray.config import LLMConfig
    from hiea_ray.core.prompt import Neighbourhoods
    from hiea_ray.train.llm import training_tables

    n = 30
    ids = np.concatenate([np.arange(n), 100 + np.arange(n)])
    nb = Neighbourhoods(ids, [f"e{i}" for i in ids], np.array([0, 1]), ["r", "r"], np.array([1, 2]), max_facts=2)
    vecs = np.random.default_rng(0).normal(size=(len(ids), 4)).astype(np.float32)

    class Fmt:
        slot = SLOT
        wrap = staticmethod(lambda t: t)
        count = staticmethod(lambda t: len(t.split()))

    src = np.arange(n)
    links = pa.table({"src": src, "tgt": 100 + src, "split": ["train"] * 10 + ["valid"] * 5 + ["test"] * 10 + ["pseudo"] * 5})
    lc = LLMConfig(candidates=3, prompt_tokens=200, none_fraction=0.0)
    train, valid = training_tables(links, lambda s, d: np.stack([100 + (np.asarray(s) + j) % n for j in range(d)], axis=1),
                                   nb, Fmt(), lc, ids, vecs)
    assert sorted(train["src"].to_pylist()) == [*range(10), *range(25, 30)]
    assert valid["src"].to_pylist() == list(range(10, 15))


def test_llm_examples_from_labelled_sources_need_a_routed_labelled_source(tmp_path, caplog):
    """llm.train_on labelled / both with a router that routes none of the labelled sources: nothing to
    hold out, and the valid links (the labelled sources) would validate on training prompts -> one
    clear line. llm.train_on=train falls back to the valid links with a warning."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from hiea_ray.config import load_config
    from hiea_ray.run import RunContext
    from hiea_ray.stages.llm_train import routed_examples

    path = tmp_path / "route" / "standard" / "labelled.parquet"
    path.parent.mkdir(parents=True)
    n = 6
    pq.write_table(pa.table({"src": np.arange(n), "tgt": np.arange(n) + 100, "prob": np.full(n, 0.999, np.float32),
                             "routed": np.zeros(n, bool), "right": np.ones(n, bool)}), path)
    for train_on in ("labelled", "both"):
        ctx = RunContext(load_config(overrides=[f"llm.train_on={train_on}"]), tmp_path, tmp_path)
        with pytest.raises(UserError, match=f"llm.train_on={train_on}: the router routes none of the 6 labelled"):
            routed_examples(ctx, "standard")
    ctx = RunContext(load_config(overrides=["llm.train_on=train"]), tmp_path, tmp_path)
    with caplog.at_level("WARNING", logger="hiea_ray"):
        assert routed_examples(ctx, "standard") is None
    assert "routes none of the labelled sources" in caplog.text


def test_llm_validation_counts_the_best_ranked_candidate_apart_from_none(monkeypatch):
    """llm_train keeps the checkpoint with the best valid_rank_hits1: the merge's Hits@1 (the
    best-ranked candidate; "none" abstains and is no hit), beside the arg-max accuracy."""
    import pyarrow as pa

    import hiea_ray.core.llm.steps as llm  # evaluate reads score from its own module

    # 4 examples, 3 candidates + none (slot 3); answers 0, 1, 3 (gold missed), 2
    logp = np.log(np.array([[0.5, 0.2, 0.1, 0.2],    # picks 0: right
                            [0.1, 0.2, 0.3, 0.4],    # picks none; best candidate 2: wrong
                            [0.2, 0.1, 0.1, 0.6],    # picks none: right, but no hit
                            [0.1, 0.1, 0.3, 0.5]]))  # picks none; best candidate 2: a hit
    monkeypatch.setattr(llm, "score", lambda *a, **k: logp)
    valid = pa.table({"text": ["x"] * 4, "vectors": [[0.0]] * 4, "n_options": [4] * 4, "answer": [0, 1, 3, 2],
                      "small": [0, 0, 0, 0]})
    m = llm.evaluate(None, None, valid, {"candidates": 3}, torch.device("cpu"))
    assert m["valid_acc"] == 0.5 and m["valid_hits1"] == 0.25 and m["valid_rank_hits1"] == 0.5
    assert m["valid_picked_none"] == 0.75 and m["valid_small_acc"] == 0.25


@pytest.mark.parametrize("readout", ["letters", "slots"])
def test_bf16_weights_keep_the_trainable_parts_in_float32(tiny_llm, tmp_path, readout):
    """llm.dtype=bfloat16 (what "auto" picks on GPUs): the base's weights are bf16, LoRA, adapter and
    score head float32; a training step runs without autocast; the saved folder has the same files,
    float32 tensors, and reloads on a float32 base to nearly the same distribution."""
    from hiea_ray.core.llm import PromptFormat, load_hiea_llm, score, train_step, weight_dtype

    assert weight_dtype("auto", "cpu") == torch.float32 and weight_dtype("auto", "cuda") == torch.bfloat16
    assert weight_dtype("bfloat16", "cpu") == torch.bfloat16 and weight_dtype("float32", "cuda") == torch.float32
    torch.manual_seed(0)
    opts = {**OPTS, "readout": readout}
    model, tok = load_hiea_llm(tiny_llm, None, 8, opts, trainable=True, dtype=torch.bfloat16)
    train = {n: p.dtype for n, p in model.named_parameters() if p.requires_grad}
    frozen = {p.dtype for p in model.parameters() if not p.requires_grad}
    assert train and set(train.values()) == {torch.float32} and frozen == {torch.bfloat16}
    assert any("lora" in n for n in train) and any("adapter" in n for n in train)
    fmt = PromptFormat(tok, 2, readout)
    prompt = build_prompt(EntityView(0, "A"), [EntityView(1, "B"), EntityView(2, "C")], fmt.count, 200,
                          np.random.default_rng(0), slot=fmt.slot, slot_last=fmt.slot_last)
    vec = np.random.default_rng(1).normal(size=3 * 8).astype(np.float32)
    batch = {"text": [fmt.wrap(prompt.text)] * 2, "vectors": [vec, vec], "n_options": [3, 3], "answer": [0, 1]}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    loss = train_step(model, tok, opt, sched, batch, opts, torch.device("cpu"), None)
    assert np.isfinite(loss)
    assert any(not torch.equal(before[n], p) for n, p in model.named_parameters() if p.requires_grad)
    bf = score(model, tok, batch["text"][:1], [vec], [3], 3, torch.device("cpu"))
    model.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    from safetensors.torch import load_file

    saved = load_file(tmp_path / "m" / "adapter_model.safetensors")
    assert saved and {t.dtype for t in saved.values()} == {torch.float32}
    fp, tok2 = load_hiea_llm(tiny_llm, str(tmp_path / "m"), 8, opts, trainable=False)
    assert {p.dtype for p in fp.parameters()} == {torch.float32}
    f32 = score(fp, tok2, batch["text"][:1], [vec], [3], 3, torch.device("cpu"))
    assert np.abs(np.exp(bf) - np.exp(f32)).max() < 0.05  # bf16 rounding of the base only


def test_the_llm_stage_scores_the_same_from_a_cpu_tokenize_stage(tiny_llm, tmp_path):
    """llm.tokenize: stage — LLMTokenize (a CPU actor) adds the prompts' token ids and LLMScorer
    scores from them (pad, copy, forward): the same distributions as from the texts."""
    from dataclasses import asdict

    import pyarrow as pa

    from hiea_ray.config import LLMConfig
    from hiea_ray.core.llm import PromptFormat, load_hiea_llm
    from hiea_ray.io import column_to_numpy, embeddings_column
    from hiea_ray.ops.llm import LLMScorer, LLMTokenize, llm_spec

    torch.manual_seed(0)
    model, tok = load_hiea_llm(tiny_llm, None, 8, {**OPTS, "readout": "slots"}, trainable=True)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.1 * torch.randn_like(p))
    model.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    fmt = PromptFormat(tok, 2, "slots")
    rng = np.random.default_rng(0)
    texts, vecs = [], []
    for i in range(5):
        cands = [EntityView(j, f"c{j}", [f"r: x{j}"] * (i % 3)) for j in (1, 2)]
        texts.append(fmt.wrap(build_prompt(EntityView(0, "A" * (i + 1)), cands, fmt.count, 200, rng, slot=fmt.slot,
                                           slot_last=True).text))
        vecs.append(rng.normal(size=3 * 8).astype(np.float32))
    batch = pa.table({"src": np.arange(5, dtype=np.int64), "text": texts, "vectors": embeddings_column(np.stack(vecs)),
                      "n_options": np.full(5, 3, np.int64), "options": embeddings_column(np.ones((5, 2), np.int64))})
    cfg = {**asdict(LLMConfig(candidates=2, adapter_tokens=2, infer_batch_size=2, torch_threads=1)),
           **{k: v for k, v in OPTS.items()}}
    scorer = LLMScorer(cfg, tiny_llm, str(tmp_path / "m"), 8)
    ids = LLMTokenize(str(tmp_path / "m"))(batch)
    assert ids.column_names == batch.column_names + ["input_ids"]
    a = column_to_numpy(scorer(batch)["logp"])
    b = column_to_numpy(LLMScorer(cfg, tiny_llm, str(tmp_path / "m"), 8, tokenized=True)(ids)["logp"])
    assert np.abs(np.exp(a) - np.exp(b)).max() <= 1e-6
    assert [s.cls.__name__ for s in llm_spec(LLMConfig(), "b", "t", 8)] == ["LLMScorer"]
    assert [s.cls.__name__ for s in llm_spec(LLMConfig(gpus_per_actor=1), "b", "t", 8)] == ["LLMTokenize", "LLMScorer"]
