"""The one stage runner: cache look-up, compute, MLflow logging, caching, retries and Prefect task
wrapping happen here, the same way for every stage, so a stage is a plain function and its
declaration (``forgeline.pipeline.stages``), and the flow is the list of steps.

For each ``runner(stage, *inputs, **named)`` (typed by the stage function's parameters: ``P``):

1. the stage's key: its config slice (``stage.key``), chained on the keys of the stages it depends on
   (``stage.after``, default the stage run before it), plus the pipeline's code version;
2. a hit: the cached value and files, or for a stage with ``stage.reuse`` (register) whatever that
   finds (an earlier registration carrying the key); ``stage.restore`` rebuilds what the cache does
   not hold (a loaded model, paths into the cache entry);
3. a miss: ``stage.fn(env, *inputs, **named)``;
4. ``stage.log``, hit or miss, so every run records the same metrics, tags and artifacts;
5. ``stage.check`` (it may raise: a failed parity is logged but never cached), then the cache store.

``cache.<stage>`` (hit/miss/dropped) and ``cache.<stage>.key`` tags on the run say what happened; a
dropped entry (a file no longer matching its checksum) also gets ``cache.<stage>.dropped``, the why.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Concatenate, Generic, ParamSpec, TypeVar

from prefect import task
from prefect.cache_policies import NO_CACHE

from forgeline.config.schema import PipelineConfig
from forgeline.errors import ForgelineError, disk_full
from forgeline.pipeline.cache import StageCache
from forgeline.pipeline.tracking import Tracker

log = logging.getLogger("forgeline")
R = TypeVar("R")
P = ParamSpec("P")
"""A stage's inputs, from its function's parameters after ``env``: ``runner(STAGE, ...)`` is checked
against them (mypy in CI), so a flow that wires the wrong value into a stage does not type-check."""
Files = dict[str, Path]


@dataclass(frozen=True)
class Env:
    """What every stage function gets besides its inputs."""

    cfg: PipelineConfig
    run_dir: Path
    """This run's scratch folder (``<workdir>/runs/<run id>``)."""
    tracker: Tracker
    """For stages that log while they work (training curves) or register into the run."""
    key: str
    """This stage's cache key."""


def retry_on_io(task, task_run, state) -> bool:
    """Retry only transient I/O failures (files, network, tracking server), never bad data or config,
    and never a full disk (a retry fills it again). A forgeline error counts as I/O when an I/O error
    caused it."""
    import httpx
    import requests
    from mlflow.exceptions import MlflowException

    transient = (OSError, MlflowException, requests.RequestException, httpx.HTTPError)
    try:
        state.result()
    except Exception as e:  # noqa: BLE001
        if disk_full(e):
            return False
        if isinstance(e, ForgelineError):  # e.g. RegistryError raised from a lost tracking server
            cause = e.__cause__
            while cause is not None:
                if isinstance(cause, transient):
                    return True
                cause = cause.__cause__
            return False
        return isinstance(e, transient)
    return False


def _nothing(*_: Any) -> None:
    return None


@dataclass(eq=False)
class Stage(Generic[P, R]):
    """A stage's declaration. Only ``name`` and ``fn`` are required."""

    name: str
    fn: Callable[Concatenate[Env, P], R]
    """``fn(env, *inputs, **named) -> R``: the stage's work."""
    key: Callable[[PipelineConfig], tuple] = lambda cfg: ()
    """What besides its inputs decides the result: the config it reads, the data file's fingerprint."""
    after: tuple[str, ...] | None = None
    """Stages whose keys chain into this one's (None: the stage run just before)."""
    files: Callable[[Env, R], Files] = lambda env, result: {}
    """Files and folders the cache keeps beside the value, by name."""
    store: Callable[[R], Any] = lambda result: result
    """The value to cache (e.g. without the in-memory model)."""
    restore: Callable[[Env, Any, Files], R] | None = None
    """A cached value and its files (in the cache entry) → the result."""
    log: Callable[[Tracker, PipelineConfig, R, Files], None] = _nothing
    """MLflow logging of the result and its files, hit or miss."""
    on_error: Callable[[Tracker, PipelineConfig, Env, Exception], None] | None = None
    """Logging of a failure (e.g. the validation report) before it propagates."""
    check: Callable[[R, Files], None] | None = None
    """Raises when the result must stop the flow; after logging, before caching."""
    reuse: Callable[..., R | None] | None = None
    """``reuse(env, *inputs, **named)``, instead of the file cache: an earlier result found by key (register
    finds the version that carries it)."""
    exclusive: Callable[[Env], Any] | None = None
    """A context manager held from look-up to cache store: one run at a time does this stage's
    look-up-then-work (register: two runs at once registered two versions with the same key)."""
    cached: bool = True
    task_name: str | None = None
    tags: tuple[str, ...] = ()
    io_retries: int = 0
    task: Any = field(init=False, repr=False)
    """The Prefect task that runs this stage."""

    def __post_init__(self) -> None:
        kwargs: dict[str, Any] = {}
        if self.io_retries:
            from prefect.tasks import exponential_backoff

            kwargs = {"retries": self.io_retries, "retry_delay_seconds": exponential_backoff(backoff_factor=2),
                      "retry_jitter_factor": 0.5, "retry_condition_fn": retry_on_io}
        self.task = task(_execute, name=self.task_name or self.name, cache_policy=NO_CACHE,
                         persist_result=False, tags=list(self.tags), **kwargs)  # (Prefect's overloads name each keyword)


def _execute(runner: StageRunner, stage: Stage[Any, Any], *inputs: Any, **named: Any) -> Any:
    return runner.execute(stage, *inputs, **named)


@dataclass
class StageRunner:
    cfg: PipelineConfig
    run_dir: Path
    tracker: Tracker
    cache: StageCache
    keys: dict[str, str] = field(default_factory=dict)
    hits: dict[str, bool] = field(default_factory=dict)

    def __call__(self, stage: Stage[P, R], *inputs: P.args, **named: P.kwargs) -> R:
        """Run ``stage`` as its Prefect task (retries, tags, the task run in the UI)."""
        return stage.task(self, stage, *inputs, **named)

    def key(self, stage: Stage[Any, Any]) -> str:
        parents = list(self.keys.values())[-1:] if stage.after is None else [self.keys.get(s) for s in stage.after]
        return self.cache.key(stage.name, *parents, *stage.key(self.cfg))

    def execute(self, stage: Stage[P, R], *inputs: P.args, **named: P.kwargs) -> R:
        env = Env(self.cfg, self.run_dir, self.tracker, self.key(stage))
        with stage.exclusive(env) if stage.exclusive else nullcontext():
            return self._execute(stage, env, inputs, named)

    def _execute(self, stage: Stage[Any, R], env: Env, inputs: tuple, named: dict[str, Any]) -> R:
        if stage.cached:
            self.keys[stage.name] = env.key
        found = self._lookup(stage, env, inputs, named)
        cached, files = found
        hit = cached is not None
        if stage.cached:
            self.hits[stage.name] = hit
            dropped = self.cache.dropped.get(self.cache.path(stage.name, env.key).name)
            self.tracker.tags({f"cache.{stage.name}": "hit" if hit else ("dropped" if dropped else "miss"),
                               f"cache.{stage.name}.key": env.key} | ({f"cache.{stage.name}.dropped": dropped} if dropped else {}))
        if cached is not None:
            log.info("stage %s: cache hit (%s), skipped", stage.name, env.key)
            result: R = cached
        else:
            try:
                result = stage.fn(env, *inputs, **named)
            except Exception as e:
                if stage.on_error is not None:
                    stage.on_error(self.tracker, self.cfg, env, e)
                raise
            files = stage.files(env, result)
        stage.log(self.tracker, self.cfg, result, files)
        if stage.check is not None:
            stage.check(result, files)
        if not hit and stage.cached and stage.reuse is None:
            try:
                self.cache.put(stage.name, env.key, stage.store(result), files)
            except (TypeError, ValueError) as e:  # e.g. a data column parquet cannot hold: run on, uncached
                log.warning("stage %s: result not cached (%s); the next run computes it again", stage.name, e)
                self.tracker.tags({f"cache.{stage.name}.not_stored": str(e)[:500]})
        return result

    def _lookup(self, stage: Stage[Any, R], env: Env, inputs: tuple, named: dict[str, Any]) -> tuple[R | None, Files]:
        if not stage.cached or not self.cache.enabled:
            return None, {}
        if stage.reuse is not None:
            return stage.reuse(env, *inputs, **named), {}
        hit = self.cache.get(stage.name, env.key, into=self.run_dir / "cache-hits" / stage.name)
        if hit is None:
            return None, {}
        value, files = hit
        return (stage.restore(env, value, files) if stage.restore else value), files
