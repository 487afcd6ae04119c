"""Shadow traffic and the traffic log on a real server over loopback."""

from __future__ import annotations

import threading
import time

import httpx
import pyarrow.parquet as pq
import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import register_version
from tests.serving.conftest import Server

TEXTS = ["the service is excellent and brilliant", "a dreadful, awful and slow journey", "the trip was fine"]


@pytest.fixture
def with_challenger(registry, bundle):
    """v1 champion; v2 the same network with its label names swapped, not promoted: challenger. It
    disagrees with the champion on every text, a known answer for the agreement rate."""
    uri, client = registry
    files, labels = bundle
    reg, run_id = register_version(client, bundle, labels[::-1], 0.50)
    assert reg.aliases == ["challenger"]
    return uri, client, run_id


def test_shadow_under_concurrent_load_changes_no_champion_response_and_records_agreement(tmp_path, with_challenger):
    uri, client, challenger_run = with_challenger
    baseline = Server(uri, "m@champion", log=tmp_path / "plain.log")
    try:
        expected = {t: httpx.post(f"{baseline.url}/v1/predict", json={"texts": [t]}).json()["predictions"][0] for t in TEXTS}
    finally:
        assert baseline.stop() == 0
    srv = Server(uri, "m@champion", "poll_interval_s=0.3", "shadow_log_s=0.5", log=tmp_path / "server.log",
                 extra=["--shadow", "challenger"])
    answers: list = []
    failures: list = []
    stop = threading.Event()

    def hammer(i: int) -> None:
        with httpx.Client(timeout=30) as c:
            while not stop.is_set():
                text = TEXTS[i % len(TEXTS)]
                r = c.post(f"{srv.url}/v1/predict", json={"texts": [text]})
                if r.status_code != 200:
                    failures.append(r.text)
                else:
                    answers.append((text, r.json()))

    try:
        workers = [threading.Thread(target=hammer, args=(i,)) for i in range(6)]
        for w in workers:
            w.start()
        time.sleep(3.0)
        stop.set()
        for w in workers:
            w.join()
        deadline = time.time() + 30
        while time.time() < deadline and httpx.get(f"{srv.url}/v1/shadow").json()["texts"] < 10:
            time.sleep(0.2)
        status = httpx.get(f"{srv.url}/v1/shadow").json()
        metrics = httpx.get(f"{srv.url}/metrics").text
    finally:
        assert srv.stop() == 0, srv.log.read_text()
    assert not failures and len(answers) > 20
    for text, body in answers:  # the champion's answers, exactly as without a shadow
        assert body["version"] == "1" and body["predictions"][0] == expected[text]
    assert status["version"] == "2" and status["problem"] is None
    assert status["texts"] >= 10 and status["agreement_rate"] == 0.0  # swapped label names: never the same
    sample = status["disagreements"][0]
    assert sample["champion"] != sample["shadow"] and sample["shadow_version"] == "2"
    assert "forgeline_shadow_agreement_rate 0.0" in metrics and 'forgeline_shadow_seconds_count{model="shadow"}' in metrics
    history = MlflowClient(uri).get_metric_history(challenger_run, "shadow.agreement_rate")
    assert history and all(m.value == 0.0 for m in history)
    assert MlflowClient(uri).get_metric_history(challenger_run, "shadow.challenger_ms_p50")[-1].value > 0


def test_a_shadow_alias_that_does_not_exist_is_reported_and_serving_goes_on(tmp_path, registry):
    uri, _ = registry
    srv = Server(uri, "m@champion", log=tmp_path / "server.log", extra=["--shadow", "nightly"])
    try:
        r = httpx.post(f"{srv.url}/v1/predict", json={"texts": TEXTS})
        deadline = time.time() + 30
        while time.time() < deadline and httpx.get(f"{srv.url}/v1/shadow").json()["problem"] == "not loaded yet":
            time.sleep(0.2)
        status = httpx.get(f"{srv.url}/v1/shadow").json()
    finally:
        assert srv.stop() == 0
    assert r.status_code == 200 and len(r.json()["predictions"]) == 3
    assert status["problem"].startswith("shadow m@nightly unavailable, champion unaffected") and "nightly" in status["problem"]
    assert "shadow m@nightly unavailable" in srv.log.read_text()


def test_the_server_logs_a_sample_of_traffic_to_parquet(tmp_path, registry):
    uri, _ = registry
    srv = Server(uri, "m@champion", f"log_dir={tmp_path / 'traffic'}", "log_max_rows=5", log=tmp_path / "server.log",
                 extra=["--log-sample", "1.0"])
    try:
        for i in range(3):
            assert httpx.post(f"{srv.url}/v1/predict", json={"texts": [f"{t} ({i})" for t in TEXTS]}).status_code == 200
    finally:
        assert srv.stop() == 0  # shutdown writes what is queued
    files = sorted((tmp_path / "traffic").glob("traffic-*.parquet"))
    assert [pq.read_metadata(f).num_rows for f in files] == [5, 4]
    rows = [r for f in files for r in pq.read_table(f).to_pylist()]
    assert {r["text"] for r in rows} == {f"{t} ({i})" for t in TEXTS for i in range(3)}
    assert {r["version"] for r in rows} == {"1"} and all(0.0 < r["confidence"] <= 1.0 for r in rows)
