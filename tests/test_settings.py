"""Tracking-store checks made before any work starts."""

from __future__ import annotations

import socket

import pytest

from forgeline.errors import ConfigError
from forgeline.config.schema import TrackingConfig
from forgeline.settings import ensure_workdir, require_reachable


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
    from forgeline.cli import main

    uri = f"http://127.0.0.1:{closed_port()}"
    assert main(["run", "--config", "tiny", "--set", f"tracking.tracking_uri={uri}"]) == 2
    captured = capsys.readouterr()
    assert f"MLflow tracking server {uri} is not reachable" in captured.err
    assert "Starting temporary server" not in captured.out + captured.err


def test_an_unusable_workdir_is_a_config_error_before_anything_starts(tmp_path, capsys):
    from forgeline.cli import main

    (tmp_path / "a-file").write_text("")
    workdir = tmp_path / "a-file" / "wd"
    with pytest.raises(ConfigError, match="cannot be used: Not a directory"):
        ensure_workdir(TrackingConfig(workdir=str(workdir)))
    assert main(["run", "--config", "tiny", "--set", f"tracking.workdir={workdir}", "--set", "tracking.tracking_uri=null"]) == 2
    captured = capsys.readouterr()
    assert "tracking.workdir" in captured.err and "writable directory" in captured.err
    assert "Starting temporary server" not in captured.out + captured.err
    assert ensure_workdir(TrackingConfig(workdir=str(tmp_path / "new" / "wd"))).is_dir()
