"""A real `forgeline serve` process on a loopback port, and a registry holding one champion."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import mlflow
import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import make_bundle, register_version, sqlite_store

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, uri: str, model: str, *sets: str, log: Path, extra: list[str] | None = None,
                 env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = os.environ | {"MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false", "PYTHONUNBUFFERED": "1"} | (env or {})
        args = [sys.executable, "-m", "forgeline.cli", "serve", "-m", model, "--tracking-uri", uri, "--port", str(self.port)]
        for s in sets:
            args += ["--set", s]
        args += extra or []
        self.log = log
        self.proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)
        deadline = time.time() + 120
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited early:\n{log.read_text()}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.proc.kill()
        raise RuntimeError(f"server not ready in time:\n{log.read_text()}")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return -9


def make_registry(folder: Path, bundle) -> tuple[str, MlflowClient]:
    """A SQLite registry in ``folder`` whose model ``m`` has one version, the champion."""
    uri = sqlite_store(folder / "mlflow.db")
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    client = MlflowClient(uri, uri)
    register_version(client, bundle, bundle[1], 0.80)
    return uri, client


@pytest.fixture
def registry(tmp_path, bundle):
    return make_registry(tmp_path, bundle)


def module_server(tmp_path_factory, trained, exported, name: str, *sets: str, env: dict[str, str] | None = None):
    """A server, and a registry of its own whose champion is the session's model, for a module's tests
    that only send requests (a server and its registry cost seconds): ``yield from`` it in a fixture."""
    folder = tmp_path_factory.mktemp(name)
    uri, _ = make_registry(folder, make_bundle(folder, trained, exported))
    srv = Server(uri, "m@champion", *sets, log=folder / "server.log", env=env)
    yield srv
    assert srv.stop() == 0, srv.log.read_text()
