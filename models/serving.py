"""HTTP serving of a registered ONNX classifier with dynamic micro-batching and registry hot-swap.

- ``POST /v1/predict`` ``{"texts": [...]}`` → labels + probabilities; bad input is a 4xx with a reason.
- ``/healthz`` (process up), ``/readyz`` (model loaded and warmed, not draining), ``/v1/model``, ``/metrics``.
- Requests are queued and grouped into batches of at most ``max_batch_size`` texts, waiting at most
  ``max_wait_ms`` for a batch to fill; one inference thread runs the batches.
- A watcher polls the alias (``NAME@champion``); a new version is loaded and warmed beside the old
  one, then swapped in with one reference assignment: batches already running finish on the old model,
  later ones use the new, so no request fails during a swap.
- On shutdown (SIGTERM/SIGINT via uvicorn) readiness turns 503, queued requests are answered, then the
  process exits 0.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response

from config.schema import ServeConfig

log = logging.getLogger("forgeline.serve")


class BadRequest(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def parse_model_ref(ref: str) -> tuple[str, str | None, str | None]:
    """``NAME@alias`` → (name, alias, None); ``NAME/3`` → (name, None, "3")."""
    ref = ref.removeprefix("models:/")
    if "@" in ref:
        name, alias = ref.rsplit("@", 1)
        if name and alias:
            return name, alias, None
    elif "/" in ref:
        name, version = ref.rsplit("/", 1)
        if name and version.isdigit():
            return name, None, version
    raise ValueError(f"model reference {ref!r}: use NAME@alias (e.g. my-model@champion) or NAME/VERSION")


def open_registry(uri: str):
    """An MlflowClient on ``uri``. A SQLite store must already exist: MLflow would otherwise create an
    empty one, and a typo in the path would read as "no such model"."""
    from mlflow.tracking import MlflowClient

    from config.errors import RegistryError

    from tasks.tracking import require_reachable, sqlite_file

    require_reachable(uri)
    db = sqlite_file(uri)
    if db is not None and not os.path.exists(db):
        raise RegistryError(f"no MLflow store at {uri}: {db} does not exist. Pass --tracking-uri (or set "
                            "MLFLOW_TRACKING_URI) to the store `forgeline run` wrote, e.g. sqlite:///.forgeline/mlflow.db")
    return MlflowClient(uri, uri)


def resolve_version(client, uri: str, name: str, alias: str | None, version: str | None):
    """The registered ModelVersion for ``NAME@alias`` / ``NAME/VERSION``, or a RegistryError that
    says what the store does hold (models, versions, aliases)."""
    from mlflow.exceptions import MlflowException

    from config.errors import RegistryError

    try:
        registered = client.get_registered_model(name)
    except MlflowException:
        try:
            names = sorted(m.name for m in client.search_registered_models(max_results=50))
        except MlflowException:
            names = []
        held = f"registered models there: {names}" if names else "it holds no registered model (run `forgeline run` first)"
        raise RegistryError(f"no registered model {name!r} in {uri}; {held}. "
                            "Pass --tracking-uri or set MLFLOW_TRACKING_URI for another store") from None
    try:
        if alias is not None:
            return client.get_model_version_by_alias(name, alias)
        return client.get_model_version(name, version)
    except MlflowException:
        if alias is not None:
            aliases = sorted(getattr(registered, "aliases", {}) or {})
            raise RegistryError(f"model {name!r} has no alias @{alias} in {uri}; its aliases: "
                                f"{['@' + a for a in aliases] or 'none'}. Use one of them or NAME/VERSION") from None
        versions = sorted(int(v.version) for v in client.search_model_versions(f"name='{name}'"))
        raise RegistryError(f"model {name!r} has no version {version} in {uri}; its versions: {versions}") from None


# --- model loading -----------------------------------------------------------------------------------
@dataclass
class LoadedModel:
    name: str
    version: str
    run_id: str | None
    impl: Any  # models.onnx_pyfunc.OnnxTextClassifier, loaded
    loaded_at: float = field(default_factory=time.time)

    @property
    def labels(self) -> list[str]:
        return self.impl.labels

    def info(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "run_id": self.run_id, "labels": self.labels,
                "variant": self.impl.variant, "device": self.impl.device,
                "providers": list(self.impl.session.get_providers()),
                "loaded_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.loaded_at))}


class RegistrySource:
    """Resolves the configured reference to a version and loads that version through MLflow."""

    def __init__(self, cfg: ServeConfig) -> None:
        from tasks.tracking import resolve_tracking_uri
        from config.schema import TrackingConfig

        self.cfg = cfg
        self.name, self.alias, self.version = parse_model_ref(cfg.model)
        self.uri = cfg.tracking_uri or resolve_tracking_uri(TrackingConfig())
        self.client = open_registry(self.uri)

    def current_version(self) -> tuple[str, str | None]:
        mv = resolve_version(self.client, self.uri, self.name, self.alias, self.version)
        return str(mv.version), mv.run_id

    def load(self, version: str, run_id: str | None) -> LoadedModel:
        import tempfile

        import mlflow.pyfunc

        mlflow.set_registry_uri(self.uri)
        mlflow.set_tracking_uri(self.uri)
        # MLflow would download into a temporary folder it never removes (about 150 MB a version, each hot
        # swap); the sessions and the tokenizer are in memory once loaded, so the files can go
        with tempfile.TemporaryDirectory(prefix="forgeline-model-") as tmp:
            pyfunc = mlflow.pyfunc.load_model(f"models:/{self.name}/{version}", dst_path=tmp,
                                              model_config={"device": self.cfg.device, "variant": self.cfg.variant})
        model = LoadedModel(name=self.name, version=version, run_id=run_id, impl=pyfunc.unwrap_python_model())
        model.impl.predict_proba(self.cfg.warmup_texts)  # warm-up: first-run allocations, kernel selection
        return model


async def cancel_task(task: asyncio.Task | None) -> None:
    if task is None:
        return
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass


# --- micro-batching ----------------------------------------------------------------------------------
@dataclass
class _Pending:
    texts: list[str]
    future: asyncio.Future
    enqueued: float


class MicroBatcher:
    def __init__(self, max_batch: int, max_wait_ms: float, metrics: "Metrics") -> None:
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000.0
        self.metrics = metrics
        self.queue: asyncio.Queue[_Pending] = asyncio.Queue()
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="infer")
        self.model: LoadedModel | None = None
        self._task: asyncio.Task | None = None
        self._stopping = False
        self.in_flight = 0

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="micro-batcher")

    async def submit(self, texts: list[str]) -> tuple[np.ndarray, LoadedModel]:
        fut = asyncio.get_running_loop().create_future()
        self.in_flight += 1
        self.metrics.in_flight.set(self.in_flight)
        try:
            await self.queue.put(_Pending(texts, fut, time.perf_counter()))
            return await fut
        finally:
            self.in_flight -= 1
            self.metrics.in_flight.set(self.in_flight)

    async def _collect(self) -> list[_Pending]:
        first = await self.queue.get()
        batch, count = [first], len(first.texts)
        deadline = time.perf_counter() + self.max_wait
        # A lone request (nothing else outstanding) runs at once instead of waiting out max_wait.
        while count < self.max_batch and self.in_flight > 1:
            remaining = deadline - time.perf_counter()
            try:
                item = self.queue.get_nowait() if remaining <= 0 else await asyncio.wait_for(self.queue.get(), remaining)
            except (asyncio.TimeoutError, asyncio.QueueEmpty):
                break
            batch.append(item)
            count += len(item.texts)
        return batch

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if self._stopping and self.queue.empty():
                return
            try:
                batch = await self._collect()
            except asyncio.CancelledError:
                return
            model = self.model  # one read: this whole batch runs on one model version
            texts = [t for p in batch for t in p.texts]
            try:
                if model is None:
                    raise RuntimeError("no model loaded")
                proba = await loop.run_in_executor(self.executor, model.impl.predict_proba, texts)
            except Exception as e:  # noqa: BLE001 - fail these requests, keep serving
                log.exception("inference failed")
                for p in batch:
                    if not p.future.done():
                        p.future.set_exception(e)
                continue
            self.metrics.batch_size.observe(len(texts))
            start = 0
            for p in batch:
                if not p.future.done():
                    p.future.set_result((proba[start : start + len(p.texts)], model))
                start += len(p.texts)

    async def drain(self, timeout: float = 30.0) -> None:
        """Answer everything queued, then stop the batching loop."""
        self._stopping = True
        deadline = time.monotonic() + timeout
        while (not self.queue.empty() or self.in_flight) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        await cancel_task(self._task)
        self.executor.shutdown(wait=True)


# --- metrics -----------------------------------------------------------------------------------------
class Metrics:
    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        self.requests = Counter("forgeline_requests", "Predict requests by HTTP status", ["status"], registry=self.registry)
        self.texts = Counter("forgeline_texts", "Texts classified", registry=self.registry)
        self.latency = Histogram("forgeline_request_seconds", "Predict request latency", registry=self.registry,
                                 buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
        self.batch_size = Histogram("forgeline_batch_texts", "Texts per inference batch", registry=self.registry,
                                    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512))
        self.version = Gauge("forgeline_model_version", "Model version being served", registry=self.registry)
        self.swaps = Counter("forgeline_model_swaps", "Successful model swaps", registry=self.registry)
        self.swap_failures = Counter("forgeline_model_swap_failures", "Failed model loads while polling",
                                     registry=self.registry)
        self.ready = Gauge("forgeline_ready", "1 when serving traffic", registry=self.registry)
        self.in_flight = Gauge("forgeline_in_flight_requests", "Predict requests waiting for or in inference",
                               registry=self.registry)


# --- hot swap ----------------------------------------------------------------------------------------
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
            model = self.source.load(version, run_id)  # loaded + warmed beside the old one
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


# --- request validation ------------------------------------------------------------------------------
def parse_predict_body(body: bytes, content_type: str | None, cfg: ServeConfig) -> list[str]:
    media = (content_type or "").split(";")[0].strip().lower()
    if media != "application/json":
        raise BadRequest(415, f"Content-Type must be application/json, got {content_type or 'none'!r}")
    if len(body) > cfg.max_body_bytes:
        raise BadRequest(413, f"request body is {len(body)} bytes; the limit is {cfg.max_body_bytes}")
    try:
        payload = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise BadRequest(400, f"body is not valid JSON: {e}") from None
    if not isinstance(payload, dict):
        raise BadRequest(422, 'body must be a JSON object like {"texts": ["..."]}')
    if "texts" not in payload:
        raise BadRequest(422, 'missing field "texts": send {"texts": ["..."]}')
    extra = sorted(set(payload) - {"texts"})
    if extra:
        raise BadRequest(422, f"unknown field(s) {extra}; only \"texts\" is accepted")
    texts = payload["texts"]
    if not isinstance(texts, list):
        raise BadRequest(422, f'"texts" must be a list of strings, got {type(texts).__name__}')
    if not texts:
        raise BadRequest(422, '"texts" is empty; send at least one text')
    if len(texts) > cfg.max_texts_per_request:
        raise BadRequest(413, f'"texts" has {len(texts)} items; at most {cfg.max_texts_per_request} per request')
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise BadRequest(422, f'"texts"[{i}] must be a string, got {type(t).__name__}')
        if len(t) > cfg.max_text_chars:
            raise BadRequest(413, f'"texts"[{i}] has {len(t)} characters; the limit is {cfg.max_text_chars}')
    return texts


# --- app ---------------------------------------------------------------------------------------------
def create_app(cfg: ServeConfig, source: RegistrySource | None = None):
    metrics = Metrics()
    state: dict[str, Any] = {"ready": False, "draining": False}

    @asynccontextmanager
    async def lifespan(app):
        src = source or RegistrySource(cfg)
        batcher = MicroBatcher(cfg.max_batch_size, cfg.max_wait_ms, metrics)
        watcher = Watcher(src, batcher, metrics, cfg.poll_interval_s)
        loop = asyncio.get_running_loop()
        model = await loop.run_in_executor(None, watcher.load_initial)
        watcher.exclusive = getattr(model.impl, "graphs", None) is not None
        log.info("serving %s v%s (%s on %s)", model.name, model.version, model.impl.variant, model.impl.device)
        batcher.start()
        watcher.start()
        state.update(batcher=batcher, watcher=watcher, ready=True)
        metrics.ready.set(1)
        try:
            yield
        finally:
            state.update(ready=False, draining=True)
            metrics.ready.set(0)
            await watcher.stop()
            await batcher.drain()
            log.info("drained; exiting")

    app = FastAPI(title="forgeline serving", lifespan=lifespan)

    def error(status: int, message: str) -> JSONResponse:
        metrics.requests.labels(str(status)).inc()
        return JSONResponse({"error": message}, status_code=status)

    @app.post("/v1/predict")
    async def predict(request: Request):
        start = time.perf_counter()
        if state["draining"] or not state["ready"]:
            return error(503, "server is not ready (starting or shutting down); retry")
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > cfg.max_body_bytes:
            return error(413, f"request body is {declared} bytes; the limit is {cfg.max_body_bytes}")
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > cfg.max_body_bytes:
                return error(413, f"request body exceeds the limit of {cfg.max_body_bytes} bytes")
        try:
            texts = parse_predict_body(bytes(body), request.headers.get("content-type"), cfg)
        except BadRequest as e:
            return error(e.status, e.message)
        try:
            proba, model = await state["batcher"].submit(texts)
        except Exception as e:  # noqa: BLE001
            return error(503, f"inference failed: {e}")
        labels = model.labels
        idx = proba.argmax(axis=1)
        preds = [{"label": labels[int(j)], "confidence": float(row[j]),
                  "probabilities": {lab: float(p) for lab, p in zip(labels, row)}} for row, j in zip(proba, idx)]
        metrics.requests.labels("200").inc()
        metrics.texts.inc(len(texts))
        metrics.latency.observe(time.perf_counter() - start)
        return {"model": model.name, "version": model.version, "predictions": preds}

    @app.get("/healthz")
    async def healthz():
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz():
        if state["ready"] and not state["draining"]:
            return {"status": "ready", "version": state["batcher"].model.version}
        return JSONResponse({"status": "draining" if state["draining"] else "starting"}, status_code=503)

    @app.get("/v1/model")
    async def model_info():
        batcher = state.get("batcher")
        if batcher is None or batcher.model is None:
            return JSONResponse({"error": "no model loaded yet"}, status_code=503)
        return batcher.model.info() | {"reference": cfg.model}

    @app.get("/metrics")
    async def prometheus():
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception):  # pragma: no cover - last resort
        log.exception("unhandled error")
        return PlainTextResponse("internal error", status_code=500)

    app.state.metrics = metrics
    app.state.serve_state = state
    return app


def serve(cfg: ServeConfig) -> int:
    import uvicorn

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    class _Server(uvicorn.Server):
        """SIGTERM/SIGINT: stop accepting, finish in-flight requests, drain the batcher (lifespan exit),
        then return normally so the process exits 0 (plain uvicorn re-raises the signal afterwards)."""

        @contextmanager
        def capture_signals(self):
            import signal

            if threading.current_thread() is not threading.main_thread():
                yield
                return
            previous = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
            try:
                yield
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)

    config = uvicorn.Config(create_app(cfg), host=cfg.host, port=cfg.port, log_level="info",
                            timeout_graceful_shutdown=30, limit_concurrency=2048)
    _Server(config).run()
    return 0
