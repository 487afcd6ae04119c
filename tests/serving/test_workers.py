"""``forgeline serve --workers N``: real worker processes on one real loopback port."""

from __future__ import annotations

import json
import os
import signal
import threading
import time

import httpx
import pytest

from tests.conftest import register_version
from tests.serving.conftest import Server
from tests.serving.test_app import post


def scrape(url: str) -> dict[str, float]:
    """/metrics as {series: value} (series with its labels, as printed)."""
    out = {}
    for line in httpx.get(f"{url}/metrics").text.splitlines():
        if line and not line.startswith("#"):
            series, _, value = line.rpartition(" ")
            out[series] = float(value)
    return out


def worker_versions(metrics: dict[str, float]) -> dict[int, float]:
    """{worker pid: model version it serves}, from the per-pid version gauge."""
    return {int(k.split('pid="')[1].split('"')[0]): v for k, v in metrics.items() if k.startswith("forgeline_model_version{")}


@pytest.mark.e2e  # several real serve workers, a killed one and a drain
def test_workers_share_the_port_add_up_metrics_survive_a_killed_worker_hot_swap_and_drain(tmp_path, registry, bundle):
    uri, client = registry
    srv = Server(uri, "m@champion", "poll_interval_s=0.3", log=tmp_path / "workers.log", extra=["--workers", "2"])
    try:
        for i in range(30):  # a new connection each: the kernel spreads them over the workers
            r = post(srv.url, json.dumps({"texts": [f"the ride is wonderful and excellent {i}"]}))
            assert r.status_code == 200 and r.json()["version"] == "1"
        metrics = scrape(srv.url)
        assert metrics['forgeline_requests_total{status="200"}'] == 30  # whichever worker answered the scrape
        assert metrics["forgeline_ready"] == 2
        pids = worker_versions(metrics)
        assert len(pids) == 2 and set(pids.values()) == {1.0}, metrics

        victim = min(pids)
        os.kill(victim, signal.SIGKILL)  # a worker dies while serving: the other answers, it is restarted
        time.sleep(0.5)
        deadline = time.time() + 120
        while time.time() < deadline:
            assert post(srv.url, json.dumps({"texts": ["the trip is awful and horrible"]})).status_code == 200
            now = worker_versions(scrape(srv.url))
            if len(now) == 2 and victim not in now:
                break
            time.sleep(0.2)
        else:
            raise AssertionError(f"the killed worker was not replaced:\n{srv.log.read_text()[-3000:]}")
        assert "worker 0 exited with code -9 while serving; restarting it" in srv.log.read_text() or \
            "worker 1 exited with code -9 while serving; restarting it" in srv.log.read_text()

        stop = threading.Event()
        codes: list[int] = []
        versions: set[str] = set()

        def hammer() -> None:
            with httpx.Client(timeout=30) as c:
                while not stop.is_set():
                    r = c.post(f"{srv.url}/v1/predict", json={"texts": ["the service is excellent and brilliant"]})
                    codes.append(r.status_code)
                    if r.status_code == 200:
                        versions.add(r.json()["version"])

        threads = [threading.Thread(target=hammer) for _ in range(4)]
        for t in threads:
            t.start()
        reg, _ = register_version(client, bundle, bundle[1], 0.90)  # promoted: @champion moves to v2 under load
        assert reg.aliases == ["champion"]
        deadline = time.time() + 60
        while time.time() < deadline and set(worker_versions(scrape(srv.url)).values()) != {2.0}:
            time.sleep(0.2)
        time.sleep(0.5)
        stop.set()
        for t in threads:
            t.join()
        assert set(worker_versions(scrape(srv.url)).values()) == {2.0}  # every worker swapped
        assert codes and set(codes) == {200} and versions == {"1", "2"}, (set(codes), versions)
    finally:
        code = srv.stop()
    assert code == 0, srv.log.read_text()[-3000:]
    log = srv.log.read_text()
    assert log.count("drained; exiting") == 2 and "all workers stopped" in log
