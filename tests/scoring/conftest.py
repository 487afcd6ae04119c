"""A registry whose model ``m`` has two versions of the session's model, and an input folder of mixed
files with bad rows in it."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import make_bundle, register_version, sentiment_rows
from tests.serving.conftest import make_registry


@pytest.fixture(scope="module")
def scoring_registry(tmp_path_factory, trained, exported) -> tuple[str, MlflowClient]:
    """``m`` v1 (champion) and v2, both the session model."""
    folder = tmp_path_factory.mktemp("scoring-registry")
    bundle = make_bundle(folder, trained, exported)
    uri, client = make_registry(folder, bundle)
    register_version(client, bundle, bundle[1], 0.80)
    return uri, client


BAD = {"": "empty_text", "   ": "empty_text", "bell \x07 inside": "control_chars", "x" * 300: "text_too_long"}
"""Texts each input file carries among its good ones, and the reason they are rejected for
(``max_text_chars=200`` in the tests)."""


def mixed_inputs(folder: Path) -> dict[str, list]:
    """A folder of a CSV (with an id column), a gzipped JSONL, a Parquet file and a TSV in a subfolder,
    plus files scoring passes over (a marker, a README). Returns source → its texts in row order."""
    folder.mkdir(parents=True)
    rows = sentiment_rows(20, seed=3)["text"].tolist()  # 40 texts
    texts = {"a.csv": rows[:13] + ["", "bell \x07 inside"] + rows[13:17],
             "b.jsonl.gz": rows[17:25] + ["x" * 300, None, 42],
             "c.parquet": rows[25:33] + ["   "],
             "sub/d.tsv": rows[33:40]}
    pd.DataFrame({"id": [f"a{i}" for i in range(len(texts["a.csv"]))], "text": texts["a.csv"]}).to_csv(folder / "a.csv", index=False)
    with gzip.open(folder / "b.jsonl.gz", "wt", encoding="utf-8") as fh:
        for i, t in enumerate(texts["b.jsonl.gz"]):
            fh.write(json.dumps({"id": f"b{i}", "text": t} if t is not None else {"id": f"b{i}"}) + "\n")
    pd.DataFrame({"id": [f"c{i}" for i in range(len(texts["c.parquet"]))], "text": texts["c.parquet"]}).to_parquet(folder / "c.parquet")
    (folder / "sub").mkdir()
    pd.DataFrame({"id": [f"d{i}" for i in range(len(texts["sub/d.tsv"]))], "text": texts["sub/d.tsv"]}).to_csv(
        folder / "sub" / "d.tsv", sep="\t", index=False)
    (folder / "_SUCCESS").write_text("")
    (folder / "README.md").write_text("not data")
    return texts
