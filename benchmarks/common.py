"""Shared benchmark helpers: peak-memory sampling of the driver plus its child processes."""

from __future__ import annotations

import threading
import time

import psutil


class PeakRSS:
    """Samples the RSS of this process and all its descendants (Ray's raylet and workers when
    Ray was started here) every ``interval`` seconds; ``peak_gib`` is the maximum seen."""

    def __init__(self, interval: float = 0.2):
        self.interval = interval
        self.peak = 0
        self.driver_peak = 0  # this process alone (the driver)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> int:
        me = psutil.Process()
        self.driver_peak = max(self.driver_peak, me.memory_info().rss)
        total = 0
        for p in [me, *me.children(recursive=True)]:
            try:
                total += p.memory_info().rss
            except psutil.Error:
                pass
        return total

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self._sample())
            time.sleep(self.interval)

    def __enter__(self):
        self.peak = self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._sample())

    @property
    def peak_gib(self) -> float:
        return round(self.peak / 2**30, 3)

    @property
    def driver_peak_gib(self) -> float:
        return round(self.driver_peak / 2**30, 3)


def load_result(path, *sections: str):
    """A benchmark's JSON result file (Path, dict), read back when it exists so a rerun adds to
    it, with ``sections`` present as dicts."""
    import json
    from pathlib import Path

    path = Path(path)
    res = json.loads(path.read_text()) if path.is_file() else {}
    for s in sections:
        res.setdefault(s, {})
    return path, res


def provenance(argv: list[str] | None = None) -> dict:
    """What every results JSON records: the command as run (all flags), the commit (with a
    ``+dirty`` mark when the tree has uncommitted changes outside benchmarks/results), the date and the machine (CPU model,
    cores, native bf16, memory, GPU name when torch sees one)."""
    import datetime
    import os
    import platform
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    argv = sys.argv if argv is None else argv

    def git(*a):
        try:
            return subprocess.run(["git", *a], cwd=root, capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    commit = git("rev-parse", "HEAD") or "unknown"
    # the results JSONs a benchmark writes as it goes do not make the code it runs dirty
    if git("status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)benchmarks/results"):
        commit += "+dirty"
    cpu, flags = platform.processor() or platform.machine(), ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and cpu in ("", platform.machine(), platform.processor()):
                cpu = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                flags = line
    except OSError:
        pass
    gpu = None
    if "torch" in sys.modules:
        import torch

        gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    cmd = [Path(argv[0]).resolve().relative_to(root).as_posix() if Path(argv[0]).resolve().is_relative_to(root) else argv[0],
           *argv[1:]]
    return {"command": " ".join([".venv/bin/python", *cmd]), "commit": commit,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "machine": {"cpu": cpu, "cores": os.cpu_count(), "native_bf16": ("avx512_bf16" in flags or "amx_bf16" in flags),
                        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1), "gpu": gpu,
                        "python": platform.python_version()}}
