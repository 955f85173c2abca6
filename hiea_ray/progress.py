"""Progress lines for long stages: rows done, rows/s and ETA, logged on the ``hiea_ray`` logger.

Plain log lines rather than a terminal bar, so they read the same in a terminal, in a log file
and in ``ray job logs`` (the driver's stdout), where a carriage-return bar is noise:

    embed: 412,160 / 1,900,161 rows (21.7 %), 4,318 rows/s, ETA 5m 44s

``Progress`` is fed counts by the code doing the work (retrieve's search batches);
``watch_parts`` counts the rows of the Parquet part files a Ray Data stage writes, from a thread
in the driver, so the stages that run on actor pools (embed, rerank, llm) need no counters.
"""

from __future__ import annotations

import logging
import threading
import time
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger(__name__)


def eta_text(seconds: float) -> str:
    s = int(round(max(seconds, 0)))
    if s >= 3600:
        return f"{s // 3600}h {s % 3600 // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m {s % 60:02d}s"
    return f"{s}s"


class Progress:
    """Counts rows towards ``total``; a line at most every ``every`` seconds (and one at the end
    from ``close``). Rate and ETA are over the rows done since this object was made."""

    def __init__(self, label: str, total: int, done: int = 0, every: float = 30.0, unit: str = "rows",
                 clock=time.monotonic):
        self.label, self.total, self.unit, self.every, self.clock = label, total, unit, every, clock
        self.start_done = self.done = done
        self.t0 = self.last = clock()
        self.lines: list[str] = []

    def line(self) -> str:
        dt = self.clock() - self.t0
        new = self.done - self.start_done
        rate = new / dt if dt > 0 else 0.0
        pct = 100.0 * self.done / self.total if self.total else 100.0
        text = f"{self.label}: {self.done:,} / {self.total:,} {self.unit} ({pct:.1f} %), {rate:,.0f} {self.unit}/s"
        if 0 < rate and self.done < self.total:
            text += f", ETA {eta_text((self.total - self.done) / rate)}"
        return text

    def set(self, done: int) -> None:
        self.done = done
        now = self.clock()
        if now - self.last >= self.every:
            self.last = now
            self._emit()

    def update(self, n: int) -> None:
        self.set(self.done + n)

    def close(self) -> None:
        if self.done > self.start_done:
            self._emit()

    def _emit(self) -> None:
        text = self.line()
        self.lines.append(text)
        log.info("%s", text)


def parquet_rows(folder: Path, seen: dict[str, int]) -> int:
    """Rows in the Parquet files of ``folder``, reading the footer of each new file once (a file
    still being written has no footer yet: counted on a later call)."""
    import pyarrow.parquet as pq

    for f in folder.glob("*.parquet"):
        if f.name not in seen:
            try:
                seen[f.name] = pq.ParquetFile(f).metadata.num_rows
            except Exception:  # noqa: BLE001 - a part being written; try again next time
                pass
    return sum(seen.values())


@contextmanager
def watch_parts(label: str, folder: Path, total: int, done: int = 0, every: float = 30.0):
    """While the block runs, log the progress of the part files written into ``folder``
    (rows there count as done; ``done`` rows were finished before, by a killed run)."""
    seen: dict[str, int] = {}
    base = parquet_rows(folder, seen)  # parts of the killed run: already in ``done``
    bar = Progress(label, total, done, every=every)
    stop = threading.Event()

    def run():
        while not stop.wait(min(every, 5.0)):
            bar.set(done + parquet_rows(folder, seen) - base)

    t = threading.Thread(target=run, daemon=True, name=f"progress-{label}")
    t.start()
    try:
        yield bar
    finally:
        stop.set()
        t.join()
        bar.set(done + parquet_rows(folder, seen) - base)
        bar.close()
