"""Stage cache keyed by data fingerprint + the config each stage depends on + code version.

Each stage's key chains the key of the stage before it, so a change invalidates that stage and
everything downstream and nothing upstream (``forgeline.pipeline.runner``). Entries live in
``<workdir>/cache/<stage>-<key>/``: the stage's files under ``files/`` plus a pickled description of
its result, written to a temporary folder and renamed into place, so an interrupted run never leaves
a half entry behind.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import shutil
import tempfile
from pathlib import Path
from typing import Any

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


class StageCache:
    def __init__(self, root: Path, enabled: bool = True, code: str | None = None) -> None:
        self.root = root
        self.enabled = enabled
        self.code = code or code_version()

    def key(self, stage: str, *parts: Any) -> str:
        return stable_hash(stage, self.code, *parts)

    def path(self, stage: str, key: str) -> Path:
        return self.root / f"{stage}-{key}"

    def get(self, stage: str, key: str) -> tuple[Any, dict[str, Path]] | None:
        """(value, {name: stored file or folder}) when a complete entry exists, else None."""
        if not self.enabled:
            return None
        entry = self.path(stage, key)
        if not (entry / "_complete").exists():
            return None
        try:
            with (entry / "value.pkl").open("rb") as f:
                value = pickle.load(f)
        except (OSError, pickle.UnpicklingError, EOFError, AttributeError, ImportError):
            return None  # unreadable or from an incompatible version: recompute
        files = entry / "files"
        return value, ({p.name: p for p in files.iterdir()} if files.is_dir() else {})

    def put(self, stage: str, key: str, value: Any, files: dict[str, Path] | None = None) -> Path:
        """Store ``files`` (name → file or folder) and ``value``."""
        entry = self.path(stage, key)
        if not self.enabled:
            return entry
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{stage}-", dir=self.root))
        try:
            (tmp / "files").mkdir()
            for name, src in (files or {}).items():
                if src.is_dir():
                    shutil.copytree(src, tmp / "files" / name)
                else:
                    shutil.copyfile(src, tmp / "files" / name)
            with (tmp / "value.pkl").open("wb") as f:
                pickle.dump(value, f)
            (tmp / "_complete").write_text(key)
            if entry.exists():
                shutil.rmtree(entry)
            tmp.rename(entry)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return entry
