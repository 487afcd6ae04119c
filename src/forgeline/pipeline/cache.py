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
the stage recomputed (a corrupted cached checkpoint used to fail every later run with
``SafetensorError: header too large``, and a corrupted cached ``model.onnx`` was registered).
Entries are written to a temporary folder and renamed into place, so an interrupted run never leaves
a half entry. ``StageCache.prune`` bounds the size, least recently used first (``tracking.cache_max_gb``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from forgeline.inference.contract import file_sha256

log = logging.getLogger("forgeline")

SCHEMA = 2
"""Entry format version; an entry written by another version is a miss (1 was pickles)."""
PACKAGE_DIRS = ("config", "data", "training", "export", "inference", "registry", "pipeline")
"""The forgeline subpackages whose source can change a stage's output (not serving, bench or the CLI)."""
_ROOT = Path(__file__).resolve().parent.parent


def code_version(root: Path = _ROOT) -> str:
    """Hash of the pipeline's own source (what can change a stage's output)."""
    h = hashlib.sha256()
    for d in PACKAGE_DIRS:
        for path in sorted((root / d).rglob("*.py")):
            h.update(str(path.relative_to(root)).encode())
            h.update(path.read_bytes())
    return h.hexdigest()[:16]


def stable_hash(*parts: Any) -> str:
    blob = json.dumps(parts, sort_keys=True, default=str, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:20]


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
            obj.to_parquet(self.entry / name)
            return {"__type__": "frame", "file": name}
        if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
            cls = type(obj)
            return {"__type__": "dataclass", "class": f"{cls.__module__}:{cls.__qualname__}",
                    "fields": {f.name: self.encode(getattr(obj, f.name)) for f in dataclasses.fields(obj) if f.init}}
        raise CacheFormatError(f"cannot cache a {type(obj).__name__}; the stage's `store` must leave it out")

    def decode(self, obj: Any) -> Any:
        import pandas as pd

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
            return pd.read_parquet(self.entry / obj["file"])
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

    def get(self, stage: str, key: str) -> tuple[Any, dict[str, Path]] | None:
        """(value, {name: stored file or folder}) when a complete, intact entry exists, else None."""
        if not self.enabled:
            return None
        entry = self.path(stage, key)
        try:
            meta = json.loads((entry / "entry.json").read_text())
        except (OSError, ValueError):
            return None
        if meta.get("schema") != SCHEMA:
            return None
        bad = self._verify(entry, meta["files"])
        if bad:
            self.dropped[entry.name] = bad
            log.warning("cache entry %s dropped: %s; the stage runs again", entry.name, bad)
            self._remove(entry, meta["files"])
            return None
        try:
            value = _Codec(entry).decode(meta["value"])
        except (ValueError, TypeError, AttributeError, ImportError, KeyError, OSError) as e:
            log.warning("cache entry %s dropped: %s", entry.name, e)
            self._remove(entry, meta["files"])
            return None
        os.utime(entry / "entry.json")  # last use, for the least-recently-used bound
        files = entry / "files"
        return value, ({p.name: p for p in files.iterdir()} if files.is_dir() else {})

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
            if blob.exists() and (digest not in listed or file_sha256(blob) != digest):
                blob.unlink(missing_ok=True)

    def _listed(self) -> set[str]:
        """Digests some entry's manifest lists. A blob's link count cannot say this: the registered
        model's files may be links to the same blobs (``share``)."""
        out: set[str] = set()
        for entry in self.entries():
            try:
                out.update(json.loads((entry / "entry.json").read_text()).get("files", {}).values())
            except (OSError, ValueError):
                pass
        return out

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
                {"schema": SCHEMA, "stage": stage, "key": key, "created": time.time(), "value": encoded, "files": manifest}))
            if (entry / "entry.json").exists():  # a run beside this one stored the same key meanwhile
                shutil.rmtree(tmp)
                return entry
            if entry.exists():  # a broken leftover: moved aside first, so no reader sees it half-deleted
                aside = self.root / f".{entry.name}.old.{os.getpid()}"
                entry.rename(aside)
                shutil.rmtree(aside, ignore_errors=True)
            try:
                tmp.rename(entry)
            except OSError:
                if not (entry / "entry.json").exists():
                    raise
                shutil.rmtree(tmp)  # lost the race to an identical entry
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
        if blob.exists() and file_sha256(blob) != digest:
            blob.unlink()  # a corrupted blob is replaced, never linked again
        if not blob.exists():
            part = self.blobs / f".{digest}.{os.getpid()}"
            shutil.copyfile(src, part)
            os.replace(part, blob)
        try:
            os.link(blob, dst)
        except OSError:
            shutil.copyfile(blob, dst)
        return digest

    def entries(self) -> list[Path]:
        return [p for p in self.root.iterdir() if p.is_dir() and (p / "entry.json").exists()] if self.root.is_dir() else []

    def size_bytes(self) -> int:
        """Bytes under the cache folder, each blob once, plus entries' own files (JSON, parquet); a blob
        the registry shares counts here too."""
        if not self.root.is_dir():
            return 0
        seen: set[tuple[int, int]] = set()
        total = 0
        for path in self.root.rglob("*"):
            if path.is_file():
                st = path.stat()
                if (st.st_dev, st.st_ino) not in seen:
                    seen.add((st.st_dev, st.st_ino))
                    total += st.st_size
        return total

    def prune(self, max_bytes: int, keep: set[str] = frozenset()) -> PruneReport:
        """Remove least recently used entries until the cache holds at most ``max_bytes``; blobs no
        entry links any more go with them; half-written temporary folders of dead runs too."""
        self._sweep_temporaries()
        before = self.size_bytes()
        by_use = sorted(self.entries(), key=lambda p: (p / "entry.json").stat().st_mtime)
        removed: list[str] = []
        for entry in by_use:
            if self.size_bytes() <= max_bytes:
                break
            if entry.name in keep:
                continue
            try:
                manifest = json.loads((entry / "entry.json").read_text()).get("files", {})
            except (OSError, ValueError):
                manifest = {}
            self._remove(entry, manifest)
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
            tmp = path.with_name(f".{path.name}.{os.getpid()}.link")
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
                if p.name.startswith(".") and now - p.stat().st_mtime > older_than_s:
                    shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
