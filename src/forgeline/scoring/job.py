"""Batch scoring: every row of the input scored once by a registered model, in Parquet parts, resumable.

The input's files are read in parts of ``part_rows`` rows (``forgeline.scoring.inputs``). A part is
scored with the variant registration chose for this device (the pyfunc's ONNX session and tokenizer),
then committed: its scores (``part-FFFFF-RRRRRRRRRRRR.parquet``, F the input file's number, R its first
row) and its rejected rows (``_rejected/`` with the reason) are written under a hidden temporary name
and renamed, then its record (``_manifest/part-….json``: file, row range, counts, SHA-256 of the
files) is written the same way. A rerun skips parts that have a record and redoes any other: a part
renamed but not recorded is rewritten under the same name, so each input row is in the output once
whatever the job was stopped by (SIGKILL, Ctrl-C, a full disk). ``_manifest/job.json`` names the model
version, variant and input files; a job against another version or changed input is refused unless
``restart`` clears the folder first. Names starting with ``_`` or ``.`` are skipped by Parquet dataset
readers, so ``pandas.read_parquet(output)`` reads the scores alone.

The same ``score_file`` runs in this process (``engine: local``) or on Spark executors
(``forgeline.scoring.spark``), one input file per task.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from forgeline.errors import ConfigError, DiskFullError, disk_full
from forgeline.inference.contract import CLASSICAL
from forgeline.inference.text import text_problem
from forgeline.scoring.inputs import InputFile, read_parts
from forgeline.settings import failpoint
from forgeline.tasks.base import as_text

MANIFEST, REJECTED, SUCCESS = "_manifest", "_rejected", "_SUCCESS"
JOB = "job.json"
PREDICTIONS = "drift/predictions.json"
"""Per variant, its prediction counts on the validation split (``OutputSpec.prediction_counts``), logged by
the compress stage: the reference of a scoring job's prediction drift."""
CLASSICAL_PREDICTIONS = "drift/predictions.classical.json"
"""The classical baseline's, written by the baseline stage (``model.family: auto``)."""
META_COLUMNS = ("model", "version", "variant")


def part_name(file_index: int, start: int) -> str:
    return f"part-{file_index:05d}-{start:012d}"


def row_problems(values: list[Any], max_chars: int) -> list[str | None]:
    """Per text, the first rule it breaks, or None: ``null_text`` (missing), ``not_text`` (not a string),
    ``text_too_long`` (over ``max_chars``, which serving answers 422 for), else the rules validation and
    serving apply (``inference.text.text_problem``: a key of its ``RULES``)."""
    out: list[str | None] = []
    for v in values:
        if v is None or (isinstance(v, float) and np.isnan(v)):
            out.append("null_text")
        elif not isinstance(v, str):
            out.append("not_text")
        elif len(v) > max_chars:
            out.append("text_too_long")
        else:
            out.append(text_problem(v))
    return out


# --- the output folder -------------------------------------------------------------------------------
class Output:
    """The output folder through fsspec: atomic writes (temporary name, rename), the manifest."""

    def __init__(self, url: str) -> None:
        import fsspec

        self.url = url
        self.fs, self.root = fsspec.core.url_to_fs(url)
        self.root = self.root.rstrip("/")

    def path(self, *parts: str) -> str:
        return "/".join([self.root, *parts])

    def write_atomic(self, rel: str, data: bytes) -> None:
        """``data`` at ``rel``, never half-written: a hidden temporary file in the same folder, synced,
        then renamed over the name. A full disk removes the temporary file and says what to do."""
        folder, name = rel.rsplit("/", 1) if "/" in rel else ("", rel)
        final = self.path(rel)
        tmp = self.path(*(p for p in (folder, f".tmp-{os.getpid()}-{name}") if p))
        try:
            self.fs.makedirs(self.path(folder) if folder else self.root, exist_ok=True)
            with self.fs.open(tmp, "wb") as fh:
                failpoint("score.write")
                fh.write(data)
                fh.flush()
                if hasattr(fh, "fileno"):
                    try:
                        os.fsync(fh.fileno())
                    except (OSError, ValueError, AttributeError):  # not a local file
                        pass
            self.fs.mv(tmp, final)
        except OSError as e:
            try:
                self.fs.rm(tmp)
            except (OSError, FileNotFoundError):
                pass
            full = disk_full(e)
            if full is not None:
                raise DiskFullError(f"the disk of {self.url} is full ({full}): free space and run the same command "
                                    "again; finished parts are kept and skipped") from None
            raise

    def read_json(self, rel: str) -> dict[str, Any] | None:
        try:
            with self.fs.open(self.path(rel), "rb") as fh:
                return json.loads(fh.read())
        except (ValueError, OSError):  # missing, or a damaged record: the part is redone
            return None

    def records(self) -> dict[str, dict[str, Any]]:
        """Finished parts: part name → its record."""
        try:
            names = self.fs.ls(self.path(MANIFEST), detail=False)
        except FileNotFoundError:
            return {}
        out = {}
        for n in names:
            base = n.rstrip("/").rsplit("/", 1)[-1]
            if base.startswith("part-") and base.endswith(".json"):
                rec = self.read_json(f"{MANIFEST}/{base}")
                if rec is not None:
                    out[base.removesuffix(".json")] = rec
        return out

    def entries(self) -> list[str]:
        try:
            return [n.rstrip("/").rsplit("/", 1)[-1] for n in self.fs.ls(self.root, detail=False)]
        except FileNotFoundError:
            return []

    def clear(self) -> None:
        """What a scoring job writes (parts, rejected rows, manifest, marker, temporary files), nothing else."""
        for name in self.entries():
            if name in (MANIFEST, REJECTED, SUCCESS) or name.startswith(("part-", ".tmp-")):
                self.fs.rm(self.path(name), recursive=True)

    def remove_temporary(self) -> None:
        """Temporary files a killed job left (never renamed: never part of the output)."""
        for folder in ("", REJECTED, MANIFEST):
            try:
                names = self.fs.ls(self.path(folder) if folder else self.root, detail=False)
            except FileNotFoundError:
                continue
            for n in names:
                if n.rstrip("/").rsplit("/", 1)[-1].startswith(".tmp-"):
                    self.fs.rm(n)


def parquet_bytes(frame: pd.DataFrame, schema) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    sink = pa.BufferOutputStream()
    table = pa.Table.from_pandas(frame, schema=schema, preserve_index=False) if len(frame) else schema.empty_table()
    pq.write_table(table.replace_schema_metadata(None), sink)  # the same bytes of schema in every part
    return sink.getvalue().to_pybytes()


def schemas(spec, key_column: str | None):
    """(scores, rejected rows) Arrow schemas: fixed per job, whatever a part holds. The key column is
    written as text (CSV gives text; one type across every file of the job)."""
    import pyarrow as pa

    ids = [("source", pa.string()), ("row", pa.int64()), *([(key_column, pa.string())] if key_column else [])]
    return (pa.schema(ids + spec.frame_types() + [(c, pa.string()) for c in META_COLUMNS]),
            pa.schema(ids + [("reason", pa.string()), ("text", pa.string())]))


# --- one part, one file ------------------------------------------------------------------------------
@dataclass
class Job:
    """What every part of a job needs, small enough to ship to Spark executors."""

    output: str
    columns: list[str]
    """The input columns read: the text, the text pair and the key column, in that order."""
    pair_column: str | None
    key_column: str | None
    part_rows: int
    max_text_chars: int
    model: str
    version: str
    variant: str
    log_sample: float = 0.0
    seed: int = 0


@dataclass
class FileResult:
    records: list[dict[str, Any]] = field(default_factory=list)
    skipped: int = 0
    samples: list[tuple[str, str, float]] = field(default_factory=list)
    """(text, decision as logged, confidence) of a ``log_sample`` share of the scored rows: the traffic log's."""


def score_part(impl, job: Job, f: InputFile, start: int, frame: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame, Any]:
    """(scores, rejected rows, raw outputs) of one part."""
    spec = impl.spec
    text_col = job.columns[0]
    texts = frame[text_col].tolist()
    problems = row_problems(texts, job.max_text_chars)
    if job.pair_column:
        second = row_problems(frame[job.pair_column].tolist(), job.max_text_chars)
        problems = [a or b for a, b in zip(problems, second)]
    ok = np.array([p is None for p in problems], dtype=bool)
    rows = np.arange(start, start + len(frame), dtype=np.int64)
    keep = np.flatnonzero(ok)
    good = [texts[i] for i in keep]
    pairs = [frame[job.pair_column].iat[i] for i in keep] if job.pair_column else None
    outputs = impl.predict_proba(good, pairs)
    keys = [as_text(v) for v in frame[job.key_column].tolist()] if job.key_column else []
    ids = {"source": [f.name] * len(keep), "row": rows[keep]}
    if job.key_column:
        ids[job.key_column] = [keys[i] for i in keep]
    scored = pd.concat([pd.DataFrame(ids), spec.frame(outputs).reset_index(drop=True)], axis=1)
    for k, v in zip(META_COLUMNS, (job.model, job.version, job.variant)):
        scored[k] = v
    bad = np.flatnonzero(~ok)
    rejected = pd.DataFrame({"source": [f.name] * len(bad), "row": rows[bad],
                             **({job.key_column: [keys[i] for i in bad]} if job.key_column else {}),
                             "reason": [problems[i] for i in bad],
                             # a text as it came (cut to 1,000 characters), to find and fix it; a non-string as its repr
                             "text": [(texts[i] if isinstance(texts[i], str) else repr(texts[i]))[:1000]
                                      if texts[i] is not None else None for i in bad]})
    return scored, rejected, outputs


def _bounded_memory() -> None:
    """Arrow's buffers from the system allocator, and each part's freed heap handed back to the OS. With
    Arrow's jemalloc pool and no trim the peak grew part after part (637 MB at 100K rows, 711 MB at 1M,
    the model alone flat at 592 MB); with these, 589 → 604 MB over 10 parts of 20K rows
    (benchmarks/results/score-cpu-2026-12-02.json has the 100K/1M peaks)."""
    import pyarrow as pa

    if pa.default_memory_pool().backend_name != "system":
        pa.set_memory_pool(pa.system_memory_pool())
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def score_file(impl, job: Job, file_index: int, f: InputFile, done: set[int]) -> FileResult:
    """Score every part of ``f`` whose first row is not in ``done`` and commit it (see the module's doc)."""
    out = Output(job.output)
    result = FileResult()
    scores_schema, rejected_schema = schemas(impl.spec, job.key_column)
    _bounded_memory()
    rng = random.Random(f"{job.seed}:{f.name}")
    for start, frame in read_parts(f, job.columns, job.part_rows, done):
        if frame is None:
            result.skipped += 1
            continue
        began = time.perf_counter()
        scored, rejected, outputs = score_part(impl, job, f, start, frame)
        name = part_name(file_index, start)
        data = parquet_bytes(scored, scores_schema)
        out.write_atomic(f"{name}.parquet", data)
        failpoint("score.renamed")  # scores in place, the part not yet recorded: a rerun rewrites it
        record: dict[str, Any] = {"part": name, "file": file_index, "source": f.name, "start": start,
                                  "stop": start + len(frame), "rows": len(frame), "scored": len(scored),
                                  "rejected": len(rejected), "sha256": hashlib.sha256(data).hexdigest(),
                                  "counts": impl.spec.prediction_counts(outputs),
                                  "reasons": {k: int(v) for k, v in rejected["reason"].value_counts().items()}}
        if len(rejected):
            bad = parquet_bytes(rejected, rejected_schema)
            out.write_atomic(f"{REJECTED}/{name}.parquet", bad)
            record["rejected_sha256"] = hashlib.sha256(bad).hexdigest()
        record["seconds"] = round(time.perf_counter() - began, 4)
        out.write_atomic(f"{MANIFEST}/{name}.json", json.dumps(record).encode())
        result.records.append(record)
        _bounded_memory()
        if job.log_sample > 0 and len(scored):
            logged, confidence = impl.spec.logged(outputs)
            texts = frame[job.columns[0]].tolist()
            ok_rows = (scored["row"].to_numpy() - start).tolist()
            for j, i in enumerate(ok_rows):
                if rng.random() < job.log_sample:
                    result.samples.append((texts[i], logged[j], float(confidence[j])))
    return result


# --- the job's header --------------------------------------------------------------------------------
def begin(out: Output, header: dict[str, Any], restart: bool) -> dict[str, dict[str, Any]]:
    """Check the output folder against this job and return the parts already finished. A folder of an
    earlier job with another model version, variant, input or part size is refused unless ``restart``
    (which clears it); a non-empty folder that no scoring job wrote is refused always."""
    entries = [e for e in out.entries() if not e.startswith(".tmp-")]
    previous = out.read_json(f"{MANIFEST}/{JOB}")
    if restart and previous is not None:
        out.clear()
        previous, entries = None, out.entries()
    if previous is None and entries and any(e not in (MANIFEST, REJECTED) and not e.startswith("part-") for e in entries):
        raise ConfigError(f"output {out.url} is not empty ({', '.join(sorted(entries)[:5])} ...) and holds no scoring "
                          "manifest: give a new or empty folder (nothing there was changed)")
    if previous is None and any(e.startswith("part-") for e in entries):
        out.clear()  # parts of a job killed before its header was written: never recorded as finished
    if previous is not None:
        keys = ("model", "version", "variant", "inputs", "columns", "part_rows", "max_text_chars")
        changed = [k for k in keys if previous.get(k) != header.get(k)]
        if changed:
            what = "; ".join(f"{k}: {_short(previous.get(k))} → {_short(header.get(k))}" for k in changed)
            raise ConfigError(f"output {out.url} holds scores of an earlier job that differs ({what}). Its parts would "
                              "mix with this job's: pass --restart to delete them and score everything anew, or give "
                              "another output folder")
        out.remove_temporary()
        return out.records()
    out.write_atomic(f"{MANIFEST}/{JOB}", json.dumps(header, indent=1).encode())
    return {}


def _short(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, str) else value
    return text if len(text) <= 120 else text[:117] + "..."


def done_starts(records: dict[str, dict[str, Any]], file_index: int) -> set[int]:
    return {int(r["start"]) for r in records.values() if int(r.get("file", -1)) == file_index}


def merged_counts(records: list[dict[str, Any]]) -> dict[str, float]:
    total: dict[str, float] = {}
    for r in records:
        for k, v in (r.get("counts") or {}).items():
            total[k] = total.get(k, 0) + v
    return total


@dataclass
class ScoreSummary:
    model: str
    version: str
    variant: str
    device: str
    output: str
    files: int
    parts: int
    parts_skipped: int
    rows: int
    scored: int
    rejected: int
    reasons: dict[str, int]
    seconds: float
    """The whole job: the model's download and load included."""
    rows_per_s: float
    """Rows read, checked, scored and written per second of this job's scoring (resumed parts not counted)."""
    distribution: dict[str, float]
    drift: dict[str, Any]
    run_id: str | None = None

    def markdown(self) -> str:
        lines = [f"# Scoring with {self.model} v{self.version} ({self.variant}, {self.device})", "",
                 f"- output: `{self.output}`", f"- rows: {self.rows:,} in {self.files} file(s), {self.parts} part(s) "
                 f"({self.parts_skipped} finished earlier, skipped)", f"- scored: {self.scored:,}; rejected: "
                 f"{self.rejected:,} {self.reasons or ''}", f"- {self.seconds:.1f} s, {self.rows_per_s:,.0f} rows/s",
                 "", "| prediction | share |", "|---|---|"]
        lines += [f"| {k} | {v:.4f} |" for k, v in self.distribution.items()]
        if self.drift:
            lines += ["", f"prediction drift: {json.dumps(self.drift)}"]
        return "\n".join(lines)


def reference_counts(client, run_id: str | None, variant: str, dst: Path) -> dict[str, float] | None:
    """The prediction counts of ``variant`` on the validation split, recorded by the model's run
    (``drift/predictions.json``, written by the compress stage; the classical one's by the baseline
    stage), if any."""
    if not run_id:
        return None
    try:
        path = client.download_artifacts(run_id, CLASSICAL_PREDICTIONS if variant == CLASSICAL else PREDICTIONS, str(dst))
        return dict(json.loads(Path(path).read_text()).get(variant) or {}) or None
    except Exception:  # noqa: BLE001 - a version from before the record, a damaged one: no reference, said so
        return None


def prediction_drift(spec, counts: dict[str, float], reference: dict[str, float] | None, alpha: float = 0.01,
                     threshold: float = 0.1) -> dict[str, Any]:
    """The batch's prediction distribution against the same variant's on the validation split, as the task
    compares them (``OutputSpec.prediction_drift``)."""
    n, ref_n = counts.get("n", 0) or 0, (reference or {}).get("n", 0) or 0
    if not n or not ref_n:
        return {"checked": False, "why": "nothing scored" if not n else
                "the model's run recorded no validation predictions (registered before forgeline recorded them)"}
    return spec.prediction_drift(counts, reference, alpha, threshold) | {"reference": "validation predictions"}


def load_bundle(local: Path, device: str, variant: str, batch_size: Any):
    """The pyfunc's implementation from a downloaded (verified) bundle folder."""
    import mlflow.pyfunc

    config = {"device": device, "variant": variant, "batch_size": batch_size}
    return mlflow.pyfunc.load_model(str(local), model_config=config).unwrap_python_model()
