"""Token classification through the whole flow on a CoNLL file built here: people and places from a known
gazetteer, some of them ambiguous ("nice" the city and the word, "jordan" the person and the country), in
sentences whose context says which. The model beats a dictionary tagger built from the same training split,
the registered pyfunc returns exact character spans where torch cannot be imported (accents, emoji, runs of
spaces), `forgeline serve` returns them, and a worse run stays challenger."""

from __future__ import annotations

import json
import random
from pathlib import Path

import httpx
import mlflow
import pytest
from mlflow.tracking import MlflowClient

from forgeline.bench.gazetteer import Gazetteer, micro_f1
from forgeline.config.loader import load_config
from forgeline.data.load import load_and_validate
from forgeline.data.split import split_dataset
from forgeline.pipeline.flows import training_flow
from forgeline.tasks import get_task
from tests.conftest import flow_overrides
from tests.tasks.test_task_flows import predict_where_torch_is_blocked
from tests.serving.conftest import Server

PEOPLE = ["zoë", "joão", "ana-maría", "élodie", "søren", "aiko", "chidi", "lucía", "ömer", "priya", "mateo", "jordan",
          "paris"]
PLACES = ["são paulo", "zürich", "lisboa", "kraków", "québec", "lagos", "kyoto", "new york", "nice", "reading",
          "mobile", "jordan", "paris"]
TEMPLATES = [
    "{PER} flew to {LOC} on monday",
    "yesterday {PER} met {PER} in {LOC}",
    "the office in {LOC} hired {PER} last week",
    "{PER} lives near {LOC} 😀",
    "we drove from {LOC} to {LOC} with {PER}",
    "a letter from {PER} arrived today",
    "the weather in {LOC} was nice again",
    "reading books with {PER} is fun",
    "my mobile broke so {PER} called me",
]


def sentence(rng: random.Random) -> list[tuple[str, str]]:
    template = rng.choice(TEMPLATES)
    out: list[tuple[str, str]] = []
    for part in template.split():
        if part in ("{PER}", "{LOC}"):
            kind = part[1:4]
            name = rng.choice(PEOPLE if kind == "PER" else PLACES)
            for k, word in enumerate(name.split()):
                out.append((word, f"{'B' if k == 0 else 'I'}-{kind}"))
        else:
            out.append((part, "O"))
    out.append((f"#{rng.randint(0, 9999)}", "O"))
    return out


def conll(n: int = 320, seed: int = 0) -> str:
    rng = random.Random(seed)
    blocks = ["-DOCSTART- O"]
    for _ in range(n):
        blocks.append("\n".join(f"{w}\t{t}" for w, t in sentence(rng)))
    return "\n\n".join(blocks) + "\n"


PROBES = ["yesterday Zoë  met João in São Paulo 😀", "the office in Zürich hired   Ana-María last week",
          "we drove from Kraków to Lagos with Chidi #12"]
EXPECTED = [[("PER", "Zoë"), ("PER", "João"), ("LOC", "São Paulo")], [("LOC", "Zürich"), ("PER", "Ana-María")],
            [("LOC", "Kraków"), ("LOC", "Lagos"), ("PER", "Chidi")]]
"""Unambiguous names: the served variant is chosen by latency (a distilled or INT8 one may be served) and
must read these right; the ambiguous ones are the test split's, where the F1 comparison counts them."""


def check_spans(entities: list[list[dict]]) -> None:
    for text, found, expected in zip(PROBES, entities, EXPECTED):
        assert [(e["label"], e["text"]) for e in found] == expected, (text, found)
        assert all(text[e["start"] : e["end"]] == e["text"] for e in found)
        assert all(0 < e["score"] <= 1 for e in found)


@pytest.mark.e2e
def test_token_classification_end_to_end(prefect_api, tiny, tmp_path):
    data = tmp_path / "people.conll"
    data.write_text(conll(), encoding="utf-8")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    overrides = flow_overrides(tmp_path, data, *tiny, "task.type=token_classification", "data.labels=null",
                               "train.epochs=8", "train.patience=3", "model.max_length=32", "compress.student=true",
                               "compress.student_layers=1")

    first = training_flow(config="tiny", overrides=overrides)
    assert first["promoted"] and first["version"] == "1", first
    client = MlflowClient(uri, uri)
    gate = json.loads(Path(client.download_artifacts(first["run_id"], "gate.json", str(tmp_path))).read_text())
    assert gate["metric"] == "micro_f1" and gate["higher_is_better"]
    value = first["metrics"]["test_micro_f1"]

    # the dictionary tagger of the same training split, on the same test sentences
    cfg = load_config("tiny", overrides)
    task = get_task(cfg.task)
    valid = load_and_validate(cfg.data, tmp_path / "check", cfg.seed, split=cfg.split, task=task)
    assert valid.report["tag_scheme"] == "IOB2" and valid.report["tag_scheme_detected"]
    splits = split_dataset(valid.valid, cfg.split, cfg.seed, task, valid.labels)
    tagger = Gazetteer(splits.train["text"], splits.train["label"])
    baseline = micro_f1(list(splits.test["label"]), [tagger.tag(t) for t in splits.test["text"]])
    assert value > baseline, (value, baseline)
    run = client.get_run(first["run_id"])
    assert run.data.metrics["test_f1.PER"] > 0 and "test_token_accuracy" in run.data.metrics
    # every variant scored on entity F1 of the same test sentences; the student distilled per token
    assert {"variant.fp32.micro_f1", "variant.int8.micro_f1", "variant.student.micro_f1"} <= set(run.data.metrics)
    assert run.data.metrics["variant.fp32.micro_f1"] == pytest.approx(value, abs=0.02)
    assert client.get_model_version("e2e", "1").tags["task"] == "token_classification"

    # the registered pyfunc, where torch cannot be imported: one row per text, exact character spans
    loaded = predict_where_torch_is_blocked(uri, f"pd.DataFrame({{'text': {PROBES!r}}})", tmp_path)
    assert loaded["columns"] == ["entities"]
    check_spans([row["entities"] for row in loaded["rows"]])

    # `forgeline serve` answers the same spans; an empty text and an over-long one are 422s naming the text
    server = Server(uri, "e2e@champion", log=tmp_path / "serve.log")
    try:
        info = httpx.get(f"{server.url}/v1/model", timeout=10).json()
        assert info["task"] == "token_classification" and "entities" in info["schema"]["prediction"]
        answer = httpx.post(f"{server.url}/v1/predict", json={"texts": PROBES}, timeout=30)
        assert answer.status_code == 200, answer.text
        check_spans([p["entities"] for p in answer.json()["predictions"]])
        empty = httpx.post(f"{server.url}/v1/predict", json={"texts": ["fine", "  "]}, timeout=30)
        assert empty.status_code == 422 and '"texts"[1]' in empty.json()["error"], empty.text
        long = httpx.post(f"{server.url}/v1/predict", json={"texts": ["x " * 20_000]}, timeout=30)
        assert long.status_code == 422 and '"texts"[0]' in long.json()["error"], long.text
    finally:
        assert server.stop() == 0

    # `forgeline score`: the same spans, as Parquet (a list of structs per row)
    import pandas as pd

    from forgeline.scoring.flow import score, score_config

    pd.DataFrame({"text": PROBES}).to_parquet(tmp_path / "probes.parquet")
    score(score_config({"model": "e2e/1", "input": str(tmp_path / "probes.parquet"), "output": str(tmp_path / "scored"),
                        "tracking_uri": uri}, [f"tracking.workdir={tmp_path / 'work'}"]))
    scored = pd.read_parquet(tmp_path / "scored").sort_values("row")
    assert list(scored.columns) == ["source", "row", "entities", "model", "version", "variant"]
    check_spans([list(e) for e in scored.entities])

    # a worse model (no learning): registered, stays challenger
    second = training_flow(config="tiny", overrides=[*overrides, "train.learning_rate=1.0e-12", "train.epochs=1"])
    assert not second["promoted"] and second["version"] == "2"
    assert str(client.get_model_version_by_alias("e2e", "champion").version) == "1"
    reason = client.get_run(second["run_id"]).data.tags["gate.reason"]
    assert "vs champion v1" in reason, reason
    mlflow.set_tracking_uri(uri)
