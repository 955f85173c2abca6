"""Stage folders: begin/commit, freshness, resume of the tmp folder, fingerprints."""

from __future__ import annotations

import json
import os

from hiea_ray.kg.model import SCHEMA_VERSION
from hiea_ray.manifest import MANIFEST, Stage, fingerprint_files


def _run_stage(run, name="embed", config_hash="h1", inputs=None, files=None, stats=None):
    st = Stage(run, name, config_hash, inputs if inputs is not None else {"verbalize": "f1"})
    tmp = st.begin()
    for rel, text in (files or {"parts/a.txt": "aaa"}).items():
        (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp / rel).write_text(text)
    return st, st.commit(stats)


def test_begin_commit_writes_final_folder_with_manifest(tmp_path):
    st = Stage(tmp_path, "embed", "h1", {"verbalize": "f1"})
    assert st.manifest() is None and not st.fresh()
    tmp = st.begin()
    assert tmp == tmp_path / ".embed.tmp" and tmp.is_dir()
    (tmp / "parts").mkdir()
    (tmp / "parts" / "a.txt").write_text("aaa")
    body = st.commit({"rows": 3})
    final = tmp_path / "embed"
    assert final.is_dir() and not tmp.exists()
    assert (final / "parts" / "a.txt").read_text() == "aaa"
    assert not (final / ".key.json").exists()
    m = json.loads((final / MANIFEST).read_text())
    assert m == body == st.manifest()
    assert m["schema_version"] == SCHEMA_VERSION
    assert m["config_hash"] == "h1" and m["inputs"] == {"verbalize": "f1"}
    assert m["outputs"] == {os.path.join("parts", "a.txt"): 3}
    assert m["stats"] == {"rows": 3} and m["stage"] == "embed"
    assert st.fingerprint() == m["fingerprint"] and len(m["fingerprint"]) == 16
    assert sorted(p.name for p in tmp_path.iterdir()) == ["embed"]  # nothing else left behind


def test_fresh(tmp_path):
    _run_stage(tmp_path, config_hash="h1", inputs={"verbalize": "f1"})
    assert Stage(tmp_path, "embed", "h1", {"verbalize": "f1"}).fresh()
    assert not Stage(tmp_path, "embed", "h2", {"verbalize": "f1"}).fresh()
    assert not Stage(tmp_path, "embed", "h1", {"verbalize": "f2"}).fresh()
    assert not Stage(tmp_path, "embed", "h1", {"verbalize": "f1", "extra": "x"}).fresh()
    assert not Stage(tmp_path, "other", "h1", {"verbalize": "f1"}).fresh()


def test_corrupt_manifest_is_not_fresh(tmp_path):
    _run_stage(tmp_path)
    (tmp_path / "embed" / MANIFEST).write_text("{not json")
    st = Stage(tmp_path, "embed", "h1", {"verbalize": "f1"})
    assert st.manifest() is None and not st.fresh()


def test_fingerprint_depends_on_key_and_outputs(tmp_path):
    a = _run_stage(tmp_path / "a")[1]["fingerprint"]
    assert _run_stage(tmp_path / "b")[1]["fingerprint"] == a  # same key, same outputs
    assert _run_stage(tmp_path / "c", config_hash="h2")[1]["fingerprint"] != a
    assert _run_stage(tmp_path / "d", files={"parts/a.txt": "aaaa"})[1]["fingerprint"] != a
    assert _run_stage(tmp_path / "e", stats={"rows": 99})[1]["fingerprint"] == a  # stats are not identity


def test_tmp_from_other_key_is_wiped_same_key_kept(tmp_path):
    st = Stage(tmp_path, "embed", "h1", {"verbalize": "f1"})
    tmp = st.begin()
    (tmp / "part-0.parquet").write_text("done")
    # killed here; a re-run with the same key resumes with the finished part
    again = Stage(tmp_path, "embed", "h1", {"verbalize": "f1"})
    assert (again.begin() / "part-0.parquet").read_text() == "done"
    # a re-run with another config must not reuse it
    other = Stage(tmp_path, "embed", "h2", {"verbalize": "f1"})
    assert not (other.begin() / "part-0.parquet").exists()
    (tmp / "part-1.parquet").write_text("done")
    # nor one with other inputs
    assert not (Stage(tmp_path, "embed", "h2", {"verbalize": "f9"}).begin() / "part-1.parquet").exists()


def test_a_stage_that_cannot_resume_starts_from_an_empty_tmp(tmp_path):
    """A non-resumable stage killed mid-body (SIGKILL: no cleanup) left its tmp with the same key:
    the re-run starts empty, so the body's own folders can be made again."""
    tmp = Stage(tmp_path, "route", "h1", {}).begin(keep=False)
    (tmp / "standard").mkdir()
    again = Stage(tmp_path, "route", "h1", {}).begin(keep=False)
    assert not (again / "standard").exists()
    (again / "standard").mkdir()


def test_tmp_without_marker_is_wiped(tmp_path):
    (tmp_path / ".embed.tmp").mkdir()
    (tmp_path / ".embed.tmp" / "junk").write_text("x")
    st = Stage(tmp_path, "embed", "h1", {})
    assert not (st.begin() / "junk").exists()


def test_commit_replaces_old_final_folder(tmp_path):
    _run_stage(tmp_path, config_hash="h1", files={"old.txt": "old", "parts/a.txt": "a"})
    st, body = _run_stage(tmp_path, config_hash="h2", files={"new.txt": "new"})
    final = tmp_path / "embed"
    assert sorted(p.name for p in final.iterdir()) == [MANIFEST, "new.txt"]  # no stale files
    assert body["outputs"] == {"new.txt": 3}
    assert st.fresh() and not Stage(tmp_path, "embed", "h1", {"verbalize": "f1"}).fresh()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["embed"]  # no .embed.old / .embed.tmp


def test_fingerprint_files_follows_content_not_mtimes(tmp_path):
    d = tmp_path / "data"
    (d / "sub").mkdir(parents=True)
    (d / "a").write_text("hello")
    (d / "sub" / "b").write_text("world")
    cache = tmp_path / "cache.json"
    f0 = fingerprint_files(d, cache)
    assert fingerprint_files(d, cache) == f0 == fingerprint_files(d)
    (d / "a").write_text("hello!")  # size changes
    f1 = fingerprint_files(d, cache)
    assert f1 != f0
    st = (d / "a").stat()
    os.utime(d / "a", ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))  # same bytes, newer mtime (a copy)
    assert fingerprint_files(d, cache) == f1
    (d / "sub" / "c").write_text("")  # a new file
    assert fingerprint_files(d, cache) != f1
    (d / "sub" / "c").unlink()
    assert fingerprint_files(d, cache) == f1
    (d / "sub" / "b").rename(d / "sub" / "b2")  # a rename
    assert fingerprint_files(d, cache) != f1


def test_same_size_rewrite_with_restored_mtime_is_seen(tmp_path):
    """`touch -r`: the bytes change, size and mtime stay; the cached digest must not be served."""
    f = tmp_path / "weights.bin"
    f.write_bytes(b"A" * 1000)
    cache = tmp_path / "cache.json"
    before = fingerprint_files(f, cache)
    st = f.stat()
    with open(f, "r+b") as fh:  # in place: same inode, same size
        fh.write(b"B")
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert f.stat().st_size == st.st_size and f.stat().st_mtime_ns == st.st_mtime_ns
    assert fingerprint_files(f, cache) != before


def test_early_cutoff_keeps_the_fingerprint_of_identical_outputs(tmp_path):
    """Re-run with a new input key (a dataset copied anew): identical bytes keep the old
    fingerprint, so downstream stages stay fresh; different bytes get a new one."""
    first = _run_stage(tmp_path, "ingest", inputs={"data": "mtime-1"}, files={"e.parquet": "abc"})[1]
    st = Stage(tmp_path, "ingest", "h1", {"data": "mtime-2"})
    assert not st.fresh()
    st.begin()
    (st.tmp / "e.parquet").write_text("abc")
    again = st.commit(keep_if_identical=True)
    assert again["fingerprint"] == first["fingerprint"] and again["inputs"] == {"data": "mtime-2"}
    assert Stage(tmp_path, "ingest", "h1", {"data": "mtime-2"}).fresh()
    # same size, other bytes: a new fingerprint; and without the flag, always a new one
    st = Stage(tmp_path, "ingest", "h1", {"data": "mtime-3"})
    st.begin()
    (st.tmp / "e.parquet").write_text("abd")
    second = st.commit(keep_if_identical=True)
    assert second["fingerprint"] != first["fingerprint"] and "note" not in second
    third = _run_stage(tmp_path, "ingest", inputs={"data": "mtime-4"}, files={"e.parquet": "abd"})[1]
    assert third["fingerprint"] != second["fingerprint"] and "note" not in third


def test_a_pickle_is_read_only_as_its_stage_wrote_it(tmp_path, caplog):
    """The serve tier unpickles route/<protocol>/router.pkl from shared storage: its sha256 is in
    the stage's manifest, and a swapped file is refused (one UserError naming it), never loaded."""
    import pickle

    import pytest

    from hiea_ray.errors import UserError
    from hiea_ray.manifest import verified_bytes

    blob = pickle.dumps({"model": [1, 2, 3]})
    st = Stage(tmp_path, "route", "h", {})
    tmp = st.begin()
    (tmp / "standard").mkdir()
    (tmp / "standard" / "router.pkl").write_bytes(blob)
    (tmp / "standard" / "router.json").write_text("{}")
    m = st.commit()
    assert set(m["digests"]) == {os.path.join("standard", "router.pkl")}  # pickles only
    assert verified_bytes(tmp_path, "route", "standard/router.pkl") == blob
    evil = pickle.dumps({"model": "swapped"})
    (tmp_path / "route" / "standard" / "router.pkl").write_bytes(evil)
    with pytest.raises(UserError, match=r"router.pkl: its content is not what the route stage wrote"):
        verified_bytes(tmp_path, "route", "standard/router.pkl")
    # a run committed before digests were recorded: loaded, with a warning
    legacy = json.loads((tmp_path / "route" / MANIFEST).read_text())
    del legacy["digests"]
    (tmp_path / "route" / MANIFEST).write_text(json.dumps(legacy))
    with caplog.at_level("WARNING"):
        assert verified_bytes(tmp_path, "route", "standard/router.pkl") == evil
    assert "records no digest" in caplog.text
