"""The traffic log: a sample of served texts, predictions and confidences as Parquet files, and its reader.

``forgeline serve --log-sample 0.1`` keeps about one text in ten. Recording is a random draw and a
``put_nowait`` on the request path; a writer thread turns the queue into files. A file is closed
(rotated) when it holds ``log_max_rows`` rows or its first row is ``log_rotate_s`` old, written to a
hidden temporary name and renamed, so a reader never sees half a file; the oldest files beyond
``log_max_files`` are deleted. When the writer falls behind, the queue is full and rows are dropped
and counted (``forgeline_traffic_dropped``): requests never wait for the log, and a failing disk
only costs log rows (``forgeline_traffic_write_failures``).

``forgeline drift --traffic DIR`` and the retraining flow (``drift.traffic``) read the folder back
with :func:`read_traffic` as the current data for the drift check.
"""

from __future__ import annotations

import hashlib
import logging
import os
import queue
import random
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from forgeline.errors import DataLoadError

log = logging.getLogger("forgeline.serve")

PREFIX = "traffic-"
COLUMNS = ("ts", "model", "version", "text", "label", "confidence")
"""The log's schema (pyarrow types in :func:`schema`); readers need only ``text``."""


def schema():
    import pyarrow as pa

    return pa.schema([("ts", pa.timestamp("ms", tz="UTC")), ("model", pa.string()), ("version", pa.string()),
                      ("text", pa.string()), ("label", pa.string()), ("confidence", pa.float32())])


class TrafficLog:
    def __init__(self, directory: str | Path, sample: float, rotate_s: float, max_rows: int, max_files: int,
                 metrics=None, seed: int | None = None) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.sample, self.rotate_s, self.max_rows, self.max_files = sample, rotate_s, max_rows, max_files
        self.metrics = metrics
        self._rng = random.Random(seed)
        self._queue: queue.Queue = queue.Queue(maxsize=max(1000, 4 * max_rows))
        self._seq = 0
        self._thread = threading.Thread(target=self._run, name="traffic-log", daemon=True)
        self._thread.start()

    def record(self, model: str, version: str, texts: list[str], labels: list[str], confidences: list[float],
               block: bool = False) -> None:
        """On the request path: a random draw per text and a non-blocking put. ``block`` (a batch job's
        sample, already drawn): wait for room instead of dropping rows."""
        now = time.time()
        for i, text in enumerate(texts):
            if self._rng.random() >= self.sample:
                continue
            try:
                self._queue.put((now, model, version, text, labels[i], float(confidences[i])), block=block)
            except queue.Full:
                if self.metrics is not None:
                    self.metrics.traffic_dropped.inc()

    def close(self, timeout: float = 30.0) -> None:
        """Write what is queued and stop the writer (server shutdown)."""
        try:
            self._queue.put(None, timeout=timeout)  # a stalled disk must not hold up shutdown for ever
        except queue.Full:
            log.warning("traffic log: writer stalled; %d queued rows not written", self._queue.qsize())
            return
        self._thread.join(timeout)

    def _run(self) -> None:
        rows: list[tuple] = []
        first = 0.0
        while True:
            wait = max(0.05, first + self.rotate_s - time.time()) if rows else None
            try:
                item = self._queue.get(timeout=wait)
            except queue.Empty:
                item = ()
            if item is None:  # close()
                self._write(rows)
                return
            if item:
                if not rows:
                    first = time.time()
                rows.append(item)
            if rows and (len(rows) >= self.max_rows or time.time() - first >= self.rotate_s):
                self._write(rows)
                rows = []

    def _write(self, rows: list[tuple]) -> None:
        if not rows:
            return
        import pyarrow as pa
        import pyarrow.parquet as pq

        self._seq += 1
        name = f"{PREFIX}{time.strftime('%Y%m%dT%H%M%S', time.gmtime(rows[0][0]))}-{os.getpid()}-{self._seq:06d}.parquet"
        tmp = self.dir / f".{name}.tmp"
        try:
            cols = list(zip(*rows))
            table = pa.table([pa.array([int(t * 1000) for t in cols[0]], pa.int64()).cast(pa.timestamp("ms", tz="UTC")),
                              *(pa.array(c) for c in cols[1:5]), pa.array(cols[5], pa.float32())], schema=schema())
            pq.write_table(table, tmp)
            os.replace(tmp, self.dir / name)
            if self.metrics is not None:
                self.metrics.traffic_logged.inc(len(rows))
            files = sorted(self.dir.glob(f"{PREFIX}*.parquet"))
            for old in files[: max(0, len(files) - self.max_files)]:
                old.unlink(missing_ok=True)
        except Exception as e:  # noqa: BLE001 - a full or broken disk costs log rows, never requests
            tmp.unlink(missing_ok=True)
            if self.metrics is not None:
                self.metrics.traffic_write_failures.inc()
            log.warning("traffic log: could not write %d rows to %s: %s", len(rows), self.dir, e)


@dataclass
class Traffic:
    texts: list[str]
    files: list[str]
    fingerprint: str
    notes: list[str] = field(default_factory=list)
    decisions: list[str | None] = field(default_factory=list)
    """What the model answered for each text, as ``OutputSpec.logged`` wrote it (None where unreadable)."""


def read_traffic(path: str | Path) -> Traffic:
    """All texts of a traffic log (a folder of ``traffic-*.parquet``, or one Parquet file). Unreadable
    files are skipped and named in ``notes``; no readable file, or no text at all, is a DataLoadError."""
    import pyarrow.parquet as pq

    p = Path(path).expanduser()
    hint = "(`forgeline serve --log-sample 0.1` writes it under <workdir>/traffic, or where serving.log_dir says)"
    if not p.exists():
        raise DataLoadError(f"traffic log {p} does not exist {hint}")
    files = sorted(p.glob(f"{PREFIX}*.parquet")) if p.is_dir() else [p]
    if not files:
        raise DataLoadError(f"no traffic files ({PREFIX}*.parquet) in {p} {hint}")
    texts: list[str] = []
    decisions: list[str | None] = []
    bad: list[str] = []
    digest = hashlib.sha256()
    for f in files:
        try:
            table = pq.read_table(f, columns=["text", "label"])
            column, said = table.column("text").to_pylist(), table.column("label").to_pylist()
        except Exception as e:  # noqa: BLE001 - any unreadable file: skipped and named
            bad.append(f"{f.name} ({type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''})")
            continue
        texts += [t for t in column if isinstance(t, str)]
        decisions += [d if isinstance(d, str) else None for t, d in zip(column, said) if isinstance(t, str)]
        digest.update(f.name.encode() + b"\0" + str(len(column)).encode() + b"\0")
    if len(bad) == len(files):
        raise DataLoadError(f"none of the {len(files)} traffic file(s) in {p} could be read as Parquet: {'; '.join(bad[:3])}")
    if not texts:
        raise DataLoadError(f"the traffic log {p} holds no texts yet: serve with --log-sample above 0 and send requests")
    notes = [f"skipped {len(bad)} unreadable traffic file(s): {'; '.join(bad[:5])}"] if bad else []
    for t in texts:
        digest.update(t.encode("utf-8", "surrogatepass"))
    return Traffic(texts=texts, files=[str(f) for f in files], fingerprint=digest.hexdigest()[:16], notes=notes,
                   decisions=decisions)
