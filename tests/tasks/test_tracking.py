"""Tracking-store checks made before any work starts."""

from __future__ import annotations

import socket

import pytest

from config.errors import ConfigError
from tasks.tracking import require_reachable


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens once the socket is closed


def test_an_unreachable_tracking_server_fails_at_once_and_a_listening_one_passes():
    with pytest.raises(ConfigError, match="is not reachable"):
        require_reachable(f"http://127.0.0.1:{closed_port()}")
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        require_reachable(f"http://127.0.0.1:{listener.getsockname()[1]}")
    require_reachable("sqlite:////no/such/dir/mlflow.db")  # local stores are not network checks


def test_run_with_an_unreachable_server_stops_before_the_flow_starts(capsys):
    from flows.cli import main

    uri = f"http://127.0.0.1:{closed_port()}"
    assert main(["run", "--config", "tiny", "--set", f"tracking.tracking_uri={uri}"]) == 2
    captured = capsys.readouterr()
    assert f"MLflow tracking server {uri} is not reachable" in captured.err
    assert "Starting temporary server" not in captured.out + captured.err
