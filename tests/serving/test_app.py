"""The HTTP server on a real loopback port, serving a model from a real MLflow registry."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import mlflow
import pytest
from mlflow.tracking import MlflowClient

from forgeline.config.schema import ServeConfig
from forgeline.registry.client import parse_model_ref
from forgeline.serving.app import BadRequest, parse_predict_body
from tests.conftest import register_version
from tests.serving.conftest import Server, free_port, module_server

ROOT = Path(__file__).resolve().parents[2]


LIMITS = ("poll_interval_s=0.3", "max_wait_ms=20", "max_texts_per_request=8", "max_text_chars=200",
          "max_body_bytes=6000", "body_timeout_s=2")


@pytest.fixture
def server(tmp_path, registry):
    """A server of its own, for tests that change the registry under it."""
    uri, _ = registry
    srv = Server(uri, "m@champion", *LIMITS, log=tmp_path / "server.log")
    yield srv
    assert srv.stop() == 0, srv.log.read_text()


@pytest.fixture(scope="module")
def shared_server(tmp_path_factory, trained, exported):
    """One server for the tests that only send requests."""
    yield from module_server(tmp_path_factory, trained, exported, "shared-server", *LIMITS)


def post(url: str, content, content_type: str | None = "application/json") -> httpx.Response:
    headers = {"content-type": content_type} if content_type else {}
    if isinstance(content, str):
        content = content.encode()
    return httpx.post(f"{url}/v1/predict", content=content, headers=headers, timeout=30)


BAD_INPUTS = [
    ("not json", "this is not json", "application/json", 400, "not valid JSON"),
    ("invalid utf-8", b'{"texts": ["\xff\xfe"]}', "application/json", 400, "not valid JSON"),
    ("deeply nested", "[" * 100_000 + "]" * 100_000, "application/json", 413, "limit"),
    ("nested too deep", "[" * 1500 + "]" * 1500, "application/json", 400, "not valid JSON"),
    ("nested array", "[" * 50 + "]" * 50, "application/json", 422, "JSON object"),
    ("missing field", '{"text": ["a"]}', "application/json", 422, 'missing field "texts"'),
    ("extra field", '{"texts": ["a"], "debug": true}', "application/json", 422, "unknown field"),
    ("array body", '["a", "b"]', "application/json", 422, "JSON object"),
    ("texts not a list", '{"texts": "a"}', "application/json", 422, "must be a list"),
    ("empty list", '{"texts": []}', "application/json", 422, "empty"),
    ("non-string", '{"texts": ["ok", 3]}', "application/json", 422, '"texts"[1] must be a string'),
    ("null text", '{"texts": [null]}', "application/json", 422, "must be a string"),
    ("too many texts", json.dumps({"texts": ["a"] * 9}), "application/json", 413, "at most 8"),
    ("oversize text", json.dumps({"texts": ["x" * 201]}), "application/json", 422, "201 characters"),
    ("oversize body", json.dumps({"texts": ["y" * 150] * 50}), "application/json", 413, "limit"),
    # Python refuses to parse integers of more than 4300 digits: was a 500
    ("5000-digit integer", '{"texts": [' + "9" * 5000 + ']}', "application/json", 422, "4300 digits"),
    ("wrong content type", '{"texts": ["a"]}', "text/plain", 415, "application/json"),
    ("no content type", '{"texts": ["a"]}', None, 415, "application/json"),
    ("empty body", "", "application/json", 400, "not valid JSON"),
    # the text rules data validation applies: such texts never reach the model
    ("empty text", '{"texts": ["fine", ""]}', "application/json", 422, '"texts"[1]: text is empty or whitespace only'),
    ("whitespace text", '{"texts": [" \\n\\t "]}', "application/json", 422, "(empty_text)"),
    ("NUL in text", '{"texts": ["a\\u0000b"]}', "application/json", 422, "(control_chars)"),
    ("lone surrogate", '{"texts": ["\\ud800"]}', "application/json", 422, "lone UTF-16 surrogate"),
]


def test_bad_inputs_get_clear_4xx_never_500(shared_server):
    for name, body, ctype, status, needle in BAD_INPUTS:
        resp = post(shared_server.url, body, ctype)
        assert resp.status_code == status, (name, resp.status_code, resp.text)
        assert needle in resp.json()["error"], (name, resp.text)
    assert httpx.get(f"{shared_server.url}/v1/predict").status_code == 405
    # the server is still healthy and answering after all of that
    ok = post(shared_server.url, json.dumps({"texts": ["the ride is wonderful and excellent"]}))
    assert ok.status_code == 200
    metrics = httpx.get(f"{shared_server.url}/metrics").text
    assert 'forgeline_requests_total{status="500"}' not in metrics


def test_a_body_trickled_byte_by_byte_is_timed_out(shared_server):
    """One byte every 0.5 s used to hold the connection for as long as the client liked."""
    import socket

    body = b'{"texts": ["slow"]}'
    with socket.create_connection(("127.0.0.1", shared_server.port), timeout=30) as sock:
        sock.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n" % len(body))
        start = time.time()
        reply = b""
        for byte in body:
            try:
                sock.sendall(bytes([byte]))
            except OSError:
                break
            sock.settimeout(0.5)
            try:
                reply = sock.recv(4096)
                if reply:
                    break
            except socket.timeout:
                pass
        sock.settimeout(5)
        while reply and not reply.endswith(b"}"):  # headers and body may come in separate segments
            chunk = sock.recv(4096)
            if not chunk:
                break
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 408"), reply
    assert b"body_timeout_s" in reply and time.time() - start < 6
    assert post(shared_server.url, json.dumps({"texts": ["still serving"]})).status_code == 200


def test_predict_health_model_and_metrics(shared_server):
    resp = post(shared_server.url, json.dumps({"texts": ["this car is wonderful and amazing", "the trip is awful and horrible"]}))
    assert resp.status_code == 200
    body = resp.json()
    assert body["model"] == "m" and body["version"] == "1"
    assert [p["label"] for p in body["predictions"]] == ["positive", "negative"]
    for p in body["predictions"]:
        assert abs(sum(p["probabilities"].values()) - 1) < 1e-5 and p["confidence"] == max(p["probabilities"].values())
    assert httpx.get(f"{shared_server.url}/healthz").json() == {"status": "ok"}
    assert httpx.get(f"{shared_server.url}/readyz").json()["version"] == "1"
    info = httpx.get(f"{shared_server.url}/v1/model").json()
    assert info["version"] == "1" and info["labels"] == ["negative", "positive"] and info["variant"] == "fp32"
    metrics = httpx.get(f"{shared_server.url}/metrics").text
    assert 'forgeline_requests_total{status="200"}' in metrics and "forgeline_model_version 1.0" in metrics


def test_concurrent_requests_are_micro_batched(shared_server):
    def one(i: int) -> int:
        return post(shared_server.url, json.dumps({"texts": [f"the app is great and happy {i}"]})).status_code

    threads, codes = [], []
    for i in range(24):
        t = threading.Thread(target=lambda i=i: codes.append(one(i)))
        threads.append(t)
        t.start()
    for t in threads:
        t.join()
    assert codes == [200] * 24
    metrics = httpx.get(f"{shared_server.url}/metrics").text
    count = float(next(line.split()[1] for line in metrics.splitlines() if line.startswith("forgeline_batch_texts_count")))
    total = float(next(line.split()[1] for line in metrics.splitlines() if line.startswith("forgeline_batch_texts_sum")))
    assert total >= 24 and count < total, "concurrent single-text requests should share batches"

    from forgeline.bench.loadtest import run_load  # the bounded load generator against the same server

    result = run_load(shared_server.url, concurrency=4, requests=40, texts_per_request=2, processes=2)
    assert result["errors"] == 0 and result["statuses"] == {200: 40} and result["processes"] == 2, result
    assert result["versions"] == {"1": 40} and result["texts_per_s"] > 0, result


def test_hot_swap_under_concurrent_load_has_zero_failures(server, registry, bundle):
    _, client = registry
    stop = threading.Event()
    results: list[tuple[int, str | None]] = []
    failures: list[str] = []

    def hammer() -> None:
        with httpx.Client(timeout=30) as c:
            while not stop.is_set():
                try:
                    r = c.post(f"{server.url}/v1/predict", json={"texts": ["the service is excellent and brilliant"]})
                    results.append((r.status_code, r.json().get("version") if r.status_code == 200 else None))
                    if r.status_code != 200:
                        failures.append(r.text)
                except httpx.HTTPError as e:
                    failures.append(repr(e))

    workers = [threading.Thread(target=hammer) for _ in range(6)]
    for w in workers:
        w.start()
    time.sleep(1.0)
    reg, _ = register_version(client, bundle, bundle[1], 0.90)  # better: promoted, champion alias moves to v2
    assert reg.aliases == ["champion"]
    deadline = time.time() + 60
    while time.time() < deadline and httpx.get(f"{server.url}/v1/model").json()["version"] != "2":
        time.sleep(0.2)
    time.sleep(1.0)
    stop.set()
    for w in workers:
        w.join()
    assert not failures, failures[:3]
    versions = {v for _, v in results}
    assert versions == {"1", "2"}, versions
    assert all(code == 200 for code, _ in results)
    assert "forgeline_model_swaps_total 1.0" in httpx.get(f"{server.url}/metrics").text


def test_sigterm_drains_in_flight_requests_and_exits_0(tmp_path, registry):
    uri, _ = registry
    srv = Server(uri, "m/1", "max_wait_ms=1000", log=tmp_path / "drain.log")
    codes: list = []

    def one(texts=("the trip is sad and miserable",)) -> None:
        try:
            codes.append(post(srv.url, json.dumps({"texts": list(texts)})).status_code)
        except httpx.ConnectError:
            codes.append("refused")  # arrived after shutdown began: never accepted, so never lost
        except httpx.HTTPError as e:
            codes.append(repr(e))

    def in_flight() -> float:
        text = httpx.get(f"{srv.url}/metrics").text
        return float(next(line.split()[1] for line in text.splitlines() if line.startswith("forgeline_in_flight_requests ")))

    # a full batch of long texts keeps the inference thread busy, so the small requests arriving
    # meanwhile are not "lone": they wait in the 1 s batching window however fast the model is
    heavy = ["a long and winding review of the trip, " * 12] * 256
    threads: list[threading.Thread] = []
    waiting = 0.0
    for _wave in range(5):  # on a loaded machine a wave could be answered before a poll saw it: send another
        wave = [threading.Thread(target=one, args=(heavy,))] + [threading.Thread(target=one) for _ in range(8)]
        for t in wave:
            t.start()
        threads += wave
        # SIGTERM once at least 3 requests wait in the server and every request still open is inside it: one
        # still in the listen backlog would be reset when the socket closes, which says nothing of draining
        while any(t.is_alive() for t in wave):
            waiting = in_flight()
            if waiting >= 3 and waiting >= sum(t.is_alive() for t in wave):
                break
            time.sleep(0.02)
        if waiting >= 3:
            break
    srv.proc.send_signal(signal.SIGTERM)
    for t in threads:
        t.join()
    assert srv.proc.wait(timeout=60) == 0
    assert waiting >= 3
    assert all(c in (200, "refused") for c in codes), [c for c in codes if c != 200]
    assert codes.count(200) >= waiting, codes
    assert "drained" in srv.log.read_text()


def test_mlflow_models_serve_works_too(tmp_path, registry):
    uri, _ = registry
    port = free_port()
    # mlflow execs `uvicorn` by name: put this interpreter's scripts first on PATH
    env = os.environ | {"MLFLOW_TRACKING_URI": uri, "MLFLOW_REGISTRY_URI": uri,
                        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    log = tmp_path / "mlflow-serve.log"
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "models", "serve", "-m", "models:/m@champion",
                             "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)],
                            env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/ping", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.3)
        else:
            pytest.fail(f"mlflow models serve did not start:\n{log.read_text()}")
        resp = httpx.post(f"http://127.0.0.1:{port}/invocations",
                          json={"dataframe_records": [{"text": "the ride is wonderful and excellent"}]}, timeout=30)
        assert resp.status_code == 200, resp.text
        pred = resp.json()["predictions"][0]
        assert pred["label"] == "positive" and len(pred["probabilities"]) == 2
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


def test_parse_predict_body_unit():
    cfg = ServeConfig(model="m@champion", max_texts_per_request=2)
    assert parse_predict_body(b'{"texts": ["a"]}', "application/json; charset=utf-8", cfg) == ["a"]
    with pytest.raises(BadRequest) as e:
        parse_predict_body(b'{"texts": ["a", "b", "c"]}', "application/json", cfg)
    assert e.value.status == 413


@pytest.mark.parametrize("ref,expected", [("m@champion", ("m", "champion", None)), ("m/3", ("m", None, "3")),
                                          ("models:/a-b@x", ("a-b", "x", None))])
def test_model_refs(ref, expected):
    assert parse_model_ref(ref) == expected


@pytest.mark.parametrize("ref", ["m", "m@", "@x", "m/x", ""])
def test_bad_model_refs(ref):
    with pytest.raises(ValueError, match="NAME@alias"):
        parse_model_ref(ref)


@pytest.mark.parametrize("ref, needle, held", [
    ("nosuch@champion", "no registered model 'nosuch'", "registered models there: ['m']"),
    ("m@best", "has no alias @best", "its aliases: ['@champion']"),
    ("m/7", "has no version 7", "its versions: [1]"),
])
def test_serve_and_bench_refuse_unknown_models_with_what_the_store_holds(registry, capsys, ref, needle, held):
    from forgeline.cli import main

    uri, _ = registry
    for command in ("serve", "bench"):
        assert main([command, "-m", ref, "--tracking-uri", uri]) == 2
        err = capsys.readouterr().err
        assert needle in err and held in err, err


@pytest.mark.parametrize("option, needle", [
    ("variant=fp16x", "no variant 'fp16x' (did you mean 'fp16'?)"),
    ("device=gpu", "device: Input should be"),
    ("device=cuda", "no CUDAExecutionProvider"),
])
def test_serve_refuses_bad_device_and_variant_before_starting(registry, capsys, option, needle):
    from forgeline.cli import main
    from forgeline.inference.runtime import cuda_available

    if option == "device=cuda" and cuda_available():
        pytest.skip("this machine has the CUDA execution provider")
    uri, _ = registry
    assert main(["serve", "-m", "m@champion", "--tracking-uri", uri, "--set", option]) == 2
    assert needle in capsys.readouterr().err


def test_serve_takes_the_tracking_keys_run_takes(registry, tmp_path, capsys, monkeypatch):
    """`--set tracking.workdir=DIR` finds the store `forgeline run --set tracking.workdir=DIR` wrote."""
    from forgeline.cli import main

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri, _ = registry  # sqlite:///<tmp_path>/mlflow.db: tmp_path is that workdir
    assert main(["serve", "-m", "nosuch@champion", "--set", f"tracking.workdir={tmp_path}"]) == 2
    err = capsys.readouterr().err
    assert "no registered model 'nosuch'" in err and str(tmp_path / "mlflow.db") in err and "['m']" in err
    assert main(["serve", "-m", "m@champion", "--set", "tracking.workdirx=/x"]) == 2
    assert "tracking.workdirx" in capsys.readouterr().err


def test_a_missing_sqlite_store_is_an_error_not_a_new_empty_store(tmp_path, capsys):
    from forgeline.cli import main

    db = tmp_path / "typo" / "mlflow.db"
    for command in ("serve", "bench"):
        assert main([command, "-m", "m@champion", "--tracking-uri", f"sqlite:///{db}"]) == 2
        assert "does not exist" in capsys.readouterr().err
    assert not db.exists()


def test_serving_path_imports_without_torch_or_transformers():
    """The serving image installs docker/requirements-serve.txt only: no torch, no transformers, no prefect."""
    code = ("import sys; sys.modules['torch'] = None; sys.modules['transformers'] = None; sys.modules['prefect'] = None\n"
            "import forgeline.cli, forgeline.serving.app, forgeline.serving.watcher, forgeline.registry.client, "
            "forgeline.inference.pyfunc, forgeline.bench.loadtest\n"
            "forgeline.cli._parser().parse_args(['serve', '-m', 'x@champion'])\nprint('ok')")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


@pytest.mark.parametrize("exclusive", [False, True])
def test_new_versions_load_on_the_inference_thread_when_exclusive(exclusive):
    """With CUDA graphs (exclusive) a swap loads on the single inference thread, never beside it."""
    import asyncio

    from forgeline.serving.metrics import Metrics
    from forgeline.serving.batcher import MicroBatcher
    from forgeline.serving.watcher import LoadedModel, Watcher

    class Source:  # stands in for the registry: versions "1" then "2"
        name = "m"

        def __init__(self):
            self.version, self.threads = "1", []

        def current_version(self):
            return self.version, None

        def load(self, version, run_id):
            self.threads.append(threading.current_thread().name)
            return LoadedModel(name="m", version=version, run_id=run_id, impl=None)

    async def scenario():
        source = Source()
        batcher = MicroBatcher(8, 1.0, Metrics())
        watcher = Watcher(source, batcher, batcher.metrics, interval=0.01, exclusive=exclusive)
        watcher.load_initial()
        source.version = "2"
        watcher.start()
        for _ in range(500):
            if batcher.model.version == "2":
                break
            await asyncio.sleep(0.01)
        await watcher.stop()
        batcher.executor.shutdown(wait=True)
        return batcher.model.version, source.threads[-1]

    version, thread = asyncio.run(scenario())
    assert version == "2"
    assert thread.startswith("infer") == exclusive


@pytest.mark.e2e  # a real tracking or UI server, started for this test
def test_loading_a_version_from_a_tracking_server_leaves_no_download_behind(tmp_path, bundle, monkeypatch):
    """From an MLflow server (how the serving images run), MLflow downloads the version into a temporary
    folder it never removes: about 150 MB for every load, so every hot swap, piled up in /tmp."""
    import tempfile

    from forgeline.serving.watcher import RegistrySource
    from tests.pipeline.test_deploy import BIN, free_port as any_port, start, stop

    port = any_port()
    server = start([str(BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
                    "--artifacts-destination", str(tmp_path / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
                    "--workers", "1"], tmp_path / "mlflow.log", dict(os.environ), f"http://127.0.0.1:{port}/health")
    try:
        uri = f"http://127.0.0.1:{port}"
        mlflow.set_tracking_uri(uri)
        mlflow.set_registry_uri(uri)
        register_version(MlflowClient(uri, uri), bundle, bundle[1], 0.80)
        tmp = tmp_path / "tmp"
        tmp.mkdir()
        monkeypatch.setattr(tempfile, "tempdir", str(tmp))
        source = RegistrySource(ServeConfig(model="m@champion", tracking_uri=uri))
        model = source.load(*source.current_version())
        assert [p for p in tmp.rglob("*.onnx")] == []
        assert model.impl.predict_proba(["the ride is wonderful"]).shape == (1, 2)  # served from memory
    finally:
        stop(server)


def _corrupt_model_file(client, version: str) -> Path:
    source = Path(client.get_model_version_download_uri("m", version).removeprefix("file://"))
    target = next(source.rglob("model.onnx"))
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte: still a file of the right size
    target.write_bytes(bytes(data))
    return target


@pytest.mark.parametrize("workers", ["1", "2"])
def test_serve_refuses_a_corrupted_version_naming_the_version_and_file(tmp_path, registry, workers):
    uri, client = registry
    _corrupt_model_file(client, "1")
    out = subprocess.run([sys.executable, "-m", "forgeline.cli", "serve", "-m", "m@champion", "--tracking-uri", uri,
                          "--port", str(free_port()), "--workers", workers], cwd=ROOT, capture_output=True, text=True,
                         timeout=180)
    assert out.returncode == 2, out.stderr[-3000:]
    last = out.stderr.strip().splitlines()
    assert last[-1].startswith("forgeline: error: m v1 cannot be served: artifacts/model.onnx changed: the files of m v1 "
                               "do not match the digest recorded at registration"), out.stderr[-3000:]
    assert "Traceback" not in out.stderr and "INVALID_PROTOBUF" not in out.stderr
    if workers == "1":  # one message: uvicorn's "Started server process", "Waiting for ...", "... failed" are not said
        assert len(last) == 1, out.stderr[-3000:]


def test_a_hot_swap_to_a_corrupted_version_keeps_serving_the_old_one(server, registry, bundle):
    _, client = registry
    reg, _ = register_version(client, bundle, bundle[1], 0.10, min_gain_over_chance=None)  # kept as challenger
    assert reg.aliases == ["challenger"]
    _corrupt_model_file(client, reg.version)
    client.set_registered_model_alias("m", "champion", reg.version)
    deadline = time.time() + 30
    metrics = ""
    while time.time() < deadline and "forgeline_model_swap_failures_total 0.0" in (metrics or "forgeline_model_swap_failures_total 0.0"):
        time.sleep(0.3)
        metrics = httpx.get(f"{server.url}/metrics").text
    assert "forgeline_model_swap_failures_total 0.0" not in metrics
    r = post(server.url, json.dumps({"texts": ["the ride is wonderful and excellent"]}))
    assert r.status_code == 200 and r.json()["version"] == "1"
    assert f"m v{reg.version} cannot be served: artifacts/model.onnx changed" in server.log.read_text()


def test_a_serve_token_guards_the_api_but_not_the_probes(tmp_path, registry, monkeypatch):
    from forgeline.bench.loadtest import run_load

    uri, _ = registry
    token = "0123456789abcdef-serve"
    srv = Server(uri, "m@champion", log=tmp_path / "auth.log", env={"FORGELINE_SERVE_TOKEN": token})
    try:
        body = json.dumps({"texts": ["the ride is wonderful"]})
        for headers in ({}, {"authorization": "Bearer wrong-token-of-enough-length"}, {"authorization": token}):
            r = httpx.post(f"{srv.url}/v1/predict", content=body, headers={"content-type": "application/json", **headers})
            assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer", (headers, r.text)
            assert "bearer token" in r.json()["error"]
        assert httpx.get(f"{srv.url}/v1/model").status_code == 401
        ok = httpx.post(f"{srv.url}/v1/predict", content=body,
                        headers={"content-type": "application/json", "authorization": f"Bearer {token}"})
        assert ok.status_code == 200 and ok.json()["predictions"][0]["label"] in ("positive", "negative")
        assert httpx.get(f"{srv.url}/readyz").status_code == 200 and httpx.get(f"{srv.url}/healthz").status_code == 200

        monkeypatch.setenv("FORGELINE_SERVE_TOKEN", token)  # forgeline loadtest sends the token it finds
        assert run_load(srv.url, concurrency=2, requests=10)["statuses"] == {200: 10}
    finally:
        assert srv.stop() == 0


def test_serve_refuses_a_weak_token(registry, capsys, monkeypatch):
    from forgeline.cli import main

    uri, _ = registry
    monkeypatch.setenv("FORGELINE_SERVE_TOKEN", "secret")
    assert main(["serve", "-m", "m@champion", "--tracking-uri", uri]) == 2
    assert "FORGELINE_SERVE_TOKEN is 6 characters; use at least 16" in capsys.readouterr().err
