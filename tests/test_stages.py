"""Ray Data callable classes of the stages, called directly on pyarrow batches (no Ray)."""

from __future__ import annotations

import io
import os
from dataclasses import asdict

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from hiea_ray.config import EmbedConfig, VerbalizeConfig, section_from_dict
from hiea_ray.core.encoder import fuse
from hiea_ray.core.verbalize import TEXTS, build_contexts, verbalize_table
from hiea_ray.io import column_to_numpy, embeddings_column
from hiea_ray.ops.embed import Embedder, Tokenize, embed_specs, id_rows
from hiea_ray.ops.verbalize import Verbalizer, verbalize_spec


def test_ray_init_is_refused_outside_ray_tests():
    import ray

    with pytest.raises(RuntimeError, match="not marked @pytest.mark.ray"):
        ray.init()
    assert not ray.is_initialized()


def test_verbalize_stage_on_batches(synthetic_pair):
    contexts = build_contexts(synthetic_pair)
    cfg = VerbalizeConfig(max_words=20)
    stage = Verbalizer(asdict(cfg))
    want = verbalize_table(contexts, cfg)
    out = pa.concat_tables([stage(contexts.slice(s, 100)) for s in range(0, contexts.num_rows, 100)])
    assert out.schema == TEXTS
    assert out.equals(want)
    assert max(len(t.split()) for t in out["text"].to_pylist()) <= 20
    names = Verbalizer(asdict(VerbalizeConfig(mode="name")))(contexts.slice(0, 50))
    assert names["text"].to_pylist() == contexts["name"].to_pylist()[:50]


def _embed_cfg(model, **kw):
    return asdict(EmbedConfig(**{"model": model, "torch_threads": 1, "batch_size": 16, "backend": "torch", **kw}))


@pytest.fixture(scope="module")
def text_batch(synthetic_texts):
    return synthetic_texts.slice(10, 45)


def test_embed_stage_output(tiny_encoder_dir, tiny_encoder, text_batch, monkeypatch):
    monkeypatch.delenv("HIEA_NODE_ID", raising=False)
    stage = Embedder(_embed_cfg(tiny_encoder_dir))
    out = stage(text_batch)
    assert out.column_names == ["id", "kg", "embedding", "node", "worker", "precision"]
    assert set(out["precision"].to_pylist()) == {stage.encoder.precision}
    assert out.num_rows == text_batch.num_rows
    assert out["id"].equals(text_batch["id"]) and out["kg"].equals(text_batch["kg"])
    assert out.schema.field("embedding").type == pa.list_(pa.float32(), 32)
    assert set(out["node"].to_pylist()) == {"local"}
    assert set(out["worker"].to_pylist()) == {f"local:{os.getpid()}"}  # outside Ray: no actor, this process
    v = column_to_numpy(out["embedding"])
    assert v.shape == (45, 32)
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    want = tiny_encoder.encode(text_batch["text"].to_pylist())
    np.testing.assert_allclose(v, want, atol=1e-5)


def test_embed_stage_name_weight(tiny_encoder_dir, tiny_encoder, text_batch, monkeypatch):
    monkeypatch.setenv("HIEA_NODE_ID", "node-a")
    out = Embedder(_embed_cfg(tiny_encoder_dir, name_weight=0.4))(text_batch)
    assert set(out["node"].to_pylist()) == {"node-a"}
    v = column_to_numpy(out["embedding"])
    names = tiny_encoder.encode(text_batch["name"].to_pylist())
    texts = tiny_encoder.encode(text_batch["text"].to_pylist())
    np.testing.assert_allclose(v, fuse(names, texts, 0.4), atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    assert not np.allclose(v, texts, atol=1e-3)


@pytest.mark.parametrize("name_weight", [0.0, 0.4])
def test_tokenize_stage_gives_the_actors_vectors(tiny_encoder_dir, text_batch, name_weight):
    """embed.tokenize: stage (token ids from a CPU stage, padded in the encoder actor) and actor
    (texts tokenized in the actor) give the same vectors: max abs diff <= 1e-6."""
    cfg = _embed_cfg(tiny_encoder_dir, name_weight=name_weight, batch_size=7)
    ids = Tokenize(cfg)(text_batch)
    assert ids.column_names == ["id", "kg", "input_ids"] + (["name_ids"] if name_weight else [])
    assert ids.schema.field("input_ids").type == pa.list_(pa.int32())
    lens = [len(r) for r in id_rows(ids["input_ids"])]
    assert len(lens) == text_batch.num_rows and len(set(lens)) > 1 and max(lens) <= 128
    from_ids, from_texts = Embedder(cfg, tokenized=True)(ids), Embedder(cfg)(text_batch)
    assert from_ids["id"].equals(text_batch["id"])
    diff = np.abs(column_to_numpy(from_ids["embedding"]) - column_to_numpy(from_texts["embedding"])).max()
    assert diff <= 1e-6, diff
    # the input contract: an actor told it gets token ids refuses texts, and the other way round
    with pytest.raises(ValueError, match="lacks"):
        Embedder(cfg, tokenized=True)(text_batch)
    with pytest.raises(ValueError, match="lacks"):
        Embedder(cfg)(ids)


def test_id_rows_of_a_sliced_chunked_column():
    col = pa.chunked_array([pa.array([[1, 2], [3], []], pa.list_(pa.int32())),
                            pa.array([[4, 5, 6]], pa.list_(pa.int32()))]).slice(1)
    assert [r.tolist() for r in id_rows(col)] == [[3], [], [4, 5, 6]]
    assert id_rows(pa.array([], pa.list_(pa.int32()))) == []


def test_embed_stage_empty_batch(tiny_encoder_dir, synthetic_texts):
    out = Embedder(_embed_cfg(tiny_encoder_dir))(synthetic_texts.slice(0, 0))
    assert out.num_rows == 0 and column_to_numpy(out["embedding"]).shape == (0, 32)


def test_column_to_numpy_roundtrip():
    rng = np.random.default_rng(0)
    v = rng.standard_normal((13, 6)).astype(np.float32)
    col = embeddings_column(v)
    assert col.type == pa.list_(pa.float32(), 6)
    np.testing.assert_array_equal(column_to_numpy(col), v)
    chunked = pa.chunked_array([embeddings_column(v[:5]), embeddings_column(v[5:])])
    np.testing.assert_array_equal(column_to_numpy(chunked), v)
    buf = io.BytesIO()
    pq.write_table(pa.table({"embedding": col}), buf)
    buf.seek(0)
    np.testing.assert_array_equal(column_to_numpy(pq.read_table(buf)["embedding"]), v)
    f64 = embeddings_column(v.astype(np.float64))  # cast to float32
    assert column_to_numpy(f64).dtype == np.float32


def test_specs():
    vs = verbalize_spec(VerbalizeConfig(batch_size=123))
    assert vs.cls is Verbalizer and vs.map_batches_kwargs["batch_size"] == 123
    assert vs.map_batches_kwargs["batch_format"] == "pyarrow"
    assert section_from_dict(VerbalizeConfig, vs.constructor_kwargs["cfg"]) == VerbalizeConfig(batch_size=123)
    tok, es = embed_specs(EmbedConfig(rows_per_batch=77, cpus_per_actor=0.5, gpus_per_actor=1.0, num_actors=3,
                                      tokenize_actors=5))  # GPUs: tokenize auto = a CPU stage first
    assert tok.cls is Tokenize and tok.actors == 5
    assert tok.map_batches_kwargs == {"batch_size": 77, "batch_format": "pyarrow", "num_cpus": 1.0}
    assert es.cls is Embedder and es.actors == 3
    assert es.map_batches_kwargs == {"batch_size": 77, "batch_format": "pyarrow", "num_cpus": 0.5, "num_gpus": 1.0}
    assert EmbedConfig(**es.constructor_kwargs["cfg"]).rows_per_batch == 77
    assert [s.cls for s in embed_specs(EmbedConfig())] == [Embedder]  # CPU actors: tokenize in the actor
    assert [s.cls for s in embed_specs(EmbedConfig(tokenize="stage"))] == [Tokenize, Embedder]
    assert [s.cls for s in embed_specs(EmbedConfig(gpus_per_actor=1.0, tokenize="actor"))] == [Embedder]
