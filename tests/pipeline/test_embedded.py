"""`forgeline run` on Prefect's temporary server, interrupted the way a terminal or a supervisor does it."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.e2e, pytest.mark.faults]


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.parametrize("sig, rc", [(signal.SIGINT, 130), (signal.SIGTERM, -signal.SIGTERM)], ids=["SIGINT", "SIGTERM"])
def test_interrupting_a_run_stops_it_promptly_and_marks_the_mlflow_run_killed(tmp_path, sig, rc):
    """The signal goes to the whole process group (Ctrl-C, `timeout`, `kill -- -PGID`). The temporary
    Prefect server must outlive it long enough for the flow to report the crash; before, the server died
    first and the flow retried against it for minutes."""
    log = tmp_path / "run.log"
    # no API URL (so the temporary server starts) and no MLflow URI left behind by earlier tests
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_API_URL", "MLFLOW_"))}
    env |= {"PYTHONUNBUFFERED": "1", "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "forgeline.cli", "run", "--config", "tiny", "--set", f"tracking.workdir={tmp_path / 'wd'}",
         "--set", f"tracking.tracking_uri=sqlite:///{tmp_path / 'wd' / 'mlflow.db'}"],
        cwd=ROOT, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # as in a terminal, not a background job
    )
    try:
        deadline = time.time() + 180
        while "MLflow run" not in log.read_text():
            assert proc.poll() is None and time.time() < deadline, log.read_text()
            time.sleep(0.2)
        port = int(re.search(r"temporary server on http://127\.0\.0\.1:(\d+)", log.read_text()).group(1))
        os.killpg(proc.pid, sig)
        assert proc.wait(timeout=60) == rc, log.read_text()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    text = log.read_text()
    assert "Crashed" in text and "All connection attempts failed" not in text, text
    deadline = time.time() + 10  # the server goes with the flow (atexit, or the kernel's parent-death signal)
    while _port_open(port) and time.time() < deadline:
        time.sleep(0.2)
    assert not _port_open(port)
    uri = f"sqlite:///{tmp_path / 'wd' / 'mlflow.db'}"
    client = MlflowClient(uri)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert [r.info.status for r in runs] == ["KILLED"]
    assert runs[0].data.tags["forgeline.error"].startswith(("KeyboardInterrupt", "TerminationSignal"))


@pytest.mark.parametrize("user_value, expected", [(None, "false"), ("true", "true")], ids=["default", "user-set"])
def test_temporary_server_runs_without_telemetry_unless_the_user_asks(user_value, expected):
    """Offline, the server's telemetry printed a 'Failed to send telemetry' ERROR into every run's log."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_API_URL", "PREFECT_SERVER_ANALYTICS"))}
    if user_value is not None:
        env["PREFECT_SERVER_ANALYTICS_ENABLED"] = user_value
    script = (
        "from forgeline.pipeline.embedded import start_temporary_server, server_pid\n"
        "assert start_temporary_server()\n"
        "environ = open(f'/proc/{server_pid()}/environ', 'rb').read().split(b'\\0')\n"
        "print([e.decode().split('=', 1)[1].lower() for e in environ if e.startswith(b'PREFECT_SERVER_ANALYTICS_ENABLED=')])\n"
    )
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == repr([expected])


def test_a_run_on_the_embedded_defaults_prints_no_library_warnings(tmp_path, tiny_bert, sentiment_csv):
    """The README's first command, on the tiny model with a student (distillation, INT8, fp16, the
    models-from-code pyfunc, registration): MLflow's cloudpickle and type-hint warnings, and any other
    library's, stay off the terminal (they go to the run's log file)."""
    from tests.conftest import small_overrides

    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_API_URL", "MLFLOW_", "PYTHONWARNINGS"))}
    env |= {"PYTHONUNBUFFERED": "1"}
    sets = small_overrides(tmp_path, sentiment_csv, f"model.base={tiny_bert}", "model.num_layers=null",
                           "train.learning_rate=3.0e-3", "train.epochs=2", "compress.student=true",
                           "compress.distill_epochs=1", "compress.max_macro_f1_drop=0.3")
    out = subprocess.run([sys.executable, "-m", "forgeline.cli", "run", "--config", "tiny",
                          *[a for s in sets for a in ("--set", s)]],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    text = out.stdout + out.stderr
    assert out.returncode == 0, text[-3000:]
    assert re.search(r"models:/\S+/1 \(@(champion|challenger)\)", out.stdout), text[-2000:]  # the CLI's last line
    noisy = [line for line in text.splitlines() if re.search(r"warn", line, re.IGNORECASE)]
    assert not noisy, noisy
