"""The served model and its hot swap: the configured reference (``NAME@alias`` or ``NAME/VERSION``)
is resolved in the registry and loaded through MLflow; a watcher polls the alias and swaps in a new
version, loaded and warmed beside the old one, with one reference assignment."""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from forgeline.config.schema import ServeConfig
from forgeline.errors import RegistryError
from forgeline.inference.contract import ArtifactIntegrityError
from forgeline.registry.client import load_verified, open_registry, parse_model_ref, resolve_version
from forgeline.serving.batcher import MicroBatcher, cancel_task
from forgeline.serving.metrics import Metrics
from forgeline.settings import resolve_tracking_uri

log = logging.getLogger("forgeline.serve")


@dataclass
class LoadedModel:
    name: str
    version: str
    run_id: str | None
    impl: Any  # forgeline.inference.pyfunc.OnnxTextClassifier, loaded
    loaded_at: float = field(default_factory=time.time)

    @property
    def labels(self) -> list[str]:
        return self.impl.labels

    def info(self) -> dict[str, Any]:
        spec = self.impl.spec
        return {"name": self.name, "version": self.version, "run_id": self.run_id, "task": spec.task,
                "labels": self.labels, "schema": spec.describe(),
                "variant": self.impl.variant, "device": self.impl.device,
                "providers": list(self.impl.session.get_providers()),
                "loaded_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.loaded_at))}


class RegistrySource:
    """Resolves the configured reference to a version and loads that version through MLflow."""

    def __init__(self, cfg: ServeConfig) -> None:
        self.cfg = cfg
        self.name, self.alias, self.version = parse_model_ref(cfg.model)
        self.uri = cfg.tracking_uri or resolve_tracking_uri(cfg.tracking)
        self.client = open_registry(self.uri)

    def current_version(self) -> tuple[str, str | None]:
        mv = resolve_version(self.client, self.uri, self.name, self.alias, self.version)
        return str(mv.version), mv.run_id

    def model_config(self) -> dict[str, Any]:
        config: dict[str, Any] = {"device": self.cfg.device, "variant": self.cfg.variant}
        if self.cfg.workers > 1:  # each worker's session gets its share of the cores
            config["threads"] = max(1, (os.cpu_count() or 1) // self.cfg.workers)
        return config

    def load(self, version: str, run_id: str | None) -> LoadedModel:
        import mlflow

        mlflow.set_registry_uri(self.uri)
        mlflow.set_tracking_uri(self.uri)
        try:  # the files are checked against the digest recorded at registration before MLflow runs or unpickles any
            impl = load_verified(self.client, self.name, version, self.model_config())
        except ArtifactIntegrityError as e:
            raise RegistryError(f"{self.name} v{version} cannot be served: {e}") from None
        model = LoadedModel(name=self.name, version=version, run_id=run_id, impl=impl)
        texts = list(self.cfg.warmup_texts)  # warm-up: first-run allocations, kernel selection
        model.impl.predict_proba(texts, texts[::-1] if model.impl.spec.pairs else None)
        return model


MAX_BACKOFF_S = 600.0
"""The longest wait before a version that failed to load (a corrupt artifact, a bad bundle) is tried again:
each retry downloaded the whole version, every poll, for as long as the alias pointed at it."""


class Watcher:
    """Polls the registry and swaps in new versions.

    A new version normally loads and warms on a side thread while the old one keeps serving. With
    ``exclusive`` (the model runs as CUDA graphs) it loads on the inference thread instead: a CUDA
    graph capture must not overlap CUDA work from another thread, so requests wait out the load."""

    def __init__(self, source: RegistrySource, batcher: MicroBatcher, metrics: Metrics, interval: float,
                 exclusive: bool = False) -> None:
        self.source, self.batcher, self.metrics, self.interval = source, batcher, metrics, interval
        self.exclusive = exclusive
        self._lock = threading.Lock()
        self._failed: dict[str, tuple[int, float]] = {}
        """version → (failed loads, monotonic time of the next try)."""
        self._task: asyncio.Task | None = None

    def load_initial(self) -> LoadedModel:
        version, run_id = self.source.current_version()
        model = self.source.load(version, run_id)
        self._install(model)
        return model

    def _install(self, model: LoadedModel) -> None:
        self.batcher.model = model  # atomic reference swap
        self.metrics.version.set(float(model.version))

    def check_once(self) -> bool:
        """Load and swap in a new version if the reference moved; True when a swap happened."""
        with self._lock:
            version, run_id = self.source.current_version()
            current = self.batcher.model
            if current is not None and current.version == version:
                return False
            failed = self._failed.get(version)
            if failed is not None and time.monotonic() < failed[1]:
                return False  # a version that failed to load is retried with back-off, not downloaded each poll
            try:
                model = self.source.load(version, run_id)  # loaded + warmed beside the old one
            except Exception:
                tries = (failed[0] + 1) if failed else 1
                self._failed[version] = (tries, time.monotonic() + min(MAX_BACKOFF_S, self.interval * 2 ** tries))
                raise
            self._failed.pop(version, None)
            self._install(model)
            self.metrics.swaps.inc()
            log.info("swapped %s: v%s → v%s", self.source.name, current.version if current else None, version)
            return True

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="registry-watcher")

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                await asyncio.sleep(self.interval)
                await loop.run_in_executor(self.batcher.executor if self.exclusive else None, self.check_once)
            except asyncio.CancelledError:
                return
            except Exception as e:  # noqa: BLE001 - keep serving the current model
                self.metrics.swap_failures.inc()
                log.warning("registry poll failed, still serving the current model: %s", e)

    async def stop(self) -> None:
        await cancel_task(self._task)
