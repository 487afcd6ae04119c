"""HTTP serving of a registered ONNX classifier with dynamic micro-batching and registry hot-swap.

- ``POST /v1/predict`` ``{"texts": [...]}`` → labels + probabilities; bad input is a 4xx with a reason.
- ``/healthz`` (process up), ``/readyz`` (model loaded and warmed, not draining), ``/v1/model``, ``/metrics``.
- Requests are micro-batched (``forgeline.serving.batcher``).
- A watcher polls the alias (``NAME@champion``) and hot-swaps new versions (``forgeline.serving.watcher``):
  batches already running finish on the old model, later ones use the new, so no request fails.
- On shutdown (SIGTERM/SIGINT via uvicorn) readiness turns 503, queued requests are answered, then the
  process exits 0.
- ``workers`` > 1: that many processes each run this app on one port (``forgeline.serving.workers``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import time
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any, ClassVar

import orjson
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from starlette.requests import ClientDisconnect
from pydantic import BaseModel, Field

from forgeline.config.schema import ServeConfig
from forgeline.inference.text import RULES, text_problem
from forgeline.serving.batcher import MicroBatcher
from forgeline.serving.metrics import METRICS_ENV, Metrics
from forgeline.serving.shadow import Shadow
from forgeline.serving.traffic import TrafficLog
from forgeline.serving.watcher import RegistrySource, Watcher


log = logging.getLogger("forgeline.serve")


class BadRequest(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


# --- request validation ------------------------------------------------------------------------------
class RequestShape:
    """A request body's shape: its one field, an example, the JSON schema of an item, the items checked."""

    field: ClassVar[str]
    example: ClassVar[str]

    @staticmethod
    def item_schema(cfg: ServeConfig) -> dict[str, Any]:
        raise NotImplementedError

    @classmethod
    def items(cls, values: list, cfg: ServeConfig) -> list:
        raise NotImplementedError


class TextsRequest(RequestShape):
    """``{"texts": ["...", ...]}``: one text per input (single-text models of every task)."""

    field = "texts"
    example = '{"texts": ["..."]}'

    @staticmethod
    def item_schema(cfg: ServeConfig) -> dict[str, Any]:
        return {"type": "string", "minLength": 1, "maxLength": cfg.max_text_chars}

    @classmethod
    def items(cls, values: list, cfg: ServeConfig) -> list:
        for i, t in enumerate(values):
            _check_text(t, f'"texts"[{i}]', cfg)
        return values


class PairsRequest(RequestShape):
    """``{"pairs": [["text", "text_pair"], ...]}``: two texts per input (pair models)."""

    field = "pairs"
    example = '{"pairs": [["...", "..."]]}'

    @staticmethod
    def item_schema(cfg: ServeConfig) -> dict[str, Any]:
        text = TextsRequest.item_schema(cfg)
        return {"type": "array", "minItems": 2, "maxItems": 2, "items": text}

    @classmethod
    def items(cls, values: list, cfg: ServeConfig) -> list:
        out = []
        for i, pair in enumerate(values):
            if not (isinstance(pair, list) and len(pair) == 2):
                raise BadRequest(422, f'"pairs"[{i}] must be a list of two strings [text, text_pair], got '
                                      f'{type(pair).__name__}{f" of {len(pair)}" if isinstance(pair, list) else ""}')
            _check_text(pair[0], f'"pairs"[{i}][0]', cfg)
            _check_text(pair[1], f'"pairs"[{i}][1]', cfg)
            out.append((pair[0], pair[1]))
        return out


REQUESTS: dict[bool, type[RequestShape]] = {False: TextsRequest, True: PairsRequest}
"""The request shape of a model: by whether it scores text pairs (``OutputSpec.pairs``)."""


def _check_text(t: Any, where: str, cfg: ServeConfig) -> None:
    if not isinstance(t, str):
        raise BadRequest(422, f"{where} must be a string, got {type(t).__name__}")
    if len(t) > cfg.max_text_chars:
        # 422, not 413: the body may be small; this one text breaks a rule of the model's input, as an empty one does
        raise BadRequest(422, f"{where} has {len(t)} characters; the limit is {cfg.max_text_chars} (serving.max_text_chars)")
    problem = text_problem(t)
    if problem is not None:  # the rules training data is validated with: the model never saw such a text
        raise BadRequest(422, f"{where}: {RULES[problem]} ({problem}); training quarantines such texts")


def parse_predict_body(body: bytes, content_type: str | None, cfg: ServeConfig, pairs: bool = False) -> list:
    """The inputs of a predict request in the loaded model's shape (``REQUESTS``): texts, or
    (text, text_pair) tuples. A body of the other shape is a 422 naming the one this model takes."""
    shape, other = REQUESTS[pairs], REQUESTS[not pairs]
    media = (content_type or "").split(";")[0].strip().lower()
    if media != "application/json":
        raise BadRequest(415, f"Content-Type must be application/json, got {content_type or 'none'!r}")
    if len(body) > cfg.max_body_bytes:
        raise BadRequest(413, f"request body is {len(body)} bytes; the limit is {cfg.max_body_bytes}")
    try:
        payload = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise BadRequest(400, f"body is not valid JSON: {e}") from None
    except ValueError as e:  # e.g. an integer of more than 4300 digits (Python's int-parsing limit): was a 500
        raise BadRequest(422, f"body holds a value this server does not parse: {str(e).split(';')[0]}") from None
    if not isinstance(payload, dict):
        raise BadRequest(422, f"body must be a JSON object like {shape.example}")
    if shape.field not in payload:
        if other.field in payload:
            what = "text pairs" if pairs else "single texts"
            raise BadRequest(422, f'this model scores {what}: send {shape.example}, not "{other.field}"')
        raise BadRequest(422, f'missing field "{shape.field}": send {shape.example}')
    extra = sorted(set(payload) - {shape.field})
    if extra:
        raise BadRequest(422, f'unknown field(s) {extra}; only "{shape.field}" is accepted')
    values = payload[shape.field]
    if not isinstance(values, list):
        raise BadRequest(422, f'"{shape.field}" must be a list, got {type(values).__name__}')
    if not values:
        raise BadRequest(422, f'"{shape.field}" is empty; send at least one')
    if len(values) > cfg.max_texts_per_request:
        raise BadRequest(413, f'"{shape.field}" has {len(values)} items; at most {cfg.max_texts_per_request} per request')
    return shape.items(values, cfg)


# --- the API's shapes, for its OpenAPI document -----------------------------------------------------
# The body is parsed by hand above (each refusal says what is wrong and what to send); these models only
# describe the API, so that clients, and the Schemathesis run of tests/serving/test_fuzz_api.py, see
# every answer the server can give.
class Entity(BaseModel):
    """A span found in the text: ``text[start:end]`` (character offsets into the text as sent)."""

    label: str
    start: int
    end: int
    text: str
    score: float


class Prediction(BaseModel):
    """One input's answer, in its task's fields (``inference.tasks.OutputSpec.answers``): single_label
    ``label, confidence, probabilities``; multi_label ``labels, probabilities``; regression ``score``;
    token_classification ``entities``."""

    label: str | None = None
    confidence: float | None = None
    labels: list[str] | None = None
    probabilities: dict[str, float] | None = None
    score: float | None = None
    entities: list[Entity] | None = None


class PredictResponse(BaseModel):
    model: str
    version: str
    predictions: list[Prediction]


class ErrorBody(BaseModel):
    error: str


class Status(BaseModel):
    status: str
    version: str | None = None


class ModelInfo(BaseModel):
    name: str
    version: str
    run_id: str | None
    task: str
    labels: list[str]
    schema_: dict[str, Any] = Field(alias="schema")
    variant: str
    device: str
    providers: list[str]
    loaded_at: str
    reference: str


class ShadowStatus(BaseModel):
    reference: str
    version: str | None
    problem: str | None
    texts: int
    agreement_rate: float | None
    disagreements: list[dict[str, Any]]


def _ok(model: type) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI document's 200 response: ``model``'s shape."""
    return {200: {"model": model}}


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    why = {400: "not JSON, or not UTF-8", 401: "missing or wrong bearer token (when the server has one)",
           408: "body not received in time", 413: "too many texts, or a text or the body too long",
           415: "Content-Type is not application/json", 422: "valid JSON of the wrong shape, or a text training "
           "would have quarantined", 503: "starting, draining, or no model loaded"}
    return {c: {"model": ErrorBody, "description": why[c]} for c in codes}


def predict_request_schema(cfg: ServeConfig) -> dict[str, Any]:
    """``{"texts": [...]}`` or ``{"pairs": [[a, b], ...]}`` (``REQUESTS``; which one the loaded model takes
    is in ``/v1/model``), with this server's limits."""
    return {"oneOf": [{"type": "object", "additionalProperties": False, "required": [shape.field], "properties": {
        shape.field: {"type": "array", "minItems": 1, "maxItems": cfg.max_texts_per_request,
                      "items": shape.item_schema(cfg)}}} for shape in REQUESTS.values()]}


# --- authentication ----------------------------------------------------------------------------------
TOKEN_ENV = "FORGELINE_SERVE_TOKEN"
MIN_TOKEN_CHARS = 16


def serve_token() -> str | None:
    """The bearer token ``/v1/*`` requires, from $FORGELINE_SERVE_TOKEN (None: no authentication,
    for loopback and trusted networks). Probes (``/healthz``, ``/readyz``) and ``/metrics`` stay open
    for the orchestrator and Prometheus."""
    import os

    from forgeline.errors import ConfigError

    token = os.environ.get(TOKEN_ENV)
    if token is None:
        return None
    if len(token.strip()) < MIN_TOKEN_CHARS:
        raise ConfigError(f"${TOKEN_ENV} is {len(token.strip())} characters; use at least {MIN_TOKEN_CHARS} "
                          "random ones (e.g. `openssl rand -hex 24`), or unset it to serve without authentication")
    return token.strip()


def authorized(header: str | None, token: str | None) -> bool:
    import hmac

    if token is None:
        return True
    scheme, _, given = (header or "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode())


DOC_PATHS = frozenset({"/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"})
"""The API's description follows the token too: with one set, it is not for everyone who can connect."""


class _BearerAuth:
    """Plain ASGI middleware, added only when a token is set: Starlette's ``@app.middleware("http")``
    wraps every request in a task and stream pair, a cost the unauthenticated default must not pay."""

    def __init__(self, app, token: str, reject) -> None:
        self.app, self.token, self.reject = app, token, reject

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and (scope["path"].startswith("/v1/") or scope["path"] in DOC_PATHS):
            header = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"authorization"), None)
            if not authorized(header, self.token):
                await self.reject()(scope, receive, send)
                return
        await self.app(scope, receive, send)


# --- app ---------------------------------------------------------------------------------------------
def create_app(cfg: ServeConfig, source: RegistrySource | None = None, shadow: bool = True, on_ready=None):
    """``shadow``: whether this process runs ``cfg.shadow`` (with ``--workers``, worker 0 alone);
    ``on_ready``: called once the model is loaded and warmed (the supervisor waits for it)."""
    metrics = Metrics()
    token = serve_token()
    state: dict[str, Any] = {"ready": False, "draining": False}

    @asynccontextmanager
    async def lifespan(app):
        src = source or RegistrySource(cfg)
        batcher = MicroBatcher(cfg.max_batch_size, cfg.max_wait_ms, metrics, cfg.max_batch_chars)
        watcher = Watcher(src, batcher, metrics, cfg.poll_interval_s)
        loop = asyncio.get_running_loop()
        try:
            model = await loop.run_in_executor(None, watcher.load_initial)
        except Exception as e:
            app.state.startup_error = e  # serve() raises it once uvicorn has given up: one message, exit 2
            raise
        watcher.exclusive = getattr(model.impl, "graphs", None) is not None
        log.info("serving %s v%s (%s on %s)", model.name, model.version, model.impl.variant, model.impl.device)
        batcher.start()
        watcher.start()
        state.update(batcher=batcher, watcher=watcher, ready=True)
        if cfg.shadow and shadow:
            state["shadow"] = Shadow(cfg, metrics, type(source) if source is not None else RegistrySource)
            state["shadow"].start()
        if cfg.log_sample > 0:
            directory = cfg.log_dir or str(Path(cfg.tracking.workdir) / "traffic")
            state["traffic"] = TrafficLog(directory, cfg.log_sample, cfg.log_rotate_s, cfg.log_max_rows,
                                          cfg.log_max_files, metrics)
            log.info("traffic log: %.0f%% of texts to %s", 100 * cfg.log_sample, Path(directory).resolve())
        metrics.ready.set(1)
        if on_ready is not None:
            on_ready()
        try:
            yield
        finally:
            state.update(ready=False, draining=True)
            metrics.ready.set(0)
            await watcher.stop()
            await batcher.drain()
            for side in ("shadow", "traffic"):  # after the drain: the last answers are shadowed and logged too
                if side in state:
                    await loop.run_in_executor(None, state[side].close)
            log.info("drained; exiting")

    app = FastAPI(title="forgeline serving", lifespan=lifespan)

    def error(status: int, message: str) -> JSONResponse:
        metrics.requests.labels(str(status)).inc()
        headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
        return JSONResponse({"error": message}, status_code=status, headers=headers)

    if token is not None:
        app.add_middleware(_BearerAuth, token=token, reject=lambda: error(
            401, f"missing or wrong bearer token: send `Authorization: Bearer <token>` (${TOKEN_ENV} on the server)"))

    auth = (401,) if token is not None else ()

    @app.post("/v1/predict", response_model=None,
              responses=_ok(PredictResponse) | _errors(400, *auth, 408, 413, 415, 422, 503),
              openapi_extra={"requestBody": {"required": True, "content": {
                  "application/json": {"schema": predict_request_schema(cfg)}}}})
    async def predict(request: Request):
        start = time.perf_counter()
        if state["draining"] or not state["ready"]:
            return error(503, "server is not ready (starting or shutting down); retry")
        if state["batcher"].in_flight >= cfg.max_in_flight:
            return error(503, f"server is at its limit of {cfg.max_in_flight} requests in flight (max_in_flight); retry")
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > cfg.max_body_bytes:
            return error(413, f"request body is {declared} bytes; the limit is {cfg.max_body_bytes}")
        body = bytearray()
        try:  # a client sending one byte every few seconds held a connection (and a slot) for ever
            async with asyncio.timeout(cfg.body_timeout_s):
                async for chunk in request.stream():
                    body += chunk
                    if len(body) > cfg.max_body_bytes:
                        return error(413, f"request body exceeds the limit of {cfg.max_body_bytes} bytes")
        except TimeoutError:
            return error(408, f"request body not received within {cfg.body_timeout_s:g} s (serving.body_timeout_s)")
        except ClientDisconnect:  # gone, or closed by the protocol's body deadline (answered 408 there)
            return Response(status_code=499)
        current = state["batcher"].model
        try:
            texts = parse_predict_body(bytes(body), request.headers.get("content-type"), cfg,
                                       pairs=bool(current is not None and current.impl.spec.pairs))
        except BadRequest as e:
            return error(e.status, e.message)
        try:
            proba, model = await state["batcher"].submit(texts)
        except Exception as e:  # noqa: BLE001
            return error(503, f"inference failed: {e}")
        spec = model.impl.spec
        preds = spec.answers(proba)
        elapsed = time.perf_counter() - start
        metrics.requests.labels("200").inc()
        metrics.texts.inc(len(texts))
        metrics.latency.observe(elapsed)
        if "shadow" in state or "traffic" in state:  # both non-blocking: a put on a bounded queue
            decided = spec.decisions(proba)
            if "shadow" in state:
                state["shadow"].submit(texts, decided, model.version, elapsed)
            if "traffic" in state:
                logged, confidence = spec.logged(proba)
                firsts = texts if not texts or isinstance(texts[0], str) else [a for a, _ in texts]
                state["traffic"].record(model.name, model.version, firsts, logged, confidence)
        # orjson bytes straight out: FastAPI's encoder walked every float of a returned dict
        return Response(orjson.dumps({"model": model.name, "version": model.version, "predictions": preds}),
                        media_type="application/json")

    @app.get("/healthz", response_model=None, responses={200: {"model": Status}})
    async def healthz():
        return {"status": "ok"}

    @app.get("/readyz", response_model=None, responses={200: {"model": Status}, 503: {"model": Status}})
    async def readyz():
        if state["ready"] and not state["draining"]:
            return {"status": "ready", "version": state["batcher"].model.version}
        return JSONResponse({"status": "draining" if state["draining"] else "starting"}, status_code=503)

    @app.get("/v1/model", response_model=None, responses=_ok(ModelInfo) | _errors(*auth, 503))
    async def model_info():
        batcher = state.get("batcher")
        if batcher is None or batcher.model is None:
            return JSONResponse({"error": "no model loaded yet"}, status_code=503)
        return batcher.model.info() | {"reference": cfg.model}

    @app.get("/v1/shadow", response_model=None, responses={200: {"model": ShadowStatus}} | _errors(*auth) | {
        404: {"model": ErrorBody, "description": "the server runs no shadow model"}})
    async def shadow_info():
        if "shadow" not in state:
            return JSONResponse({"error": "no shadow model: start the server with --shadow ALIAS"}, status_code=404)
        return state["shadow"].status()

    @app.get("/metrics", response_class=PlainTextResponse,
             responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}, "description": "Prometheus"}})
    async def prometheus():
        import os

        from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
        from prometheus_client.multiprocess import MultiProcessCollector

        registry = metrics.registry
        if os.environ.get(METRICS_ENV):  # --workers: the sum over every worker, whichever one answers
            registry = CollectorRegistry()
            MultiProcessCollector(registry)
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception):  # pragma: no cover - last resort
        log.exception("unhandled error")
        return PlainTextResponse("internal error", status_code=500)

    app.state.metrics = metrics
    app.state.serve_state = state
    return app


def raise_open_files_limit() -> None:
    """Soft limit on open files up to the hard one: every connection, idle or not, is a descriptor, and
    the common soft default of 1,024 refused connections long before any other limit."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard if hard != resource.RLIM_INFINITY else 1 << 20, hard))


SMALL_BODY_BYTES = 65_536
"""Bodies up to this size are admitted on the count of bodies being received alone (see
``ServeConfig.max_receiving_bytes``): an ordinary request declares a few hundred bytes."""


def guarded_protocol(cfg: ServeConfig, metrics):
    """uvicorn's httptools protocol with the limits it lacks: a deadline for a request's headers
    (``header_timeout_s``, from the connection's start or the request's first byte) and a bound on their
    size (``max_header_bytes``); a deadline for its body (``body_timeout_s``, from the end of its headers)
    and a bound on the bodies being received at once, in number and declared bytes
    (``max_receiving_bodies``, ``max_receiving_bytes``: 503 beyond them, before a byte of the body is
    kept). Without them a client holding sockets open without a complete request (2,100 silent sockets,
    100 clients trickling a header byte a second, one 100 MB header; 2,000 bodies stalled 10,000 bytes
    short, +1.8 GB) kept them for as long as it liked. A response sent before its request's body was read
    (401, 413, 503) closes the connection instead of reading the rest. Rejections are counted
    (``forgeline_rejected_connections``) and logged at most once per 10 s per reason, not once per
    connection."""
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    receiving = {"bodies": 0, "bytes": 0}
    """Across the process's connections: bodies admitted and not yet received, and their declared bytes."""
    trim = _malloc_trim()

    said: dict[str, tuple[float, int]] = {}
    pending: dict[str, str] = {}
    """reason → the latest message not yet said: a burst's summary is written when its 10 s are up, not
    when the next rejection happens to arrive (29 s late in the probe)."""

    def flush(reason: str) -> None:
        message = pending.pop(reason, None)
        last, count = said.get(reason, (0.0, 0))
        if message is not None and count:
            log.warning("closed %d more connection(s) in the last 10 s: %s", count, message)
            said[reason] = (time.monotonic(), 0)

    def note(reason: str, message: str) -> None:
        metrics.rejected.labels(reason).inc()
        last, count = said.get(reason, (0.0, 0))
        now = time.monotonic()
        if now - last >= 10.0:
            log.warning("closed %d connection(s) in the last 10 s: %s", count + 1, message)
            said[reason] = (now, 0)
        else:
            said[reason] = (last, count + 1)
            if reason not in pending:
                asyncio.get_running_loop().call_later(10.0 - (now - last), flush, reason)
            pending[reason] = message

    class Guarded(HttpToolsProtocol):
        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._header_bytes = 0
            self._header_timer: asyncio.TimerHandle | None = None
            self._body_timer: asyncio.TimerHandle | None = None
            self._reserved = 0
            self._body_open = False
            self._refused = False
            self._awaiting_headers()

        def _awaiting_headers(self) -> None:
            self._in_headers = True
            self._header_bytes = 0
            if self._header_timer is None:
                self._header_timer = self.loop.call_later(cfg.header_timeout_s, self._headers_late)

        def _stop_timer(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def on_message_begin(self) -> None:
            super().on_message_begin()
            if not self._in_headers:  # the next request on a kept-alive connection
                self._awaiting_headers()

        def on_headers_complete(self) -> None:
            self._in_headers = False
            self._stop_timer()
            if self._refused:
                return
            expected, reserve = self._body_reservation()
            if reserve:
                large = reserve > SMALL_BODY_BYTES
                if receiving["bodies"] >= cfg.max_receiving_bodies or (
                        large and receiving["bytes"] + reserve > cfg.max_receiving_bytes):
                    self._refused = True  # the rest of this connection's bytes are not parsed into requests
                    self._reject(503, "Service Unavailable", "bodies_busy",
                                 f"{receiving['bodies']} request bodies ({receiving['bytes'] / 1e6:.0f} MB) are being "
                                 "received at once (max_receiving_bodies, max_receiving_bytes); retry")
                    return
                self._reserved = reserve
                receiving["bodies"] += 1
                receiving["bytes"] += reserve
            if expected:
                self._body_open = True
                self._body_timer = self.loop.call_later(cfg.body_timeout_s, self._body_late)
            super().on_headers_complete()

        def _body_reservation(self) -> tuple[bool, int]:
            """Whether a body follows, and the bytes it reserves: its declared length (a chunked one:
            ``max_body_bytes``); none for one over ``max_body_bytes``, which the app refuses at once (413)
            and whose connection then closes."""
            for name, value in self.headers:
                if name == b"content-length":
                    n = int(value) if value.isdigit() else 0
                    return n > 0, (n if n <= cfg.max_body_bytes else 0)
                if name == b"transfer-encoding" and b"chunked" in value.lower():
                    return True, cfg.max_body_bytes
            return False, 0

        def _release(self) -> None:
            if self._body_timer is not None:
                self._body_timer.cancel()
                self._body_timer = None
            if self._reserved:
                receiving["bodies"] -= 1
                receiving["bytes"] -= self._reserved
                large = self._reserved > SMALL_BODY_BYTES
                self._reserved = 0
                if large and receiving["bodies"] == 0:
                    trim()  # the freed buffers back to the OS once no body is being received

        def on_body(self, body: bytes) -> None:
            if not self._refused:
                super().on_body(body)

        def on_message_complete(self) -> None:
            if self._refused:
                return
            self._body_open = False
            self._release()
            super().on_message_complete()

        def on_response_complete(self) -> None:
            if self._body_open and not self.transport.is_closing():  # answered before its body was read
                self._body_open = False
                self._release()
                self.transport.close()
            super().on_response_complete()

        def _body_late(self) -> None:
            self._body_timer = None
            if self._body_open and self.cycle is not None and not self.cycle.response_complete:
                self._body_open = False
                self._release()
                self._refused = True
                self._reject(408, "Request Timeout", "body_timeout",
                             f"request body not received within {cfg.body_timeout_s:g} s (body_timeout_s)")

        def data_received(self, data: bytes) -> None:
            if self._in_headers:
                self._header_bytes += len(data)
            super().data_received(data)
            if self._in_headers and self._header_bytes > cfg.max_header_bytes:
                self._reject(431, "Request Header Fields Too Large", "header_too_large",
                             f"request line and headers exceed {cfg.max_header_bytes} bytes (max_header_bytes)")

        def connection_lost(self, exc) -> None:
            self._stop_timer()
            self._release()
            super().connection_lost(exc)

        def _headers_late(self) -> None:
            self._header_timer = None
            if self._in_headers:
                self._reject(408, "Request Timeout", "header_timeout",
                             f"no complete request headers within {cfg.header_timeout_s:g} s (header_timeout_s)")

        def _reject(self, status: int, phrase: str, reason: str, message: str) -> None:
            self._in_headers = False
            self._stop_timer()
            if self.transport.is_closing():
                return
            note(reason, f"{status}: {message}")
            body = orjson.dumps({"error": message})
            self.transport.write(b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
                                 b"connection: close\r\n\r\n%s" % (status, phrase.encode(), len(body), body))
            self.transport.close()

    return Guarded


def _malloc_trim():
    """glibc's ``malloc_trim(0)``, or a no-op elsewhere. Freed body buffers of a megabyte stay in the
    process's heap (glibc raises its mmap threshold after freeing a large block): after 2,000 stalled
    bodies were closed the server kept +1.8 GB."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return lambda: libc.malloc_trim(0)
    except (OSError, AttributeError):
        return lambda: None




def run_server(app, cfg: ServeConfig, sockets=None) -> None:
    """uvicorn until SIGTERM/SIGINT and the drain; a failed start-up raises its reason.
    ``sockets``: already bound ones (a ``--workers`` worker's), else uvicorn binds host:port."""
    import uvicorn

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

    held: list[logging.LogRecord] = []

    def no_startup_traceback(record: logging.LogRecord) -> bool:
        """Starlette reports a failed start-up with the whole traceback as the message, and uvicorn says it
        started, waits and failed: three lines before the CLI's one message. Its start-up lines are held
        until the start-up completes (then written), and dropped when it fails."""
        message = str(record.msg)
        if getattr(app.state, "startup_error", None) is not None:
            return "Traceback" not in message and not message.startswith("Application startup failed")
        if message.startswith(("Started server process", "Waiting for application startup")):
            held.append(record)
            return False
        if message.startswith("Application startup complete"):
            for early in held:
                for handler in logging.getLogger("uvicorn.error").handlers or logging.getLogger("uvicorn").handlers:
                    handler.handle(early)
            held.clear()
        return True

    logging.getLogger("uvicorn.error").addFilter(no_startup_traceback)
    # uvloop and httptools when installed (they are dependencies): at concurrency 1 on the 2-core CPU they
    # took a request from 2.42 to 1.55 ms p50 against asyncio + h11. The access log line per request cost
    # a quarter of the requests/s at concurrency 8 (913 vs 1,193 there); /metrics counts requests instead.
    raise_open_files_limit()
    config = uvicorn.Config(app, host=cfg.host, port=cfg.port, log_level="info", timeout_graceful_shutdown=30,
                            limit_concurrency=None,  # counted idle sockets; requests are bounded by max_in_flight
                            timeout_keep_alive=cfg.keep_alive_s,  # type: ignore[arg-type]  # uvicorn reads it as seconds, float or int access_log=cfg.access_log,
                            http=guarded_protocol(cfg, app.state.metrics))
    try:
        _Server(config).run(sockets=sockets)
    except SystemExit:  # uvicorn exits 3 when start-up fails; the reason is what the user needs
        error = getattr(app.state, "startup_error", None)
        if error is not None:
            raise error from None
        raise
