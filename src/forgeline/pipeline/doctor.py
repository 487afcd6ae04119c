"""What a killed run leaves in the store, found and repaired: ``forgeline doctor``.

A run killed with SIGKILL (or a machine that lost power) cannot end its MLflow run or finish a
registration. Its run stays RUNNING forever and its model version, if it got that far, stays marked
``forgeline.complete=false`` (see ``registry.register``). Each run records the process and host that
own it; a RUNNING run whose process is gone from this host is marked KILLED, and an incomplete
version whose run is no longer running is deleted. Runs owned by another host are only reported.
The next ``forgeline run`` marks stale runs itself; ``forgeline doctor`` also removes the versions.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from forgeline.pipeline.disk import delete_artifacts
from forgeline.registry.client import COMPLETE_TAG

PID_TAG = "forgeline.pid"
HOST_TAG = "forgeline.host"
log = logging.getLogger("forgeline")


def owner_tags() -> dict[str, str]:
    """Run tags naming the process that owns the run."""
    return {PID_TAG: str(os.getpid()), HOST_TAG: socket.gethostname()}


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
    """Runs marked KILLED: RUNNING, owned by a process gone from this host."""
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


def mark_stale_runs(client: MlflowClient, experiment_ids: list[str], report: DoctorReport | None = None) -> DoctorReport:
    report = report or DoctorReport()
    host = socket.gethostname()
    for run in client.search_runs(experiment_ids, "attributes.status = 'RUNNING'", max_results=1000):
        tags = run.data.tags
        pid = tags.get(PID_TAG)
        if tags.get(HOST_TAG) != host or not (pid or "").isdigit():
            report.elsewhere.append(run.info.run_id)
            continue
        if process_alive(int(pid)):
            continue
        client.set_tag(run.info.run_id, "forgeline.error",
                       f"stale: process {pid} on {host} ended without ending this run (killed); marked KILLED")
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
    from forgeline.registry.client import DAMAGED_TAG, download_verified

    for model in client.search_registered_models(max_results=1000):
        for mv in client.search_model_versions(f"name='{model.name}'"):
            full = client.get_model_version(model.name, mv.version)  # search results carry no aliases
            why = (full.tags or {}).get(DAMAGED_TAG)
            if why is None and full.aliases and (full.tags or {}).get(COMPLETE_TAG) != "false":
                try:
                    with tempfile.TemporaryDirectory(prefix="forgeline-doctor-") as tmp:
                        download_verified(client, model.name, str(mv.version), Path(tmp))
                except ArtifactIntegrityError as e:
                    why = str(e)[:500]
                    client.set_model_version_tag(model.name, str(mv.version), DAMAGED_TAG, why)
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
    experiments = [e.experiment_id for e in client.search_experiments()]
    report = mark_stale_runs(client, experiments)
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

    from forgeline.pipeline.disk import inside

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
