"""Stage outputs on disk: a folder per stage, written atomically, with a manifest.

``<run>/<stage>/manifest.json`` holds the schema version, the hash of the config sections the
stage reads, the fingerprints of its inputs and what it wrote. A stage is *fresh* when its
manifest matches what it would be run with now; then it is reused (a re-run is a no-op). Work in
progress lives in ``<run>/.<stage>.tmp`` and becomes ``<run>/<stage>`` by one rename, so a killed
run never leaves a half-written stage; a stage that can resume (embed) keeps its finished parts
in the tmp folder as long as its config and inputs are the same.

Early cutoff: a stage committed with ``keep_if_identical`` whose new outputs are byte-identical to
the ones it replaces keeps the old fingerprint, so the stages downstream stay fresh. Ingest uses
it: a dataset copied anew (new mtimes, same bytes) re-ingests in seconds instead of invalidating
trained models.
"""

from __future__ import annotations

import contextlib

import filecmp
import hashlib
import json
import logging
import os
import shutil
import time
from pathlib import Path

from hiea_ray.kg.model import SCHEMA_VERSION

MANIFEST = "manifest.json"
log = logging.getLogger(__name__)


PICKLED = (".pkl", ".pickle")


def _sha256(path: Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def verified_bytes(run: Path, stage: str, rel: str) -> bytes:
    """The bytes of ``run/stage/rel`` after checking them against the sha256 the stage's manifest
    recorded: a pickle swapped on a shared volume is refused (a UserError naming it), never
    unpickled. Stages committed before digests were recorded are read as they are."""
    from hiea_ray.errors import UserError

    path = Path(run) / stage / rel
    data = path.read_bytes()
    m = json.loads((Path(run) / stage / MANIFEST).read_text())
    if "digests" not in m:
        log.warning("%s: its stage manifest records no digest (a run from before they were recorded); loaded unchecked", path)
        return data
    want = m["digests"].get(rel)
    if want is None or hashlib.sha256(data).hexdigest() != want:
        raise UserError(f"{path}: its content is not what the {stage} stage wrote (sha256 differs from its manifest); "
                        "refusing to load it. Re-run the stage, or restore the file")
    return data


def fingerprint_files(path: Path, cache: Path | None = None) -> str:
    """Content fingerprint of an input file or folder: every file's relative path and the sha256
    of its bytes. Digests are cached in the JSON file ``cache`` by (size, mtime, ctime, inode):
    any write changes the ctime, which no ``touch`` can set back, so a same-size rewrite with its
    mtime restored is hashed again, never served from the cache."""
    path = Path(path)
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    known = _load_cache(cache)
    fresh: dict[str, list] = {}
    h = hashlib.sha256()
    for f in files:
        st = f.stat()
        stamp = [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]
        key = str(f.resolve())
        entry = known.get(key)
        if entry is None or entry[:4] != stamp:
            with open(f, "rb") as fh:
                entry = stamp + [hashlib.file_digest(fh, "sha256").hexdigest()]
        fresh[key] = entry
        rel = f.name if f == path else str(f.relative_to(path))
        h.update(f"{rel}\0{entry[4]}\n".encode())
    if cache is not None and any(known.get(k) != v for k, v in fresh.items()):
        _save_cache(cache, {**known, **fresh})
    return h.hexdigest()[:16]


def _load_cache(cache: Path | None) -> dict:
    if cache is None or not cache.is_file():
        return {}
    try:
        return json.loads(cache.read_text())
    except (json.JSONDecodeError, OSError):
        return {}


def _save_cache(cache: Path, entries: dict) -> None:
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(f".{os.getpid()}.part")
        tmp.write_text(json.dumps(entries))
        os.replace(tmp, cache)
    except OSError:  # a read-only run folder: fingerprints are recomputed next time
        pass


class Stage:
    def __init__(self, run: Path, name: str, config_hash: str, inputs: dict[str, str]):
        self.run = Path(run)
        self.name = name
        self.final = self.run / name
        self.tmp = self.run / f".{name}.tmp"
        self.key = {"schema_version": SCHEMA_VERSION, "config_hash": config_hash, "inputs": inputs}
        self.started = time.time()

    def manifest(self) -> dict | None:
        p = self.final / MANIFEST
        if not p.is_file():
            return None
        try:
            return json.loads(p.read_text())
        except json.JSONDecodeError:
            return None

    def fresh(self) -> bool:
        """Same key as the finished stage, and its outputs still on disk as the manifest lists
        them (every file, same size); a damaged stage is reported and not fresh (it re-runs)."""
        self._finish_interrupted_commit()
        m = self.manifest()
        if m is None or not all(m.get(k) == v for k, v in self.key.items()):
            return False
        damaged = self.damaged(m)
        if damaged:
            log.warning("stage %s: %s; re-running it", self.name, damaged)
            return False
        return True

    def damaged(self, m: dict) -> str | None:
        """What is wrong with a finished stage's outputs against its manifest, or None."""
        for rel, size in (m.get("outputs") or {}).items():
            p = self.final / rel
            if not p.is_file():
                return f"output {p} is missing"
            if p.stat().st_size != size:
                return f"output {p} has {p.stat().st_size} bytes, its manifest says {size}"
        return None

    def _finish_interrupted_commit(self) -> None:
        """A kill between commit's two renames leaves a complete tmp folder and no final one."""
        done = self.tmp / MANIFEST
        if not self.final.exists() and done.is_file():
            os.replace(self.tmp, self.final)

    def fingerprint(self) -> str:
        m = self.manifest()
        assert m is not None, f"stage {self.name} has no manifest"
        return m["fingerprint"]

    def begin(self, keep: bool = True) -> Path:
        """The tmp folder to write into; kept (for resuming) only if ``keep`` and made with the same key."""
        marker = self.tmp / ".key.json"
        if self.tmp.exists():
            same = keep and marker.is_file() and json.loads(marker.read_text()) == self.key
            if not same:
                shutil.rmtree(self.tmp)
        self.tmp.mkdir(parents=True, exist_ok=True)
        marker.write_text(json.dumps(self.key, sort_keys=True))
        self.started = time.time()
        return self.tmp

    def commit(self, stats: dict | None = None, keep_if_identical: bool = False) -> dict:
        """Write the manifest and move the tmp folder into place (one rename); with
        ``keep_if_identical``, outputs byte-identical to the previous ones keep its fingerprint."""
        (self.tmp / ".key.json").unlink(missing_ok=True)
        outputs = {}
        for p in sorted(self.tmp.rglob("*")):
            if p.is_file():
                outputs[str(p.relative_to(self.tmp))] = p.stat().st_size
        body = dict(self.key, stage=self.name, outputs=outputs, stats=stats or {})
        # sha256 of the pickles a later reader unpickles (the router): checked before loading
        body["digests"] = {rel: _sha256(self.tmp / rel) for rel in outputs if rel.endswith(PICKLED)}
        body["wall_s"] = round(time.time() - self.started, 3)
        body["created"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        blob = json.dumps({k: body[k] for k in ("schema_version", "config_hash", "inputs", "outputs")}, sort_keys=True)
        body["fingerprint"] = hashlib.sha256(blob.encode()).hexdigest()[:16]
        old = self.manifest() if keep_if_identical else None
        if old is not None and self._identical_outputs(old, outputs):
            body["fingerprint"] = old["fingerprint"]
            body["note"] = "outputs byte-identical to the previous run's: fingerprint kept"
        tmp_manifest = self.tmp / (MANIFEST + ".part")
        tmp_manifest.write_text(json.dumps(body, indent=2, sort_keys=True))
        os.replace(tmp_manifest, self.tmp / MANIFEST)
        if self.final.exists():
            old = self.run / f".{self.name}.old"
            shutil.rmtree(old, ignore_errors=True)
            os.replace(self.final, old)
            shutil.rmtree(old, ignore_errors=True)
        os.replace(self.tmp, self.final)
        return body

    def _identical_outputs(self, old: dict, outputs: dict) -> bool:
        if old.get("outputs") != outputs or "fingerprint" not in old:
            return False
        return all(filecmp.cmp(self.tmp / rel, self.final / rel, shallow=False) for rel in outputs)


@contextlib.contextmanager
def run_lock(run: Path):
    """One pipeline at a time per run folder: a second one (another terminal, a job submitted
    twice) is refused with one line instead of both writing the same stage folders. An advisory
    lock (``RUN/.lock``, flock): the kernel drops it when its process dies."""
    import fcntl

    from hiea_ray.errors import UserError

    run.mkdir(parents=True, exist_ok=True)
    try:
        fh = open(run / ".lock", "a+")
    except OSError:  # a read-only run folder: nothing can be written into it anyway
        yield
        return
    try:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise UserError(f"{run}: another hiea-ray pipeline is writing into this run folder; "
                            "wait for it or stop it") from None
        yield
    finally:
        fh.close()
