"""The registry watcher's retry of a version that fails to load."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from forgeline.errors import RegistryError
from forgeline.serving.metrics import Metrics
from forgeline.serving.watcher import Watcher


class BadVersionSource:
    """The alias points at v2, whose files are corrupt: every load fails (and would download it again)."""

    name = "m"

    def __init__(self) -> None:
        self.loads = 0

    def current_version(self):
        return "2", "run2"

    def load(self, version, run_id):
        self.loads += 1
        raise RegistryError(f"m v{version} cannot be served: model.onnx does not match its checksum")


def test_a_version_that_fails_to_load_is_retried_with_back_off_not_downloaded_every_poll(monkeypatch):
    """Found by the reliability probe: the watcher downloaded a bad version again on every poll."""
    import forgeline.serving.watcher as watcher_module

    now = [1000.0]
    monkeypatch.setattr(watcher_module.time, "monotonic", lambda: now[0])
    source = BadVersionSource()
    serving = SimpleNamespace(version="1")
    watcher = Watcher(source, SimpleNamespace(model=serving), Metrics(), interval=10.0)
    tries = []
    for _poll in range(60):  # ten minutes of polls, one every 10 s
        try:
            watcher.check_once()
        except RegistryError:
            tries.append(now[0] - 1000.0)
        now[0] += 10.0
    assert tries == [0.0, 20.0, 60.0, 140.0, 300.0], "each retry waits twice as long (interval x 2^n)"
    assert source.loads == len(tries) and watcher.batcher.model is serving, "the old version keeps serving"
    for _ in range(5):  # much later: still tried, and never waits more than MAX_BACKOFF_S
        now[0] += 10_000
        with pytest.raises(RegistryError):
            watcher.check_once()
    assert watcher._failed["2"][1] - now[0] == watcher_module.MAX_BACKOFF_S
