"""Bounded disk for a workdir that trains every night: run scratch, the stage cache, old versions.

A finished run's scratch folder is removed when
it ends (its files are in MLflow and the cache by then) and failed runs keep theirs, newest
``tracking.keep_failed_runs`` only; the cache holds each file once and stays under
``tracking.cache_max_gb``; ``forgeline gc`` prunes both on request and deletes model versions no alias
points at, beyond the newest few, with their artifacts.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Set as AbstractSet
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from forgeline.pipeline.cache import StageCache
from forgeline.registry.client import COMPLETE_TAG, delete_artifacts, delete_location, logged_model_id

log = logging.getLogger("forgeline")
FAILED_MARK = ".failed"
"""Written into a run's scratch folder when the run did not finish: what ``keep_failed_runs`` counts."""


def finish_run_dir(run_dir: Path, finished: bool, keep_failed: int) -> None:
    """Remove a finished run's scratch; mark a failed one and keep only the newest ``keep_failed``."""
    if finished:
        shutil.rmtree(run_dir, ignore_errors=True)
    elif run_dir.is_dir():
        try:
            (run_dir / FAILED_MARK).touch()
        except OSError:
            pass  # a full disk may be why it failed; the bound below still applies
    prune_failed_runs(run_dir.parent, keep_failed, spare={run_dir.name} if not finished else set())


def mark_failed_runs(runs: Path, run_ids: list[str], keep: int) -> list[str]:
    """Scratch folders of runs found killed (their process could not mark them): removed, since a process
    killed outright wrote no ``error.log`` and what it left (a half-written checkpoint, an export) is
    nothing to read; one holding an ``error.log`` counts as failed (``keep``). Kept as failed, a killed
    run's 56 MB stayed until a ``doctor`` with ``keep_failed_runs=0``. Returns the removed ones."""
    from forgeline.settings import failpoint

    failpoint("runs.mark_failed")
    removed = []
    for run_id in run_ids:
        folder = runs / run_id
        if (folder / "error.log").exists():
            (folder / FAILED_MARK).touch()
        elif folder.is_dir():
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(run_id)
    return removed + prune_failed_runs(runs, keep)


def prune_failed_runs(runs: Path, keep: int, spare: AbstractSet[str] = frozenset()) -> list[str]:
    """Failed runs' scratch folders beyond the newest ``keep`` (``spare``: always kept, e.g. the run
    whose ``error.log`` the user is about to be pointed at)."""
    if not runs.is_dir():
        return []
    failed = sorted((d for d in runs.iterdir() if (d / FAILED_MARK).exists()),
                    key=lambda d: (d / FAILED_MARK).stat().st_mtime, reverse=True)
    removed = []
    for d in failed[keep:]:
        if d.name not in spare:
            shutil.rmtree(d, ignore_errors=True)
            removed.append(d.name)
    return removed


COLLECTED_TAG = "forgeline.artifacts_collected"
"""Run tag: ``forgeline gc`` deleted this run's artifacts (its params, metrics and tags stay)."""


@dataclass
class GcReport:
    cache_entries: list[str] = field(default_factory=list)
    cache_freed_bytes: int = 0
    cache_bytes: int = 0
    run_dirs: list[str] = field(default_factory=list)
    killed_runs: list[str] = field(default_factory=list)
    """Runs the stale-run sweep marked KILLED (their process gone or their heartbeat lapsed)."""
    killed_dirs: list[str] = field(default_factory=list)
    """Scratch folders removed of runs killed outright or no longer running: ``run id (MB)``."""
    holders: dict[str, int] = field(default_factory=dict)
    """What the workdir's bytes are after gc, by what holds them (each file counted once)."""
    held_by_runs: list[str] = field(default_factory=list)
    """The scratch folders still there, with their run's state and size."""
    run_artifacts: list[str] = field(default_factory=list)
    """Runs whose artifacts were deleted: failed or killed ones beyond ``keep_failed_runs``, and those whose
    every registered version was deleted."""
    versions: list[str] = field(default_factory=list)
    """``name vN`` deleted, with their artifacts."""
    problems: list[str] = field(default_factory=list)
    disk_before: int = 0
    disk_after: int = 0
    """Bytes the workdir takes on disk, each file counted once however many hard links it has."""

    def lines(self) -> list[str]:
        out = [f"cache: removed {len(self.cache_entries)} entries ({self.cache_freed_bytes / 1e6:.1f} MB); "
               f"{self.cache_bytes / 1e6:.1f} MB kept"]
        out += [f"marked KILLED (its process is gone or stopped beating): run {r}" for r in self.killed_runs]
        out += [f"removed the scratch folder of killed run {r}" for r in self.killed_dirs]
        out += [f"removed the scratch folder of failed run {r}" for r in self.run_dirs]
        out += [f"deleted the artifacts of run {r}" for r in self.run_artifacts]
        out += [f"deleted model version {v} and its artifacts" for v in self.versions]
        out += [f"could not delete: {p}" for p in self.problems]
        out.append(f"workdir: {self.disk_before / 1e6:.1f} MB before, {self.disk_after / 1e6:.1f} MB after"
                   + ("" if self.disk_after < self.disk_before or self.cache_bytes == 0 else
                      " (files shared with the stage cache stay until it lets them go: --cache-max-gb 0)"))
        if self.holders:
            out.append("held by: " + ", ".join(f"{what} {n / 1e6:.1f} MB" for what, n in self.holders.items() if n))
        out += [f"  run scratch {r}" for r in self.held_by_runs]
        return out


def inode_sizes(root: Path) -> dict[tuple[int, int], int]:
    """(device, inode) → bytes on disk of every file under ``root``: hard links counted once, as du does."""
    out = {}
    for dirpath, _, names in os.walk(root):
        for name in names:
            try:
                st = (Path(dirpath) / name).lstat()
            except OSError:  # removed meanwhile (another run's scratch or cache entry)
                continue
            out[(st.st_dev, st.st_ino)] = st.st_blocks * 512
    return out


def disk_bytes(root: Path, exclude: Path | None = None) -> int:
    """Bytes on disk under ``root``, each file once (cache blobs and artifacts are hard links to one
    inode), without the files that also are under ``exclude``."""
    skip = inode_sizes(exclude) if exclude is not None else {}
    return sum(size for inode, size in inode_sizes(root).items() if inode not in skip)


def collect_garbage(workdir: Path, client: MlflowClient | None, *, cache_max_gb: float, keep_failed_runs: int,
                    keep_versions: int | None) -> GcReport:
    """Prune the cache to ``cache_max_gb``, failed runs' scratch and artifacts to ``keep_failed_runs``, and
    (when ``keep_versions`` is set) each model's versions without an alias beyond its newest
    ``keep_versions``, with the artifacts of runs left without a version."""
    report = GcReport(disk_before=disk_bytes(workdir))
    cache = StageCache(workdir / "cache", code="gc")
    pruned = cache.prune(int(cache_max_gb * 1e9))
    report.cache_entries, report.cache_freed_bytes, report.cache_bytes = (
        pruned.removed_entries, pruned.removed_bytes, pruned.kept_bytes)
    runs = workdir / "runs"
    if client is not None:
        clear_killed_runs(client, runs, report)
    report.run_dirs = prune_failed_runs(runs, keep_failed_runs)
    if client is not None:
        delete_failed_run_artifacts(client, workdir, keep_failed_runs, report)
        if keep_versions is not None:
            delete_old_versions(client, keep_versions, report, workdir)
    report.disk_after = disk_bytes(workdir)
    report.holders = space_holders(workdir)
    report.held_by_runs = [f"{d.name}: {_run_state(client, d)}, {disk_bytes(d, workdir / 'cache') / 1e6:.1f} MB"
                           for d in sorted(runs.iterdir())] if runs.is_dir() else []
    return report


def _run_state(client: MlflowClient | None, folder: Path) -> str:
    if (folder / FAILED_MARK).exists():
        return "failed, kept (tracking.keep_failed_runs)"
    return (_status(client, folder.name) or "no such run") if client is not None else "unknown"


def clear_killed_runs(client: MlflowClient, runs: Path, report: GcReport) -> None:
    """The stale-run sweep, then the scratch of runs killed outright, and of folders whose run is no longer
    running yet never marked theirs (killed before this sweep existed, a tune trial's). A SIGKILLed run's
    56 MB stayed until ``doctor`` with ``keep_failed_runs=0``, and gc's report put them on the cache."""
    from forgeline.pipeline.doctor import mark_stale_runs

    try:
        stale = mark_stale_runs(client).stale_runs
    except MlflowException as e:
        report.problems.append(f"runs: {e}")
        return
    report.killed_runs = list(stale)
    folders = [d for d in sorted(runs.iterdir()) if d.is_dir() and not (d / FAILED_MARK).exists()] if runs.is_dir() else []
    sizes = {d.name: disk_bytes(d, runs.parent / "cache") for d in folders}
    ended = [d.name for d in folders if d.name in stale or _status(client, d.name) != "RUNNING"]
    removed = mark_failed_runs(runs, ended, keep=1 << 30)  # the keep_failed_runs bound is the caller's
    report.killed_dirs = [f"{r} ({sizes.get(r, 0) / 1e6:.1f} MB)" for r in sorted(set(removed) & set(ended))]


def _status(client: MlflowClient, run_id: str) -> str | None:
    try:
        return client.get_run(run_id).info.status
    except MlflowException:
        return None


HOLDERS = (("stage cache", "cache"), ("MLflow artifacts", "mlartifacts"), ("run scratch", "runs"),
           ("traffic logs", "traffic"))
"""Areas of a workdir as gc reports them, in this order: a file hard-linked from two (a cached ONNX file
that a registered version also holds) counts for the first."""


def space_holders(workdir: Path) -> dict[str, int]:
    """Bytes on disk under ``workdir`` by what holds them (``HOLDERS``, then the store and the rest)."""
    counted: set[tuple[int, int]] = set()
    out: dict[str, int] = {}
    everything = inode_sizes(workdir) if workdir.is_dir() else {}
    for what, name in HOLDERS:
        area = inode_sizes(workdir / name) if (workdir / name).is_dir() else {}
        out[what] = sum(size for inode, size in area.items() if inode not in counted)
        counted |= set(area)
    stores = {}
    for path in workdir.glob("*.db*"):  # the SQLite stores and their -wal/-shm files
        try:
            st = path.lstat()
        except OSError:  # a -wal file checkpointed away meanwhile
            continue
        stores[(st.st_dev, st.st_ino)] = st.st_blocks * 512
    out["stores (*.db)"] = sum(size for inode, size in stores.items() if inode not in counted)
    counted |= set(stores)
    out["other"] = sum(size for inode, size in everything.items() if inode not in counted)
    return out


def delete_run_artifacts(client: MlflowClient, run, workdir: Path, report: GcReport) -> None:
    location = run.info.artifact_uri
    try:
        if not delete_location(location, workdir):
            report.problems.append(f"run {run.info.run_id}: its artifacts at {location} are outside this workdir "
                                   f"({workdir}); left alone")
            return
        client.set_tag(run.info.run_id, COLLECTED_TAG, "true")
        report.run_artifacts.append(run.info.run_id)
    except (MlflowException, OSError) as e:
        report.problems.append(f"run {run.info.run_id}: {e}")


def delete_failed_run_artifacts(client: MlflowClient, workdir: Path, keep: int, report: GcReport) -> None:
    """Artifacts (checkpoint, ONNX files: 54 MB for a tiny run) of failed and killed runs beyond the newest
    ``keep`` of each experiment; nothing collected them before."""
    try:
        experiments = client.search_experiments()
    except MlflowException as e:
        report.problems.append(f"runs: {e}")
        return
    for exp in experiments:
        runs = [r for status in ("FAILED", "KILLED") for r in client.search_runs(
            [exp.experiment_id], f"attributes.status = '{status}'", max_results=5000)]
        for run in sorted(runs, key=lambda r: r.info.start_time or 0, reverse=True)[keep:]:
            if run.data.tags.get(COLLECTED_TAG) != "true":
                delete_run_artifacts(client, run, workdir, report)


def delete_old_versions(client: MlflowClient, keep: int, report: GcReport, workdir: Path | None = None) -> None:
    """Versions with no alias, older than each model's newest ``keep``, deleted with their logged
    model's artifacts. Versions still registering (``forgeline.complete=false`` with a running run)
    are ``forgeline doctor``'s to judge and are left alone."""
    for model in client.search_registered_models(max_results=1000):
        versions = sorted(client.search_model_versions(f"name='{model.name}'"), key=lambda v: int(v.version), reverse=True)
        for mv in versions[keep:]:
            full = client.get_model_version(model.name, mv.version)  # search results carry no aliases
            if full.aliases or (full.tags or {}).get(COMPLETE_TAG) == "false":
                continue
            try:
                if not delete_artifacts(client, full, workdir):
                    report.problems.append(f"{model.name} v{mv.version}: its files are outside this workdir "
                                           f"({workdir}); left alone")
                    continue
                client.delete_model_version(model.name, mv.version)
                report.versions.append(f"{model.name} v{mv.version}")
                if workdir is not None and full.run_id and not client.search_model_versions(f"run_id='{full.run_id}'"):
                    delete_run_artifacts(client, client.get_run(full.run_id), workdir, report)
            except (MlflowException, OSError) as e:
                report.problems.append(f"{model.name} v{mv.version}: {e}")


def share_with_cache(cache: StageCache, client: MlflowClient, run_id: str, name: str, version: str) -> int:
    """Bytes of this run's artifacts and its registered version's files now stored once with the
    cache (hard links), where the artifact store is a folder on this disk; a remote store keeps its
    own copy. A default run stored its checkpoint and ONNX files twice (cache and MLflow), ~380 MB."""
    from mlflow.utils.file_utils import local_file_uri_to_path
    from mlflow.utils.uri import is_local_uri

    saved = 0
    try:
        locations = [client.get_run(run_id).info.artifact_uri]
        model_id = logged_model_id(client.get_model_version(name, version))
        if model_id:
            locations.append(client.get_logged_model(model_id).artifact_location)
        for location in locations:
            if is_local_uri(location, is_tracking_or_registry_uri=False):
                saved += cache.share(Path(local_file_uri_to_path(location)))
    except (MlflowException, OSError) as e:  # only disk space is at stake
        log.warning("could not share run %s's files with the cache: %s", run_id, e)
    return saved
