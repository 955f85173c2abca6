"""The LLM verbalizer without Ray: prompts within their budget holding the entity's facts, the
training file's checks, cleaning of generations, the actor class on a tiny random causal LM, and
LoRA steps of the verbalizer task."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest

from hiea_ray.config import VerbalizeConfig
from hiea_ray.core.describe import INSTRUCTION, clean, describe_body, facts_from_triples, fit_facts, read_train_file
from hiea_ray.core.verbalize import build_contexts, entity_facts, verbalize_row
from hiea_ray.errors import UserError


def words(text: str) -> int:
    return len(text.split())


def test_prompt_respects_its_budget_and_keeps_the_facts_in_order():
    facts = [f"relation {i}: neighbour {i}, other {i}" for i in range(30)]
    base = words(describe_body("Some Entity", []))
    for budget in (base, base + 7, base + 40, base + 500):
        body, kept = fit_facts("Some Entity", facts, words, budget)
        assert words(body) <= budget
        assert body.startswith(INSTRUCTION) and "Entity: Some Entity" in body
        assert kept == facts[: len(kept)]  # the first facts, in the template's order
        assert all(f"- {f}" in body for f in kept)
    assert fit_facts("Some Entity", facts, words, base + 500)[1] == facts  # a large budget: every fact
    assert fit_facts("Some Entity", facts, words, base)[1] == []


def test_a_long_fact_is_skipped_and_shorter_ones_still_fit():
    facts = ["short: a", "long: " + ", ".join(f"n{i}" for i in range(50)), "short2: b"]
    budget = words(describe_body("E", ["short: a", "short2: b"]))
    body, kept = fit_facts("E", facts, words, budget)
    assert kept == ["short: a", "short2: b"] and words(body) <= budget


def test_a_name_over_the_budget_is_cut_and_a_budget_below_the_instruction_is_an_error():
    base = words(describe_body("", []))
    body, kept = fit_facts("w " * 100, ["a: b"], words, base + 3)
    assert words(body) <= base + 3 and kept == []
    with pytest.raises(ValueError, match="prompt_tokens"):
        fit_facts("E", [], words, base - 1)


def test_prompt_holds_the_facts_the_template_uses(synthetic_pair, tiny_llm_dir):
    from transformers import AutoTokenizer

    from hiea_ray.core.generate import token_counter

    cfg = VerbalizeConfig(mode="llm")
    count = token_counter(AutoTokenizer.from_pretrained(tiny_llm_dir))
    rows = build_contexts(synthetic_pair).slice(0, 50).to_pylist()
    for r in rows:
        facts = entity_facts(r, cfg)
        body, kept = fit_facts(r["name"], facts, count, 4000)
        assert kept == facts and count(body) <= 4000
        tmpl = verbalize_row(r, VerbalizeConfig(max_words=10_000))
        assert all(f in tmpl for f in facts)  # the template joins the very same facts
        small = count(describe_body(r["name"], [])) + 25
        body, kept = fit_facts(r["name"], facts, count, small)
        assert count(body) <= small and kept == [f for f in facts if f in kept]


def test_facts_from_triples():
    name, facts = facts_from_triples([["Paris", "capital of", "France"], ["Paris", "mayor", "Anne Hidalgo"],
                                      ["Louvre", "located in", "Paris"], ["Paris", "capital of", "Île-de-France"]])
    assert name == "Paris"
    assert facts == ["capital of: France, Île-de-France", "mayor: Anne Hidalgo", "located in of: Louvre"]
    assert facts_from_triples([["A", "r", "B"]], entity="B") == ("B", ["r of: A"])


@pytest.mark.parametrize("line, message", [
    ("{not json", "not JSON"),
    ("[1, 2]", "expected an object"),
    ('{"triples": [["a", "r", "b"]]}', '"text" must be a non-empty string'),
    ('{"triples": [["a", "r"]], "text": "t"}', '"triples" must be a non-empty list'),
    ('{"triples": [], "text": "t"}', '"triples" must be a non-empty list'),
    ('{"triples": [["a", "r", 3]], "text": "t"}', '"triples" must be a non-empty list'),
    ('{"triples": [["a", "r", "b"]], "text": "t", "entity": 5}', '"entity" must be a string'),
])
def test_train_file_bad_line_names_file_and_line(tmp_path, line, message):
    good = json.dumps({"triples": [["a", "r", "b"]], "text": "a is r b."})
    p = tmp_path / "train.jsonl"
    p.write_text(f"{good}\n\n{line}\n{good}\n")
    with pytest.raises(UserError) as e:
        read_train_file(p)
    assert str(e.value).startswith(f"{p}:3: ") and message in str(e.value)


def test_train_file_reads_examples(tmp_path):
    p = tmp_path / "train.jsonl"
    p.write_text(json.dumps({"triples": [["a", "r", "b"]], "text": "  a  is r b. "}) + "\n")
    assert read_train_file(p) == [{"name": "a", "facts": ["r: b"], "text": "a is r b."}]
    with pytest.raises(UserError, match="not found"):
        read_train_file(tmp_path / "missing.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(UserError, match="no examples"):
        read_train_file(tmp_path / "empty.jsonl")


@pytest.mark.parametrize("raw, out", [
    ("Paris is the capital of France.\nMore text.", "Paris is the capital of France."),
    ("\n\n  Sure! Here is a description:\n\n\"Paris is  a city.\"", "Paris is a city."),
    ("Sure!\n\nParis is big.", "Paris is big."),
    ("", ""),
    ("   \n ", ""),
])
def test_clean(raw, out):
    assert clean(raw) == out


def test_clean_clips_words():
    assert clean(" ".join(["w"] * 100), max_words=5) == "w w w w w"


def test_llm_verbalizer_writes_one_text_per_entity(synthetic_pair, tiny_llm_dir):
    """The actor class, called directly: one row per context row, descriptions generated within
    max_new_tokens, llm+template appends the template, facts recorded."""
    from dataclasses import asdict

    from hiea_ray.ops.verbalize import GENERATED, LLMVerbalizer

    contexts = build_contexts(synthetic_pair).slice(0, 12)
    for mode in ("llm", "llm+template"):
        cfg = VerbalizeConfig(mode=mode)
        cfg.llm.max_new_tokens, cfg.llm.batch_size_gen, cfg.llm.torch_threads = 6, 5, 1
        out = LLMVerbalizer(asdict(cfg), tiny_llm_dir)(contexts)
        assert out.schema == GENERATED
        assert out["id"].to_pylist() == contexts["id"].to_pylist()
        assert all(0 < n <= 6 for n in out["new_tokens"].to_pylist())
        rows = contexts.to_pylist()
        for r, t, g in zip(rows, out["text"].to_pylist(), out["generated"].to_pylist()):
            tmpl = verbalize_row(r, cfg)
            assert t == ((g or r["name"]) + " " + tmpl if mode == "llm+template" else (g or r["name"]))
        assert all(len(f) <= n for f, n in zip(out["facts"].to_pylist(), out["facts_total"].to_pylist()))
        assert max(out["prompt_tokens"].to_pylist()) <= cfg.llm.prompt_tokens


def test_generate_is_greedy_and_batch_independent(tiny_llm_dir):
    import torch

    from hiea_ray.core.generate import chat, generate, load_generator

    torch.set_num_threads(1)
    model, tok = load_generator(tiny_llm_dir)
    prompts = [chat(tok, describe_body(f"entity {i}", ["r: x"] * (i % 3))) for i in range(6)]
    a, na, _ = generate(model, tok, prompts, 5, batch_size=1)
    b, nb, _ = generate(model, tok, prompts, 5, batch_size=4)  # left padding must not change outputs
    assert a == b and na == nb


def test_verbalizer_task_lora_steps_lower_the_loss(tiny_llm_dir, tmp_path):
    """The verbalize_train task without Ray Train: LoRA on the tiny LM learns a fixed text; the
    saved folder is a peft adapter that the generator merges."""
    import torch

    from hiea_ray.config import VerbalizerLLMConfig
    from hiea_ray.core.generate import chat, load_generator, sft_batch, sft_evaluate
    from hiea_ray.stages.verbalize_train import examples
    from hiea_ray.train.tasks import VerbalizerTask

    torch.manual_seed(0)
    torch.set_num_threads(1)
    opts = {**__import__("dataclasses").asdict(VerbalizerLLMConfig()), "lr": 3e-2, "warmup_steps": 0,
            "lora_targets": ["q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "down_proj"]}
    task = VerbalizerTask(tiny_llm_dir, opts)
    model, tok = task.load(tiny_llm_dir)
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) < sum(p.numel() for p in model.parameters()) / 2
    rows = [{"name": f"entity {i}", "facts": [f"r: n{i}"], "text": f"entity {i} is r n{i}"} for i in range(4)]
    rows[3]["text"] = "it is r n3"  # does not start as the stage's answers do: no prefill
    table = examples(rows, tok, 120)
    # the name is prefilled: the prompt ends with it and the target is the rest of the text
    assert table["prompt"].to_pylist()[0] == chat(tok, describe_body("entity 0", ["r: n0"]), "entity 0 is")
    assert table["text"].to_pylist()[0] == " r n0"
    assert table["prompt"].to_pylist()[3] == chat(tok, describe_body("entity 3", ["r: n3"]))
    assert table["text"].to_pylist()[3] == "it is r n3"
    ids, mask, labels = sft_batch(tok, table["prompt"].to_pylist(), table["text"].to_pylist(), "cpu")
    assert ((labels != -100).sum(1) > 0).all() and ((labels != -100) <= (mask == 1)).all()
    before = sft_evaluate(model, tok, table, opts, torch.device("cpu"))
    from transformers import get_constant_schedule

    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=opts["lr"])
    scheduler = get_constant_schedule(optimizer)
    batch = {"prompt": np.array(table["prompt"].to_pylist()), "text": np.array(table["text"].to_pylist())}
    losses = [task.step(model, tok, optimizer, scheduler, batch, opts, torch.device("cpu"), None) for _ in range(40)]
    after = sft_evaluate(model, tok, table, opts, torch.device("cpu"))
    # a random tiny LM's logits are nearly flat (small lm_head, untouched by LoRA): the loss moves
    # slowly, the arg-max tokens fast
    assert losses[-1] < losses[0] - 0.2 and after["valid_loss"] < before["valid_loss"]
    assert after["valid_token_acc"] >= before["valid_token_acc"] + 0.2
    task.save(model, tok, tmp_path / "lora")
    assert (tmp_path / "lora" / "adapter_config.json").is_file()
    merged, _ = load_generator(tiny_llm_dir, str(tmp_path / "lora"))
    assert not any("lora" in n for n, _ in merged.named_parameters())


def test_texts_table_of_generated_rows():
    from hiea_ray.ops.verbalize import final_text

    assert final_text("llm", "Name", "", "Name. r: x") == "Name"
    assert final_text("llm", "Name", "Desc.", "Name. r: x") == "Desc."
    assert final_text("llm+template", "Name", "Desc.", "Name. r: x") == "Desc. Name. r: x"
    assert pa.types.is_string(pa.array([final_text("llm", None, "", "")]).type)


def test_vllm_path_rows_match_the_transformers_path(synthetic_pair, tiny_llm_dir):
    """vLLM is not installed here: the rows around the engine are checked instead — the prompts the
    Prompter hands to ray.data.llm are the transformers path's, and a generation passed through
    the postprocess gives the row the transformers path writes for it."""
    from dataclasses import asdict

    import torch

    from hiea_ray.core.generate import generate, load_generator
    from hiea_ray.ops.verbalize import GENERATED, LLMVerbalizer, Prompter, vllm_finish, use_vllm

    torch.set_num_threads(1)
    contexts = build_contexts(synthetic_pair).slice(0, 6)
    cfg = VerbalizeConfig(mode="llm+template")
    cfg.llm.max_new_tokens, cfg.llm.torch_threads = 5, 1
    assert not use_vllm(cfg)  # auto: no GPU actors, no vLLM
    rows = Prompter(asdict(cfg), tiny_llm_dir)(contexts).to_pylist()
    model, tok = load_generator(tiny_llm_dir)
    raw, n, _ = generate(model, tok, [r["prompt"] for r in rows], 5)
    finish = vllm_finish(cfg)
    via_vllm = [finish({**r, "generated_text": g, "num_generated_tokens": k}) for r, g, k in zip(rows, raw, n)]
    direct = LLMVerbalizer(asdict(cfg), tiny_llm_dir)(contexts).to_pylist()
    for a, b in zip(via_vllm, direct):
        assert {k: a[k] for k in ("id", "text", "generated", "facts", "new_tokens")} == \
               {k: b[k] for k in ("id", "text", "generated", "facts", "new_tokens")}
    assert set(via_vllm[0]) == set(GENERATED.names)
    assert all(r["prompt_tokens"] <= cfg.llm.prompt_tokens for r in rows)


def test_vllm_processor_config_is_built_without_vllm():
    """The documented GPU path (ray.data.llm + vLLM) cannot run here; its engine config is built
    from the verbalizer's settings without vLLM installed."""
    pytest.importorskip("ray.data.llm")
    from hiea_ray.config import VerbalizeConfig, section_from_dict
    from hiea_ray.ops.verbalize import vllm_config

    cfg = section_from_dict(VerbalizeConfig, {"mode": "llm", "llm": {"num_actors": 3, "batch_size_gen": 48, "amp": True,
                                                                     "prompt_tokens": 200, "max_new_tokens": 40}})
    c = vllm_config(cfg, "/models/smollm2")
    assert c.model_source == "/models/smollm2" and c.batch_size == 48
    assert c.engine_kwargs["dtype"] == "bfloat16" and c.engine_kwargs["max_model_len"] == 248
    assert c.concurrency == 3 and c.chat_template_stage is False
    fp32 = vllm_config(section_from_dict(VerbalizeConfig, {"mode": "llm", "llm": {"amp": False}}), "m")
    assert fp32.engine_kwargs["dtype"] == "float32"


def test_the_generation_batch_is_chosen_by_device():
    from hiea_ray.ops.verbalize import gen_batch_size

    assert gen_batch_size(0, "cuda") == 64 and gen_batch_size(0, "cpu") == 16 and gen_batch_size(5, "cuda") == 5
