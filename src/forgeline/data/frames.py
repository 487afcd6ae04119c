"""Frames with sequence cells (multi-label label sets, token-classification spans of (start, end, type),
quarantined rows' spans) to and from Parquet, unchanged.

Arrow has no type for a tuple of mixed types (``(0, 6, "NNP")`` fails to convert) and reads list cells back
as numpy arrays, so such columns travel as JSON text, named in the file's schema metadata. Used by the
stage cache and by the hand-off of the splits to distributed training processes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

METADATA_KEY = b"forgeline.json_columns"


def sequence_columns(frame: pd.DataFrame) -> dict[str, list[str]]:
    """Object columns whose every cell is a tuple (``tuple``) or a list (``list``)."""
    def every(c: Any, kind: type) -> bool:
        return frame[c].dtype == object and len(frame[c]) > 0 and bool(frame[c].map(lambda v: isinstance(v, kind)).all())

    return {"tuple": [c for c in frame.columns if every(c, tuple)], "list": [c for c in frame.columns if every(c, list)]}


def encode_sequences(frame: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, list[str]]]:
    """A copy with the sequence columns as JSON text (the frame itself when it has none), and their names."""
    kinds = sequence_columns(frame)
    if not kinds["tuple"] and not kinds["list"]:
        return frame, kinds
    out = frame.copy()
    for c in kinds["tuple"] + kinds["list"]:
        out[c] = out[c].map(json.dumps)
    return out, {k: [str(c) for c in v] for k, v in kinds.items()}


def decode_sequences(frame: pd.DataFrame, kinds: dict[str, list[str]]) -> pd.DataFrame:
    for c in kinds.get("tuple", []):
        frame[c] = frame[c].map(lambda v: _tuples(json.loads(v))).astype(object)
    for c in kinds.get("list", []):
        frame[c] = frame[c].map(json.loads).astype(object)
    return frame


def write_parquet(frame: pd.DataFrame, path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    encoded, kinds = encode_sequences(frame)
    table = pa.Table.from_pandas(encoded)
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), METADATA_KEY: json.dumps(kinds).encode()})
    pq.write_table(table, path)


def read_parquet(path: Path) -> pd.DataFrame:
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    kinds = json.loads((table.schema.metadata or {}).get(METADATA_KEY, b"{}"))
    return decode_sequences(table.to_pandas(), kinds)


def _tuples(value: Any) -> Any:
    """JSON lists back to (nested) tuples."""
    return tuple(_tuples(v) for v in value) if isinstance(value, list) else value
