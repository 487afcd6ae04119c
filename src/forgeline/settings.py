"""Process-wide settings declared once: offline environment, log quieting, the GPU concurrency tag, and
where the workdir and the MLflow store are (config first, then the environment, then the default).
"""

from __future__ import annotations

import contextlib

import os
from pathlib import Path

from forgeline.config.schema import TrackingConfig
from forgeline.errors import ConfigError

GPU_TAG = "gpu"
"""Prefect tag on the train task; its concurrency limit (``forgeline deploy --gpu-slots``) keeps two
trainings off one GPU."""

OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",  # weights come from local packages or folders; the hub is never reached
    "TRANSFORMERS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",  # no fork warnings from the Rust tokenizer in worker threads
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",  # progress bars garble the run logs
}


def die_with_parent() -> None:
    """SIGTERM this process when its parent dies (Linux ``PR_SET_PDEATHSIG``): for children that must
    not outlive what started them (the temporary Prefect server; serving workers)."""
    import sys

    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        try:
            ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass


def apply_offline_env() -> None:
    """Set the defaults above where the user has not set them."""
    import warnings

    for key, value in OFFLINE_ENV.items():
        os.environ.setdefault(key, value)
    # pandera imports pyspark.pandas whenever pyspark is installed (the spark extra), which warns about
    # pandas 3 on every command; forgeline's Spark engine uses pyspark.sql only
    warnings.filterwarnings("ignore", message="PySpark does not yet fully support pandas")


PROGRESS_ENV = "FORGELINE_PROGRESS"
"""``stdout``: training progress bars go to stdout (the CLI without --verbose, and processes it starts)."""


def quiet_libraries() -> None:
    """Keep pipeline logs to what forgeline says: no transformers weight reports or progress bars,
    no FutureWarnings, no torch.onnx chatter, no MLflow type-hint hint on every model log."""
    import logging
    import warnings

    apply_offline_env()
    try:
        import transformers

        transformers.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
    except ImportError:  # pragma: no cover - serving images have no transformers
        pass
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", message=".*type hints to the `predict` method.*")
    warnings.filterwarnings("ignore", category=UserWarning, module="torch")
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    # a new store's "Creating initial MLflow database tables" / "Updating database tables" and every model
    # log's "Validating input example against model signature": MLflow's INFO lines, not forgeline's
    for name in ("mlflow.store.db.utils", "mlflow.models.utils", "mlflow.pyfunc", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)


def ensure_workdir(cfg: TrackingConfig) -> Path:
    """The workdir (run files, stage cache, the default SQLite store), created if needed; a ConfigError
    when it cannot be created or written."""
    workdir = Path(cfg.workdir).expanduser().resolve()
    try:
        workdir.mkdir(parents=True, exist_ok=True)
        if not os.access(workdir, os.W_OK | os.X_OK):
            raise PermissionError(13, "Permission denied")
    except OSError as e:
        raise ConfigError(f"tracking.workdir {workdir} cannot be used: {e.strerror or e}. Set tracking.workdir "
                          "(--set tracking.workdir=DIR or $FORGELINE_WORKDIR) to a writable directory") from None
    return workdir


def resolve_tracking_uri(cfg: TrackingConfig) -> str:
    """Config wins, then $MLFLOW_TRACKING_URI, then an embedded SQLite store in the workdir."""
    if cfg.tracking_uri:
        return cfg.tracking_uri
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    return f"sqlite:///{ensure_workdir(cfg) / 'mlflow.db'}"


def require_reachable(uri: str, timeout_s: float = 5.0) -> None:
    """Fail at once when an http(s) tracking server does not answer. MLflow's client would retry for
    minutes before the first stage failed."""
    import socket
    from urllib.parse import urlparse

    parsed = urlparse(uri)
    if parsed.scheme not in ("http", "https"):
        return
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        socket.create_connection((parsed.hostname or "", port), timeout=timeout_s).close()
    except OSError as e:
        raise ConfigError(f"MLflow tracking server {uri} is not reachable ({e.strerror or e}); start it, or fix "
                          "tracking.tracking_uri / $MLFLOW_TRACKING_URI / --tracking-uri") from None


def sqlite_file(uri: str) -> str | None:
    """The database file of a ``sqlite:///`` URI (None for other stores and in-memory SQLite)."""
    if not uri.startswith("sqlite:///"):
        return None
    db = uri.removeprefix("sqlite:///").split("?", 1)[0]
    return db if db and db != ":memory:" else None


@contextlib.contextmanager
def store_lock(uri: str, purpose: str = ""):
    """For a SQLite store, an exclusive lock on ``<db>[.purpose].lock`` for as long as the block runs;
    nothing for other stores. Two ``forgeline run`` started together on a new workdir both ran MLflow's
    schema migration, and the second died with ``sqlite3.OperationalError: duplicate column name:
    step``; two on an existing one both registered a version for the same cache key (``purpose``
    "register" serializes look-up and registration). Locks of different purposes never nest-block."""
    db = sqlite_file(uri)
    if db is None:
        yield
        return
    import fcntl

    Path(db).parent.mkdir(parents=True, exist_ok=True)
    with open(f"{db}.{purpose}.lock" if purpose else f"{db}.lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


FAILPOINT_ENV = "FORGELINE_FAILPOINT"


def failpoint(name: str) -> None:
    """Fault injection for the fault-matrix tests (as etcd's and TiKV's failpoints): with
    ``FORGELINE_FAILPOINT=<name>:kill`` the process SIGKILLs itself here, with ``<name>:raise`` an
    ``OSError`` (a lost disk or server) is raised here, with ``<name>:enospc`` a full disk's; with
    ``<name>:sleep`` it pauses ($FORGELINE_FAILPOINT_SLEEP_S, 5 s) so a test can act at that moment. Unset, this is one dictionary lookup."""
    spec = os.environ.get(FAILPOINT_ENV)
    if not spec or spec.rsplit(":", 1)[0] != name:
        return
    action = spec.rsplit(":", 1)[1] if ":" in spec else "raise"
    if action == "kill":
        import signal

        os.kill(os.getpid(), signal.SIGKILL)
    if action == "sleep":  # a window in which a test can do something real (stop a server)
        import time

        time.sleep(float(os.environ.get("FORGELINE_FAILPOINT_SLEEP_S", "5")))
        return
    if action == "enospc":
        import errno

        raise OSError(errno.ENOSPC, "No space left on device", f"failpoint {name}")
    raise OSError(f"failpoint {name}: injected I/O failure")


@contextlib.contextmanager
def quiet_heartbeats():
    """Optuna's warnings that heartbeats are experimental and meant for ``optimize()``: ``pipeline.tuning`` and ``export.search`` drive
    them themselves with ask/tell, for the exact total across workers."""
    import warnings

    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")
        yield
