"""Property test of the stage cache's reader: an entry whose ``entry.json`` or stored files were damaged
in any way (a value swapped for random JSON, a key dropped, random bytes, a frame or file flipped or cut)
is a hit with the exact value stored, or a miss that the stage recomputes; never an exception, and the
cache keeps working afterwards (the next put and get, other entries, the walks). Examples: the
``forgeline`` Hypothesis profile (tests/conftest.py)."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st

from forgeline.pipeline.cache import StageCache
from tests.pipeline.test_cache import Inner, Result, _files

pytestmark = [pytest.mark.fuzz]

JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
                    max_leaves=10)


def _value(root: Path) -> Result:
    return Result(frame=pd.DataFrame({"text": ["a", "b"], "n": [1, 2]}), path=root / "x", shape=(2, 2),
                  inner=Inner(threshold=0.5, counts={1: "one"}), names=["n"])


def _paths(doc, prefix=()):
    """Every (path, value) inside a JSON document, so a mutation can reach any depth."""
    yield prefix, doc
    if isinstance(doc, dict):
        for k, v in doc.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            yield from _paths(v, prefix + (i,))


@st.composite
def damage(draw):
    """A list of edits: ('meta', path index, new JSON | DELETE), ('meta-bytes', bytes), ('file', index, edit)."""
    edits = []
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["meta", "meta", "meta-bytes", "file"]))
        if kind == "meta":
            edits.append(("meta", draw(st.integers(0, 200)), draw(st.none().map(lambda _: "DELETE") | JSON)))
        elif kind == "meta-bytes":
            edits.append(("meta-bytes", draw(st.binary(max_size=200))))
        else:
            edits.append(("file", draw(st.integers(0, 50)), draw(st.sampled_from(["flip", "cut", "empty", "remove"]))))
    return edits


def _apply(entry: Path, edits) -> None:
    for edit in edits:
        meta_path = entry / "entry.json"
        if edit[0] == "meta-bytes":
            meta_path.write_bytes(edit[1])
        elif edit[0] == "meta":
            try:
                doc = json.loads(meta_path.read_bytes())
            except ValueError:
                continue
            paths = list(_paths(doc))
            where, new = paths[edit[1] % len(paths)][0], edit[2]
            if not where:
                doc = None if new == "DELETE" else new
            else:
                parent = doc
                for part in where[:-1]:
                    parent = parent[part]
                if new == "DELETE":
                    del parent[where[-1]]
                else:
                    parent[where[-1]] = new
            meta_path.write_text(json.dumps(doc))
        else:
            files = sorted(p for p in entry.rglob("*") if p.is_file() and p.name != "entry.json")
            if not files:
                continue
            target = files[edit[1] % len(files)]
            data = bytearray(target.read_bytes())
            target.unlink()  # a stored file is a hard link to a blob: write a new file, as damage by hand would
            if edit[2] == "flip" and data:
                data[len(data) // 2] ^= 0x5A
            elif edit[2] == "cut":
                data = data[: len(data) // 2]
            elif edit[2] == "empty":
                data = bytearray()
            if edit[2] != "remove":
                target.write_bytes(bytes(data))


@given(edits=damage())
def test_a_damaged_entry_is_the_exact_value_or_a_miss_and_the_cache_keeps_working(edits):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        cache = StageCache(root / "cache", code="c1")
        value = _value(root)
        entry = cache.put("train", "k1", value, _files(root))
        cache.put("eval", "k2", {"f1": 0.9}, {"model.onnx": root / "src" / "model.onnx"})
        _apply(entry, edits)

        got = cache.get("train", "k1")  # must not raise
        if got is not None:
            back, files = got
            assert back.shape == value.shape and back.inner == value.inner and back.names == value.names
            pd.testing.assert_frame_equal(back.frame, value.frame)
            assert (files["checkpoint"] / "model.bin").read_text() == "weights"
        else:
            assert not entry.exists() or json.loads((entry / "entry.json").read_bytes()).get("schema") != 3
        cache.size_bytes()
        cache.prune(1 << 30)
        cache.put("train", "k1", value, _files(root))  # the stage ran again
        assert cache.get("train", "k1")[0].inner == value.inner
        assert cache.get("eval", "k2")[0] == {"f1": 0.9}
