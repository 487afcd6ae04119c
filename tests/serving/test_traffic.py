"""The traffic log: written off the request path, rotated, bounded, and read back for the drift check."""

from __future__ import annotations

import time

import pyarrow.parquet as pq
import pytest

from forgeline.errors import DataLoadError
from forgeline.serving.metrics import Metrics
from forgeline.serving.traffic import COLUMNS, TrafficLog, read_traffic


def log_texts(log: TrafficLog, n: int, start: int = 0) -> None:
    for i in range(start, start + n):
        log.record("m", "1", [f"text number {i}"], ["positive"], [0.75])


def test_rows_are_rotated_by_count_and_by_age_and_old_files_are_deleted(tmp_path):
    metrics = Metrics()
    log = TrafficLog(tmp_path, sample=1.0, rotate_s=0.5, max_rows=4, max_files=100, metrics=metrics, seed=0)
    log_texts(log, 10)  # 4 + 4 by count, then 2 closed by age
    time.sleep(1.5)
    files = sorted(tmp_path.glob("traffic-*.parquet"))
    assert [pq.read_metadata(f).num_rows for f in files] == [4, 4, 2]
    table = pq.read_table(files[0])
    assert tuple(table.column_names) == COLUMNS
    assert table.column("text").to_pylist() == [f"text number {i}" for i in range(4)]
    assert table.column("confidence").to_pylist() == [0.75] * 4
    log.close()
    assert metrics.traffic_logged._value.get() == 10
    assert not list(tmp_path.glob(".*"))  # no temporary file left behind

    bounded = TrafficLog(tmp_path / "b", sample=1.0, rotate_s=60, max_rows=1, max_files=3, seed=0)
    log_texts(bounded, 7)
    bounded.close()
    files = sorted((tmp_path / "b").glob("traffic-*.parquet"))
    assert len(files) == 3 and read_traffic(tmp_path / "b").texts == [f"text number {i}" for i in (4, 5, 6)]


def test_sampling_keeps_about_the_asked_fraction(tmp_path):
    log = TrafficLog(tmp_path, sample=0.1, rotate_s=60, max_rows=100_000, max_files=10, seed=1)
    log_texts(log, 5000)
    log.close()
    assert 400 <= len(read_traffic(tmp_path).texts) <= 600


def test_a_writer_that_falls_behind_drops_rows_instead_of_blocking(tmp_path, monkeypatch):
    metrics = Metrics()
    log = TrafficLog(tmp_path, sample=1.0, rotate_s=60, max_rows=1, max_files=10, metrics=metrics, seed=0)
    monkeypatch.setattr(log, "_write", lambda rows: time.sleep(5))  # a stalled disk
    start = time.perf_counter()
    log_texts(log, 3000)  # the queue holds 1000
    assert time.perf_counter() - start < 2.0  # returns at once; a blocking put would wait on the disk for ever
    assert metrics.traffic_dropped._value.get() >= 1000


def test_reading_bad_logs_says_what_to_do(tmp_path):
    with pytest.raises(DataLoadError, match="does not exist.*--log-sample"):
        read_traffic(tmp_path / "nowhere")
    with pytest.raises(DataLoadError, match=r"no traffic files \(traffic-\*\.parquet\)"):
        read_traffic(tmp_path)
    (tmp_path / "traffic-broken.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(DataLoadError, match="none of the 1 traffic file.*traffic-broken.parquet"):
        read_traffic(tmp_path)
    log = TrafficLog(tmp_path, sample=1.0, rotate_s=60, max_rows=10, max_files=10, seed=0)
    log_texts(log, 3)
    log.close()
    traffic = read_traffic(tmp_path)
    assert len(traffic.texts) == 3 and "skipped 1 unreadable traffic file(s): traffic-broken.parquet" in traffic.notes[0]
    empty = tmp_path / "empty"
    TrafficLog(empty, sample=1.0, rotate_s=60, max_rows=10, max_files=10).close()
    pq.write_table(pq.read_table(next(tmp_path.glob("traffic-2*.parquet"))).slice(0, 0), empty / "traffic-0.parquet")
    with pytest.raises(DataLoadError, match="holds no texts yet"):
        read_traffic(empty)
