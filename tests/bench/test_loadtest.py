"""The load generator's argument checks (its runs against a real server are in test_serving.py)."""

from __future__ import annotations

import pytest

from forgeline.cli import main


@pytest.mark.parametrize("args, needle", [
    (["--concurrency", "0"], "--concurrency 0"),
    (["--requests", "-1", "--texts-per-request", "0"], "--requests -1, --texts-per-request 0"),
    (["--url", "http://example.com:8080"], "only target this machine's loopback"),
    (["--url", "https://127.0.0.1:8080"], "plain HTTP on loopback"),
    (["--concurrency", "2", "--processes", "3"], "--processes 3 is more than --concurrency 2"),
])
def test_bad_arguments_are_clear_errors(capsys, args, needle):
    assert main(["loadtest", *args]) == 2
    assert needle in capsys.readouterr().err
