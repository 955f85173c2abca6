"""Progress lines of long stages (hiea_ray.progress): counts, rate, ETA, part-file watching."""

from __future__ import annotations

import logging
import time

import pyarrow as pa
import pyarrow.parquet as pq

from hiea_ray.progress import Progress, eta_text, parquet_rows, watch_parts


class Clock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


def test_eta_text():
    assert eta_text(5.4) == "5s"
    assert eta_text(344) == "5m 44s"
    assert eta_text(3 * 3600 + 7 * 60 + 1) == "3h 07m"


def test_progress_lines_rate_eta_and_throttling():
    clock = Clock()
    p = Progress("embed", 1000, done=100, every=10, clock=clock)
    clock.t += 5
    p.update(50)  # within the interval: no line
    assert p.lines == []
    clock.t += 5
    p.update(150)  # 200 new rows in 10 s: 20 rows/s, 700 left: 35 s
    assert p.lines == ["embed: 300 / 1,000 rows (30.0 %), 20 rows/s, ETA 35s"]
    clock.t += 1
    p.update(700)
    assert len(p.lines) == 1
    p.close()  # the last line always comes, without an ETA once done
    assert p.lines[-1] == "embed: 1,000 / 1,000 rows (100.0 %), 82 rows/s"


def test_progress_goes_to_the_hiea_ray_logger(caplog):
    clock = Clock()
    with caplog.at_level(logging.INFO, logger="hiea_ray"):
        p = Progress("retrieve all-targets", 10, every=0, clock=clock, unit="queries")
        clock.t += 2
        p.update(4)
    assert "retrieve all-targets: 4 / 10 queries (40.0 %), 2 queries/s, ETA 3s" in caplog.text


def test_watch_parts_counts_rows_of_finished_part_files(tmp_path):
    parts = tmp_path / "parts"
    parts.mkdir()
    pq.write_table(pa.table({"id": list(range(30))}), parts / "old.parquet")  # a killed run's part
    (parts / "writing.parquet").write_bytes(b"PAR1")  # no footer yet: not counted, no error
    seen: dict = {}
    assert parquet_rows(parts, seen) == 30
    with watch_parts("embed", parts, total=100, done=30, every=0.05) as bar:
        pq.write_table(pa.table({"id": list(range(30, 70))}), parts / "new-1.parquet")
        deadline = time.time() + 10  # the poller runs every 0.05 s; a loaded machine may delay it
        while bar.done != 70 and time.time() < deadline:
            time.sleep(0.02)
        assert bar.done == 70
        pq.write_table(pa.table({"id": list(range(70, 100))}), parts / "new-2.parquet")
    assert bar.done == 100
    assert bar.lines[-1].startswith("embed: 100 / 100 rows (100.0 %)")
