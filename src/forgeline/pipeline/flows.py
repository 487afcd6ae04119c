"""The Prefect flows: training (the list of stages), the drift check, and drift-gated retraining."""

from __future__ import annotations

import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.cache_policies import NO_CACHE
from prefect.exceptions import ExternalSignal

from forgeline.config.loader import load_config
from forgeline.config.schema import PipelineConfig
from forgeline.errors import (DiskFullError, ForgelineError, TrackingUnavailableError, disk_full, exception_chain,
                              server_lost)
from forgeline.pipeline.cache import StageCache
from forgeline.pipeline.disk import finish_run_dir, mark_failed_runs, share_with_cache
from forgeline.pipeline.doctor import Heartbeat, mark_stale_runs, owner_tags
from forgeline.pipeline.runner import StageRunner
from forgeline.pipeline.stages import (
    BASELINE,
    COMPRESS,
    EVALUATE,
    EXPORT,
    REGISTER,
    SPLIT,
    SUMMARY,
    TRAIN,
    VALIDATE,
    summary_markdown,
)
from forgeline.pipeline.tracking import Tracker, ensure_experiment, open_client
from forgeline.registry.client import CHALLENGER
from forgeline.settings import apply_offline_env, ensure_workdir, quiet_libraries, resolve_tracking_uri

apply_offline_env()


@dataclass
class PipelineResult:
    run_id: str
    model_name: str
    version: str
    aliases: list[str]
    promoted: bool
    reason: str
    cached_stages: list[str]
    metrics: dict[str, float]
    summary: str

    def to_dict(self) -> dict[str, Any]:
        return self.__dict__.copy()


def run_pipeline(cfg: PipelineConfig, parent_run_id: str | None = None,
                 extra_tags: dict[str, str] | None = None) -> PipelineResult:
    """The whole pipeline in one MLflow run; must be called inside a Prefect flow. ``parent_run_id``: the
    run this one is a child of (a study's best trial going through the pipeline)."""
    import mlflow

    quiet_libraries()
    logger = get_run_logger()
    workdir = ensure_workdir(cfg.tracking)  # before the MLflow run: an unusable workdir leaves no run behind
    tracking_uri = resolve_tracking_uri(cfg.tracking)
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    client = open_client(tracking_uri)
    experiment_id = ensure_experiment(client, cfg.tracking, tracking_uri)
    stale = mark_stale_runs(client)  # runs an earlier SIGKILL left RUNNING (trials and scoring jobs too)
    mark_failed_runs(workdir / "runs", stale.stale_runs, cfg.tracking.keep_failed_runs)
    run = client.create_run(experiment_id, run_name=f"train-{time.strftime('%Y%m%d-%H%M%S')}",
                            tags={"forgeline.config_hash": cfg.config_hash(), "forgeline.model_name": cfg.registry.model_name,
                                  **owner_tags(), **(extra_tags or {}),
                                  **({"mlflow.parentRunId": parent_run_id} if parent_run_id else {})})
    tracker = Tracker(client=client, run_id=run.info.run_id, tracking_uri=tracking_uri)
    run_dir = workdir / "runs" / run.info.run_id
    run_dir.mkdir(parents=True, exist_ok=True)
    cache = StageCache(workdir / "cache", enabled=cfg.tracking.cache, max_bytes=int(cfg.tracking.cache_max_gb * 1e9))
    tracker.tags({"forgeline.code_version": cache.code})
    tracker.params(cfg.flat())
    tracker.json(cfg.model_dump(mode="json"), "config.json")
    logger.info("MLflow run %s at %s; scratch files in %s (removed when the run finishes)", run.info.run_id,
                tracking_uri, run_dir)
    step = StageRunner(cfg, run_dir, tracker, cache)
    status = "FAILED"
    interrupts = _remember_interrupts()
    beating = Heartbeat(client, run.info.run_id).__enter__()
    try:
        data = step(VALIDATE)
        logger.info("validation: %s valid of %s rows, %s quarantined", data.report["valid_rows"], data.report["rows"],
                    data.report["quarantined_rows"])
        splits = step(SPLIT, data=data)
        classical = step(BASELINE, splits=splits, labels=data.labels)
        trained = step(TRAIN, splits=splits, labels=data.labels)
        evaluation = step(EVALUATE, trained=trained, splits=splits)
        logger.info("test metrics: %s", {k: round(v, 4) for k, v in evaluation.metrics.items()})
        exported = step(EXPORT, trained=trained, splits=splits)
        compressed = step(COMPRESS, trained=trained, splits=splits, exported=exported, base=evaluation)
        reg = step(REGISTER, trained=trained, splits=splits, evaluation=evaluation, exported=exported,
                   compressed=compressed, fingerprint=data.fingerprint, baseline=classical)
        logger.info("registered %s v%s as %s: %s", reg.name, reg.version, reg.aliases, reg.decision.reason)
        if shared := share_with_cache(cache, client, run.info.run_id, reg.name, reg.version):
            logger.info("%.0f MB of the run's and the registered files are stored once with the cache", shared / 1e6)
        md = step(SUMMARY, markdown=summary_markdown(step, data, splits, trained, evaluation, exported, compressed, reg))
        status = "FINISHED"
        return PipelineResult(run_id=run.info.run_id, model_name=reg.name, version=reg.version, aliases=reg.aliases,
                              promoted=reg.decision.promote, reason=reg.decision.reason,
                              cached_stages=[k for k, hit in step.hits.items() if hit],
                              metrics={f"test_{k}": v for k, v in evaluation.metrics.items()}, summary=md)
    except BaseException as e:
        signal_exc = interruption(e)
        if signal_exc is None and interrupts:
            signal_exc = KeyboardInterrupt(f"interrupted (Ctrl-C); it surfaced as {type(e).__name__}: {e}")
            signal_exc.__cause__ = e
        if signal_exc is not None:
            status = "KILLED"  # interrupted (Ctrl-C, SIGTERM, cancellation), not a failure of the pipeline
            e = signal_exc
        elif (full := disk_full(e)) and not isinstance(e, DiskFullError):
            e = _disk_full_error(full, workdir, e)
        elif tracking_uri.startswith(("http://", "https://")) and not isinstance(e, ForgelineError) and (lost := server_lost(e)):
            e = _lost_server_error(lost, tracking_uri, e)
        try:  # the store may sit on the disk that filled: the first error is what the user must see
            client.set_tag(run.info.run_id, "forgeline.error", f"{type(e).__name__}: {e}"[:5000])
        except Exception as tag_error:  # noqa: BLE001
            logger.warning("could not record the error on the MLflow run: %s", tag_error)
        record_traceback(e, run_dir, tracker)
        raise e
    finally:
        interrupts.restore()
        beating.stop()
        try:
            client.set_terminated(run.info.run_id, status=status)
        except Exception:
            if status == "FINISHED":
                raise
            logger.warning("could not mark the MLflow run %s; `forgeline doctor` will", status)
        finish_run_dir(run_dir, status == "FINISHED", cfg.tracking.keep_failed_runs)


def _disk_full_error(what: str, workdir: Path, cause: BaseException) -> DiskFullError:
    import shutil

    try:
        free = f"{shutil.disk_usage(workdir).free / 1e6:.0f} MB free there now"
    except OSError:
        free = "free space unknown"
    error = DiskFullError(
        f"the disk filled up during the run ({what}); workdir {workdir}, {free}. No half-registered "
        "version is used or aliased. Free space (`forgeline gc` trims the stage cache; `--keep-versions N` also deletes old "
        "unaliased model versions) or point tracking.workdir at a bigger disk, then run again")
    error.__cause__ = cause
    return error


def _lost_server_error(what: str, tracking_uri: str, cause: BaseException) -> TrackingUnavailableError:
    error = TrackingUnavailableError(
        f"lost the MLflow tracking server at {tracking_uri} during the run ({what}). No half-registered "
        "version is used or aliased. Once the server is back, `forgeline doctor` (same --set/--tracking "
        "settings) marks this run KILLED and deletes its half version; then run again")
    error.__cause__ = cause
    return error


class _remember_interrupts(list):
    """SIGINTs received while the pipeline runs (the list is truthy once one arrived). Python raises
    KeyboardInterrupt wherever the main thread is; inside pandas' C CSV reader it came out as
    ``ParserError: Calling read(nbytes) on source failed`` and the run ended "cannot read <file>",
    exit 2 (seen in CI). The previous handler still runs, so Ctrl-C behaves as before."""

    def __init__(self) -> None:
        super().__init__()
        self.previous = None
        if threading.current_thread() is not threading.main_thread():
            return
        previous = signal.getsignal(signal.SIGINT)
        if previous in (signal.SIG_IGN, None):
            return

        def handler(signum, frame):
            self.append(signum)
            if callable(previous):
                return previous(signum, frame)
            raise KeyboardInterrupt

        self.previous = previous
        signal.signal(signal.SIGINT, handler)

    def restore(self) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)
            self.previous = None


def interruption(e: BaseException) -> BaseException | None:
    """The signal behind ``e``, if any. A SIGTERM that lands while Prefect is creating a task run is
    raised there, and Prefect's crash handler then fails with ``ValueError: Task run is not set``,
    hiding the signal in ``__context__`` (seen in CI: the run ended FAILED with exit 1 instead of
    KILLED by the signal). Re-raising the signal itself lets the flow engine report the crash."""
    return next((c for c in exception_chain(e) if isinstance(c, (KeyboardInterrupt, ExternalSignal))), None)


def record_traceback(e: BaseException, run_dir: Path, tracker: Tracker) -> None:
    """The full traceback into ``<run dir>/error.log`` and the MLflow run (artifact ``error.log``); the
    exception carries the file's path (``forgeline_log``) so the CLI can point at it instead of
    printing the traceback."""
    import traceback

    path = run_dir / "error.log"
    try:
        path.write_text("".join(traceback.format_exception(e)), encoding="utf-8")
        e.forgeline_log = str(path)  # type: ignore[attr-defined]
        tracker.artifact(path)
    except Exception:  # noqa: BLE001 - the store or the disk may be what failed; the first error is what matters
        pass


@flow(name="forgeline-training", log_prints=True, persist_result=False)
def training_flow(config: str | None = None, overrides: list[str] | None = None) -> dict[str, Any]:
    """Prefect entry point: ``config`` is a preset name or YAML path, ``overrides`` are ``key=value``."""
    cfg = load_config(config, overrides)
    return run_pipeline(cfg).to_dict()


def _challenger_note(client: Any, model_name: str) -> str | None:
    """Why the latest challenger is not champion, for the drift decision ("no champion" alone reads as
    "never trained")."""
    from mlflow.exceptions import MlflowException

    try:
        mv = client.get_model_version_by_alias(model_name, CHALLENGER)
    except MlflowException:
        return None
    return f"v{mv.version} is challenger: {(mv.tags or {}).get('gate.reason', 'no gate reason recorded')}"


def check_drift(cfg: PipelineConfig) -> dict[str, Any]:
    """Compare the configured data with the champion's training data; record the decision in MLflow
    (experiment ``<experiment>-drift``) and return it. Bad data raises before anything is decided."""
    import tempfile

    import mlflow
    from mlflow.tracking import MlflowClient

    from forgeline.data.load import load_and_validate
    from forgeline.data.drift import (DamagedProfile, DriftReport, build_profile, compare, load_champion_profile,
                                      traffic_profile)
    from forgeline.serving.traffic import read_traffic
    from forgeline.tasks import get_task

    quiet_libraries()
    uri = resolve_tracking_uri(cfg.tracking)
    mlflow.set_tracking_uri(uri)
    client = open_client(uri)
    exp_id = ensure_experiment(client, cfg.tracking.model_copy(update={"experiment": cfg.tracking.experiment + "-drift"}), uri)
    run = client.create_run(exp_id, run_name=f"drift-{time.strftime('%Y%m%d-%H%M%S')}")
    try:
        with tempfile.TemporaryDirectory() as tmp:
            if cfg.drift.traffic:  # what the deployed model saw, as `forgeline serve --log-sample` logged it
                traffic = read_traffic(cfg.drift.traffic)
                fingerprint = traffic.fingerprint
            else:
                data = load_and_validate(cfg.data, Path(tmp) / "data", cfg.seed, task=get_task(cfg.task), for_drift=True)
                fingerprint = data.fingerprint
            try:
                champion = load_champion_profile(client, cfg.registry.model_name, Path(tmp) / "ref")
                damaged = None
            except DamagedProfile as e:  # nothing to compare with: a new run writes a new profile
                champion, damaged = None, e
            if damaged is not None:
                report = DriftReport(retrain=True, reasons=[f"{damaged}: retraining writes a new one"],
                                     champion_version=damaged.version)
            elif champion is None:
                reason = f"no champion of {cfg.registry.model_name} with a training-data profile"
                challenger = _challenger_note(client, cfg.registry.model_name)
                report = DriftReport(retrain=True, reasons=[reason + (f" ({challenger})" if challenger else "")])
            else:
                version, ref, ref_emb = champion
                if cfg.drift.traffic:
                    current, cur_emb = traffic_profile(traffic.texts, cfg.drift, cfg.model, cfg.seed)
                    current |= get_task(cfg.task).served_profile(traffic.decisions, ref)
                else:
                    current, cur_emb = build_profile(data.valid, data.labels, cfg.drift, cfg.model, cfg.seed,
                                                     get_task(cfg.task))
                report = compare(ref, ref_emb, current, cur_emb, cfg.drift, cfg.seed)
                report.champion_version = version
            if cfg.drift.traffic:
                report.notes += traffic.notes
            else:
                counts = {k: data.report.get(k, 0) for k in ("repeated_texts", "long_texts")}
                report.notes.append(f"{counts['repeated_texts']} repeated texts and {counts['long_texts']} texts over "
                                    f"data.max_text_chars={cfg.data.max_text_chars} in the current data: counted, kept "
                                    "(training quarantines them; new data is not training data)")
        tracker = Tracker(client=MlflowClient(uri, uri), run_id=run.info.run_id, tracking_uri=uri)
        tracker.metrics({f"drift.{k}": v for k, v in report.metrics().items()})
        tracker.tags({"drift.decision": "retrain" if report.retrain else "skip", "drift.reason": "; ".join(report.reasons),
                      "drift.current": f"traffic log {cfg.drift.traffic}" if cfg.drift.traffic else "data",
                      "data.fingerprint": fingerprint, "drift.champion_version": report.champion_version or "none"})
        tracker.json(report.to_dict(), "drift_report.json")
        client.set_terminated(run.info.run_id, "FINISHED")
    except BaseException:
        MlflowClient(uri, uri).set_terminated(run.info.run_id, "FAILED")
        raise
    return report.to_dict() | {"drift_run_id": run.info.run_id}


@flow(name="forgeline-retraining", log_prints=True, persist_result=False)
def retraining_flow(config: str | None = None, overrides: list[str] | None = None, force: bool = False) -> dict[str, Any]:
    """Scheduled entry point: drift check against the champion's training data, then train only if needed."""
    from prefect import task
    from prefect.artifacts import create_markdown_artifact

    cfg = load_config(config, overrides)
    logger = get_run_logger()
    drift = task(check_drift, name="drift-check", persist_result=False, cache_policy=NO_CACHE)(cfg)
    decision = "retrain" if (drift["retrain"] or force) else "skip"
    logger.info("drift check: %s (%s)", decision, "; ".join(drift["reasons"]))
    md = (f"# forgeline drift check: **{decision}**\n\n" + "\n".join(f"- {r}" for r in drift["reasons"]) +
          "".join(f"\n- note: {n}" for n in drift["notes"]) +
          f"\n\nlabel TV {drift['label_tv']} (p {drift['label_p']}), length KS {drift['length_ks']} (p {drift['length_p']}), "
          f"embedding MMD² {drift['embedding_mmd2']} (p {drift['embedding_p']}), mean cosine {drift['embedding_cosine']}"
          f" (champion v{drift['champion_version']})\n")
    try:
        create_markdown_artifact(markdown=md, key="forgeline-drift", description="drift decision")
    except Exception:  # noqa: BLE001
        pass
    if decision == "skip":
        return {"retrained": False, "drift": drift}
    return {"retrained": True, "drift": drift, "training": run_pipeline(cfg).to_dict()}
