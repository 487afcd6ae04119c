"""``forgeline serve --workers N``: N serving processes on one port, each with its own event loop,
micro-batcher, ONNX Runtime session and registry watcher.

Why processes: one process spends most of a single-text request in Python (HTTP parsing, JSON,
validation, the response), not in the model: on the H100 one process answered 421 requests/s at
concurrency 8 while the model alone does 18K texts/s. Processes multiply that Python budget by the
cores there are; each GPU worker holds its own session (a MiniLM session is about 100 MB of GPU memory).

- Each worker binds the port with ``SO_REUSEPORT`` and the kernel spreads new connections over them
  by their address hash. A shared listening socket was the alternative; with it, the event loop that
  woke first accepted a whole burst of connections (asyncio accepts up to 100 per wake-up), so a few
  keep-alive clients could all land on one worker.
- The supervisor (this process) checks the port and the model reference first, starts the workers,
  and waits until every one has loaded and warmed its model; a worker that fails start-up stops them
  all with that worker's error (one message, exit 2), so a corrupt version is refused as with one process.
- SIGTERM/SIGINT: every worker drains (readiness 503, queued requests answered) and exits; then the
  supervisor exits 0. A worker that dies while serving is restarted; more than ``MAX_RESTARTS`` deaths
  within ``RESTART_WINDOW_S`` stop the server with an error instead of restarting for ever.
- Hot swap: each worker polls the alias and swaps on its own; for up to one poll interval workers may
  answer from different versions (every response names its version).
- ``/metrics`` adds up all workers (prometheus_client's multiprocess mode over a private folder).
- ``--shadow`` runs in worker 0 only, on the share of traffic that worker answers, so one process
  logs the shadow numbers to MLflow; the traffic log is written by every worker (file names hold the pid).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import shutil
import signal
import socket
import tempfile
import time
from multiprocessing.connection import wait
from typing import Any

from forgeline.config.schema import ServeConfig
from forgeline.errors import ForgelineError
from forgeline.serving.metrics import METRICS_ENV

log = logging.getLogger("forgeline.serve")

MAX_RESTARTS = 5
RESTART_WINDOW_S = 60.0
STOP_TIMEOUT_S = 90.0
"""A worker's drain is bounded by uvicorn's 30 s graceful timeout plus the batcher's 30 s drain."""


class ServeError(ForgelineError):
    """The server could not start or keep its workers running."""


def port_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to (host, port) with ``SO_REUSEPORT``, not yet listening."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise ServeError(f"cannot listen on {host}:{port}: {e.strerror or e}; choose another --port") from None
    return sock


def _worker(cfg_json: str, index: int, port: int, conn) -> None:
    """One worker process: bind the port, build the app, serve until SIGTERM/SIGINT."""
    from forgeline.serving.app import create_app, run_server
    from forgeline.settings import die_with_parent

    # Its own process group: Ctrl-C reaches the supervisor alone, which drains the workers with one
    # SIGTERM each (a second SIGINT would make uvicorn skip the drain); a killed supervisor takes its
    # workers with it instead of leaving them serving an orphaned port.
    os.setpgrp()
    die_with_parent()
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s %(levelname)s %(name)s [worker {index}]: %(message)s")
    cfg = ServeConfig.model_validate_json(cfg_json).model_copy(update={"port": port})
    try:
        sock = port_socket(cfg.host, port)
        sock.listen(2048)
        app = create_app(cfg, shadow=index == 0, on_ready=lambda: conn.send(("ready", None)))
        run_server(app, cfg, sockets=[sock])
    except BaseException as e:  # noqa: BLE001 - the supervisor reports it as the server's error
        try:
            conn.send(("failed", e if isinstance(e, ForgelineError) else ServeError(f"worker {index}: {type(e).__name__}: {e}")))
        except Exception:  # noqa: BLE001 - the supervisor still sees the exit code
            pass
        os._exit(2)


class _Workers:
    def __init__(self, cfg: ServeConfig, port: int) -> None:
        self.cfg, self.port = cfg, port
        self.ctx = multiprocessing.get_context("spawn")  # no CUDA or ORT state inherited through fork
        self.procs: dict[int, Any] = {}
        self.conns: dict[int, Any] = {}

    def start(self, index: int) -> None:
        parent, child = self.ctx.Pipe(duplex=False)
        proc = self.ctx.Process(target=_worker, args=(self.cfg.model_dump_json(), index, self.port, child),
                                name=f"forgeline-serve-{index}", daemon=False)
        proc.start()
        child.close()
        self.procs[index], self.conns[index] = proc, parent

    def wait_ready(self, indices: list[int], timeout: float) -> None:
        """Until each of ``indices`` said it is ready; a failure or an early exit raises."""
        pending = set(indices)
        deadline = time.monotonic() + timeout
        while pending:
            left = deadline - time.monotonic()
            if left <= 0:
                raise ServeError(f"worker(s) {sorted(pending)} not ready within {timeout:.0f} s")
            ready = wait([self.conns[i] for i in pending] + [self.procs[i].sentinel for i in pending], left)
            for i in list(pending):
                if self.conns[i] in ready:
                    try:
                        kind, error = self.conns[i].recv()
                    except EOFError:
                        kind, error = "failed", None
                    if kind == "ready":
                        pending.discard(i)
                        continue
                    raise error or ServeError(f"worker {i} exited during start-up; see its log above")
                if self.procs[i].sentinel in ready and not self.conns[i].poll():
                    self.procs[i].join()
                    raise ServeError(f"worker {i} exited with code {self.procs[i].exitcode} during start-up; "
                                     "see its log above")

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> bool:
        """SIGTERM to every worker, then wait; True when all drained and exited 0."""
        for proc in self.procs.values():
            if proc.is_alive():
                os.kill(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        clean = True
        for proc in self.procs.values():
            proc.join(max(0.0, deadline - time.monotonic()))
            if proc.is_alive():
                log.warning("worker %s did not stop within %.0f s; killing it", proc.name, timeout)
                proc.kill()
                proc.join()
            clean = clean and proc.exitcode == 0
        return clean


def serve_workers(cfg: ServeConfig) -> int:
    """Run ``cfg.workers`` serving processes on one port until SIGTERM/SIGINT; 0 when all drained."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s [supervisor]: %(message)s")
    reserved = port_socket(cfg.host, cfg.port)  # bound, never listening: holds the port, takes no connections
    port = reserved.getsockname()[1]
    metrics_dir = tempfile.mkdtemp(prefix="forgeline-metrics-")
    previous_env = os.environ.get(METRICS_ENV)
    os.environ[METRICS_ENV] = metrics_dir  # inherited by the spawned workers before they import prometheus_client
    stopping: list[int] = []

    def on_signal(sig, frame) -> None:
        stopping.append(sig)

    handlers = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    workers = _Workers(cfg, port)
    try:
        for i in range(cfg.workers):
            workers.start(i)
        try:
            workers.wait_ready(list(range(cfg.workers)), timeout=600)
            log.info("serving on http://%s:%d with %d workers", cfg.host, port, cfg.workers)
            _supervise(workers, metrics_dir, stopping)
        except BaseException:  # a failed start-up or restart: no worker outlives the supervisor
            workers.stop(timeout=10)
            raise
        log.info("%s: draining %d workers", signal.Signals(stopping[0]).name, len(workers.procs))
        clean = workers.stop()
        log.info("all workers stopped")
        return 0 if clean else 1
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
        reserved.close()
        if previous_env is None:
            os.environ.pop(METRICS_ENV, None)
        else:
            os.environ[METRICS_ENV] = previous_env
        shutil.rmtree(metrics_dir, ignore_errors=True)


def _supervise(workers: _Workers, metrics_dir: str, stopping: list[int]) -> None:
    """Restart workers that die, until a signal arrives; too many deaths raise."""
    deaths: list[float] = []
    while not stopping:
        sentinels = {p.sentinel: i for i, p in workers.procs.items()}
        for sentinel in wait(list(sentinels), timeout=0.5):
            if stopping:
                return
            i = sentinels[sentinel]
            proc = workers.procs[i]
            proc.join()
            _forget_metrics(metrics_dir, proc.pid)
            now = time.monotonic()
            deaths = [t for t in deaths if now - t < RESTART_WINDOW_S] + [now]
            if len(deaths) > MAX_RESTARTS:
                raise ServeError(f"workers died {len(deaths)} times within {RESTART_WINDOW_S:.0f} s "
                                 f"(last: worker {i}, exit code {proc.exitcode}); stopped. See the log above")
            log.warning("worker %d exited with code %s while serving; restarting it", i, proc.exitcode)
            workers.start(i)
            workers.wait_ready([i], timeout=600)


def _forget_metrics(directory: str, pid: int) -> None:
    """A dead worker's gauges (in flight, ready, version) must not count; its counters stay summed."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid, directory)


def serve(cfg: ServeConfig) -> int:
    """`forgeline serve`: one process, or ``cfg.workers`` of them on one port."""
    if cfg.workers > 1:
        return serve_workers(cfg)
    from forgeline.serving.app import create_app, run_server

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    run_server(create_app(cfg), cfg)
    return 0
