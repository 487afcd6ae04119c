"""Load a labelled text dataset and validate it row by row with pandera.

Invalid rows are never dropped silently: they go to a quarantine file with their reasons, and the
validation report says how many of each kind there were. Beyond ``max_invalid_fraction`` (or when a
class has too few valid rows) a DataValidationError stops the flow before training.
"""

from __future__ import annotations

import functools
import io
import json
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from collections.abc import Sequence
from typing import Any

import pandas as pd
import pandera.pandas as pa
from pandera.errors import SchemaErrors

from forgeline.config.schema import DataConfig, SplitConfig
from forgeline.data.corpora import corpus_path
from forgeline.errors import DataLoadError, DataValidationError, path_kind, shown
from forgeline.inference.contract import file_sha256
from forgeline.data.spans import json_lines, read_conll, read_jsonl_sentences, sentence_rows
from forgeline.tasks import TASKS, Problem, Task
from forgeline.tasks.base import as_text
from forgeline.inference.text import CONTROL_CHARS, NOT_UTF8, RULES

# Bytes that are not valid in the declared encoding are decoded to U+FFFD (errors="replace"), which
# NOT_UTF8 finds, as it finds text that an earlier lossy decode already damaged.
_WS = re.compile(r"\s+")

REASONS = {
    "null_text": "text is missing",
    "null_label": "label is missing",
    "text_too_short": "text is shorter than data.min_text_chars",
    "text_too_long": "text is longer than data.max_text_chars",
    "unknown_label": "label is not in data.labels",
    "duplicate_text": "same text (case/whitespace-insensitive) as an earlier row",
    **RULES,  # empty_text, control_chars, non_utf8: the rules serving applies too
}
TEXT_REASONS = ("null_text", "text_too_short", "text_too_long", *RULES)
REASONS |= {f"pair_{k}": f"text pair: {REASONS[k]}" for k in TEXT_REASONS}
"""Reasons of ``data.text_pair_column``'s text: the same rules, prefixed ``pair_``."""


@functools.cache
def _all_reasons() -> dict[str, str]:
    return REASONS | {k: v for t in TASKS.values() for k, v in t.reasons.items()}


@dataclass
class ValidationResult:
    valid: pd.DataFrame
    """Columns ``text``, ``label`` (the task's target: a str, a tuple of str, a float) and, for pairs,
    ``text_pair``; index = row number in the source file."""
    quarantine: pd.DataFrame
    report: dict[str, Any]
    fingerprint: str
    labels: list[str] = field(default_factory=list)


def dataset_path(cfg: DataConfig) -> Path:
    path = Path(str(cfg.path)) if cfg.source == "file" else corpus_path(cfg.source)
    if (what := path_kind(path)) is not None:
        raise DataLoadError(f"dataset file {path} {what}; set data.path to a readable CSV, Parquet or JSONL file")
    return path


def file_fingerprint(path: Path) -> str:
    return file_sha256(str(path))


COMPRESSION_SUFFIXES = {".gz": "gzip", ".bz2": "bz2", ".zip": "zip", ".xz": "xz", ".zst": "zstd"}
FORMAT_SUFFIXES = {".csv": "csv", ".tsv": "csv", ".txt": "csv", ".parquet": "parquet", ".pq": "parquet",
                   ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl", ".xlsx": "excel", ".xlsm": "excel",
                   ".conll": "conll", ".iob": "conll", ".bio": "conll"}
SEPARATORS = (",", ";", "|", "\t")
"""Separators sniffed from a CSV's header line (a semicolon-separated file read with commas failed as
a stray quote)."""


def _suffixes(path: PurePath) -> tuple[str, str | None]:
    """(format suffix, compression or None): ``data.csv.gz`` → (".csv", "gzip")."""
    suffixes = [x.lower() for x in path.suffixes]
    compression = COMPRESSION_SUFFIXES.get(suffixes[-1]) if suffixes else None
    if compression:
        suffixes = suffixes[:-1]
    return (suffixes[-1] if suffixes else ""), compression


def _zip_member_suffix(path: Path) -> str:
    """The suffix of the single file inside a .zip (``data.zip`` holding ``data.csv`` → ``.csv``)."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as z:
            members = [n for n in z.namelist() if not n.endswith("/")]
    except (OSError, zipfile.BadZipFile):
        return ""
    return Path(members[0]).suffix.lower() if len(members) == 1 else ""


def _format(path: Path, cfg: DataConfig) -> str:
    if cfg.format != "auto":
        return cfg.format
    suffix, compression = _suffixes(path)
    if compression == "zip" and suffix not in FORMAT_SUFFIXES:
        suffix = _zip_member_suffix(path)
    if suffix in FORMAT_SUFFIXES:
        return FORMAT_SUFFIXES[suffix]
    if suffix in (".xls", ".ods", ".numbers"):
        raise DataLoadError(f"{path} is a spreadsheet in a format forgeline does not read ({suffix}); save the sheet as "
                            ".xlsx or CSV (UTF-8) and point data.path at that file")
    raise DataLoadError(f"cannot tell the format of {path} from its suffix; set data.format to csv, parquet, jsonl or excel "
                        f"(known suffixes: {', '.join(FORMAT_SUFFIXES)}, optionally followed by "
                        f"{', '.join(COMPRESSION_SUFFIXES)})")


def _read_bytes(path: Path) -> bytes:
    """The file's content, decompressed when its last suffix names a compression. Datasets are read
    whole anyway (validation needs every row), so decompressing in memory costs nothing extra."""
    import bz2
    import gzip
    import lzma
    import zipfile
    import zlib

    _, compression = _suffixes(path)
    data = path.read_bytes()
    try:
        if compression == "gzip":
            return gzip.decompress(data)
        if compression == "bz2":
            return bz2.decompress(data)
        if compression == "xz":
            return lzma.decompress(data)
        if compression == "zstd":
            try:
                import zstandard
            except ImportError:
                raise DataLoadError(f"{path}: reading .zst files needs the zstandard package (pip install zstandard), "
                                    "or decompress the file first") from None
            return zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data)).read()
        if compression == "zip":
            with zipfile.ZipFile(io.BytesIO(data)) as z:
                members = [n for n in z.namelist() if not n.endswith("/")]
                if len(members) != 1:
                    raise DataLoadError(f"{path}: a .zip dataset must hold exactly one file; it holds {members}")
                return z.read(members[0])
    # zlib.error: a damaged deflate stream (gzip, zip), found by tests/data/test_fuzz_load.py; RuntimeError and
    # NotImplementedError: an encrypted zip member or one of a compression method zipfile lacks
    except (OSError, EOFError, zlib.error, lzma.LZMAError, zipfile.BadZipFile, RuntimeError, NotImplementedError,
            ValueError) as e:
        raise DataLoadError(f"{path}: not a valid {compression} file ({shown(str(e))}); check the file or its "
                            "suffix") from None
    except Exception as e:  # noqa: BLE001 - zstandard's own error type
        if compression == "zstd" and type(e).__name__ == "ZstdError":
            raise DataLoadError(f"{path}: not a valid zstd file ({e})") from None
        raise
    return data


def _decode_cell(value: Any, encoding: str) -> Any:
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode(encoding, errors="replace")
    return value


def _shown(line: str, limit: int = 120) -> str:
    return repr(line if len(line) <= limit else line[:limit] + "…")


def check_csv_structure(text: str, path: Path, sep: str, header: bool) -> None:
    """Read the CSV once with Python's strict parser before pandas does: pandas silently repairs some
    malformed files (a stray quote can swallow rows or shift columns). The error names the line where
    the bad record starts, the first data row included, and shows it."""
    import csv

    import sys

    csv.field_size_limit(min(sys.maxsize, (1 << 31) - 1))  # a 1 MB text is a row to quarantine (text_too_long), not a failed read
    lines = [line.rstrip("\r\n") for line in io.StringIO(text, newline="")]  # the reader's line numbering
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=sep, strict=True)
    width: int | None = None
    end = 0

    def fail(lineno: int, problem: str) -> DataLoadError:
        raw = lines[lineno - 1] if 0 < lineno <= len(lines) else ""
        return DataLoadError(f"{path}:{lineno}: {problem}: {_shown(raw)}. Quote a field that holds the separator or a "
                             'quote as "...", with any quote inside doubled (""), or fix that line')

    try:
        for record in reader:
            start, end = end + 1, reader.line_num
            if not record:
                continue
            if width is None:
                width = len(record)
                what = "the header" if header else "the first row"
                continue
            if len(record) != width:
                raise fail(start, f"{len(record)} field(s) where {what} has {width}")
            if end > start and sum(1 for line in lines[start:end] if line.count(sep) >= width - 1) > 2:
                raise fail(start, f"a quoted field opened here runs on to line {end} and swallows the rows between "
                           "(a stray double quote?)")
    except csv.Error as e:
        raise fail(end + 1, f"malformed CSV ({e}; a stray double quote?)") from None


def sniff_separator(text: str) -> str:
    """The separator of a CSV's first line (outside quotes) among ``SEPARATORS``: the most frequent one,
    a comma when none occurs."""
    first = text.split("\n", 1)[0]
    outside, quoted = [], False
    for ch in first:
        if ch == '"':
            quoted = not quoted
        elif not quoted:
            outside.append(ch)
    counts = {sep: outside.count(sep) for sep in SEPARATORS}
    best = max(counts, key=lambda k: counts[k])
    return best if counts[best] > 0 else ","


def read_table(path: Path, cfg: DataConfig, check_columns: bool = True) -> pd.DataFrame:
    """Read the raw table with every cell as read (text columns as str, nulls as None).

    ``check_columns``: fail unless the configured text and label columns are present."""
    fmt = _format(path, cfg)
    if not cfg.header and fmt not in ("csv", "excel"):
        raise DataLoadError(f"data.header=false applies to CSV and Excel files; {path} is read as {fmt}, whose columns are named")
    data = _read_bytes(path)
    try:
        if fmt == "csv":
            text = data.decode(cfg.encoding, errors="replace")
            sep = cfg.separator or ("\t" if _suffixes(path)[0] == ".tsv" else sniff_separator(text))
            check_csv_structure(text, path, sep, cfg.header)
            df = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False, na_values=[""], sep=sep,
                             header=0 if cfg.header else None)
        elif fmt == "excel":
            import importlib.util

            if importlib.util.find_spec("openpyxl") is None:  # pandas' reader for .xlsx
                raise DataLoadError(f"{path}: reading .xlsx files needs openpyxl (pip install openpyxl), or save the "
                                    "sheet as CSV (UTF-8)")
            try:
                df = pd.read_excel(io.BytesIO(data), sheet_name=0, header=0 if cfg.header else None, dtype=object,
                                   engine="openpyxl")
            except Exception as e:  # noqa: BLE001 - zipfile, XML and openpyxl errors of a damaged workbook
                raise DataLoadError(f"{path}: not a readable .xlsx workbook ({shown(str(e))}); save the sheet as CSV "
                                    "(UTF-8), or set data.format if it is another kind of file") from None
            df = df.map(lambda v: None if v is None or (isinstance(v, float) and pd.isna(v)) else v)
        elif fmt == "jsonl":
            df = pd.DataFrame(json_lines(data.decode(cfg.encoding, errors="replace"), path))
        else:
            import pyarrow.parquet as pq

            import pyarrow as pa

            table = pq.read_table(io.BytesIO(data))
            # Arrow does not check that a string column is UTF-8 when reading; a damaged one failed in
            # to_pandas with ArrowException (tests/data/test_fuzz_load.py). As bytes, each cell is decoded
            # with data.encoding below: invalid bytes become U+FFFD and the row is quarantined (non_utf8).
            table = table.cast(pa.schema([f.with_type(pa.large_binary()) if pa.types.is_string(f.type)
                                          or pa.types.is_large_string(f.type) else f for f in table.schema]))
            df = table.to_pandas()
            for col in df.columns:
                if df[col].dtype == object:
                    df[col] = df[col].map(lambda v: _decode_cell(v, cfg.encoding))
    except DataLoadError:
        raise
    except (OSError, ValueError, pd.errors.ParserError) as e:
        raise DataLoadError(f"cannot read {path} as {fmt}: {shown(str(e))}") from e
    except Exception as e:  # pyarrow's ArrowException (not a ValueError) for other damage inside a Parquet file
        if type(e).__module__.startswith("pyarrow"):
            raise DataLoadError(f"cannot read {path} as {fmt}: {shown(str(e))}") from e
        raise
    if check_columns:
        _check_columns(df, path, cfg)
    return df.reset_index(drop=True)


def read_sentences(path: Path, cfg: DataConfig) -> tuple[pd.DataFrame, dict[str, Any]]:
    """A token-classification file (CoNLL, JSON Lines of tokens + tags or of text + entities) as rows of
    ``line``, the text column and the label column (spans, or a ``Problem`` with the sentence's
    quarantine reason), and what reading found (tag scheme, repairs)."""
    fmt = _format(path, cfg)
    if fmt not in ("conll", "jsonl", "csv"):
        raise DataLoadError(f"{path}: token_classification reads CoNLL files (.conll, .iob, .bio, or .txt/.tsv) and JSON "
                            f"Lines (tokens + tags, or text + entities), not {fmt}")
    raw = _read_bytes(path).decode(cfg.encoding, errors="replace")
    sentences = read_jsonl_sentences(raw, str(path)) if fmt == "jsonl" else read_conll(raw, cfg.tag_column, str(path))
    try:
        rows, info = sentence_rows(sentences, cfg.tag_scheme, cfg.repair_tags)
    except DataLoadError as e:
        raise DataLoadError(f"{path}: {e}") from None
    bad_tags = [r for r in rows if r["entities"] == "bad_tag"]
    if rows and len(bad_tags) > len(rows) / 2:  # the tags are in another field: one message, not a quarantine
        first = bad_tags[0]
        where = "line" if fmt != "jsonl" else "row"
        column = f"data.tag_column={cfg.tag_column}" if fmt != "jsonl" else "the 'tags' lists"
        raise DataLoadError(f"{path}: {len(bad_tags)} of {len(rows)} sentences hold tags that are neither O nor B-/I-/E-/S-"
                            f"TYPE (e.g. {first['bad']!r} in the sentence at {where} {first['line']}): {column} does not "
                            "hold the tags. Set data.tag_column to the field that does (0-based; -1: the last); tags "
                            "without a prefix, one per token (part of speech), need data.tag_scheme=plain")
    df = pd.DataFrame({"line": [r["line"] for r in rows], cfg.text_column: [r["text"] for r in rows],
                       cfg.label_column: [Problem(r["entities"]) if isinstance(r["entities"], str) else r["entities"]
                                          for r in rows]})
    return df, info


def _check_columns(df: pd.DataFrame, path: Path, cfg: DataConfig) -> None:
    pair = () if cfg.text_pair_column is None else (cfg.text_pair_column,)
    wanted = list(dict.fromkeys((cfg.text_column, *pair, cfg.label_column, *cfg.slice_columns)))
    missing = [c for c in wanted if c not in df.columns]
    if not missing:
        return
    if not cfg.header:
        raise DataLoadError(f"{path}: column number(s) {missing} out of range; the file has {df.shape[1]} columns "
                            f"(0 to {df.shape[1] - 1}). Set data.text_column / data.label_column to 0-based numbers")
    names = [str(c) for c in df.columns]
    shown = [n if len(n) <= 40 else n[:40] + "…" for n in names[:10]]
    looks_like_data = any(len(n) > 40 or len(n.split()) > 3 for n in names)
    advice = ("The first line looks like data, not a header row: if the file has none, set data.header=false and "
              "data.text_column / data.label_column to 0-based column numbers (e.g. 0 and 1)"
              if looks_like_data else "Set data.text_column / data.label_column to match")
    raise DataLoadError(f"{path}: column(s) {missing} not found; the header row names {shown}"
                        + (f" and {len(names) - 10} more" if len(names) > 10 else "") + f". {advice}.")


def normalize_text(text: str) -> str:
    return _WS.sub(" ", text).strip().casefold()


def _text_checks(cfg: DataConfig, prefix: str = "") -> list[pa.Check]:
    def length(s: pd.Series) -> pd.Series:
        return s.str.strip().str.len()

    return [
        pa.Check(lambda s: length(s) > 0, name=f"{prefix}empty_text"),
        pa.Check(lambda s: (length(s) >= cfg.min_text_chars) | (length(s) == 0), name=f"{prefix}text_too_short"),
        pa.Check(lambda s: length(s) <= cfg.max_text_chars, name=f"{prefix}text_too_long"),
        pa.Check(lambda s: ~s.str.contains(CONTROL_CHARS), name=f"{prefix}control_chars"),
        pa.Check(lambda s: ~s.str.contains(NOT_UTF8), name=f"{prefix}non_utf8"),
    ]


def _target_checks(cfg: DataConfig, task) -> list[pa.Check]:
    """The task's quarantine reasons (cells its ``parse_target`` refused) and, with ``data.labels``,
    labels outside that set."""
    checks = [pa.Check(lambda s, r=reason: ~s.map(lambda v: isinstance(v, Problem) and v.reason == r).astype(bool), name=reason)
              for reason in task.reasons]
    if cfg.labels and task.has_classes:
        allowed = {fold_label(lab, cfg) for lab in cfg.labels}

        def known(v: Any) -> bool:
            if isinstance(v, Problem):
                return True  # said by its own reason
            return all(x in allowed for x in task.target_labels(v))

        checks.append(pa.Check(lambda s: s.map(known).astype(bool), name="unknown_label"))
    return checks


def build_schema(cfg: DataConfig, task: Task, unique: bool = True) -> pa.DataFrameSchema:
    """``unique``: repeated texts are quarantined (training data); drift data keeps them (``for_drift``)."""
    columns = {
        "text": pa.Column(None, nullable=False, checks=_text_checks(cfg)),
        "label": pa.Column(None, nullable=False, checks=_target_checks(cfg, task)),
        "_norm": pa.Column(None, nullable=True, unique=unique, report_duplicates="exclude_first"),
    }
    if cfg.text_pair_column is not None:
        columns["text_pair"] = pa.Column(None, nullable=False, checks=_text_checks(cfg, "pair_"))
    return pa.DataFrameSchema(columns, name=f"labelled_text:{task.type}")


def _reason_for(column: str, check: str) -> str:
    if check == "not_nullable":
        return {"text": "null_text", "text_pair": "pair_null_text"}.get(column, "null_label")
    if column == "_norm" and check in {"field_uniqueness", "unique"}:
        return "duplicate_text"
    return check


SLICE_PREFIX = "slice:"
"""Columns of the valid frame holding ``data.slice_columns`` values."""


def validate_frame(raw: pd.DataFrame, cfg: DataConfig, task: Task,
                   unique: bool = True) -> tuple[pd.DataFrame, pd.DataFrame, dict[int, list[str]]]:
    """Return (valid rows, quarantined rows with reasons, reasons by row index). A target column of
    the wrong shape for the task (lists for a single label, text for regression) is one
    ``DataValidationError`` naming the task that fits, not a quarantine of every row."""
    wrong = task.column_problem(raw[cfg.label_column], cfg.label_column)
    if wrong:
        raise DataValidationError(f"{wrong}. Nothing was trained or registered")
    work = pd.DataFrame(
        {
            "text": raw[cfg.text_column].map(as_text).astype(object),
            "label": raw[cfg.label_column].map(lambda v: fold_label(task.parse_target(v, cfg.label_delimiter), cfg)).astype(object),
        },
        index=raw.index,
    )
    if cfg.text_pair_column is not None:
        work["text_pair"] = raw[cfg.text_pair_column].map(as_text).astype(object)

    def norm(row) -> str | None:
        t = row["text"]
        if not (isinstance(t, str) and t.strip()):
            return None
        key = normalize_text(t)
        if cfg.text_pair_column is not None:  # a pair is a duplicate only when both texts repeat
            p = row["text_pair"]
            key += "\x1f" + (normalize_text(p) if isinstance(p, str) else "")
        return key

    if cfg.text_pair_column is None:
        work["_norm"] = work["text"].map(lambda t: normalize_text(t) if isinstance(t, str) and t.strip() else None)
    else:
        work["_norm"] = work.apply(norm, axis=1) if len(work) else pd.Series(dtype=object)
    reasons: dict[int, list[str]] = {}
    try:
        build_schema(cfg, task, unique).validate(work, lazy=True)
    except SchemaErrors as err:
        fc = err.failure_cases
        for row in fc.itertuples(index=False):
            idx = getattr(row, "index", None)
            if idx is None or pd.isna(idx):
                raise DataValidationError(f"dataset-level check failed: {row.check} on {row.column}: {row.failure_case}") from err
            reason = _reason_for(str(row.column), str(row.check))
            bucket = reasons.setdefault(int(idx), [])
            if reason not in bucket:
                bucket.append(reason)
    for idx, value in work["label"].items():  # a Problem no check named (defensive: every reason has one)
        if isinstance(value, Problem) and value.reason not in reasons.get(int(idx), []):
            reasons.setdefault(int(idx), []).append(value.reason)
    bad_idx = sorted(reasons)
    keep = ["text", "label"] + (["text_pair"] if cfg.text_pair_column is not None else [])
    valid = work.drop(index=bad_idx)[keep].copy()
    valid["text"] = valid["text"].str.strip()
    if cfg.text_pair_column is not None:
        valid["text_pair"] = valid["text_pair"].str.strip()
    for col in cfg.slice_columns:  # carried to the test split for the gate's slices, never to the model
        valid[f"{SLICE_PREFIX}{col}"] = raw.loc[valid.index, col].map(as_text).astype(object)
    quarantine = raw.loc[bad_idx].copy()
    quarantine.insert(0, "row", [i for i in bad_idx])
    quarantine["reasons"] = [";".join(reasons[i]) for i in bad_idx]
    for col in quarantine.columns:  # lone surrogates (e.g. from JSON escapes) cannot be written as UTF-8
        if quarantine[col].dtype == object:
            quarantine[col] = quarantine[col].map(
                lambda v: v.encode("utf-8", "surrogatepass").decode("utf-8", "replace") if isinstance(v, str) else v
            )
    return valid, quarantine, reasons


def fold_label(target: Any, cfg: DataConfig) -> Any:
    """A parsed target in lower case under ``data.label_case=lower`` (labels or tuples of labels; numbers
    and refusals pass)."""
    if cfg.label_case != "lower":
        return target
    if isinstance(target, str):
        return target.lower()
    if isinstance(target, tuple) and all(isinstance(t, str) for t in target):
        return tuple(sorted({t.lower() for t in target}))
    return target


def case_twins(labels: list[str]) -> list[list[str]]:
    """Groups of labels that differ only in case ("Computers", "computers")."""
    groups: dict[str, list[str]] = {}
    for lab in labels:
        groups.setdefault(str(lab).casefold(), []).append(str(lab))
    return [g for g in groups.values() if len(g) > 1]


def _second_text_hint(raw: pd.DataFrame, cfg: DataConfig, counts: dict[str, int]) -> str:
    """Where duplicates are most of what was refused and another column holds texts: the rows may be pairs
    (a pair file read on its first text alone repeats that text, and half its rows were refused)."""
    if cfg.text_pair_column is not None or "duplicate_text" not in counts or counts["duplicate_text"] < max(counts.values()):
        return ""
    used = {cfg.text_column, cfg.label_column, *cfg.slice_columns}
    for column in raw.columns:
        cells = raw[column].dropna()
        if column in used or not len(cells) or cells.map(lambda v: isinstance(v, str)).mean() < 0.9:
            continue
        if cells.map(str).nunique() > 0.5 * len(cells) and cells.map(len).mean() >= 10:
            return (f". Column {column!r} holds texts too: if each row is a pair of texts, read them as pairs with "
                    f"--text-pair-column {column} (--set data.text_pair_column={column})")
    return ""


def stripped_labels(raw: pd.Series) -> int:
    """Label cells with spaces around them (stripped before use: " positive" and "positive" are one class)."""
    return int(raw.map(lambda v: isinstance(v, str) and v != v.strip() and bool(v.strip())).sum())


READERS = {"table": lambda path, cfg: (read_table(path, cfg), {}), "sentences": lambda path, cfg: read_sentences(path, cfg)}
"""A task's ``file_shape`` → its reader: (the frame of text and target columns, what reading found)."""


def preflight(cfg: DataConfig, task: Task) -> None:
    """The cheap structural checks of a user's file (it exists, its format, CSV structure, the
    configured columns), before a command starts any server, whose start-up would otherwise come first
    (most of half a minute on the 2-core machine). The bundled
    corpus is not checked again. Validation proper (rows, classes, sampling) stays in the validate stage,
    cached with its result. With ``task``, a target column of the wrong shape for it (lists for a single
    label, text for regression) is refused here too."""
    if cfg.source != "file":
        return
    if task.file_shape == "sentences":
        sentence_preflight(dataset_path(cfg), cfg)
        return
    raw = read_table(dataset_path(cfg), cfg)
    wrong = task.column_problem(raw[cfg.label_column], cfg.label_column)
    if wrong:
        raise DataValidationError(f"{wrong}. Nothing was trained or registered")


def sentence_preflight(path: Path, cfg: DataConfig) -> None:
    """A token file whose sentences are mostly unusable (spans cutting words, tag/token count mismatches)
    fails here, naming the first line of each reason, before any server starts."""
    from collections import Counter

    df, _ = read_sentences(path, cfg)
    problems = df[cfg.label_column].map(lambda v: v.reason if isinstance(v, Problem) else None)
    bad = problems.dropna()
    if df.empty or len(bad) / len(df) <= cfg.max_invalid_fraction:
        return
    counts = Counter(bad)
    where = "row" if _format(path, cfg) == "jsonl" else "line"
    said = ", ".join(f"{reason} {n} (first at {where} {int(df.loc[bad[bad == reason].index[0], 'line'])}: "
                     f"{_all_reasons().get(reason, reason)})" for reason, n in counts.most_common(3))
    raise DataValidationError(f"{path}: {len(bad)} of {len(df)} sentences ({len(bad) / len(df):.0%}) cannot be used, above "
                              f"data.max_invalid_fraction={cfg.max_invalid_fraction:.0%}: {said}. Fix the file. Nothing "
                              "was trained or registered")


def unsampled_rows(cfg: DataConfig, taken: Sequence[pd.DataFrame], n: int, seed: int, task: Task) -> pd.DataFrame:
    """Up to ``n`` valid rows of the source (seeded) that are in none of the ``taken`` frames, by row number
    and by normalised text: what ``data.sample_rows`` left out, for distillation on the teacher's outputs
    (``compress.distill_transfer_rows``). A validation or test text never comes back this way."""
    raw = read_table(dataset_path(cfg), cfg)
    valid, _, _ = validate_frame(raw, cfg, task)
    index = set().union(*(f.index for f in taken))
    texts = {normalize_text(t) for f in taken for t in f["text"]}
    rest = valid[~valid.index.isin(index) & ~valid["text"].map(normalize_text).isin(texts)]
    return rest.sample(n=min(n, len(rest)), random_state=seed) if len(rest) else rest


def load_and_validate(cfg: DataConfig, out_dir: Path, seed: int = 42, split: SplitConfig | None = None,
                      *, task: Task, for_drift: bool = False) -> ValidationResult:
    """Read, validate, quarantine and (optionally) subsample a dataset.

    Writes ``quarantine.csv`` and ``validation_report.json`` to ``out_dir`` before deciding whether
    the data is good enough, so a failing run still leaves both behind. With ``split``, every class
    must also keep the rows a stratified split needs, counted after ``data.sample_rows``, so the
    message names the setting that fixes it."""
    path = dataset_path(cfg)
    fingerprint = file_fingerprint(path)
    raw, read_info = READERS[task.file_shape](path, cfg)
    if raw.empty:
        raise DataValidationError(f"{path} has no rows")
    drift_counts: dict[str, int] = {}
    if for_drift:  # new data is not training data: repeated and long texts are normal in production
        counted = cfg
        cfg = cfg.model_copy(update={"max_text_chars": 10_000_000, "min_rows_per_class": 1, "sample_rows": None})
    valid, quarantine, reasons = validate_frame(raw, cfg, task, unique=not for_drift)
    if for_drift:
        norm = valid["text"].map(normalize_text)
        drift_counts = {"repeated_texts": int(norm.duplicated().sum()),
                        "long_texts": int((valid["text"].str.len() > counted.max_text_chars).sum())}

    counts: dict[str, int] = {}
    for rs in reasons.values():
        for r in rs:
            counts[r] = counts.get(r, 0) + 1
    invalid_fraction = len(quarantine) / len(raw)
    declared = list(dict.fromkeys(fold_label(lab, cfg) for lab in cfg.labels)) if cfg.labels else None
    labels = task.labels_from(valid["label"], declared) if task.has_classes else [str(cfg.label_column)]
    per_class = task.rows_per_class(valid["label"], labels)
    if task.has_classes:
        small = {lab: per_class.get(lab, 0) for lab in labels if per_class.get(lab, 0) < cfg.min_rows_per_class}
    else:  # no classes: the rows as a whole need what one class would
        small = {} if len(valid) >= cfg.min_rows_per_class else {"(all rows)": len(valid)}

    out_dir.mkdir(parents=True, exist_ok=True)
    quarantine_path = out_dir / "quarantine.csv"
    quarantine.to_csv(quarantine_path, index=False, encoding="utf-8")
    problems: list[str] = []
    if invalid_fraction > cfg.max_invalid_fraction:
        top = sorted(counts.items(), key=lambda kv: -kv[1])
        problems.append(
            f"{len(quarantine)} of {len(raw)} rows ({invalid_fraction:.1%}) failed validation, above "
            f"data.max_invalid_fraction={cfg.max_invalid_fraction:.1%} (reasons: "
            + ", ".join(f"{r} {n}" for r, n in top[:5]) + (", …" if len(top) > 5 else "") + ")"
            + _second_text_hint(raw, cfg, counts)
        )
    if task.has_classes and len(labels) < task.min_labels:
        problems.append(
            f"the valid rows hold {len(labels)} distinct label(s) ({', '.join(map(repr, labels)) or 'none'}) in column "
            f"{cfg.label_column!r}; a {task.type} model needs at least {'one' if task.min_labels == 1 else 'two'}. Check data.label_column, or set "
            "data.labels"
        )
    if small:
        problems.append(
            f"{len(small)} of {len(labels)} classes below data.min_rows_per_class={cfg.min_rows_per_class}: "
            + ", ".join(f"{k!r} has {v}" for k, v in list(small.items())[:10])
            + (f", and {len(small) - 10} more (is data.label_column {cfg.label_column!r} the label?)" if len(small) > 10 else "")
            + (f". Labels that differ only in case are separate classes: {', '.join(' and '.join(map(repr, g)) for g in twins[:3])}; "
               "--set data.label_case=lower merges them" if (twins := case_twins(labels)) else "")
        )
    final = valid
    if not problems and cfg.sample_rows and len(valid) > cfg.sample_rows:
        final = stratified_sample(valid, cfg.sample_rows, seed, task.strata(valid["label"], labels, 2))
    if not problems and split is not None:
        problems += _split_problems(final, valid, labels, cfg, split, task)
    report: dict[str, Any] = {
        "source": str(path),
        "fingerprint": fingerprint,
        "rows": len(raw),
        "valid_rows": len(valid),
        "quarantined_rows": len(quarantine),
        "invalid_fraction": round(invalid_fraction, 6),
        "max_invalid_fraction": cfg.max_invalid_fraction,
        "reasons": dict(sorted(counts.items(), key=lambda kv: -kv[1])),
        "reason_descriptions": {k: _all_reasons().get(k, k) for k in counts},
        "task": task.type,
        "rows_per_class": per_class,
        "stripped_labels": stripped_labels(raw[cfg.label_column]) if not read_info else 0,
        "labels": labels,
        # beside this report, here and in the run's artifacts (data/): the run's scratch folder is removed
        "quarantine_file": quarantine_path.name,
        "passed": not problems,
        "problems": problems,
    }
    if final is not valid:
        report["sampled_rows"] = len(final)
    report |= drift_counts | read_info
    (out_dir / "validation_report.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
    (out_dir / "validation_report.md").write_text(report_markdown(report), encoding="utf-8")
    if problems:
        raise DataValidationError(  # two lines: the counts per reason and class are in the report files
            "data validation failed: " + "; ".join(problems) + f"\nFix the data (rows quarantined with their reasons: "
            f"{quarantine_path}; report: {out_dir / 'validation_report.md'}) or relax the data.* limits",
            report=report,
        )
    return ValidationResult(valid=final, quarantine=quarantine, report=report, fingerprint=fingerprint, labels=labels)


def _split_problems(final: pd.DataFrame, valid: pd.DataFrame, labels: list[str], cfg: DataConfig,
                    split: SplitConfig, task: Task) -> list[str]:
    """Classes left with fewer rows than the split needs, and which setting fixes it."""
    import math

    need = max(cfg.min_rows_per_class, split.min_rows_per_class)
    why = (f"data.min_rows_per_class={cfg.min_rows_per_class}" if cfg.min_rows_per_class >= split.min_rows_per_class
           else f"{split.describe()} need that many for a stratified split")
    if not task.has_classes:
        return [] if len(final) >= 2 * need else [
            f"{len(final)} valid rows; the split needs at least {2 * need} ({why}). Add rows, or set data.sample_rows=null"]
    have, total = pd.Series(task.rows_per_class(final["label"], labels)), pd.Series(task.rows_per_class(valid["label"], labels))
    short = {lab: int(have.get(lab, 0)) for lab in labels if have.get(lab, 0) < need}
    if not short:
        return []
    listed = ", ".join(f"{lab!r} has {n}" + (f" (of {int(total.get(lab, 0))} valid)" if final is not valid else "")
                       for lab, n in list(short.items())[:10])
    if final is not valid:
        enough = max(math.ceil(need * len(valid) / max(int(total.get(lab, 0)), 1)) for lab in short)
        fix = (f"Raise data.sample_rows to at least {enough}, or set data.sample_rows=null to use all "
               f"{len(valid)} valid rows" if enough <= len(valid) else
               "Add rows of those classes; data.sample_rows=null (all valid rows) is not enough either")
        return [f"after subsampling to data.sample_rows={cfg.sample_rows}, {len(short)} class(es) have fewer than "
                f"{need} rows ({why}): {listed}. {fix}"]
    return [f"{len(short)} class(es) have fewer than {need} valid rows ({why}): {listed}. Add rows of those "
            "classes, or raise split.val_fraction / split.test_fraction"]


def stratified_sample(df: pd.DataFrame, n: int, seed: int, strata=None) -> pd.DataFrame:
    """``n`` rows, stratified on ``strata`` (the task's keys; default: the label)."""
    from sklearn.model_selection import train_test_split

    keys = df["label"] if strata is None else strata
    try:
        sample, _ = train_test_split(df, train_size=n, stratify=keys, random_state=seed)
    except ValueError:  # a stratum with one row: a plain seeded sample
        sample, _ = train_test_split(df, train_size=n, random_state=seed)
    return sample.sort_index()


def _per_class(counts: dict[str, int], sep: str, limit: int = 20) -> str:
    """Class counts for messages: the first ``limit`` (all are in validation_report.json)."""
    shown = ", ".join(f"{k}{sep}{v}" for k, v in list(counts.items())[:limit])
    return shown + (f", … {len(counts) - limit} more classes" if len(counts) > limit else "")


def report_markdown(report: dict[str, Any]) -> str:
    status = "passed" if report["passed"] else "FAILED"
    md = [
        f"## Data validation: {status}",
        f"Source `{report['source']}` (sha256 `{report['fingerprint'][:16]}`): {report['rows']} rows, "
        f"{report['valid_rows']} valid, {report['quarantined_rows']} quarantined "
        f"({report['invalid_fraction']:.1%}; limit {report['max_invalid_fraction']:.1%}).",
        "",
        "| reason | rows | meaning |",
        "|---|---:|---|",
    ]
    md += [f"| {r} | {n} | {_all_reasons().get(r, r)} |" for r, n in report["reasons"].items()]
    if report.get("rows_per_class"):
        md += ["", "Valid rows per class: " + _per_class(report["rows_per_class"], ": ")]
    if report.get("stripped_labels"):
        md += ["", f"{report['stripped_labels']} label cell(s) had spaces around the label; they were stripped "
               "(' positive' and 'positive' are one class)."]
    md += [f"- {p}" for p in report["problems"]]
    return "\n".join(md) + "\n"
