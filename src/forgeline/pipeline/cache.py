"""Stage cache keyed by data fingerprint + the config each stage depends on + code version.

Each stage's key chains the key of the stage before it, so a change invalidates that stage and
everything downstream and nothing upstream (``forgeline.pipeline.runner``).

Layout under ``<workdir>/cache/``::

    blobs/<sha256>          each distinct file once (the compress stage's fp32 variant is the export
                            stage's model: one copy)
    <stage>-<key>/entry.json  schema version, the result as tagged JSON, and name → sha256 of every file
    <stage>-<key>/files/...   hard links to the blobs, as the stage named them
    <stage>-<key>/frames/...  DataFrames of the result, as parquet (also checksummed)

Nothing in an entry is a pickle: a result is rebuilt from JSON into dataclasses of modules already
loaded (or of ``forgeline``), so writing to the cache cannot make the pipeline run code. Every file is
hashed when stored and checked on a hit; an entry whose file changed is dropped, named in the log, and
the stage recomputed, so a damaged entry never fails later runs nor reaches the registry.
Entries are written to a temporary folder and renamed into place, so an interrupted run never leaves
a half entry. ``StageCache.prune`` bounds the size, least recently used first (``tracking.cache_max_gb``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import hashlib
import importlib
import json
import logging
import os
import re
import shutil
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Set as AbstractSet
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from forgeline.inference.contract import file_sha256

log = logging.getLogger("forgeline")

SCHEMA = 3
"""Entry format version; an entry written by another version is a miss and is replaced by the next put
(1 was pickles; 2 had no digest of entry.json itself, so an edited value came back as a hit)."""
NOT_IN_STAGES = ("serving", "scoring", "bench", "cli.py", "__main__.py")
"""The parts of the package that run after a model is registered, never inside a stage: everything else,
a new subpackage included, is in the code version. (A hand-kept list of what *is* in it left out
``tasks/``: a changed loss or metric got the old code's cached model.)"""
_ROOT = Path(__file__).resolve().parent.parent


def code_version(root: Path = _ROOT) -> str:
    """Hash of the package's code that can change a stage's output: every module but ``NOT_IN_STAGES``,
    each as its syntax tree without docstrings (comments are not in it), so that an edit of what the code
    does is a miss and an edit of what it says is not."""
    paths = [p for p in sorted(root.rglob("*.py")) if p.relative_to(root).parts[0] not in NOT_IN_STAGES
             and "__pycache__" not in p.parts]
    seen = tuple((str(p), p.stat().st_mtime_ns, p.stat().st_size) for p in paths)
    if seen not in _VERSIONS:  # parsing the package takes ~0.6 s; a process opens the cache more than once
        h = hashlib.sha256()
        for path in paths:
            h.update(path.relative_to(root).as_posix().encode() + b"\0" + _code_of(path) + b"\n")
        h.update(json.dumps(_library_versions()).encode())
        _VERSIONS[seen] = h.hexdigest()[:16]
    return _VERSIONS[seen]


_VERSIONS: dict[tuple, str] = {}


LIBRARIES = ("torch", "transformers", "tokenizers", "onnx", "onnxscript", "onnxruntime", "onnxruntime-gpu",
             "numpy", "scikit-learn", "pandas", "pyarrow")
"""The libraries whose version can change what a stage computes (a new torch, a new exporter)."""


def _library_versions() -> dict[str, str | None]:
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, str | None] = {}
    for name in LIBRARIES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def _code_of(path: Path) -> bytes:
    """A module's syntax tree without docstrings, as text; its bytes when it does not parse."""
    import ast

    source = path.read_bytes()
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return source
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list):  # a bare string statement: a docstring (of a module, class, function, attribute)
            kept = [b for b in body if not (isinstance(b, ast.Expr) and isinstance(b.value, ast.Constant)
                                            and isinstance(b.value.value, str))]
            setattr(node, "body", kept or [ast.Pass()])
    return ast.dump(tree, annotate_fields=False, include_attributes=False).encode()


def stable_hash(*parts: Any) -> str:
    blob = json.dumps(parts, sort_keys=True, default=str, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:20]


def _sha256_or_none(path: Path) -> str | None:
    try:
        return file_sha256(path)
    except FileNotFoundError:  # removed by another run meanwhile
        return None


def _unique() -> str:
    """A temporary name no other process or thread of this one picks."""
    return f"{os.getpid()}.{threading.get_ident()}.{os.urandom(4).hex()}"


class EntryMeta(BaseModel):
    """``entry.json``, checked on every read: a document of another shape (a key removed, ``null``, a
    path leaving the entry, a digest that is no sha256) is a damaged entry, dropped and recomputed like
    a file that fails its checksum, never an internal error."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    schema_: Literal[3] = Field(alias="schema")  # SCHEMA; other versions are a miss before this check
    stage: str
    key: str
    created: float
    value: Any
    files: dict[str, str]
    digest: str = Field(pattern=r"^[0-9a-f]{64}$")
    """sha256 of stage, key, value and files (:func:`entry_digest`): the files are checked against their
    digests, and this checks the rest, so any edit of entry.json is a damaged entry, not a wrong hit
    (tests/pipeline/test_fuzz_cache.py found a value edited by hand coming back as the stage's result)."""

    @field_validator("files")
    @classmethod
    def _inside_the_entry(cls, files: dict[str, str]) -> dict[str, str]:
        for rel, digest in files.items():
            parts = Path(rel).parts
            if not parts or Path(rel).is_absolute() or ".." in parts or parts[0] not in ("files", "frames"):
                raise ValueError(f"file {rel[:200]!r} is not inside the entry's files/ or frames/")
            if not _SHA256.fullmatch(digest):
                raise ValueError(f"the digest of {rel[:200]!r} is not a sha256")
        return files


_SHA256 = re.compile(r"[0-9a-f]{64}")


def entry_digest(stage: str, key: str, value: Any, files: dict[str, str]) -> str:
    blob = json.dumps([stage, key, value, files], sort_keys=True, separators=(",", ":"), allow_nan=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def read_entry(entry: Path) -> EntryMeta | str | None:
    """The entry's checked metadata; a string saying what is wrong with a damaged one; None when the
    entry is missing or of another format version (a miss: no run of this version reads it)."""
    try:
        raw = json.loads((entry / "entry.json").read_bytes())
    except FileNotFoundError:
        return None
    except OSError as e:
        return f"entry.json cannot be read ({e.strerror or e})"
    except ValueError as e:
        return f"entry.json is not JSON ({str(e)[:200]})"
    if isinstance(raw, dict) and isinstance(raw.get("schema"), int) and raw["schema"] != SCHEMA:
        return None
    try:
        meta = EntryMeta.model_validate(raw)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(x) for x in first["loc"]) or "the document"
        return f"entry.json does not match the cache's schema ({where}: {first['msg'][:200]})"
    if meta.digest != entry_digest(meta.stage, meta.key, meta.value, meta.files):
        return "entry.json was changed after it was written (it does not match its digest)"
    if entry.name != f"{meta.stage}-{meta.key}":
        return f"entry.json belongs to another entry ({meta.stage}-{meta.key[:80]})"
    return meta


def _link_tree(src: Path, dst: Path) -> Path:
    """``dst`` as hard links to the files of ``src`` (a file or a folder), copies where links fail."""
    if dst.exists():
        shutil.rmtree(dst) if dst.is_dir() else dst.unlink()
    sources = sorted(p for p in src.rglob("*") if p.is_file()) if src.is_dir() else [src]
    for path in sources:
        target = dst / path.relative_to(src) if src.is_dir() else dst
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(path, target)
        except OSError as e:
            if e.errno == errno.ENOENT:
                raise FileNotFoundError(e.errno, e.strerror, str(path)) from None
            shutil.copyfile(path, target)  # another file system, or no hard links there
    return dst


class CacheFormatError(TypeError):
    """A stage result holds a type the cache cannot write as JSON (a bug in the stage's ``store``)."""


class _Codec:
    """Results as tagged JSON: dataclasses, paths, tuples, DataFrames (parquet files beside it)."""

    def __init__(self, entry: Path) -> None:
        self.entry = entry
        self.frames = 0

    def encode(self, obj: Any) -> Any:
        import numpy as np
        import pandas as pd

        from forgeline.data.frames import encode_sequences

        if obj is None or isinstance(obj, (bool, int, float, str)):
            return obj
        if isinstance(obj, np.generic):
            return obj.item()
        if isinstance(obj, Path):
            return {"__type__": "path", "value": str(obj)}
        if isinstance(obj, (list, tuple)):
            items = [self.encode(v) for v in obj]
            return items if isinstance(obj, list) else {"__type__": "tuple", "items": items}
        if isinstance(obj, dict):
            if all(isinstance(k, str) for k in obj) and "__type__" not in obj:
                return {k: self.encode(v) for k, v in obj.items()}
            return {"__type__": "dict", "items": [[self.encode(k), self.encode(v)] for k, v in obj.items()]}
        if isinstance(obj, pd.DataFrame):
            name = f"frames/{self.frames}.parquet"
            self.frames += 1
            (self.entry / "frames").mkdir(exist_ok=True)
            frame, kinds = encode_sequences(obj)  # spans and label sets as JSON text (data/frames.py)
            frame.to_parquet(self.entry / name)
            return {"__type__": "frame", "file": name, "tuple_columns": kinds["tuple"], "list_columns": kinds["list"]}
        if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
            cls = type(obj)
            return {"__type__": "dataclass", "class": f"{cls.__module__}:{cls.__qualname__}",
                    "fields": {f.name: self.encode(getattr(obj, f.name)) for f in dataclasses.fields(obj) if f.init}}
        raise CacheFormatError(f"cannot cache a {type(obj).__name__}; the stage's `store` must leave it out")

    def decode(self, obj: Any) -> Any:
        import pandas as pd

        from forgeline.data.frames import decode_sequences

        if isinstance(obj, list):
            return [self.decode(v) for v in obj]
        if not isinstance(obj, dict):
            return obj
        kind = obj.get("__type__")
        if kind is None:
            return {k: self.decode(v) for k, v in obj.items()}
        if kind == "path":
            return Path(obj["value"])
        if kind == "tuple":
            return tuple(self.decode(v) for v in obj["items"])
        if kind == "dict":
            return {self.decode(k): self.decode(v) for k, v in obj["items"]}
        if kind == "frame":
            return decode_sequences(pd.read_parquet(self.entry / obj["file"]),
                                    {"tuple": obj.get("tuple_columns", []), "list": obj.get("list_columns", [])})
        if kind == "dataclass":
            cls = _dataclass_named(obj["class"])
            return cls(**{k: self.decode(v) for k, v in obj["fields"].items()})
        raise ValueError(f"unknown cached type {kind!r}")


def _dataclass_named(name: str) -> type:
    """Only dataclasses, and only from forgeline or modules already imported: an entry cannot make
    the pipeline import anything else."""
    module_name, _, qualname = name.partition(":")
    module = sys.modules.get(module_name)
    if module is None and (module_name == "forgeline" or module_name.startswith("forgeline.")):
        module = importlib.import_module(module_name)
    if module is None:
        raise ValueError(f"cached class {name} is not loaded")
    obj: Any = module
    for part in qualname.split("."):
        obj = getattr(obj, part)
    if not (isinstance(obj, type) and dataclasses.is_dataclass(obj)):
        raise ValueError(f"cached class {name} is not a dataclass")
    return obj


@dataclass
class PruneReport:
    removed_entries: list[str]
    removed_bytes: int
    kept_bytes: int


class StageCache:
    def __init__(self, root: Path, enabled: bool = True, code: str | None = None, max_bytes: int | None = None) -> None:
        self.root = root
        self.enabled = enabled
        self.code = code or code_version()
        self.max_bytes = max_bytes
        self.dropped: dict[str, str] = {}
        """entry name → why a hit was refused (a file that no longer matches its checksum)."""

    @property
    def blobs(self) -> Path:
        return self.root / "blobs"

    def key(self, stage: str, *parts: Any) -> str:
        return stable_hash(stage, self.code, *parts)

    def path(self, stage: str, key: str) -> Path:
        return self.root / f"{stage}-{key}"

    def get(self, stage: str, key: str, into: Path | None = None) -> tuple[Any, dict[str, Path]] | None:
        """(value, {name: stored file or folder}) when a complete, intact entry exists, else None.

        ``into``: the files are hard-linked there (the run's scratch folder) and those links returned, so
        another run's prune can evict the entry while this run still reads them: with four runs at once
        under a small bound, three failed with FileNotFoundError on a file of an entry they had hit."""
        if not self.enabled:
            return None
        entry = self.path(stage, key)
        meta = read_entry(entry)
        if meta is None:
            return None
        if isinstance(meta, str):
            self._drop(entry, meta, {})
            return None
        bad = self._verify(entry, meta.files)
        if bad:
            self._drop(entry, bad, meta.files)
            return None
        try:
            value = _Codec(entry).decode(meta.value)
        except (ValueError, TypeError, AttributeError, ImportError, KeyError, OSError) as e:
            self._drop(entry, f"its value cannot be read back ({type(e).__name__}: {str(e)[:200]})", meta.files)
            return None
        files = entry / "files"
        try:
            os.utime(entry / "entry.json")  # last use, for the least-recently-used bound
            stored = {p.name: p for p in files.iterdir()} if files.is_dir() else {}
            if into is not None:
                stored = {name: _link_tree(path, into / name) for name, path in stored.items()}
        except FileNotFoundError:  # another run evicted the entry since it was checked: a miss
            return None
        return value, stored

    def remove(self, stage: str, key: str) -> bool:
        """Delete one entry and the blobs only it used (a study's trials that lost); whether it existed."""
        entry = self.path(stage, key)
        if not entry.is_dir():
            return False
        self._remove(entry, self._manifest(entry))
        return True

    def _drop(self, entry: Path, why: str, manifest: dict[str, str]) -> None:
        self.dropped[entry.name] = why
        log.warning("cache entry %s dropped: %s; the stage runs again", entry.name, why)
        self._remove(entry, manifest)
        return None

    def _verify(self, entry: Path, manifest: dict[str, str]) -> str | None:
        for rel, digest in manifest.items():
            path = entry / rel
            try:
                actual = file_sha256(path)
            except OSError as e:
                return f"{rel} cannot be read ({e.strerror or e})"
            if actual != digest:
                return f"{rel} does not match its recorded checksum"
        return None

    def _remove(self, entry: Path, manifest: dict[str, str]) -> None:
        """The entry, and blobs of its files no other entry lists (a corrupted blob is never reused)."""
        shutil.rmtree(entry, ignore_errors=True)
        listed = self._listed()
        for digest in set(manifest.values()):
            blob = self.blobs / digest
            if digest not in listed or _sha256_or_none(blob) not in (digest, None):
                blob.unlink(missing_ok=True)

    def _listed(self) -> set[str]:
        """Digests some entry's manifest lists. A blob's link count cannot say this: the registered
        model's files may be links to the same blobs (``share``)."""
        out: set[str] = set()
        for entry in self.entries():
            out.update(self._manifest(entry).values())
        return out

    @staticmethod
    def _manifest(entry: Path) -> dict[str, str]:
        """An entry's files, {} for a damaged or vanished one."""
        meta = read_entry(entry)
        return meta.files if isinstance(meta, EntryMeta) else {}

    def put(self, stage: str, key: str, value: Any, files: dict[str, Path] | None = None) -> Path:
        """Store ``files`` (name → file or folder) and ``value``, then hold the size bound."""
        entry = self.path(stage, key)
        if not self.enabled:
            return entry
        self.blobs.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{stage}-", dir=self.root))
        try:
            manifest: dict[str, str] = {}
            for name, src in (files or {}).items():
                sources = sorted(p for p in src.rglob("*") if p.is_file()) if src.is_dir() else [src]
                for path in sources:
                    rel = Path("files") / name / path.relative_to(src) if src.is_dir() else Path("files") / name
                    (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
                    manifest[rel.as_posix()] = self._link(path, tmp / rel)
            encoded = _Codec(tmp).encode(value)
            for frame in sorted((tmp / "frames").glob("*.parquet")) if (tmp / "frames").is_dir() else []:
                manifest[frame.relative_to(tmp).as_posix()] = file_sha256(frame)
            (tmp / "entry.json").write_text(json.dumps(
                {"schema": SCHEMA, "stage": stage, "key": key, "created": time.time(), "value": encoded, "files": manifest,
                 "digest": entry_digest(stage, key, encoded, manifest)}))
            if isinstance(read_entry(entry), EntryMeta):  # a run beside this one stored the same key meanwhile
                shutil.rmtree(tmp)
                return entry
            for attempt in range(3):
                if entry.exists():  # a broken leftover: moved aside first, so no reader sees it half-deleted
                    aside = self.root / f".{entry.name}.old.{_unique()}"
                    with contextlib.suppress(FileNotFoundError):
                        entry.rename(aside)
                    shutil.rmtree(aside, ignore_errors=True)
                try:
                    tmp.rename(entry)
                    break
                except OSError as e:
                    if (entry / "entry.json").exists():
                        shutil.rmtree(tmp)  # lost the race to an identical entry
                        break
                    # another run's entry of this key appeared and is being removed meanwhile
                    if e.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOENT) or attempt == 2:
                        raise
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        if self.max_bytes is not None:
            self.prune(self.max_bytes, keep={entry.name})
        return entry

    def _link(self, src: Path, dst: Path) -> str:
        """``dst`` as a hard link to the blob of ``src``'s content (a copy where links do not work)."""
        digest = file_sha256(src)
        blob = self.blobs / digest
        if _sha256_or_none(blob) not in (digest, None):
            blob.unlink(missing_ok=True)  # a corrupted blob is replaced, never linked again
        for _ in range(3):  # another run's prune may remove the blob as an orphan before the link
            if not blob.exists():
                part = self.blobs / f".{digest}.{_unique()}"
                shutil.copyfile(src, part)
                os.replace(part, blob)
            try:
                os.link(blob, dst)
                return digest
            except FileNotFoundError:
                continue
            except OSError:  # no hard links on this filesystem
                break
        shutil.copyfile(src, dst)
        return digest

    def entries(self) -> list[Path]:
        """Finished entries; not another run's temporary folder (``.<stage>-…``), which holds its
        entry.json just before the rename (``prune`` in one run deleted another's half-written entry)."""
        if not self.root.is_dir():
            return []
        return [p for p in self.root.iterdir()
                if not p.name.startswith(".") and p.is_dir() and (p / "entry.json").exists()]

    def size_bytes(self) -> int:
        """Bytes under the cache folder, each blob once, plus entries' own files (JSON, parquet); a blob
        the registry shares counts here too."""
        if not self.root.is_dir():
            return 0
        seen: set[tuple[int, int]] = set()
        total = 0
        for dirpath, _, names in os.walk(self.root):  # os.walk skips folders renamed away meanwhile
            for name in names:
                try:  # another run may rename its temporary entry or remove an entry meanwhile
                    st = os.stat(os.path.join(dirpath, name), follow_symlinks=False)
                except FileNotFoundError:
                    continue
                if (st.st_dev, st.st_ino) not in seen:
                    seen.add((st.st_dev, st.st_ino))
                    total += st.st_size
        return total

    @staticmethod
    def _last_use(entry: Path) -> float:
        try:
            return (entry / "entry.json").stat().st_mtime
        except FileNotFoundError:  # removed by another run meanwhile
            return 0.0

    def prune(self, max_bytes: int, keep: AbstractSet[str] = frozenset()) -> PruneReport:
        """Remove least recently used entries until the cache holds at most ``max_bytes``; blobs no
        entry links any more go with them; half-written temporary folders of dead runs too."""
        self._sweep_temporaries()
        before = self.size_bytes()
        by_use = sorted(self.entries(), key=self._last_use)
        removed: list[str] = []
        for entry in by_use:
            if self.size_bytes() <= max_bytes:
                break
            if entry.name in keep:
                continue
            self._remove(entry, self._manifest(entry))
            removed.append(entry.name)
        self._remove_orphan_blobs()
        after = self.size_bytes()
        if removed:
            log.info("cache: removed %d least recently used entries (%.1f MB) to stay under %.2f GB",
                     len(removed), (before - after) / 1e6, max_bytes / 1e9)
        return PruneReport(removed, before - after, after)

    def _remove_orphan_blobs(self) -> None:
        if self.blobs.is_dir():
            listed = self._listed()
            for blob in self.blobs.iterdir():
                if blob.is_file() and not blob.name.startswith(".") and blob.name not in listed:
                    blob.unlink(missing_ok=True)

    def share(self, folder: Path, min_bytes: int = 1 << 16) -> int:
        """Turn files under ``folder`` (a registered model's artifacts on this disk) that are byte for
        byte a cached blob into hard links to it; returns the bytes no longer stored twice. A default
        run's bundle is mostly the export and compress stages' cached files (~300 MB stored twice
        before). Files are swapped by rename, so a reader sees the old or the new, never half."""
        if not (self.enabled and self.blobs.is_dir() and folder.is_dir()):
            return 0
        by_size: dict[int, list[Path]] = {}
        for blob in self.blobs.iterdir():
            if blob.is_file() and not blob.name.startswith("."):
                by_size.setdefault(blob.stat().st_size, []).append(blob)
        saved = 0
        for path in folder.rglob("*"):
            if not path.is_file() or path.is_symlink():
                continue
            st = path.stat()
            if st.st_size < min_bytes or st.st_size not in by_size or st.st_nlink > 1:
                continue
            blob = self.blobs / file_sha256(path)
            if blob not in by_size[st.st_size]:
                continue
            tmp = path.with_name(f".{path.name}.{_unique()}.link")
            try:
                os.link(blob, tmp)
                os.replace(tmp, path)
                saved += st.st_size
            except OSError:
                tmp.unlink(missing_ok=True)
        return saved

    def _sweep_temporaries(self, older_than_s: float = 6 * 3600) -> None:
        """Temporary folders and blob parts a killed run left (older than a run can take), and entries
        of the pickle format (schema 1: ``value.pkl``), which no run reads any more."""
        for legacy in self.root.glob("*/value.pkl") if self.root.is_dir() else []:
            shutil.rmtree(legacy.parent, ignore_errors=True)
        now = time.time()
        for d in (self.root, self.blobs):
            if not d.is_dir():
                continue
            for p in d.iterdir():
                if not p.name.startswith("."):
                    continue
                try:
                    stale = now - p.stat().st_mtime > older_than_s
                except FileNotFoundError:  # another run renamed its temporary into place meanwhile
                    continue
                if stale:
                    shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
