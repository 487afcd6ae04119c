"""Typed errors shared by every stage. Each message says what went wrong and what to do."""

from __future__ import annotations

import os


SHOWN_CHARS = 200
"""How much of a user's value an error or warning echoes: a YAML alias bomb's expanded value printed
312 MB on stderr."""


def shown(value: object, limit: int = SHOWN_CHARS) -> str:
    """``repr(value)``, cut to ``limit`` characters with the full length said."""
    try:
        text = repr(value)
    except Exception:  # noqa: BLE001 - a value whose repr fails is still named
        text = f"<{type(value).__name__}>"
    if len(text) <= limit:
        return text
    return f"{text[:limit]}… ({len(text):,} characters)"


def path_kind(path: str | os.PathLike[str]) -> str | None:
    """What a path that is no regular file is, said the way a user can act on (None for a file)."""
    import stat

    try:
        st = os.stat(path)
    except FileNotFoundError:
        return "does not exist"
    except PermissionError:
        return "cannot be reached (permission denied on a folder above it)"
    except OSError as e:
        return f"cannot be read ({e.strerror or e})"
    mode = st.st_mode
    if stat.S_ISREG(mode):
        return None if os.access(path, os.R_OK) else "is a file this user may not read (permission denied)"
    for test, what in ((stat.S_ISDIR, "is a directory"), (stat.S_ISCHR, "is a character device"),
                       (stat.S_ISBLK, "is a block device"), (stat.S_ISFIFO, "is a named pipe (FIFO)"),
                       (stat.S_ISSOCK, "is a socket")):
        if test(mode):
            return what
    return "is not a regular file"


class ForgelineError(Exception):
    """Base class: anything the user can fix by changing input, config or environment."""


class ConfigError(ForgelineError):
    """A config file or override is invalid (unknown key, bad value, unreadable file)."""


class DataLoadError(ForgelineError):
    """The dataset file cannot be read or lacks the configured columns."""


class DataValidationError(ForgelineError):
    """Too many rows failed validation, or a class has too few valid rows.

    ``report`` holds the full validation report (also written to disk and MLflow)."""

    def __init__(self, message: str, report: dict | None = None) -> None:
        super().__init__(message)
        self.report = report or {}


class LeakageError(ForgelineError):
    """The same text ended up in two splits."""


class ParityError(ForgelineError):
    """The exported ONNX model disagrees with the PyTorch model beyond tolerance."""


class TrainingError(ForgelineError):
    """Training could not run (e.g. distributed workers failed or fewer GPUs than train.devices)."""


class ExportError(ForgelineError):
    """ONNX export or the ONNX checker failed."""


class RegistryError(ForgelineError):
    """Registering or promoting a model in MLflow failed."""


def exception_chain(e: BaseException | None):
    """``e``, then what caused it (``__cause__``, else ``__context__``), and so on; each once."""
    seen: set[int] = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        yield e
        e = e.__cause__ or e.__context__


class DiskFullError(ForgelineError):
    """The disk (or quota) filled up during a run. Never retried: another try fills it again."""


_FULL_ERRNOS = {28, 122}  # ENOSPC, EDQUOT
_FULL_TEXTS = ("no space left on device", "database or disk is full", "disk quota exceeded")


def disk_full(e: BaseException | None) -> str | None:
    """What said the disk is full, anywhere in ``e``'s chain: an ``OSError`` with ENOSPC/EDQUOT, or a
    library's own words for it (safetensors: ``No space left on device``; SQLite: ``database or disk
    is full``; both reached users as the raw message)."""
    for e in exception_chain(e):
        if isinstance(e, OSError) and e.errno in _FULL_ERRNOS:
            return f"{e.strerror or e}{f' ({e.filename})' if e.filename else ''}"
        text = str(e).lower()
        for needle in _FULL_TEXTS:
            if needle in text:
                return f"{type(e).__name__}: {needle}"
    return None


class TrackingUnavailableError(ForgelineError):
    """The MLflow tracking server stopped answering during a run (after the client's own retries)."""


_LOST_TEXTS = ("connection refused", "max retries exceeded", "read timed out", "connection aborted",
               "remote end closed connection", "name or service not known")


def server_lost(e: BaseException | None) -> str | None:
    """The connection failure behind ``e``, if the tracking server went away: a ``ConnectionError``
    anywhere in the chain, or MLflow's ``API request to ... failed`` text (its REST client keeps no cause)."""
    for e in exception_chain(e):
        text = str(e)
        if isinstance(e, ConnectionError) or any(t in text.lower() for t in _LOST_TEXTS):
            return text.split(" with exception ")[0].split("\n")[0][:300]
    return None
