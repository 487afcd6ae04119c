"""Hyperparameter search: an Optuna study whose trials are Prefect task runs and child MLflow runs.

The study lives in Optuna's RDB storage (``tune.storage``; SQLite ``optuna.db`` in the workdir by
default), so several worker processes, or machines on one PostgreSQL, share it. Each trial samples
``tune.space``, validates and splits the data through the stage runner (cache hits after the first
trial), and trains through the same TRAIN stage as ``forgeline run``, reporting the primary validation
metric each epoch to its pruner (``training.loop.EPOCH_REPORT``). The study chooses on validation data
only. Afterwards the best trial's configuration runs the whole pipeline as a child of the study's run:
its training is a cache hit (the trial stored it under the same key), so it is evaluated, exported,
compressed and put through the gate on the same test rows as any run, never retrained. The losing
trials' checkpoints are removed from the cache.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from forgeline.config.loader import load_config
from forgeline.config.schema import ParamSpace, PipelineConfig
from forgeline.errors import ConfigError, ForgelineError
from forgeline.settings import quiet_heartbeats

log = logging.getLogger("forgeline")
SIGNATURE_ATTR = "forgeline.signature"
"""Study user attribute: the search space, task and data a study was made for."""
PARENT_ATTR = "forgeline.parent_run_id"
"""Study user attribute: the MLflow run that holds the study's trials as child runs."""


class TuningError(ForgelineError):
    """The study could not produce a model (every trial failed)."""


def storage_url(cfg: PipelineConfig, workdir: Path) -> str:
    return cfg.tune.storage or f"sqlite:///{workdir / 'optuna.db'}"


def study_name(cfg: PipelineConfig) -> str:
    return cfg.tune.study or f"{cfg.registry.model_name}-tune"


def signature(cfg: PipelineConfig) -> dict[str, Any]:
    """What a study's trials must share to be compared: the space, the task and the data."""
    return {"space": {k: v.model_dump(mode="json") for k, v in sorted(cfg.tune.space.items())},
            "task": cfg.task.model_dump(mode="json"), "data": cfg.data.model_dump(mode="json", include={"path", "source"})}


def sample(trial, space: dict[str, ParamSpace]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, p in space.items():
        if p.type == "categorical":
            out[name] = trial.suggest_categorical(name, p.choices)
        elif p.type == "int":
            assert p.low is not None and p.high is not None  # ParamSpace requires both for a range
            out[name] = trial.suggest_int(name, int(p.low), int(p.high), log=p.log)
        else:
            out[name] = trial.suggest_float(name, p.low, p.high, log=p.log)
    return out


PRESET_ATTR = "forgeline.preset"
"""Trial user attribute (and enqueued user attribute) of trial 0: the preset's own settings."""
SAMPLED_ATTR = "forgeline.preset.sampled"
"""Trial 0's keys the sampler chose (the preset's value outside the space, or unset)."""


def preset_params(cfg: PipelineConfig) -> tuple[dict[str, Any], list[str]]:
    """The preset's own values of the searched keys, and the keys left to the sampler because the preset's
    value lies outside their range (or is unset: ``model.dropout`` null keeps the base model's)."""
    data = cfg.model_dump(mode="json")
    fixed: dict[str, Any] = {}
    left: list[str] = []
    for name, p in cfg.tune.space.items():
        section, key = name.split(".", 1)
        value = data.get(section, {}).get(key)
        inside = (value in (p.choices or []) if p.type == "categorical" else
                  value is not None and not isinstance(value, bool) and p.low is not None and p.high is not None
                  and p.low <= value <= p.high)
        if inside:
            fixed[name] = value
        else:
            left.append(name)
    return fixed, left


def enqueue_preset(study, cfg: PipelineConfig) -> dict[str, Any] | None:
    """A new study's trial 0 is the preset itself (Optuna ``enqueue_trial``), so its best on validation is
    never below the settings the search started from (the 12-trial default-preset study of 2026-12-02,
    without it, ended 4.2 pt macro-F1 below the preset on the same test rows). A study with trials keeps
    its own."""
    if study.trials:
        return None
    fixed, left = preset_params(cfg)
    if not fixed:
        return None
    study.enqueue_trial(fixed, user_attrs={PRESET_ATTR: True, SAMPLED_ATTR: left})
    if left:
        log.info("trial 0 is the preset's settings; %s lie outside the space (or are unset) and are sampled",
                 ", ".join(left))
    return fixed


def with_params(cfg: PipelineConfig, params: dict[str, Any]) -> PipelineConfig:
    """``cfg`` with the dotted keys of ``params`` set (checked as any config is)."""
    data = cfg.model_dump(mode="json")
    for name, value in params.items():
        section, key = name.split(".", 1)
        data[section][key] = value
    return PipelineConfig.model_validate(data)


def open_study(cfg: PipelineConfig, storage: str, name: str, higher_is_better: bool, client=None, repair: bool = True):
    """The study, created or resumed; one made for another space, task or data is refused. An
    unreachable storage is a ``ConfigError`` naming it. Trials of a worker that is gone are failed
    (``fail_stale``; with ``client``, their MLflow runs marked KILLED)."""
    import optuna

    seed = cfg.tune.seed if cfg.tune.seed is not None else cfg.seed
    sampler = optuna.samplers.TPESampler(seed=seed) if cfg.tune.sampler == "tpe" else optuna.samplers.RandomSampler(seed=seed)
    # After a quarter of the trials (at least one) have finished, a trial below the median of the others at
    # the same epoch stops there, the first report included. With one startup trial, 10 of the 11 later
    # trials of the 12-trial default-preset benchmark stopped at their first epoch against trial 0's, and
    # the tuned model lost 4.2 pt to the default config (benchmarks/results/tune-cpu-2026-12-02.json).
    startup = max(1, cfg.tune.trials // 4)
    pruner = {"median": lambda: optuna.pruners.MedianPruner(n_startup_trials=startup, n_warmup_steps=0),
              "hyperband": lambda: optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max(1, cfg.train.epochs)),
              "none": optuna.pruners.NopPruner}[cfg.tune.pruner]()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study = optuna.create_study(storage=_rdb(cfg, storage), study_name=name, sampler=sampler, pruner=pruner,
                                    direction="maximize" if higher_is_better else "minimize", load_if_exists=True)
    except Exception as e:  # noqa: BLE001 - sqlalchemy's many errors of an unreachable or unusable database
        if isinstance(e, ValueError) and "direction" in str(e):
            raise ConfigError(f"study {name!r} in {_shown_url(storage)} optimises the other direction ({e}); give the "
                              "study another name (--study)") from None
        raise ConfigError(f"tune.storage {_shown_url(storage)}: the Optuna storage cannot be opened ({type(e).__name__}: "
                          f"{str(e).splitlines()[0][:300]}); check the URL and that the database is reachable") from None
    mine = signature(cfg)
    theirs = study.user_attrs.get(SIGNATURE_ATTR)
    if theirs is None:
        study.set_user_attr(SIGNATURE_ATTR, mine)
    elif theirs != mine:
        what = [k for k in mine if mine[k] != theirs.get(k)]
        raise ConfigError(f"study {name!r} in {_shown_url(storage)} was made for another {' and '.join(what)} "
                          f"({json.dumps({k: theirs.get(k) for k in what})[:400]}); give this search its own name "
                          "(--study NAME) or delete that study")
    if repair and (failed := fail_stale(study, client)):
        log.warning("study %s: trial(s) %s of a worker that is gone marked failed; the study goes on", name, failed)
    return study


WORKER_ATTR = "forgeline.worker"
"""Trial user attribute: ``<host>:<pid>`` of the process running it."""


def fail_stale(study, client=None) -> list[int]:
    """RUNNING trials of a killed worker marked failed, their numbers: a worker on this host whose process is
    gone at once, any other when its heartbeat lapsed (3 beats). A SIGKILLed trial stayed RUNNING in the
    next study's summary when the next ``tune`` came within those beats. With ``client``, each one's MLflow
    child run is marked KILLED too (it stayed RUNNING for good)."""
    import optuna

    from forgeline.pipeline.doctor import process_alive

    RUNNING = (optuna.trial.TrialState.RUNNING,)
    before = {t.number: t for t in study.get_trials(deepcopy=False, states=RUNNING)}
    with quiet_heartbeats():
        optuna.storages.fail_stale_trials(study)
    host = socket.gethostname()
    for t in study.get_trials(deepcopy=False, states=RUNNING):
        owner, _, pid = str(t.user_attrs.get(WORKER_ATTR, "")).rpartition(":")
        if owner == host and pid.isdigit() and not process_alive(int(pid)):
            study._storage.set_trial_state_values(t._trial_id, state=optuna.trial.TrialState.FAIL)  # no public API
    failed = sorted(set(before) - {t.number for t in study.get_trials(deepcopy=False, states=RUNNING)})
    for number in failed if client is not None else ():
        run_id = before[number].user_attrs.get("mlflow_run_id")
        with contextlib.suppress(Exception):  # a run deleted by hand: the study is what is being repaired
            if run_id and client.get_run(run_id).info.status == "RUNNING":
                client.set_tag(run_id, "forgeline.error", "stale: the worker running this trial is gone (killed); "
                                                           "the trial is failed in the study; marked KILLED")
                client.set_terminated(run_id, status="KILLED")
    return failed


def _rdb(cfg: PipelineConfig, url: str):
    """Optuna's RDB storage at ``url`` with heartbeats every ``tune.heartbeat_s``, stale after three."""
    import optuna

    with quiet_heartbeats():
        return optuna.storages.RDBStorage(url, heartbeat_interval=cfg.tune.heartbeat_s,
                                          grace_period=3 * cfg.tune.heartbeat_s)


def _session(cfg: PipelineConfig):
    """What every process working on the study opens: (workdir, tracking URI, MLflow client, experiment
    id, storage URL, the study, the stage cache)."""
    from forgeline.pipeline.cache import StageCache
    from forgeline.pipeline.tracking import ensure_experiment, open_client
    from forgeline.settings import ensure_workdir, resolve_tracking_uri
    from forgeline.tasks import get_task

    workdir = ensure_workdir(cfg.tracking)
    tracking_uri = resolve_tracking_uri(cfg.tracking)
    client = open_client(tracking_uri)
    experiment_id = ensure_experiment(client, cfg.tracking, tracking_uri)
    storage = storage_url(cfg, workdir)
    from forgeline.pipeline.doctor import mark_stale_runs

    mark_stale_runs(client)  # a killed earlier study's parent and trial runs, killed scoring jobs
    study = open_study(cfg, storage, study_name(cfg), get_task(cfg.task).primary.higher_is_better, client)
    cache = StageCache(workdir / "cache", enabled=cfg.tracking.cache, max_bytes=int(cfg.tracking.cache_max_gb * 1e9))
    return workdir, tracking_uri, client, experiment_id, storage, study, cache


def fail_stale_studies(cfg: PipelineConfig, workdir: Path, client=None) -> list[str]:
    """``forgeline doctor``: in every study of the tuning storage, RUNNING trials whose worker stopped
    beating marked failed; a line per study that had any."""
    import optuna

    url = storage_url(cfg, workdir)
    if not cfg.tune.storage and not (workdir / "optuna.db").exists():
        return []
    rdb = _rdb(cfg, url)
    lines = []
    for summary in optuna.get_all_study_summaries(rdb, include_best_trial=False):
        if failed := fail_stale(optuna.load_study(study_name=summary.study_name, storage=rdb), client):
            lines.append(f"study {summary.study_name}: trial(s) {failed} of a stopped worker marked failed")
    return lines


def default_concurrency() -> int:
    """One trial per GPU; one on a CPU (a 2-core machine trains one model at a time best)."""
    try:
        import torch

        return max(1, torch.cuda.device_count())
    except Exception:  # noqa: BLE001
        return 1


class Search:
    """One process's part of a study: its trials, each a Prefect task run and a child MLflow run."""

    def __init__(self, cfg: PipelineConfig, study, client, experiment_id: str, parent_run_id: str, run_dir: Path,
                 cache, tracking_uri: str, storage: str) -> None:
        from forgeline.tasks import get_task

        self.cfg, self.study, self.client, self.storage = cfg, study, client, storage
        self._engine = None
        self.experiment_id, self.parent, self.run_dir, self.cache = experiment_id, parent_run_id, run_dir, cache
        self.tracking_uri = tracking_uri
        self.primary = get_task(cfg.task).primary

    @contextlib.contextmanager
    def lock(self):
        from forgeline.settings import store_lock

        if not self.storage.startswith("postgresql"):
            with store_lock(self.storage, "tune"):  # a file lock for SQLite, nothing for other stores
                yield
            return
        import hashlib

        from sqlalchemy import create_engine, text

        if self._engine is None:
            self._engine = create_engine(self.storage, pool_size=1, max_overflow=0)
        key = int(hashlib.sha256(f"forgeline-tune:{self.study.study_name}".encode()).hexdigest()[:15], 16)
        with self._engine.connect() as conn:
            conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": key})
            try:
                yield
            finally:
                conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key})

    def run(self, trial) -> None:
        """One trial as a Prefect task run, its result told to the study. A pruned trial is no failed
        task run; a failing one is recorded and the study goes on."""
        import optuna

        TrialState = optuna.trial.TrialState
        stop = threading.Event()
        storage = self.study._storage
        # Optuna's optimize() beats for its trials; with ask/tell (the exact total) this loop does: a
        # trial id is only on the private attribute
        beating = threading.Thread(target=_beat, args=(storage, trial._trial_id, self.cfg.tune.heartbeat_s, stop),
                                   daemon=True)
        beating.start()
        try:
            state, value = trial_task.with_options(name=f"tune-trial-{trial.number}")(self, trial)
        except BaseException as e:
            self.study.tell(trial, state=TrialState.FAIL)
            if not isinstance(e, Exception):
                raise  # Ctrl-C, SIGTERM: the trial is marked, the study stops
            return
        finally:
            stop.set()
            beating.join()
        if state == "pruned":
            self.study.tell(trial, state=TrialState.PRUNED)
        else:
            self.study.tell(trial, value)

    def run_trial(self, trial) -> tuple[str, Any]:
        """("complete", the best validation value) or ("pruned", why)."""
        import optuna

        from forgeline.pipeline.runner import StageRunner
        from forgeline.pipeline.stages import SPLIT, TRAIN, VALIDATE
        from forgeline.pipeline.tracking import Tracker
        from forgeline.training.loop import EPOCH_REPORT

        params = sample(trial, self.cfg.tune.space)
        cfg = with_params(self.cfg, params)
        from forgeline.pipeline.doctor import Heartbeat, owner_tags

        worker = f"{socket.gethostname()}:{os.getpid()}"
        trial.set_user_attr(WORKER_ATTR, worker)
        run = self.client.create_run(self.experiment_id, run_name=f"trial-{trial.number}",
                                     tags={"mlflow.parentRunId": self.parent, "forgeline.tune.study": self.study.study_name,
                                           "forgeline.tune.trial": str(trial.number), "forgeline.tune.worker": worker,
                                           **owner_tags()})
        trial.set_user_attr("mlflow_run_id", run.info.run_id)
        beating = Heartbeat(self.client, run.info.run_id).__enter__()
        tracker = Tracker(client=self.client, run_id=run.info.run_id, tracking_uri=self.tracking_uri)
        tracker.params(cfg.flat())
        tracker.tags({f"tune.param.{k}": str(v) for k, v in params.items()})
        folder = self.run_dir / f"trial-{trial.number}"
        runner = StageRunner(cfg, folder, tracker, self.cache)
        name = self.primary.name

        def report(epoch: int, value: float) -> None:
            trial.report(value, epoch)
            if trial.should_prune():
                raise optuna.TrialPruned(f"val_{name} {value:.4f} at epoch {epoch} is worse than the median of the "
                                         "other trials there")

        started = time.perf_counter()
        token = EPOCH_REPORT.set(report)
        state, status = "failed", "FAILED"
        try:
            data = runner.execute(VALIDATE)
            splits = runner.execute(SPLIT, data=data)
            trained = runner.execute(TRAIN, splits=splits, labels=data.labels)
            trial.set_user_attr("train_key", runner.keys["train"])
            state, status = "complete", "FINISHED"
            tracker.metrics({f"tune.val_{name}": trained.best_val_macro_f1})
            return "complete", trained.best_val_macro_f1
        except optuna.TrialPruned as e:
            state, status = "pruned", "FINISHED"
            tracker.tags({"tune.pruned_because": str(e)})
            return "pruned", str(e)
        except Exception as e:
            tracker.tags({"tune.error": f"{type(e).__name__}: {e}"[:4000]})
            log.warning("trial %d failed: %s: %s", trial.number, type(e).__name__, e)
            raise
        except BaseException:  # Ctrl-C, SIGTERM: stopped, not failed
            state, status = "interrupted", "KILLED"
            raise
        finally:
            beating.stop()
            EPOCH_REPORT.reset(token)
            tracker.tags({"tune.state": state})
            tracker.metrics({"tune.seconds": time.perf_counter() - started})
            self.client.set_terminated(run.info.run_id, status)
            shutil.rmtree(folder, ignore_errors=True)  # the checkpoint is in the cache

    def optimize(self, trials: int, timeout_s: float | None, concurrency: int) -> None:
        """Trials until the study holds ``trials`` in all (across every worker sharing it) or
        ``timeout_s`` passed. Count-then-ask runs under a lock every worker shares (a file lock on SQLite,
        an advisory lock on PostgreSQL), so the total is exact; on other storages two workers may each add
        one past it."""
        from optuna.trial import TrialState

        STARTED = (TrialState.RUNNING, TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)

        deadline = time.monotonic() + timeout_s if timeout_s else None

        def work() -> None:
            while deadline is None or time.monotonic() < deadline:
                with self.lock():
                    started = self.study.get_trials(deepcopy=False, states=STARTED)  # enqueued ones wait to be asked
                    if len(started) >= trials:
                        return
                    with quiet_heartbeats():
                        trial = self.study.ask()
                self.run(trial)

        if concurrency <= 1:
            work()
            return
        threads = [threading.Thread(target=work, name=f"tune-{i}") for i in range(concurrency)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()


def _beat(storage, trial_id: int, every_s: float, stop) -> None:
    while True:
        try:
            storage.record_heartbeat(trial_id)
        except Exception as e:  # noqa: BLE001 - a missed beat is retried; three in a row fail the trial elsewhere
            log.info("heartbeat of trial %s not written: %s", trial_id, e)
        if stop.wait(every_s):
            return


@task(name="tune-trial", cache_policy=NO_CACHE, persist_result=False)
def trial_task(search: Search, trial) -> tuple[str, Any]:
    """A trial as a Prefect task run: it shows in the flow's run graph with its state."""
    return search.run_trial(trial)


def summarize(study, primary_name: str, out: Path) -> tuple[dict[str, Any], list[Path]]:
    """The study's record (trial states, durations, the best trial) and Optuna's plots as PNGs."""
    import optuna

    states: dict[str, int] = {}
    for t in study.trials:
        states[t.state.name.lower()] = states.get(t.state.name.lower(), 0) + 1
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    record: dict[str, Any] = {
        "study": study.study_name, "direction": study.direction.name.lower(), "metric": f"val_{primary_name}",
        "trials": len(study.trials), "states": states,
        "seconds": {s: sum((t.duration.total_seconds() if t.duration else 0.0) for t in study.trials
                           if t.state.name.lower() == s) for s in states},
        "all": [{"number": t.number, "state": t.state.name.lower(), "value": t.value, "params": t.params,
                 "last_epoch": max(t.intermediate_values, default=None),
                 "mlflow_run_id": t.user_attrs.get("mlflow_run_id")} for t in study.trials],
    }
    if complete:
        best = study.best_trial
        record["best"] = {"number": best.number, "value": best.value, "params": best.params,
                          "mlflow_run_id": best.user_attrs.get("mlflow_run_id")}
    preset = next((t for t in study.trials if t.user_attrs.get(PRESET_ATTR)), None)
    if preset is not None:
        record["preset"] = {"number": preset.number, "state": preset.state.name.lower(), "value": preset.value,
                            "params": preset.params, "sampled": preset.user_attrs.get(SAMPLED_ATTR, [])}
        if complete and preset.value is not None:
            # how much the best trial beat trial 0 on validation, in the metric's better direction (>= 0)
            sign = 1.0 if study.direction.name.lower() == "maximize" else -1.0
            record["best_gain_over_preset"] = sign * (best.value - preset.value)
    plots: list[Path] = []
    out.mkdir(parents=True, exist_ok=True)
    import warnings

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as vis

    for name, draw, needs in (("optimization_history", vis.plot_optimization_history, 1),
                              ("param_importances", vis.plot_param_importances, 2),
                              ("parallel_coordinate", vis.plot_parallel_coordinate, 1)):
        if len(complete) < needs:
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # Optuna's "experimental" warnings on its matplotlib plots
                draw(study)
            path = out / f"{name}.png"
            plt.gcf().set_size_inches(9, 5)
            plt.savefig(path, dpi=80, bbox_inches="tight")
            plots.append(path)
        except Exception as e:  # noqa: BLE001 - a plot is a nicety; the record is what matters
            log.info("no %s plot: %s", name, e)
        finally:
            plt.close("all")
    return record, plots


def run_study(cfg: PipelineConfig, workers: int = 1) -> dict[str, Any]:
    """The study in this process (and ``workers - 1`` more sharing it), then the best trial through the
    rest of the pipeline. Must be called inside a Prefect flow."""
    import optuna

    from forgeline.pipeline.doctor import Heartbeat, owner_tags, run_is_stale
    from forgeline.pipeline.flows import run_pipeline
    from forgeline.pipeline.tracking import Tracker
    from forgeline.settings import quiet_libraries
    from forgeline.tasks import get_task

    quiet_libraries()  # before the first trial loads weights (run_pipeline does it only for the best one)
    primary = get_task(cfg.task).primary
    workdir, tracking_uri, client, experiment_id, storage, study, cache = _session(cfg)
    name = study.study_name
    parent_id = study.user_attrs.get(PARENT_ATTR)
    if parent_id is None:
        parent = client.create_run(experiment_id, run_name=f"tune-{name}",
                                   tags={"forgeline.tune.study": name, "forgeline.tune.storage": _shown_url(storage),
                                         "forgeline.model_name": cfg.registry.model_name, **owner_tags()})
        parent_id = parent.info.run_id
        study.set_user_attr(PARENT_ATTR, parent_id)
        # once, at creation: MLflow refuses a changed param, and a resumed study may ask for more trials
        Tracker(client=client, run_id=parent_id, tracking_uri=tracking_uri).params(
            {k: v for k, v in cfg.flat().items() if k.startswith("tune.")})
    elif (parent := client.get_run(parent_id)).info.status != "RUNNING" or run_is_stale(parent.data.tags):
        # resumed after its owner died (the sweep may just have marked it KILLED): this process owns it now;
        # another live machine's study on the same storage keeps it
        for k, v in owner_tags().items():
            client.set_tag(parent_id, k, v)
        client.update_run(parent_id, status="RUNNING")
    tracker = Tracker(client=client, run_id=parent_id, tracking_uri=tracking_uri)
    run_dir = workdir / "runs" / parent_id
    beating = Heartbeat(client, parent_id).__enter__()
    search = Search(cfg, study, client, experiment_id, parent_id, run_dir, cache, tracking_uri, storage)
    status = "FAILED"
    helpers: list = []
    try:
        from forgeline.pipeline.runner import StageRunner
        from forgeline.pipeline.stages import VALIDATE

        # bad data fails here, once, not as every trial's failure; the trials then hit the cache
        StageRunner(cfg, run_dir, tracker, cache).execute(VALIDATE)
        enqueue_preset(study, cfg)
        helpers = _start_workers(cfg, workers - 1)
        _wait_for(study, helpers)
        search.optimize(cfg.tune.trials, cfg.tune.timeout_s, cfg.tune.concurrency or default_concurrency())
        for proc in helpers:
            proc.wait()
        study = optuna.load_study(study_name=name, storage=storage)
        if failed := fail_stale(study, client):  # a helper killed during this study
            log.warning("study %s: trial(s) %s of a worker that is gone marked failed", name, failed)
        record, plots = summarize(study, primary.name, run_dir / "study")
        tracker.json(record, "study.json")
        for plot in plots:
            tracker.artifact(plot, "study")
        complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
        pruned = record["states"].get("pruned", 0)
        tracker.metrics({"tune.trials": len(study.trials), "tune.complete": len(complete), "tune.pruned": pruned,
                         "tune.failed": record["states"].get("fail", 0)})
        if not complete:
            errors = [client.get_run(t.user_attrs["mlflow_run_id"]).data.tags.get("tune.error")
                      for t in study.trials if "mlflow_run_id" in t.user_attrs]
            first = next((e for e in errors if e), "no trial finished")
            raise TuningError(f"no trial of study {name!r} finished ({record['states']}); the first failure: {first}")
        best = study.best_trial
        tracker.metrics({f"tune.best_val_{primary.name}": float("nan") if best.value is None else best.value,
                         "tune.best_trial": best.number})
        tracker.tags({"tune.best_trial": str(best.number)} | {f"tune.best.{k}": str(v) for k, v in best.params.items()})
        if "best_gain_over_preset" in record:
            tracker.metrics({f"tune.preset_val_{primary.name}": record["preset"]["value"],
                             "tune.best_gain_over_preset": record["best_gain_over_preset"]})
        keep = best.user_attrs.get("train_key")
        for t in study.trials:  # the losers' checkpoints: the disk bound holds during a study too
            key = t.user_attrs.get("train_key")
            if key and key != keep:  # a trial repeating the best one's config shares its entry
                cache.remove("train", key)
        result = run_pipeline(with_params(cfg, best.params), parent_run_id=parent_id,
                              extra_tags={"forgeline.tune.best_of": name, "forgeline.tune.best_trial": str(best.number)})
        tracker.tags({"tune.registered": f"{result.model_name}/{result.version}", "tune.promoted": str(result.promoted)})
        status = "FINISHED"
        return {"study": name, "storage": _shown_url(storage), "parent_run_id": parent_id, "trials": len(study.trials),
                "states": record["states"], "best": record["best"], "pipeline": result.to_dict()}
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        for proc in helpers:  # this process failed or was interrupted: its helpers stop too
            if proc.poll() is None:
                proc.terminate()
        beating.stop()
        client.set_terminated(parent_id, status)
        shutil.rmtree(run_dir, ignore_errors=True)


def _shown_url(url: str) -> str:
    """A storage URL without its password."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001
        return url.split("@")[-1]


def _start_workers(cfg: PipelineConfig, n: int) -> list:
    """``n`` more processes working on the same study (``forgeline tune --worker``)."""
    import subprocess
    import sys

    if n <= 0:
        return []
    from prefect.settings import PREFECT_API_URL

    env = dict(os.environ)
    if PREFECT_API_URL.value():  # this flow's Prefect API, so the helpers' trials show beside ours
        env["PREFECT_API_URL"] = PREFECT_API_URL.value()
    config = json.dumps(cfg.model_dump(mode="json"))
    return [subprocess.Popen([sys.executable, "-m", "forgeline.pipeline.tuning", config], env=env) for _ in range(n)]


READY_ATTR = "forgeline.worker."
"""Study user attribute prefix: a helper worker (``<host>:<pid>``) says it is ready to take trials."""


def _wait_for(study, helpers: list, timeout_s: float = 120.0) -> None:
    """Until every helper started by this process says it is ready (its imports take seconds; trials
    started before that would all be this process's), one exits, or ``timeout_s``."""
    if not helpers:
        return
    host = socket.gethostname()
    wanted = {f"{READY_ATTR}{host}:{p.pid}" for p in helpers}
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and any(p.poll() is None for p in helpers):
        import optuna

        attrs = optuna.load_study(study_name=study.study_name, storage=study._storage).user_attrs
        if wanted <= set(attrs):
            return
        time.sleep(0.5)
    log.warning("tune: not every helper worker said it was ready within %.0f s; going on", timeout_s)


def work_on(config_json: str) -> None:
    """A helper worker: trials of the study the config names until the study has its total (no final
    pipeline: the process that started the study runs it)."""
    from forgeline.settings import quiet_libraries

    quiet_libraries()
    cfg = PipelineConfig.model_validate(json.loads(config_json))
    workdir, tracking_uri, client, experiment_id, storage, study, cache = _session(cfg)
    parent_id = study.user_attrs[PARENT_ATTR]
    study.set_user_attr(f"{READY_ATTR}{socket.gethostname()}:{os.getpid()}", time.time())
    Search(cfg, study, client, experiment_id, parent_id, workdir / "runs" / parent_id, cache,
           tracking_uri, storage).optimize(cfg.tune.trials, cfg.tune.timeout_s, cfg.tune.concurrency or default_concurrency())


@flow(name="forgeline-tuning", log_prints=True, persist_result=False)
def tuning_flow(config: str | None = None, overrides: list[str] | None = None, workers: int = 1) -> dict[str, Any]:
    """Prefect entry point of ``forgeline tune``."""
    return run_study(load_config(config, overrides), workers)


if __name__ == "__main__":  # a helper worker started by _start_workers
    flow(name="forgeline-tuning-worker", persist_result=False)(work_on)(sys.argv[1])
