"""Registration and the champion gate against a real MLflow SQLite store (the gate alone: test_gate.py)."""

import json
import os
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from forgeline.config.schema import RegistryConfig
from forgeline.registry.gate import ChampionInfo
from tests.registry.test_gate import decide_promotion
from forgeline.registry.register import reuse_registration
from tests.conftest import register_version


def test_a_first_model_at_chance_level_is_registered_but_not_champion(mlflow_uri, bundle):
    mlflow.set_tracking_uri(mlflow_uri)
    mlflow.set_registry_uri(mlflow_uri)
    client = MlflowClient(mlflow_uri, mlflow_uri)
    _, labels = bundle  # two classes: chance is 0.5
    reg, run_id = register_version(client, bundle, labels, 0.52)
    assert reg.aliases == ["challenger"] and not reg.decision.promote
    with pytest.raises(Exception, match="champion"):
        client.get_model_version_by_alias("m", "champion")
    reason = client.get_model_version("m", reg.version).tags["gate.reason"]
    assert "above chance, 0.5000" in reason and "train.epochs" in reason
    gate = json.loads(Path(client.download_artifacts(run_id, "gate.json")).read_text())
    assert gate["baseline_value"] == 0.5 and gate["min_gain_over_baseline"] == 0.05
    # a learned model becomes the first champion; the floor can be turned off
    assert register_version(client, bundle, labels, 0.56)[0].aliases == ["champion"]
    assert register_version(client, bundle, labels, 0.52, name="n", min_gain_over_chance=None)[0].aliases == ["champion"]


def test_champion_moves_only_through_the_gate(mlflow_uri, bundle):
    mlflow.set_tracking_uri(mlflow_uri)
    mlflow.set_registry_uri(mlflow_uri)
    client = MlflowClient(mlflow_uri, mlflow_uri)
    files, labels = bundle

    first, _ = register_version(client, bundle, labels, 0.80)
    assert first.version == "1" and first.aliases == ["champion"]

    worse, worse_run = register_version(client, bundle, labels, 0.60)
    assert worse.aliases == ["challenger"] and not worse.decision.promote
    assert str(client.get_model_version_by_alias("m", "champion").version) == "1"
    assert str(client.get_model_version_by_alias("m", "challenger").version) == "2"
    tags = client.get_model_version("m", "2").tags
    assert tags["gate.decision"] == "kept_challenger" and "below champion v1" in tags["gate.reason"]
    assert tags["data_fingerprint"] == "abc" and tags["metric.test_macro_f1"] == "0.600000"
    run_tags = client.get_run(worse_run).data.tags
    assert "below champion v1" in run_tags["gate.reason"]
    assert "gate.json" in [a.path for a in client.list_artifacts(worse_run)]

    broken, _ = register_version(client, bundle, labels, 0.99, parity_ok=False)
    assert not broken.decision.promote
    assert str(client.get_model_version_by_alias("m", "champion").version) == "1"

    better, _ = register_version(client, bundle, labels, 0.85)
    assert better.aliases == ["champion"]
    assert str(client.get_model_version_by_alias("m", "champion").version) == better.version
    # the champion it replaced keeps an alias: what a rollback serves
    assert str(client.get_model_version_by_alias("m", "previous").version) == "1"


def test_registered_champion_predicts_labels_and_probabilities(mlflow_uri, bundle):
    mlflow.set_tracking_uri(mlflow_uri)
    mlflow.set_registry_uri(mlflow_uri)
    client = MlflowClient(mlflow_uri, mlflow_uri)
    _, labels = bundle
    register_version(client, bundle, labels, 0.8)
    model = mlflow.pyfunc.load_model("models:/m@champion")
    out = model.predict(pd.DataFrame({"text": ["this car is wonderful and amazing", "the trip is awful and horrible"]}))
    assert list(out["label"]) == ["positive", "negative"]
    assert all(abs(sum(p) - 1) < 1e-5 for p in out["probabilities"])
    assert {"proba_negative", "proba_positive", "confidence"} <= set(out.columns)
    # the batch size follows the device at load time (256 on CUDA, 64 on CPU), not the training machine
    assert model.model_config["batch_size"] == "auto"
    impl = model.unwrap_python_model()
    assert impl.batch_size == (256 if impl.device == "cuda" else 64)
    pinned = mlflow.pyfunc.load_model("models:/m@champion", model_config={"variant": "fp32", "device": "cpu"})
    assert pinned.unwrap_python_model().variant == "fp32"


def test_an_unchanged_rerun_runs_the_gate_again_with_the_current_registry_settings(mlflow_uri, bundle):
    """The registry settings are not part of the cache key: relaxing the floor and running again must not
    answer 'unchanged' and leave the identical version stuck as challenger."""
    mlflow.set_tracking_uri(mlflow_uri)
    mlflow.set_registry_uri(mlflow_uri)
    client = MlflowClient(mlflow_uri, mlflow_uri)
    _, labels = bundle
    first, _ = register_version(client, bundle, labels, 0.52)  # 2 classes: not 0.05 above chance
    assert first.aliases == ["challenger"]
    client.set_model_version_tag("m", first.version, "parity_ok", "True")  # as the register stage tags it
    exp = client.get_experiment_by_name("t").experiment_id

    same = reuse_registration(client, client.create_run(exp).info.run_id, RegistryConfig(model_name="m"), first.version, 2)
    assert not same.decision.promote and same.aliases == ["challenger"]
    assert "nothing registered; still not champion" in same.decision.reason and "above chance" in same.decision.reason

    run_id = client.create_run(exp).info.run_id
    relaxed = reuse_registration(client, run_id, RegistryConfig(model_name="m", min_gain_over_chance=None), first.version, 2)
    assert relaxed.decision.promote and relaxed.aliases == ["champion"]
    assert str(client.get_model_version_by_alias("m", "champion").version) == first.version
    assert client.get_run(run_id).data.tags["gate.decision"] == "promoted"
    assert client.get_model_version("m", first.version).tags["gate.decision"] == "promoted"
    assert len(client.search_model_versions("name='m'")) == 1

    again = reuse_registration(client, client.create_run(exp).info.run_id, RegistryConfig(model_name="m"), first.version, 2)
    assert not again.decision.promote and again.aliases == ["champion"]  # a champion stays champion
    assert again.decision.reason.endswith("nothing registered")


def _rows(trained):
    _, splits, _ = trained
    return splits.test["text"].tolist(), splits.test["label"].tolist()


def _gate_json(client, run_id):
    return json.loads(Path(client.download_artifacts(run_id, "gate.json")).read_text())


def test_same_data_refuses_a_challenger_the_stored_tag_would_promote(mlflow_uri, bundle, trained):
    """The champion's stored macro-F1 (0.50) says the challenger (0.95) is far better; on the same rows
    the challenger (the same graph with its labels swapped) is far worse, and that decides."""
    mlflow.set_tracking_uri(mlflow_uri)
    mlflow.set_registry_uri(mlflow_uri)
    client = MlflowClient(mlflow_uri, mlflow_uri)
    _, labels = bundle
    first, _ = register_version(client, bundle, labels, 0.50, min_gain_over_chance=None)
    assert first.aliases == ["champion"]
    flipped, run_id = register_version(client, bundle, labels[::-1], 0.95, eval_rows=_rows(trained))
    assert flipped.aliases == ["challenger"] and not flipped.decision.promote
    c = flipped.decision.comparison
    assert c["n"] == len(_rows(trained)[0]) and c["diff"] < -0.5 and c["ci_high"] < 0 and c["mcnemar_p"] < 0.01
    assert "on the same" in flipped.decision.reason and "may be worse than the champion" in flipped.decision.reason
    tags = client.get_model_version("m", flipped.version).tags
    assert tags["gate.same_data_rows"] == str(c["n"]) and float(tags["gate.macro_f1_diff"]) < -0.5
    gate = _gate_json(client, run_id)
    assert gate["comparison"]["n"] == c["n"] and "paired-bootstrap" in gate["rule"]
    card = client.get_model_version("m", flipped.version).description  # the model card, on the version page
    assert card.startswith(f"# m v{flipped.version}\n\n**Gate: kept as challenger.**")
    assert f"## Against champion v{first.version}, on the same {c['n']} rows" in card and "## Slices" in card
    assert card == Path(client.download_artifacts(run_id, "model_card.md")).read_text()
    assert {r["slice"] for r in gate["slices"]} >= {f"class={lab}" for lab in labels}
    # the old rule, on the stored tag alone, would have promoted it
    assert decide_promotion(0.95, True, ChampionInfo(first.version, 0.50), 0.01).promote


def test_same_data_promotes_a_challenger_the_stored_tag_would_refuse(mlflow_uri, bundle, trained):
    mlflow.set_tracking_uri(mlflow_uri)
    mlflow.set_registry_uri(mlflow_uri)
    client = MlflowClient(mlflow_uri, mlflow_uri)
    _, labels = bundle
    bad, _ = register_version(client, bundle, labels[::-1], 0.99, min_gain_over_chance=None)
    assert bad.aliases == ["champion"]  # no champion before it: nothing to compare with
    good, _ = register_version(client, bundle, labels, 0.80, eval_rows=_rows(trained))
    assert good.decision.promote and good.aliases == ["champion"], good.decision.reason
    assert good.decision.comparison["ci_low"] > 0.5
    assert not decide_promotion(0.80, True, ChampionInfo(bad.version, 0.99), 0.01).promote


def test_a_champion_that_cannot_be_loaded_is_reported_and_replaced(mlflow_uri, bundle, trained, tmp_path):
    import shutil

    mlflow.set_tracking_uri(mlflow_uri)
    mlflow.set_registry_uri(mlflow_uri)
    client = MlflowClient(mlflow_uri, mlflow_uri)
    _, labels = bundle
    first, _ = register_version(client, bundle, labels, 0.90)
    source = client.get_model_version_download_uri("m", first.version)
    shutil.rmtree(source.removeprefix("file://"))  # its artifacts are gone
    second, run_id = register_version(client, bundle, labels, 0.85, eval_rows=_rows(trained))
    assert second.decision.promote and second.decision.comparison is None
    assert "could not be loaded" in second.decision.champion_problem
    assert f"champion v{first.version} could not be scored on this data" in second.decision.reason
    assert "could not be loaded" in client.get_model_version("m", second.version).tags["gate.champion_problem"]


def test_a_registration_cut_off_after_the_version_exists_deletes_it_and_moves_no_alias(mlflow_uri, bundle,
                                                                                      monkeypatch):
    from forgeline.registry.client import COMPLETE_TAG, find_registered
    from forgeline.settings import FAILPOINT_ENV

    mlflow.set_tracking_uri(mlflow_uri)
    mlflow.set_registry_uri(mlflow_uri)
    client = MlflowClient(mlflow_uri, mlflow_uri)
    files, labels = bundle
    first, _ = register_version(client, bundle, labels, 0.80)
    for point in ("register.created", "register.tagged"):
        monkeypatch.setenv(FAILPOINT_ENV, f"{point}:raise")
        with pytest.raises(OSError, match=f"failpoint {point}"):
            register_version(client, bundle, labels, 0.95)
        monkeypatch.delenv(FAILPOINT_ENV)
        versions = {str(mv.version) for mv in client.search_model_versions("name='m'")}
        assert versions == {"1"}, f"{point}: the half-registered version is deleted"
        assert str(client.get_model_version_by_alias("m", "champion").version) == "1"
    better, _ = register_version(client, bundle, labels, 0.95)
    assert better.aliases == ["champion"]
    tags = client.get_model_version("m", better.version).tags
    assert tags[COMPLETE_TAG] == "true"
    # a version left incomplete (its process was killed) is never reused for the same cache key
    client.set_model_version_tag("m", better.version, "forgeline.cache_key", "k1")
    assert find_registered(client, "m", "k1") == better.version
    client.set_model_version_tag("m", better.version, COMPLETE_TAG, "false")
    assert find_registered(client, "m", "k1") is None


def test_a_registry_error_caused_by_a_lost_server_is_retried_and_bad_input_is_not():
    from mlflow.exceptions import MlflowException

    from forgeline.errors import ConfigError, RegistryError
    from forgeline.pipeline.runner import retry_on_io

    class Failed:
        def __init__(self, error: BaseException) -> None:
            self.error = error

        def result(self):
            raise self.error

    def registry_error(cause: BaseException | None) -> RegistryError:
        try:
            raise RegistryError("registering m failed") from cause
        except RegistryError as e:
            return e

    assert retry_on_io(None, None, Failed(registry_error(MlflowException("connection refused"))))
    assert retry_on_io(None, None, Failed(registry_error(ConnectionError("reset"))))
    assert not retry_on_io(None, None, Failed(registry_error(None)))
    assert not retry_on_io(None, None, Failed(ConfigError("bad key")))


@pytest.mark.e2e  # a real tracking or UI server, started for this test
def test_two_runs_with_one_cache_key_on_a_tracking_server_keep_one_version(tmp_path, bundle, monkeypatch):
    """Two machines on one MLflow server (no shared lock): the later version waits for the earlier,
    deletes itself and reuses it."""
    import threading
    import time

    from forgeline.config.schema import RegistryConfig
    from forgeline.registry.client import CACHE_KEY_TAG
    from forgeline.registry.register import register_and_gate
    from forgeline.settings import FAILPOINT_ENV
    from tests.pipeline.test_deploy import BIN, free_port, start, stop

    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    server = start([str(BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
                    "--artifacts-destination", str(tmp_path / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
                    "--workers", "2"], tmp_path / "mlflow.log", dict(os.environ), f"{uri}/health")
    try:
        mlflow.set_tracking_uri(uri)
        mlflow.set_registry_uri(uri)
        client = MlflowClient(uri, uri)
        exp = client.create_experiment("t")
        files, labels = bundle
        # the first run holds still for 3 s right after its version exists: the second arrives meanwhile
        monkeypatch.setenv(FAILPOINT_ENV, "register.created:sleep")
        monkeypatch.setenv("FORGELINE_FAILPOINT_SLEEP_S", "3")
        results: dict[str, object] = {}

        def one(label: str) -> None:
            run = client.create_run(exp)
            try:
                results[label] = register_and_gate(
                    client, run.info.run_id, RegistryConfig(model_name="m", f1_tolerance=0.01),
                    files, {"labels": labels, "max_length": 32, "variants": ["fp32"]},
                    {"test_macro_f1": 0.8, "test_accuracy": 0.8}, {CACHE_KEY_TAG: "same-key", "data_fingerprint": "abc"},
                    True, ["great ride", "awful trip"])
            except Exception as e:  # noqa: BLE001 - asserted below
                results[label] = e

        first = threading.Thread(target=one, args=("first",))
        first.start()
        deadline = time.time() + 120
        while time.time() < deadline and not client.search_model_versions("name='m'"):
            time.sleep(0.1)
        second = threading.Thread(target=one, args=("second",))
        second.start()
        first.join(180)
        second.join(180)
        assert results["first"].version == "1" and results["first"].aliases == ["champion"], results
        assert results["second"].version == "1", results  # reused, not a second version
        assert "nothing registered" in results["second"].decision.reason
        (kept,) = client.search_model_versions("name='m'")
        assert kept.version == "1" and client.get_model_version("m", "1").tags[CACHE_KEY_TAG] == "same-key"
    finally:
        stop(server)


class _Payload:
    """Unpickling it writes a marker file: the proof that a replaced pickle was (not) loaded."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path(self.marker).write_text, ("the replaced pickle ran",))


TAMPERED = {
    "model code replaced": lambda d, marker: (d / "forgeline_model.py").write_text(
        f"from pathlib import Path\nPath({marker!r}).write_text('the replaced model code ran')\n"),
    "a pickle added": lambda d, marker: (d / "python_model.pkl").write_bytes(__import__("pickle").dumps(_Payload(marker))),
    "shipped code edited": lambda d, marker: next(d.rglob("pyfunc.py")).open("a").write("\nprint('replaced')\n"),
    "metadata edited": lambda d, marker: next(d.rglob("forgeline_meta.json")).write_text(
        '{"labels": ["negative", "positive"], "max_length": 32}'),
    "model.onnx flipped": lambda d, marker: _flip(next(d.rglob("model.onnx"))),
    "a file added": lambda d, marker: (d / "code" / "sitecustomize.py").write_text("import os\n"),
}


NAMED = {"model code replaced": "forgeline_model.py changed", "a pickle added": "python_model.pkl added",
         "shipped code edited": "pyfunc.py changed",
         "metadata edited": "forgeline_meta.json changed", "model.onnx flipped": "artifacts/model.onnx changed",
         "a file added": "code/sitecustomize.py added"}
"""What the refusal names for each case: the files, from the version's forgeline.bundle_files tag."""


def _flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def test_a_version_whose_files_were_replaced_is_loaded_nowhere(mlflow_uri, bundle, tmp_path):
    """The registry is a code-execution boundary: replacing the model's code (then python_model.pkl, now
    the models-from-code file; and moving the alias) made the server run the replaced code. Every file of the version is checked against the digest recorded in its
    tags at registration before MLflow loads any of them: serving, the gate, and reuse by cache key."""
    import shutil

    from forgeline.config.schema import ServeConfig
    from forgeline.errors import RegistryError
    from forgeline.inference.contract import ArtifactIntegrityError
    from forgeline.registry.client import BUNDLE_DIGEST_TAG, CACHE_KEY_TAG, DAMAGED_TAG, find_registered
    from forgeline.registry.register import load_version
    from forgeline.serving.watcher import RegistrySource

    mlflow.set_tracking_uri(mlflow_uri)
    mlflow.set_registry_uri(mlflow_uri)
    client = MlflowClient(mlflow_uri, mlflow_uri)
    reg, _ = register_version(client, bundle, bundle[1], 0.8)
    assert len(client.get_model_version("m", reg.version).tags[BUNDLE_DIGEST_TAG]) == 64
    client.set_model_version_tag("m", reg.version, CACHE_KEY_TAG, "key-1")
    assert load_version("m", reg.version).labels == bundle[1]  # intact: loads
    assert find_registered(client, "m", "key-1") == reg.version
    stored = Path(client.get_model_version_download_uri("m", reg.version).removeprefix("file://"))
    assert (stored / "forgeline_model.py").is_file() and not list(stored.rglob("*.pkl"))  # models-from-code, no pickle
    intact = tmp_path / "intact"
    shutil.copytree(stored, intact)
    source = RegistrySource(ServeConfig(model=f"m/{reg.version}", tracking_uri=mlflow_uri))

    for case, tamper in TAMPERED.items():
        marker = tmp_path / "pwned"
        tamper(stored, str(marker))
        with pytest.raises(ArtifactIntegrityError, match=f"m v{reg.version} do not match the digest") as err:
            load_version("m", reg.version)
        assert NAMED[case] in str(err.value), (case, str(err.value))
        with pytest.raises(RegistryError, match="cannot be served"):
            source.load(reg.version, None)
        assert not marker.exists(), f"{case}: nothing of the version was run or unpickled"
        shutil.rmtree(stored)
        shutil.copytree(intact, stored)
    assert source.load(reg.version, None).version == reg.version  # restored: serves again

    # a damaged version is not reused by an unchanged rerun: it is tagged and the run registers anew
    _flip(next(stored.rglob("model.onnx")))
    assert find_registered(client, "m", "key-1") is None
    assert "do not match the digest" in client.get_model_version("m", reg.version).tags[DAMAGED_TAG]


@pytest.mark.parametrize("alias", ["challenger", "champion"])
def test_a_damaged_version_is_replaced_by_the_next_run_not_reused(mlflow_uri, bundle, alias):
    """Found by the reliability probe: a cached ONNX file shared by hard link with a registered version was
    damaged; the next run tagged the version damaged but ``earlier_peer`` reused it anyway. At challenger
    every later run then exited 1 (ArtifactIntegrityError); at champion every later run said "nothing
    registered" while @champion pointed at a version that cannot load, and doctor saw nothing."""
    from forgeline.pipeline.doctor import DoctorReport, doctor
    from forgeline.registry.client import CACHE_KEY_TAG, DAMAGED_TAG, find_registered
    from forgeline.registry.register import EvalRows, load_version, register_and_gate

    mlflow.set_tracking_uri(mlflow_uri)
    mlflow.set_registry_uri(mlflow_uri)
    client = MlflowClient(mlflow_uri, mlflow_uri)
    exp = client.get_experiment_by_name("t") or client.get_experiment(client.create_experiment("t"))
    files, labels = bundle
    f1 = 0.9
    floor = 0.6 if alias == "challenger" else 0.05  # two classes: chance 0.5, so no model clears a 0.6 gain

    def same_run():
        run = client.create_run(exp.experiment_id)
        reg = register_and_gate(client, run.info.run_id, RegistryConfig(model_name="m", f1_tolerance=0.01,
                                                                        min_gain_over_chance=floor), files,
                                {"labels": labels, "max_length": 32, "variants": ["fp32"]},
                                {"test_macro_f1": f1, "test_accuracy": f1},
                                {"data_fingerprint": "abc", CACHE_KEY_TAG: "key-1"}, True, ["great ride", "awful trip"],
                                eval_rows=EvalRows(["a great ride", "an awful trip"] * 5, [labels[-1], labels[0]] * 5))
        client.set_terminated(run.info.run_id)
        return reg

    first = same_run()
    assert first.aliases == [alias] and find_registered(client, "m", "key-1") == first.version
    assert doctor(client).damaged_versions == []
    stored = Path(client.get_model_version_download_uri("m", first.version).removeprefix("file://"))
    _flip(next(stored.rglob("model.onnx")))

    assert find_registered(client, "m", "key-1") is None  # the rerun's reuse check: tagged, passed over
    second = same_run()
    assert second.version != first.version, "the damaged version was reused"
    assert str(client.get_model_version_by_alias("m", alias).version) == second.version
    assert load_version("m", second.version).labels == labels  # the alias points at a version that loads
    if alias == "champion":
        assert "could not be loaded" in second.decision.champion_problem
    assert DAMAGED_TAG in client.get_model_version("m", first.version).tags
    lines = doctor(client).damaged_versions
    assert len(lines) == 1 and lines[0].startswith(f"m v{first.version}: ") and "model.onnx changed" in lines[0], lines
    assert find_registered(client, "m", "key-1") == second.version  # a third run reuses the good one
    assert same_run().version == second.version

    # a champion damaged in place, found by nobody yet: doctor checks aliased versions and names it
    stored = Path(client.get_model_version_download_uri("m", second.version).removeprefix("file://"))
    _flip(next(stored.rglob("model.onnx")))
    report = doctor(client)
    named = [line for line in report.damaged_versions if line.startswith(f"m v{second.version} (@{alias})")]
    assert named and f"moves @{alias} to it" in named[0], report.damaged_versions
    assert any(line.startswith("damaged model version m v") for line in report.lines())
    assert DoctorReport().lines() == ["nothing to repair"]


def test_the_card_headline_and_metric_tags_are_the_served_variants_on_the_test_rows(mlflow_uri, bundle):
    """Found on a pairs file: the card read "macro_f1 0.9421 (95% CI 0.8864–0.9378)", the teacher's PyTorch
    number beside the served student INT8's interval (it served 0.9130). The version's numbers are now
    the served variant's on the gate's rows; the teacher's are kept beside them as ``metric.teacher.*``."""
    import re

    from sklearn.metrics import f1_score

    from forgeline.registry.register import load_version

    mlflow.set_tracking_uri(mlflow_uri)
    mlflow.set_registry_uri(mlflow_uri)
    client = MlflowClient(mlflow_uri, mlflow_uri)
    _, labels = bundle
    texts = ["a great ride", "an awful trip", "wonderful and amazing", "terrible and dreadful", "fine", "bad"] * 4
    truth = [labels[-1], labels[0], labels[-1], labels[0], labels[0], labels[-1]] * 4
    reg, _ = register_version(client, bundle, labels, 0.999, eval_rows=(texts, truth))  # 0.999: the teacher's claim
    served = load_version("m", reg.version).predict_proba(texts).argmax(axis=1)
    want = f1_score([labels.index(t) for t in truth], served, average="macro")
    tags = client.get_model_version("m", reg.version).tags
    assert float(tags["metric.test_macro_f1"]) == pytest.approx(want, abs=1e-6) and want < 0.999
    assert tags["metric.teacher.test_macro_f1"] == "0.999000"
    card = client.get_model_version("m", reg.version).description
    headline = re.search(r"macro_f1 \(primary, higher is better\) \*\*([\d.]+)\*\* \(95% CI ([\d.]+)–([\d.]+)\)", card)
    value, low, high = (float(x) for x in headline.groups())
    assert value == pytest.approx(want, abs=1e-4) and low <= value <= high, headline.group(0)
    assert "as served: `fp32` on the CPU" in card
