"""Long-running commands stop their whole process tree on SIGTERM sent to their PID alone, as a
supervisor or a container runtime sends it: no child survives and the port is free again."""

from __future__ import annotations

import os
import re
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

from tests.conftest import register_version

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.faults


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _stat(pid: int) -> list[str] | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").glob("[0-9]*"):
        fields = _stat(int(entry.name))
        if fields:
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def alive(pid: int) -> bool:
    fields = _stat(pid)
    return fields is not None and fields[0] != "Z"


def env() -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_API_URL", "MLFLOW_"))}
    return clean | {"PYTHONUNBUFFERED": "1", "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}


def answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def wait_for(check, proc: subprocess.Popen, log: Path, timeout: float = 180) -> None:
    deadline = time.time() + timeout
    while not check():
        assert proc.poll() is None and time.time() < deadline, log.read_text()[-4000:]
        time.sleep(0.3)


def sigterm_pid_only_and_check(proc: subprocess.Popen, port: int, log: Path, expected_rc: set[int]) -> None:
    tree = descendants(proc.pid)
    try:
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=90)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert rc in expected_rc, (rc, log.read_text()[-4000:])
    deadline = time.time() + 20
    while (any(alive(p) for p in tree) or port_open(port)) and time.time() < deadline:
        time.sleep(0.2)
    assert not [p for p in tree if alive(p)], log.read_text()[-4000:]
    assert not port_open(port)


def start(args: list[str], log: Path) -> subprocess.Popen:
    # its own session so that nothing the test sends reaches pytest, and a leftover can be killed by group
    return subprocess.Popen([sys.executable, "-m", "forgeline", *args], cwd=ROOT, env=env(), stdout=log.open("w"),
                            stderr=subprocess.STDOUT, start_new_session=True)


def test_ui(tmp_path):
    workdir = tmp_path / "wd"
    workdir.mkdir()
    MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}").create_experiment("forgeline")
    port, log = free_port(), tmp_path / "ui.log"
    proc = start(["ui", "--port", str(port), "--set", f"tracking.workdir={workdir}"], log)
    wait_for(lambda: answers(f"http://127.0.0.1:{port}/health"), proc, log)
    assert len(descendants(proc.pid)) >= 2  # mlflow ui and what it starts: the tree this test is about
    sigterm_pid_only_and_check(proc, port, log, {0, -signal.SIGTERM, 128 + signal.SIGTERM, 143})


def test_serve(tmp_path, bundle):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    register_version(MlflowClient(uri, uri), bundle, bundle[1], 0.9)
    port, log = free_port(), tmp_path / "serve.log"
    proc = start(["serve", "-m", "m@champion", "--tracking-uri", uri, "--port", str(port)], log)
    wait_for(lambda: answers(f"http://127.0.0.1:{port}/readyz"), proc, log)
    sigterm_pid_only_and_check(proc, port, log, {0})


def test_run_with_its_temporary_prefect_server(tmp_path):
    log = tmp_path / "run.log"
    proc = start(["run", "--config", "tiny", "--set", f"tracking.workdir={tmp_path / 'wd'}"], log)
    wait_for(lambda: "MLflow run" in log.read_text(), proc, log)
    port = int(re.search(r"temporary server on http://127\.0\.0\.1:(\d+)", log.read_text()).group(1))
    assert descendants(proc.pid)  # the temporary Prefect server
    sigterm_pid_only_and_check(proc, port, log, {-signal.SIGTERM, 143, 1})
