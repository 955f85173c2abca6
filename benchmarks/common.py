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
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> int:
        me = psutil.Process()
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
