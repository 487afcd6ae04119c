"""`forgeline serve --set variant=NAME` for every variant a real run bundled (compress.bundle=all, with a
student): each is loaded, answers on loopback, and says which variant answered; a variant the version
does not bundle is refused before the server starts."""

from __future__ import annotations

import json

import httpx
import pytest
from mlflow.tracking import MlflowClient

from forgeline.pipeline.flows import training_flow
from tests.conftest import flow_overrides
from tests.serving.conftest import Server

pytestmark = pytest.mark.e2e


def test_serve_takes_each_bundled_variant(prefect_api, tmp_path, sentiment_csv, tiny, capsys):
    out = training_flow(config="tiny", overrides=flow_overrides(
        tmp_path, sentiment_csv, *tiny, "compress.student=true", "compress.distill_epochs=1",
        "compress.max_macro_f1_drop=0.3", "compress.max_accuracy_drop=0.3", "compress.bundle=all"))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    version = MlflowClient(uri, uri).get_model_version("e2e", out["version"])
    bundled = version.tags["variants"].split(",")
    assert "fp32" in bundled and any(v.startswith("student") for v in bundled), bundled
    texts = ["the ride is wonderful and excellent", "the app is awful and dreadful"]
    for name in bundled:
        server = Server(uri, f"e2e/{out['version']}", f"variant={name}", log=tmp_path / f"serve-{name}.log")
        try:
            assert httpx.get(f"{server.url}/v1/model").json()["variant"] == name
            reply = httpx.post(f"{server.url}/v1/predict", content=json.dumps({"texts": texts}),
                               headers={"content-type": "application/json"}, timeout=30)
            assert reply.status_code == 200, (name, reply.text)
            assert [p["label"] for p in reply.json()["predictions"]] == ["positive", "negative"], name
        finally:
            assert server.stop() == 0, (tmp_path / f"serve-{name}.log").read_text()[-2000:]

    from forgeline.cli import main

    missing = next(n for n in ("int8_static", "pruned", "student_int8_static") if n not in bundled)
    assert main(["serve", "-m", f"e2e/{out['version']}", "--tracking-uri", uri, "--set", f"variant={missing}"]) == 2
    err = capsys.readouterr().err
    # the message lists what the version bundles (which variants reach the Pareto front rests on timings)
    assert f"--set variant={missing}: e2e v{out['version']} does not bundle it" in err, err
    assert all(f"'{name}'" in err.split("it bundles", 1)[1] for name in bundled), err
