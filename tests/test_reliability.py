"""Reliability (Ray-free): a run cache that cannot serve stale results, test splits that cannot be
silently wrong, config values and file-system errors that end in one line instead of a traceback.
The CLI-level cases that need Ray (SIGTERM, -q, a read-only finished run) are in
test_reliability_ray.py."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from test_readers import _write, make_dbp15k

from hiea_ray.config import DataConfig, load_config
from hiea_ray.errors import UserError
from hiea_ray.kg.readers import read_pair
from hiea_ray.manifest import Stage
from hiea_ray.pipeline import stage_key
from hiea_ray.stages import REGISTRY, RunContext

ROOT = Path(__file__).resolve().parents[1]


# -- 1. stale results -----------------------------------------------------------------------------
def test_new_weights_at_the_same_model_path_change_the_embed_key(tmp_path, tiny_encoder_dir, synthetic_texts):
    """Copy a model to M, key the embed stage; put another model's weights at M: the key changes."""
    from hiea_ray.core.tiny import build_tiny_encoder

    m = tmp_path / "M"
    shutil.copytree(tiny_encoder_dir, m)
    ctx = RunContext(load_config(overrides=[f"embed.model={m}"]), tmp_path / "data", tmp_path / "run")
    embed = REGISTRY["embed"]
    before = embed.external(ctx)
    other = build_tiny_encoder(tmp_path / "other", synthetic_texts["name"].to_pylist()[:200], seed=1)
    shutil.copy(Path(other) / "model.safetensors", m / "model.safetensors")
    assert embed.external(ctx)["model"] != before["model"]  # same path and config, other weights: not fresh
    # the same holds for the base model of retriever training and a given reranker
    ctx.cfg = load_config(overrides=[f"embed.model={m}", "train.enabled=true", "rerank.enabled=true", "rerank.train=false",
                                     f"rerank.model={m}"])
    assert REGISTRY["train"].external(ctx)["base_model"] == embed.external(RunContext(
        load_config(overrides=[f"embed.model={m}"]), ctx.data, ctx.run))["model"]
    assert REGISTRY["rerank"].external(ctx)["model"] == REGISTRY["train"].external(ctx)["base_model"]


def test_same_size_edit_of_a_data_file_with_its_mtime_restored_changes_the_ingest_key(tmp_path):
    d = make_dbp15k(tmp_path / "pair")
    ctx = RunContext(load_config(), d, tmp_path / "run")
    before = stage_key(REGISTRY["ingest"], ctx)
    f = d / "ent_names_translated_1"
    st = f.stat()
    f.write_text(f.read_text().replace("Beijing", "Beijinx"), encoding="utf-8")  # same size
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))  # touch -r
    assert f.stat().st_size == st.st_size and f.stat().st_mtime_ns == st.st_mtime_ns
    assert stage_key(REGISTRY["ingest"], ctx) != before


def test_a_copied_dataset_keeps_the_ingest_key(tmp_path):
    """New mtimes, same bytes: the same input (trained models downstream stay fresh)."""
    d = make_dbp15k(tmp_path / "pair")
    key = stage_key(REGISTRY["ingest"], RunContext(load_config(), d, tmp_path / "run"))
    copy = tmp_path / "copy"
    shutil.copytree(d, copy)  # copytree keeps mtimes: touch them
    for p in copy.iterdir():
        os.utime(p, None)
    assert stage_key(REGISTRY["ingest"], RunContext(load_config(), copy, tmp_path / "run")) == key


def test_a_damaged_finished_stage_is_not_fresh(tmp_path, caplog):
    st = Stage(tmp_path, "embed", "h", {})
    parts = st.begin() / "parts"
    parts.mkdir()
    for i in range(3):
        (parts / f"{i}.parquet").write_bytes(b"x" * (10 + i))
    st.commit()
    assert Stage(tmp_path, "embed", "h", {}).fresh()
    (tmp_path / "embed" / "parts" / "1.parquet").unlink()
    with caplog.at_level("WARNING", logger="hiea_ray"):
        assert not Stage(tmp_path, "embed", "h", {}).fresh()
    assert "1.parquet is missing" in caplog.text
    (tmp_path / "embed" / "parts" / "1.parquet").write_bytes(b"x" * 5)  # there, but not what was written
    assert not Stage(tmp_path, "embed", "h", {}).fresh()


# -- 2. broken test splits ------------------------------------------------------------------------
def _err(d: Path, cfg: DataConfig | None = None) -> str:
    with pytest.raises(UserError) as e:
        read_pair(d, cfg)
    return str(e.value)


def test_empty_ref_pairs_is_an_error(tmp_path):
    d = make_dbp15k(tmp_path)
    (d / "ref_pairs").write_text("")
    assert _err(d) == f"{d / 'ref_pairs'}: no alignment links"


def test_link_in_both_train_and_test_is_an_error(tmp_path):
    d = make_dbp15k(tmp_path)
    _write(d, "ref_pairs", [(3, 103), (0, 100), (4, 104)])  # 0-100 is in sup_pairs
    assert _err(d).startswith(f"{d / 'ref_pairs'}:2: link 0 100 is in both sup_pairs (train) and ref_pairs (test)")


def test_one_source_linked_to_two_targets_is_an_error_unless_allowed(tmp_path):
    d = make_dbp15k(tmp_path)
    _write(d, "ref_pairs", [(3, 103), (4, 104), (5, 105), (3, 105)])
    msg = _err(d)
    assert msg.startswith(f"{d / 'ref_pairs'}:3: target 105 is already linked to 5") or \
        msg.startswith(f"{d / 'ref_pairs'}:4: source 3 is already linked to 103 (ref_pairs:1)")
    pair = read_pair(d, DataConfig(one_to_many=True))
    assert pair.report["one_to_many_links"] >= 1
    assert pair.links_of("test").num_rows == 4


def test_byte_order_mark_makes_no_phantom_entity(tmp_path, synthetic_dir):
    d = tmp_path / "pair"
    shutil.copytree(synthetic_dir, d)
    f = d / "rel_triples_1"
    f.write_bytes(b"\xef\xbb\xbf" + f.read_bytes())
    pair = read_pair(d)
    assert not any(u.startswith("\ufeff") for u in pair.entities["uri"].to_pylist())
    assert pair.entities.num_rows == read_pair(synthetic_dir).entities.num_rows


def test_a_names_file_that_is_a_directory_is_an_error(tmp_path):
    d = make_dbp15k(tmp_path)
    (d / "ent_names_translated_1").unlink()
    (d / "ent_names_translated_1").mkdir()
    assert _err(d) == f"{d / 'ent_names_translated_1'}: is a directory, expected a file"


def test_a_required_file_that_is_a_directory_is_named_so(tmp_path):
    d = make_dbp15k(tmp_path)
    (d / "triples_2").unlink()
    (d / "triples_2").mkdir()
    assert _err(d) == f"{d / 'triples_2'}: is a directory, expected a file"


def test_an_empty_triples_file_is_blamed_on_itself(tmp_path, synthetic_dir):
    d = make_dbp15k(tmp_path / "dbp")
    (d / "triples_1").write_text("")
    assert _err(d).startswith(f"{d / 'triples_1'}: no relation triples")
    o = tmp_path / "openea"
    shutil.copytree(synthetic_dir, o)
    (o / "rel_triples_2").write_text("")
    assert _err(o).startswith(f"{o / 'rel_triples_2'}: no relation triples")


def test_duplicate_openea_link_wording(tmp_path, synthetic_dir):
    o = tmp_path / "openea"
    shutil.copytree(synthetic_dir, o)
    fold = o / "721_5fold" / "1"
    first = (fold / "train_links").read_text().splitlines()[0]
    with open(fold / "train_links", "a") as f:
        f.write(first + "\n")
    assert "appears twice in train_links" in _err(o)
    lines = (fold / "train_links").read_text().splitlines()[:-1]
    (fold / "train_links").write_text("\n".join(lines) + "\n")
    with open(fold / "test_links", "a") as f:
        f.write(first + "\n")
    assert "appears in both train_links and test_links" in _err(o)


# -- 3. config values that used to pass validation and then crash -------------------------------
@pytest.mark.parametrize(
    "item, words",
    [
        ("evaluate.protocols=[]", "evaluate.protocols: must not be empty"),
        ("decode.decoders=[]", "decode.decoders: must not be empty"),
        ("retrieve.query_batch=0", "retrieve.query_batch: 0 must be >= 1"),
        ("decode.sinkhorn_tau=0", "decode.sinkhorn_tau: 0.0 must be > 0"),
        ("evaluate.hits_at=[0]", "evaluate.hits_at"),
        ("evaluate.hits_at=[1, 1]", "lists an entry twice"),
        ("embed.batch_size=0", "embed.batch_size"),
        ("train.scaling.zero_stage=4", "train.scaling.zero_stage"),
    ],
)
def test_bad_values_are_caught_by_the_config(item, words):
    with pytest.raises(UserError, match=words.replace("[", r"\[").replace("]", r"\]")):
        load_config(overrides=[item])


def test_non_utf8_yaml_is_one_line(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_bytes(b"retrieve:\n  k: 5 # \xff\xfe\n")
    with pytest.raises(UserError, match="not UTF-8"):
        load_config(p)


def test_any_hits_at_list_evaluates(tmp_path):
    """evaluate.hits_at=[10]: metrics.json has hits@10 and no hits@1, the summary prints."""
    import json

    from test_structure import _toy_run

    from hiea_ray.cli import format_summary
    from hiea_ray.pipeline import Pipeline

    _toy_run(tmp_path)
    cfg = load_config(overrides=["evaluate.protocols=[standard]", "evaluate.hits_at=[10]", "decode.csls_k=3", "retrieve.k=3"])
    pipe = Pipeline(cfg, tmp_path / "no-data", tmp_path)
    pipe.run_stage("decode")
    pipe.run_stage("evaluate")
    m = json.loads((tmp_path / "evaluate" / "metrics.json").read_text())
    assert "hits@10" in m["top1"] and "hits@1" not in m["top1"]
    assert "hits@10" in format_summary(pipe, m)


# -- 4. the CLI: one line for user and file-system mistakes -----------------------------------------
def _cli(*args, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hiea_ray.cli", *args], capture_output=True, text=True, timeout=300, **kw)


def test_synth_with_too_few_entities_is_one_line(tmp_path):
    r = _cli("synth", "--out", str(tmp_path / "x"), "--entities", "3")
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        "hiea-ray: error: --entities 3: a synthetic pair needs at least 50 entities"]


def test_a_full_disk_is_one_line_and_leaves_no_stage(tmp_path, synthetic_dir):
    """A file-size limit (RLIMIT_FSIZE, SIGXFSZ ignored) makes writes fail with EFBIG, as a full
    disk fails them with ENOSPC: the ingest stage cannot write its tables."""
    import resource
    import signal

    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))

    run = tmp_path / "run"
    r = _cli("align", "--data", str(synthetic_dir), "--out", str(run), "--until", "ingest", "-q", preexec_fn=limit)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2, r.stderr
    assert len(lines) == 1 and lines[0].startswith("hiea-ray: error: ") and "File too large" in lines[0], lines
    assert not (run / "ingest").exists() and not (run / ".ingest.tmp").exists()


def test_out_in_a_read_only_place_is_one_line(tmp_path, synthetic_dir):
    ro, why = read_only_folder(tmp_path)
    r = _cli("align", "--data", str(synthetic_dir), "--out", str(ro / "run"), "--until", "ingest", "-q")
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        f"hiea-ray: error: {ro / 'run'}: {why} (nothing half-written is kept; free space or fix "
        "permissions and re-run)"]


def read_only_folder(tmp_path: Path) -> tuple[Path, str]:
    """(folder, the OS error a write there gives): a read-only bind mount of tmp_path/ro-src at
    tmp_path/ro where mounting is allowed ("Read-only file system"; unmounted at exit); else, for a
    user whose file modes count (not root), ro-src itself with every folder and file in it made
    read-only ("Permission denied"); else the test is skipped. What ro-src holds is seen inside."""
    import atexit

    src, ro = tmp_path / "ro-src", tmp_path / "ro"
    src.mkdir(exist_ok=True)
    ro.mkdir(exist_ok=True)
    try:
        subprocess.run(["mount", "--bind", str(src), str(ro)], check=True, capture_output=True)
        subprocess.run(["mount", "-o", "remount,ro,bind", str(ro)], check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError):
        if os.geteuid() == 0:
            pytest.skip("cannot make a read-only folder here (root ignores file modes, and mount is not allowed)")
        paths = sorted([src, *src.rglob("*")], key=lambda q: len(q.parts), reverse=True)  # deepest first
        for q in paths:
            q.chmod(0o555 if q.is_dir() else 0o444)
        atexit.register(lambda: [q.chmod(0o755 if q.is_dir() else 0o644) for q in reversed(paths)])
        return src, "Permission denied"
    atexit.register(lambda: subprocess.run(["umount", str(ro)], capture_output=True))
    return ro, "Read-only file system"


def test_a_sigterm_swallowed_inside_a_finalizer_still_ends_the_run():
    """A signal handler's exception is lost when the signal lands in a weakref callback / __del__
    (Python prints "Exception ignored"); the pipeline's check between stages raises it again."""
    import gc
    import os
    import signal
    import sys
    import weakref

    from hiea_ray import errors

    old = signal.getsignal(signal.SIGTERM)
    try:
        errors.handle_signals()

        class Thing:
            pass

        t = Thing()
        weakref.finalize(t, lambda: os.kill(os.getpid(), signal.SIGTERM))
        del t
        seen = []
        hook = sys.unraisablehook
        sys.unraisablehook = lambda u: seen.append(u)  # what Python would print as "Exception ignored"
        try:
            errors.handle_signals()  # wraps the hook in place: Terminated is not reported
            gc.collect()  # the handler ran inside the finalizer: its Terminated was swallowed
        finally:
            sys.unraisablehook = hook
        assert seen == []
        with pytest.raises(errors.Terminated):
            errors.check_terminated()
    finally:
        signal.signal(signal.SIGTERM, old)
        errors._TERM_SEEN.clear()


def test_serve_refuses_a_run_with_the_reranker(tmp_path):
    """A run with rerank.enabled is not served (the cross-encoder has no deployment): one clear error."""
    import json

    from hiea_ray.config import Config
    from hiea_ray.serve.engine import ServeRun

    cfg = Config()
    cfg.rerank.enabled = True
    (tmp_path / "config.resolved.json").write_text(json.dumps(cfg.to_dict()))
    for stage in ("ingest", "verbalize", "embed", "retrieve", "decode"):
        (tmp_path / stage).mkdir()
        (tmp_path / stage / "manifest.json").write_text("{}")
    with pytest.raises(UserError, match="rerank.enabled is not served yet"):
        ServeRun(tmp_path)


def test_a_second_pipeline_on_the_same_run_folder_is_refused(tmp_path):
    """Two pipelines writing one run folder (a job submitted twice, a second terminal) would write
    the same stage folders: the second is refused with one line while the first holds the folder,
    and the folder is free again once the first is done (or its process died)."""
    from hiea_ray.pipeline import Pipeline

    cfg = load_config()
    first, second = Pipeline(cfg, tmp_path / "data", tmp_path / "run"), Pipeline(cfg, tmp_path / "data", tmp_path / "run")
    with first.lock():
        with pytest.raises(UserError, match="another hiea-ray pipeline is writing into this run folder"):
            with second.lock():
                pass
    with second.lock():  # released
        pass
