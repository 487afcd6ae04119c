"""What a killed run leaves in the store, found and repaired: ``forgeline doctor``.

A run killed with SIGKILL (or a machine that lost power) cannot end its MLflow run or finish a
registration. Its run stays RUNNING forever and its model version, if it got that far, stays marked
``forgeline.complete=false`` (see ``registry.register``). Every run forgeline starts (training, tune
parents and trials, scoring jobs) records the process and host that own it and beats while it lives
(``HEARTBEAT_TAG``). The sweep (:func:`mark_stale_runs`, run by ``run``, ``tune``, ``score``, ``gc`` and
``doctor``) marks a RUNNING run KILLED when its process is gone from this host or, on any host, when its
heartbeat lapsed; an incomplete version whose run is no longer running is deleted by ``doctor``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from forgeline.registry.client import COMPLETE_TAG, delete_artifacts, inside

PID_TAG = "forgeline.pid"
HOST_TAG = "forgeline.host"
log = logging.getLogger("forgeline")


HEARTBEAT_TAG = "forgeline.heartbeat"
"""Run tag: unix time of the owning process's last beat; ``HEARTBEAT_EVERY_TAG``: its interval."""
HEARTBEAT_EVERY_TAG = "forgeline.heartbeat_s"
HEARTBEAT_ENV = "FORGELINE_HEARTBEAT_S"
LAPSED_BEATS = 3
"""A run on another host whose heartbeat is older than this many intervals is stale. On this host the
process table decides: a live owner whose beats cannot reach the store (a tracking server down for
minutes) is not stale, and its scratch folder is not removed under it."""


def heartbeat_interval() -> float:
    """Seconds between beats: 30, or $FORGELINE_HEARTBEAT_S (tests)."""
    try:
        return max(0.2, float(os.environ.get(HEARTBEAT_ENV, "30")))
    except ValueError:
        return 30.0


def owner_tags() -> dict[str, str]:
    """Run tags naming the process that owns the run, and its first beat."""
    return {PID_TAG: str(os.getpid()), HOST_TAG: socket.gethostname(), HEARTBEAT_TAG: f"{time.time():.0f}",
            HEARTBEAT_EVERY_TAG: f"{heartbeat_interval():g}"}


class Heartbeat:
    """Beats for runs this process owns: a daemon thread writing ``HEARTBEAT_TAG`` on each, every
    :func:`heartbeat_interval` seconds, until :meth:`stop`. A missed beat (a busy store) is retried at
    the next; only :data:`LAPSED_BEATS` missed in a row make the run look stale to another host."""

    def __init__(self, client: MlflowClient, *run_ids: str) -> None:
        self.client, self.run_ids = client, list(run_ids)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="forgeline-heartbeat", daemon=True)

    def _beat(self) -> None:
        every = heartbeat_interval()
        while not self._stop.wait(every):
            for run_id in list(self.run_ids):
                try:
                    self.client.set_tag(run_id, HEARTBEAT_TAG, f"{time.time():.0f}")
                except Exception as e:  # noqa: BLE001 - the next beat tries again
                    log.debug("heartbeat of run %s not written: %s", run_id, e)

    def __enter__(self) -> "Heartbeat":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    def __exit__(self, *_: object) -> None:
        self.stop()


def run_is_stale(tags: dict[str, str], host: str | None = None, now: float | None = None) -> bool | None:
    """Whether a RUNNING run's owner is gone: True (mark it), False (alive), None (nothing tells: no
    owner on this host and no heartbeat)."""
    host = host or socket.gethostname()
    now = time.time() if now is None else now
    beat: float | None
    try:
        beat, every = float(tags[HEARTBEAT_TAG]), float(tags.get(HEARTBEAT_EVERY_TAG, "30"))
    except (KeyError, ValueError):
        beat, every = None, 30.0
    pid = tags.get(PID_TAG) or ""
    if tags.get(HOST_TAG) == host and pid.isdigit():
        return not process_alive(int(pid))
    if beat is None:
        return None
    return now - beat > LAPSED_BEATS * every


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass
class DoctorReport:
    stale_runs: list[str] = field(default_factory=list)
    """Runs marked KILLED: RUNNING, owned by a process gone from this host or whose heartbeat lapsed."""
    elsewhere: list[str] = field(default_factory=list)
    """RUNNING runs owned by another host (or recording no owner): left alone."""
    removed_versions: list[str] = field(default_factory=list)
    """``name vN`` of incomplete versions deleted, with their logged model's files."""
    damaged_versions: list[str] = field(default_factory=list)
    """A line per version whose files fail their digest: which, its aliases, why, and what replaces it."""

    def lines(self) -> list[str]:
        out = [f"marked KILLED (its process is gone): run {r}" for r in self.stale_runs]
        out += [f"left alone (running elsewhere or owner unknown): run {r}" for r in self.elsewhere]
        out += [f"deleted incomplete model version {v}" for v in self.removed_versions]
        out += [f"damaged model version {v}" for v in self.damaged_versions]
        return out or ["nothing to repair"]


def mark_stale_runs(client: MlflowClient, experiment_ids: list[str] | None = None,
                    report: DoctorReport | None = None) -> DoctorReport:
    """RUNNING runs of ``experiment_ids`` (None: every experiment) whose owner is gone, marked KILLED."""
    report = report or DoctorReport()
    if experiment_ids is None:
        experiment_ids = [e.experiment_id for e in client.search_experiments()]
    if not experiment_ids:
        return report
    for run in client.search_runs(experiment_ids, "attributes.status = 'RUNNING'", max_results=5000):
        tags = run.data.tags
        stale = run_is_stale(tags)
        if stale is None:
            report.elsewhere.append(run.info.run_id)
            continue
        if not stale:
            continue
        where = f"process {tags.get(PID_TAG, '?')} on {tags.get(HOST_TAG, '?')}"
        client.set_tag(run.info.run_id, "forgeline.error",
                       f"stale: {where} ended (or stopped beating) without ending this run (killed); marked KILLED")
        client.set_terminated(run.info.run_id, status="KILLED")
        report.stale_runs.append(run.info.run_id)
    if report.stale_runs:
        log.warning("marked %d run(s) KILLED whose process was gone: %s", len(report.stale_runs),
                    ", ".join(report.stale_runs))
    return report


def remove_incomplete_versions(client: MlflowClient, report: DoctorReport, workdir: Path | None = None) -> DoctorReport:
    for model in client.search_registered_models(max_results=1000):
        for mv in client.search_model_versions(f"name='{model.name}'"):
            if (mv.tags or {}).get(COMPLETE_TAG) != "false":
                continue
            if client.get_model_version(model.name, mv.version).aliases:  # search results carry none
                continue  # someone pointed an alias at it by hand: theirs to decide
            try:
                if mv.run_id and client.get_run(mv.run_id).info.status == "RUNNING":
                    continue  # still registering
            except MlflowException:
                pass
            with contextlib.suppress(MlflowException, OSError):  # the files first: nothing else points at them
                if not delete_artifacts(client, mv, workdir):
                    continue  # a local folder outside this workdir (a copied store): not doctor's to delete
            client.delete_model_version(model.name, mv.version)
            report.removed_versions.append(f"{model.name} v{mv.version}")
    return report


def find_damaged_versions(client: MlflowClient, report: DoctorReport) -> DoctorReport:
    """Versions already tagged ``DAMAGED_TAG``, and every version an alias points at checked against its
    digest now (a damaged champion is what serving and the gate would load). Reported, not deleted: the
    next run registers a good version under the same key and the gate moves the alias to it."""
    import tempfile

    from forgeline.inference.contract import ArtifactIntegrityError
    from forgeline.registry.client import DAMAGED_TAG, download_verified, mark_damaged

    for model in client.search_registered_models(max_results=1000):
        for mv in client.search_model_versions(f"name='{model.name}'"):
            full = client.get_model_version(model.name, mv.version)  # search results carry no aliases
            why = (full.tags or {}).get(DAMAGED_TAG)
            if why is None and full.aliases and (full.tags or {}).get(COMPLETE_TAG) != "false":
                try:
                    with tempfile.TemporaryDirectory(prefix="forgeline-doctor-") as tmp:
                        download_verified(client, model.name, str(mv.version), Path(tmp))
                except ArtifactIntegrityError as e:
                    why = mark_damaged(client, model.name, str(mv.version), e)
                except (MlflowException, OSError) as e:  # its files are gone: as unusable, said as such
                    why = f"its files cannot be read ({type(e).__name__}: {str(e)[:200]})"
            if why is None:
                continue
            held = ", ".join(f"@{a}" for a in full.aliases)
            fix = (f"the next `forgeline run` registers a good version and moves {held} to it" if full.aliases
                   else "never reused; `forgeline gc --keep-versions N` deletes it")
            report.damaged_versions.append(f"{model.name} v{mv.version}{f' ({held})' if held else ''}: {why[:300]}; {fix}")
    return report


def doctor(client: MlflowClient, workdir: Path | None = None) -> DoctorReport:
    report = mark_stale_runs(client)
    return find_damaged_versions(client, remove_incomplete_versions(client, report, workdir))


# --- a copied or moved workdir -----------------------------------------------------------------------
_ARTIFACT_COLUMNS = (("experiments", "artifact_location"), ("runs", "artifact_uri"),
                     ("logged_models", "artifact_location"), ("model_versions", "source"),
                     ("model_versions", "storage_location"))
"""Where MLflow's SQLite store records absolute artifact locations (MLflow 3.x schema)."""


def foreign_artifact_root(db: Path, workdir: Path) -> str | None:
    """The artifact location an embedded store (``<workdir>/mlflow.db``) records outside its workdir, if
    any: the workdir was copied or moved, and the store still names the old place."""
    import sqlite3

    if not db.resolve().is_relative_to(workdir.resolve()) or not db.exists():
        return None
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as con:
        try:
            # not MLflow's own "Default" experiment (id 0): it names the creating process's ./mlruns and
            # holds nothing of forgeline's, unless runs were logged there (those are in the second query)
            rows = con.execute("SELECT artifact_location FROM experiments WHERE experiment_id != 0 "
                               "UNION ALL SELECT artifact_uri FROM runs").fetchall()
        except sqlite3.Error:
            return None
    return next((loc for (loc,) in rows if loc and inside(loc, workdir) is False), None)


def relocate(db: Path, workdir: Path) -> list[str]:
    """Point an embedded store's artifact locations at ``workdir/mlartifacts`` where they name another
    folder's ``mlartifacts`` (the workdir it was copied or moved from). Returns what was rewritten."""
    import sqlite3

    from forgeline.settings import store_lock

    done: list[str] = []
    seen: set[str] = set()
    new_root = (workdir.resolve() / "mlartifacts").as_uri()
    with store_lock(f"sqlite:///{db}"):
        while (old := foreign_artifact_root(db, workdir)) is not None:
            if "/mlartifacts" not in old or old in seen:  # not where forgeline puts artifacts: a person's to decide
                done.append(f"left alone: {old} is not another workdir's mlartifacts/ (set it by hand)")
                break
            seen.add(old)
            old_root = old.split("/mlartifacts")[0] + "/mlartifacts"
            with contextlib.closing(sqlite3.connect(db)) as con, con:
                for table, column in _ARTIFACT_COLUMNS:
                    for prefix, replacement in ((old_root, new_root),
                                                (old_root.removeprefix("file://"), new_root.removeprefix("file://"))):
                        con.execute(f"UPDATE {table} SET {column} = ? || substr({column}, ?) "  # noqa: S608 - fixed names
                                    f"WHERE substr({column}, 1, ?) = ?",
                                    (replacement, len(prefix) + 1, len(prefix), prefix))
            done.append(f"artifact locations {old_root} -> {new_root}")
    return done
