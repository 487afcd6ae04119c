"""What batch scoring reads: a file, a folder, a glob or an fsspec URL, each file read in parts of at
most ``part_rows`` rows so memory does not grow with the input.

Files are opened through fsspec (``s3://`` and the like where the filesystem package is installed),
decompressed as the training reader does (.gz, .bz2, .xz, .zip; .zst with ``zstandard``). CSV is read by
pandas' chunked C parser, Parquet by pyarrow's batch reader, JSON Lines line by line here (the line
number goes into the error, which pyarrow's reader does not give).
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

import pandas as pd

from forgeline.data.load import COMPRESSION_SUFFIXES, FORMAT_SUFFIXES, _suffixes, sniff_separator
from forgeline.errors import DataLoadError

FORMATS = ("csv", "jsonl", "parquet")
FSSPEC_COMPRESSION = {"gzip": "gzip", "bz2": "bz2", "xz": "xz", "zip": "zip", "zstd": "zstd"}


@dataclass(frozen=True)
class InputFile:
    url: str
    """What fsspec opens (protocol included)."""
    name: str
    """The file as the output's ``source`` column names it: relative to the input folder (or its name)."""
    size: int
    modified: str | None
    format: str
    compression: str | None

    def identity(self) -> dict[str, Any]:
        """What the manifest records to tell a changed input from the one a job began on."""
        return {"name": self.name, "size": self.size, "modified": self.modified}


def _format_of(path: str, fmt: str) -> tuple[str | None, str | None]:
    """(format, compression) as the training reader tells them from the suffixes (``_suffixes``)."""
    suffix, compression = _suffixes(PurePosixPath(path))
    if fmt != "auto":
        return fmt, compression
    found = FORMAT_SUFFIXES.get(suffix)
    return (found if found in FORMATS else None), compression


def list_inputs(spec: str, fmt: str = "auto") -> list[InputFile]:
    """The files ``spec`` names, sorted (their order numbers the output's parts). Files in a folder whose
    suffix names no readable format, and hidden ones (``.x``, ``_x``: markers, checksums), are passed over."""
    import fsspec

    try:
        fs, path = fsspec.core.url_to_fs(spec)
    except (ImportError, ValueError) as e:
        raise DataLoadError(f"cannot open {spec!r}: {e} (install the fsspec filesystem package its protocol needs)") from None
    protocol = fs.protocol[0] if isinstance(fs.protocol, (tuple, list)) else fs.protocol
    root = path
    if any(c in path for c in "*?["):
        paths, root = sorted(fs.glob(path)), path.split("*")[0].rsplit("/", 1)[0]
    elif fs.isdir(path):
        paths = sorted(fs.find(path))
    elif fs.exists(path):
        paths, root = [path], str(PurePosixPath(path).parent)
    else:
        raise DataLoadError(f"input {spec} does not exist; give a file, a folder, a glob or an fsspec URL")
    single = len(paths) == 1 and not fs.isdir(path)
    files = []
    for p in paths:
        name = p[len(root):].lstrip("/") if p.startswith(root) else PurePosixPath(p).name
        if any(part.startswith((".", "_")) for part in PurePosixPath(name).parts):
            continue
        form, compression = _format_of(p, fmt)
        if form is None:
            if single:
                raise DataLoadError(f"cannot tell the format of {spec} from its suffix; name it .csv/.tsv/.jsonl/.parquet "
                                    f"(optionally + {'/'.join(COMPRESSION_SUFFIXES)}) or --set format=csv|jsonl|parquet")
            continue
        info = fs.info(p)
        if info.get("type") == "directory":
            continue
        modified = info.get("mtime") or info.get("LastModified") or info.get("last_modified") or info.get("ETag")
        url = p if protocol in ("file", "local") else f"{protocol}://{p}"
        files.append(InputFile(url=url, name=name or PurePosixPath(p).name, size=int(info.get("size") or 0),
                               modified=None if modified is None else str(modified), format=form, compression=compression))
    if not files:
        raise DataLoadError(f"no CSV, JSONL or Parquet files in {spec} (suffixes: .csv .tsv .jsonl .parquet, optionally "
                            f"compressed {' '.join(COMPRESSION_SUFFIXES)})")
    return files


def _open(f: InputFile):
    import fsspec

    compression = FSSPEC_COMPRESSION.get(f.compression or "")
    if compression == "zstd":
        import importlib.util

        if importlib.util.find_spec("zstandard") is None:  # fsspec's zstd codec needs it
            raise DataLoadError(f"{f.name}: reading .zst files needs the zstandard package (pip install zstandard)")
    return fsspec.open(f.url, "rb", compression=compression).open()


def read_parts(f: InputFile, columns: list[str], part_rows: int, skip: AbstractSet[int] = frozenset()) -> Iterator[tuple[int, pd.DataFrame | None]]:
    """(first row, the part's ``columns``) per part of ``f``, in order; None for a part whose first row is
    in ``skip`` (finished earlier: read past, not returned). A column missing from the file, or a line
    that cannot be read, is a DataLoadError naming the file and the line."""
    reader = {"csv": _csv_parts, "jsonl": _jsonl_parts, "parquet": _parquet_parts}[f.format]
    start = 0
    try:
        for frame in reader(f, columns, part_rows):
            yield start, (None if start in skip else frame)
            start += len(frame)
    except DataLoadError:
        raise
    except (OSError, EOFError, ValueError, UnicodeError) as e:  # a damaged compressed stream, a truncated file
        raise DataLoadError(f"{f.name}: cannot be read after row {start} ({type(e).__name__}: "
                            f"{str(e).splitlines()[0][:300] if str(e) else ''})") from None


def _missing(f: InputFile, columns: list[str], have: list[str], where: str = "its header") -> None:
    missing = [c for c in columns if c not in have]
    if missing:
        raise DataLoadError(f"{f.name}: no column {missing[0]!r} in {where} (columns: {have[:20]}); "
                            "set text_column (and key_column, text_pair_column) to columns the file has")


def _separator(f: InputFile) -> str:
    if _suffixes(PurePosixPath(f.name))[0] == ".tsv":
        return "\t"
    with _open(f) as fh:
        return sniff_separator(fh.readline(65_536).decode("utf-8", errors="replace"))


def _csv_parts(f: InputFile, columns: list[str], part_rows: int) -> Iterator[pd.DataFrame]:
    sep = _separator(f)
    with _open(f) as fh:
        text = io.TextIOWrapper(fh, encoding="utf-8-sig", errors="replace", newline="")
        try:
            chunks = pd.read_csv(text, sep=sep, dtype=str, na_filter=False, chunksize=part_rows, engine="c")
            for i, chunk in enumerate(chunks):
                if i == 0:
                    _missing(f, columns, [str(c) for c in chunk.columns])
                yield chunk[columns].reset_index(drop=True)
        except pd.errors.EmptyDataError:
            raise DataLoadError(f"{f.name}: the file is empty (no header line)") from None
        except pd.errors.ParserError as e:  # "Expected 2 fields in line 7, saw 3": the line, counted from the top
            raise DataLoadError(f"{f.name}: not a well-formed CSV: {str(e).split('C error: ')[-1].strip()}; "
                                "fix that line (quote fields holding the separator)") from None


def _jsonl_parts(f: InputFile, columns: list[str], part_rows: int) -> Iterator[pd.DataFrame]:
    import orjson

    rows: list[list[Any]] = []
    checked = False
    with _open(f) as fh:
        for lineno, line in enumerate(fh, start=1):
            if lineno == 1:
                line = line.removeprefix(b"\xef\xbb\xbf")
            if not line.strip():
                continue
            try:
                obj = orjson.loads(line)
            except orjson.JSONDecodeError as e:
                raise DataLoadError(f"{f.name}:{lineno}: not a JSON object ({str(e).split(':')[0]}); fix or remove "
                                    "that line") from None
            if not isinstance(obj, dict):
                raise DataLoadError(f"{f.name}:{lineno}: expected a JSON object per line, got {type(obj).__name__}")
            if not checked:  # later rows without the column are rejected rows (null_text), not a bad file
                _missing(f, columns, list(obj), f"line {lineno}'s keys")
                checked = True
            rows.append([obj.get(c) for c in columns])
            if len(rows) == part_rows:
                yield pd.DataFrame(rows, columns=columns, dtype=object)
                rows = []
    if rows:
        yield pd.DataFrame(rows, columns=columns, dtype=object)


def _parquet_parts(f: InputFile, columns: list[str], part_rows: int) -> Iterator[pd.DataFrame]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    with _open(f) as fh:
        try:
            pf = pq.ParquetFile(fh)
        except (pa.ArrowInvalid, pa.ArrowIOError, OSError) as e:
            raise DataLoadError(f"{f.name}: not a readable Parquet file ({str(e)[:300]})") from None
        _missing(f, columns, list(pf.schema_arrow.names), "its schema")
        for batch in pf.iter_batches(batch_size=part_rows, columns=columns):
            yield pd.DataFrame({c: batch.column(c).to_pylist() for c in columns}, dtype=object)
