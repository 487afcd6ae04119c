"""The stage cache on disk: JSON not pickles, every file checked on a hit, each file stored once, a
least-recently-used size bound."""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pytest

from forgeline.pipeline.cache import CacheFormatError, StageCache


@dataclass
class Inner:
    threshold: float
    counts: dict[int, str]


@dataclass
class Result:
    frame: pd.DataFrame
    path: Path
    shape: tuple[int, int]
    inner: Inner
    names: list[str] = field(default_factory=list)
    missing: float | None = None


def _files(tmp_path: Path, text: str = "weights") -> dict[str, Path]:
    folder = tmp_path / "src" / "checkpoint"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.bin").write_text(text)
    (folder / "config.json").write_text("{}")
    (tmp_path / "src" / "model.onnx").write_text(text + " as onnx")
    return {"checkpoint": folder, "model.onnx": tmp_path / "src" / "model.onnx"}


def test_a_result_comes_back_equal_from_json_and_parquet_with_no_pickle(tmp_path):
    cache = StageCache(tmp_path / "cache", code="c1")
    frame = pd.DataFrame({"text": ["a", "b"], "label": pd.Categorical(["x", "y"])}, index=[7, 9])
    value = Result(frame, Path("/somewhere/x.onnx"), (2, 3), Inner(0.5, {1: "one"}), ["n"], None)
    cache.put("s", "k1", value, _files(tmp_path))

    got, files = cache.get("s", "k1")
    pd.testing.assert_frame_equal(got.frame, frame)
    assert (got.path, got.shape, got.inner, got.names, got.missing) == (value.path, (2, 3), Inner(0.5, {1: "one"}), ["n"], None)
    assert sorted(files) == ["checkpoint", "model.onnx"]
    assert (files["checkpoint"] / "model.bin").read_text() == "weights"
    stored = [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]
    assert not [p for p in stored if p.read_bytes()[:1] == b"\x80"], "no pickle anywhere in the cache"


def test_span_columns_of_tuples_and_of_lists_come_back_as_they_went_in(tmp_path):
    """Token-classification frames: spans (start, end, type) mix ints and text, which Arrow cannot type; valid
    rows hold tuples, quarantined rows lists (as written to quarantine.csv). A part-of-speech corpus's
    quarantine was once left uncached for it."""
    cache = StageCache(tmp_path / "cache", code="c1")
    valid = pd.DataFrame({"text": ["Garuda terbang"], "label": [((0, 6, "NNP"), (7, 14, "VB"))]})
    quarantine = pd.DataFrame({"line": [3, 9], "label": [[[0, 2, "NN"]], [[0, 1, "vb"], [2, 4, "NN"]]]})
    cache.put("s", "k", {"valid": valid, "quarantine": quarantine}, {})
    got, _ = cache.get("s", "k")
    assert got["valid"]["label"].tolist() == valid["label"].tolist()
    assert got["quarantine"]["label"].tolist() == quarantine["label"].tolist()


def test_a_changed_file_drops_the_entry_names_it_and_a_new_entry_gets_a_clean_copy(tmp_path):
    cache = StageCache(tmp_path / "cache", code="c1")
    cache.put("train", "k1", {"epochs": 3}, _files(tmp_path))
    entry = cache.path("train", "k1")
    target = entry / "files" / "checkpoint" / "model.bin"
    with target.open("r+b") as f:  # a bit flipped on disk, same size
        f.write(b"W")

    assert cache.get("train", "k1") is None
    assert cache.dropped[entry.name] == "files/checkpoint/model.bin does not match its recorded checksum"
    assert not entry.exists()

    cache.put("train", "k1", {"epochs": 3}, _files(tmp_path))  # the recompute stores the file again
    value, files = cache.get("train", "k1")
    assert value == {"epochs": 3} and (files["checkpoint"] / "model.bin").read_text() == "weights"


def test_an_entry_cannot_make_the_pipeline_import_or_call_anything(tmp_path):
    cache = StageCache(tmp_path / "cache", code="c1")
    cache.put("s", "k1", Inner(1.0, {}))
    meta_path = cache.path("s", "k1") / "entry.json"
    meta = json.loads(meta_path.read_text())
    for name in ("os:system", "antigravity:Nothing", "subprocess:Popen"):
        meta["value"]["class"] = name
        meta_path.write_text(json.dumps(meta))
        assert cache.get("s", "k1") is None
        cache.put("s", "k1", Inner(1.0, {}))
    assert "antigravity" not in __import__("sys").modules
    with pytest.raises(CacheFormatError, match="cannot cache a object"):
        cache.put("s", "k2", {"x": object()})
    assert not cache.path("s", "k2").exists() and not list((tmp_path / "cache").glob(".s-*"))


def test_identical_files_are_stored_once_and_the_bound_evicts_the_least_recently_used(tmp_path):
    cache = StageCache(tmp_path / "cache", code="c1")
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(200_000))
    cache.put("export", "a", 1, {"model.onnx": big})
    cache.put("compress", "a", 2, {"model.onnx": big})  # the same bytes under another stage
    assert len(list(cache.blobs.iterdir())) == 1
    assert cache.size_bytes() < 250_000

    for i, stage in enumerate(("one", "two", "three")):
        f = tmp_path / f"{stage}.bin"
        f.write_bytes(os.urandom(300_000))
        cache.put(stage, "k", i, {"f": f})
        past = time.time() - 100 + i
        os.utime(cache.path(stage, "k") / "entry.json", (past, past))
    for stage in ("export", "compress"):
        os.utime(cache.path(stage, "a") / "entry.json", (time.time() - 500,) * 2)
    assert cache.get("one", "k") is not None  # used now: the newest

    legacy = cache.root / "train-0123456789abcdef0123"  # an entry of the old pickle format
    (legacy / "files").mkdir(parents=True)
    (legacy / "value.pkl").write_bytes(b"\x80\x04N.")
    (legacy / "_complete").write_text("x")

    report = cache.prune(800_000)
    assert not legacy.exists(), "old pickle entries are never read again: removed"
    assert set(report.removed_entries) == {"export-a", "compress-a", "two-k"}
    assert cache.get("one", "k") is not None and cache.get("three", "k") is not None
    assert len(list(cache.blobs.iterdir())) == 2, "blobs no entry links are removed with the entries"
    assert cache.size_bytes() <= 800_000 and report.kept_bytes == cache.size_bytes()


def test_put_holds_the_configured_bound_but_keeps_the_entry_it_wrote(tmp_path):
    cache = StageCache(tmp_path / "cache", code="c1", max_bytes=100_000)
    for stage in ("one", "two"):
        f = tmp_path / f"{stage}.bin"
        f.write_bytes(os.urandom(150_000))
        cache.put(stage, "k", stage, {"f": f})
    assert cache.get("one", "k") is None and cache.get("two", "k")[0] == "two"


def _damage_meta(entry: Path, change, digest: bool = True) -> None:
    """Change entry.json; with ``digest``, its digest is recomputed, so that the checks behind it are reached."""
    from forgeline.pipeline.cache import entry_digest

    meta = change(json.loads((entry / "entry.json").read_text()))
    if digest and isinstance(meta, dict) and {"stage", "key", "value", "files", "digest"} <= set(meta) and isinstance(
            meta["files"], dict):
        meta["digest"] = entry_digest(meta["stage"], meta["key"], meta["value"], meta["files"])
    (entry / "entry.json").write_text(json.dumps(meta))


DAMAGED_META = {
    "files key removed": (lambda m: {k: v for k, v in m.items() if k != "files"}, "files: Field required"),
    "document null": (lambda m: None, "the document: Input should be a valid dictionary"),
    "document a list": (lambda m: [m], "Input should be a valid dictionary"),
    "files a list": (lambda m: m | {"files": list(m["files"])}, "files: Input should be a valid dictionary"),
    "value removed": (lambda m: {k: v for k, v in m.items() if k != "value"}, "value: Field required"),
    "path leaving the entry": (lambda m: m | {"files": {"../../outside": "0" * 64}}, "is not inside the entry"),
    "digest not a sha256": (lambda m: m | {"files": {k: "../x" for k in m["files"]}}, "is not a sha256"),
    "unknown key": (lambda m: m | {"extra": 1}, "Extra inputs are not permitted"),
    "value of the wrong shape": (lambda m: m | {"value": {"__type__": "dataclass", "class": 3}}, "cannot be read back"),
    "another entry's metadata": (lambda m: m | {"key": "k2"}, "belongs to another entry"),
    "digest removed": (lambda m: {k: v for k, v in m.items() if k != "digest"}, "digest: Field required"),
}


@pytest.mark.parametrize("case", DAMAGED_META)
def test_entry_metadata_of_the_wrong_shape_is_dropped_with_one_warning_and_recomputed(tmp_path, caplog, case):
    """Found by hand: a valid-JSON entry.json without its files key (or null) failed every later run
    with an internal KeyError / AttributeError until the cache was deleted by hand."""
    change, why = DAMAGED_META[case]
    cache = StageCache(tmp_path / "cache", code="c1")
    entry = cache.put("train", "k1", {"epochs": 3}, _files(tmp_path))
    cache.put("eval", "k2", {"f1": 0.9}, {"model.onnx": tmp_path / "src" / "model.onnx"})
    _damage_meta(entry, change)
    with caplog.at_level("WARNING", logger="forgeline"):
        assert cache.get("train", "k1") is None
    (line,) = [r.getMessage() for r in caplog.records if "dropped" in r.getMessage()]
    assert why in line and "runs again" in line and len(line) < 600, line
    assert why in cache.dropped[entry.name]
    assert not entry.exists(), "the damaged entry is gone"
    assert not (tmp_path / "outside").exists() or case != "path leaving the entry"
    cache.put("train", "k1", {"epochs": 3}, _files(tmp_path))  # the stage ran again and stored anew
    assert cache.get("train", "k1")[0] == {"epochs": 3}
    assert cache.get("eval", "k2")[0] == {"f1": 0.9}, "other entries and their blobs are untouched"
    _damage_meta(cache.path("eval", "k2"), change)  # the walks that read every manifest survive it too
    assert cache.size_bytes() > 0 and cache.prune(0).kept_bytes == 0


def test_an_entry_of_another_format_version_is_a_miss_not_a_warning(tmp_path, caplog):
    cache = StageCache(tmp_path / "cache", code="c1")
    entry = cache.put("train", "k1", {"epochs": 3}, _files(tmp_path))
    _damage_meta(entry, lambda m: m | {"schema": 99})
    with caplog.at_level("WARNING", logger="forgeline"):
        assert cache.get("train", "k1") is None
    assert not [r for r in caplog.records if "dropped" in r.getMessage()]
    cache.put("train", "k1", {"epochs": 4}, _files(tmp_path))  # replaced by the next run's result
    assert cache.get("train", "k1")[0] == {"epochs": 4}


def test_a_value_edited_in_entry_json_is_a_damaged_entry_not_a_wrong_hit(tmp_path, caplog):
    """Found by tests/pipeline/test_fuzz_cache.py: ``"shape": null`` written into a cached value came back
    as the stage's result (the files had checksums, entry.json itself none)."""
    cache = StageCache(tmp_path / "cache", code="c1")
    entry = cache.put("train", "k1", {"epochs": 3, "shape": [2, 2]}, _files(tmp_path))
    _damage_meta(entry, lambda m: m | {"value": m["value"] | {"shape": None}}, digest=False)
    with caplog.at_level("WARNING", logger="forgeline"):
        assert cache.get("train", "k1") is None
    assert "changed after it was written" in cache.dropped[entry.name]


def test_walks_of_the_cache_tolerate_entries_vanishing_under_them(tmp_path):
    """Seen with three runs on one workdir: size_bytes() walked the cache while another run renamed its
    temporary folder, and the run failed with FileNotFoundError."""
    import threading

    cache = StageCache(tmp_path / "cache", code="c1")
    cache.put("train", "k0", {"epochs": 3}, _files(tmp_path))
    stop = threading.Event()
    errors: list[BaseException] = []

    def churn() -> None:
        other = StageCache(tmp_path / "cache", code="c1")
        i = 0
        while not stop.is_set():
            i += 1
            try:
                other.put("s", f"k{i}", {"i": i}, {"model.onnx": tmp_path / "src" / "model.onnx"})
                other.prune(0, keep=set())
            except BaseException as e:  # noqa: BLE001
                import traceback

                errors.append("".join(traceback.format_exception(e)))
                return

    writers = [threading.Thread(target=churn) for _ in range(2)]
    for w in writers:
        w.start()
    try:
        deadline = time.time() + 3
        while time.time() < deadline:
            cache.size_bytes()
            cache.prune(1 << 30)
            cache.entries()
    finally:
        stop.set()
        for w in writers:
            w.join()
    assert not errors, errors[:1]


def test_a_hit_hands_out_links_in_the_runs_folder_that_outlive_another_runs_prune(tmp_path):
    """Four runs at once under a small bound: three failed with FileNotFoundError on a file of an entry
    they had hit, which another run's prune evicted meanwhile (tests/pipeline/test_faults.py)."""
    cache = StageCache(tmp_path / "cache", code="c1")
    cache.put("train", "k1", {"epochs": 3}, _files(tmp_path))
    value, files = cache.get("train", "k1", into=tmp_path / "run" / "train")
    assert value == {"epochs": 3} and files["checkpoint"].parent == tmp_path / "run" / "train"
    StageCache(tmp_path / "cache", code="c1").prune(0)  # another run evicts everything
    assert cache.get("train", "k1") is None
    assert (files["checkpoint"] / "model.bin").read_text() == "weights" and files["model.onnx"].read_text() == "weights as onnx"


def test_a_parquet_handoff_keeps_spans_label_sets_and_plain_columns(tmp_path):
    """What distributed training's processes read back is what the flow wrote (data/frames.py)."""
    from forgeline.data.frames import read_parquet, write_parquet

    frame = pd.DataFrame({"text": ["Garuda terbang", "x"], "label": [((0, 6, "NNP"), (7, 14, "VB")), ((0, 1, "NN"),)],
                          "labels": [("a", "b"), ("c",)], "n": [1, 2]})
    write_parquet(frame, tmp_path / "f.parquet")
    back = read_parquet(tmp_path / "f.parquet")
    assert back["label"].tolist() == frame["label"].tolist() and back["labels"].tolist() == frame["labels"].tolist()
    assert back["n"].tolist() == [1, 2] and back["text"].tolist() == frame["text"].tolist()


EDITS = {
    "a task's loss": ("tasks/single_label.py", "cross_entropy(logits.float(), y", "cross_entropy(logits.float() * 2, y"),
    "the export": ("export/onnx.py", "import", "import os  # noqa\nimport"),
    "a new subpackage": ("newpart/__init__.py", None, "VALUE = 1\n"),
}
DOC_EDITS = {
    "a module docstring": ("tasks/single_label.py", '"""', '"""Reworded. '),
    "a comment": ("training/loop.py", "\nimport", "\n# a new comment\nimport"),
    "a serving module": ("serving/app.py", "import", "import os  # noqa\nimport"),
}


def _edited(tmp_path: Path, where: str, old: str | None, new: str) -> str:
    import shutil

    from forgeline.pipeline.cache import _ROOT, code_version

    root = tmp_path / "forgeline"
    shutil.copytree(_ROOT, root, ignore=shutil.ignore_patterns("__pycache__"))
    before = code_version(root)
    target = root / where
    if old is None:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(new)
    else:
        text = target.read_text()
        assert old in text, (where, old)
        target.write_text(text.replace(old, new, 1))
    return before, code_version(root)


@pytest.mark.parametrize("case", list(EDITS))
def test_an_edit_of_what_the_code_does_anywhere_a_stage_can_reach_is_a_miss(tmp_path, case):
    """The code version hashed a hand-kept list of subpackages that left out ``tasks/``: a changed loss or
    metric got the old code's cached model."""
    before, after = _edited(tmp_path, *EDITS[case])
    assert before != after, case


@pytest.mark.parametrize("case", list(DOC_EDITS))
def test_an_edit_of_what_the_code_says_or_of_code_no_stage_runs_is_a_hit(tmp_path, case):
    """A docstring-only change used to invalidate every entry; serving, scoring, the bench and the CLI run
    after registration."""
    before, after = _edited(tmp_path, *DOC_EDITS[case])
    assert before == after, case
