from types import SimpleNamespace

import json
import numpy as np
import pandas as pd
import pytest

from forgeline.inference.pyfunc import OnnxTextClassifier, PredictInputError, batch_size_for, choose_variant, texts_from_input


@pytest.mark.parametrize(
    "given,expected",
    [
        (pd.DataFrame({"text": ["a", "b"]}), ["a", "b"]),
        (pd.DataFrame({"sentence": ["a"]}), ["a"]),
        (pd.Series(["a"]), ["a"]),
        (["a", "b"], ["a", "b"]),
        ("a", ["a"]),
        ({"text": ["a"]}, ["a"]),
    ],
)
def test_accepted_inputs(given, expected):
    assert texts_from_input(given) == expected


@pytest.mark.parametrize(
    "bad,needle",
    [
        (pd.DataFrame({"a": ["x"], "b": ["y"]}), "'text' column"),
        (pd.DataFrame({"text": ["ok", None]}), "must be a string"),
        ([1, 2], "must be a string"),
        (42, "unsupported input type"),
        (["x"] * 10_001, "at most"),
    ],
)
def test_bad_inputs_are_clear_errors(bad, needle):
    with pytest.raises(PredictInputError, match=needle):
        texts_from_input(bad)


def test_variant_choice():
    assert choose_variant(["fp32", "int8"], "cpu") == "int8"
    assert choose_variant(["fp32", "int8"], "cuda") == "fp32"
    assert choose_variant(["fp32", "fp16", "int8"], "cuda") == "fp16"
    assert choose_variant(["fp32"], "cpu") == "fp32"
    assert choose_variant(["fp32", "int8"], "cpu", "fp32") == "fp32"
    with pytest.raises(PredictInputError, match="not bundled"):
        choose_variant(["fp32"], "cpu", "int8")


def test_the_variant_chosen_at_registration_is_the_default_for_its_device():
    bundled = ["fp32", "fp16", "student_int8", "student_fp16"]
    chosen = {"cpu": "student_int8", "cuda": "student_fp16"}
    assert choose_variant(bundled, "cpu", defaults=chosen) == "student_int8"
    assert choose_variant(bundled, "cuda", defaults=chosen) == "student_fp16"
    assert choose_variant(bundled, "cpu", "fp32", defaults=chosen) == "fp32", "model_config still overrides"
    assert choose_variant(["fp32", "int8"], "cpu", defaults={"cpu": "gone"}) == "int8", "a missing default: fixed order"


def test_batch_size_from_model_config():
    assert batch_size_for("auto", "cuda") == 256 and batch_size_for("auto", "cpu") == 64
    assert batch_size_for(None, "cpu") == 64
    assert batch_size_for(32, "cuda") == 32 and batch_size_for("128", "cpu") == 128
    for bad in (0, -4, "many", 2.5, True):
        with pytest.raises(PredictInputError, match="positive integer or 'auto'"):
            batch_size_for(bad, "cpu")


def test_pyfunc_predicts_from_bundled_files(tmp_path, trained, exported):
    cfg, splits, result = trained
    meta = tmp_path / "meta.json"
    meta.write_text(json.dumps({"labels": result.labels, "max_length": 32}))
    artifacts = {"fp32": str(exported), "tokenizer": str(result.checkpoint_dir / "tokenizer.json"), "meta": str(meta)}
    model = OnnxTextClassifier()
    model.load_context(SimpleNamespace(artifacts=artifacts, model_config={}))
    assert model.variant == "fp32" and model.device == "cpu"
    texts = splits.test["text"].tolist()
    out = model.predict(None, pd.DataFrame({"text": texts}))
    assert len(out) == len(texts) and set(out["label"]) <= set(result.labels)
    probs = np.array(out["probabilities"].tolist())
    assert np.allclose(probs.sum(1), 1, atol=1e-5)
    assert np.allclose(out["confidence"], probs.max(1))
    # the tokenizers-only path tokenizes exactly like the training tokenizer
    ids = model.tokenizer.encode(texts[:5])
    assert ids == result.tokenizer(texts[:5], truncation=True, max_length=32)["input_ids"]
    assert model.predict(None, pd.DataFrame({"text": []})).empty
    long = model.predict(None, ["word " * 1000])
    assert len(long) == 1


DAMAGED_META = {
    "not JSON": ('{"labels": ["a", "b"', "cannot be read as JSON"),
    "a list": ('["a", "b"]', "is a JSON list, not an object"),
    "null": ("null", "is a JSON NoneType, not an object"),
    "labels missing": ('{"max_length": 32}', "'labels'"),
    "labels not strings": ('{"labels": [1, 2], "max_length": 32}', "'labels'"),
    "max_length a string": ('{"labels": ["a", "b"], "max_length": "32"}', "'max_length'"),
    "checksums a list": ('{"labels": ["a", "b"], "max_length": 32, "sha256": ["x"]}', "'sha256'"),
    "default variant not names": ('{"labels": ["a", "b"], "max_length": 32, "default_variant": {"cpu": 1}}',
                                  "'default_variant'"),
}


@pytest.mark.parametrize("case", DAMAGED_META)
def test_damaged_bundle_metadata_is_an_integrity_error_naming_the_file(tmp_path, case):
    """A damaged forgeline_meta.json was a JSONDecodeError or KeyError inside MLflow's load; serving and the
    watcher turn this error into one message naming the version (exit 2, or the old version kept)."""
    from forgeline.inference.contract import ArtifactIntegrityError, read_bundle_meta

    path = tmp_path / "forgeline_meta.json"
    path.write_text('{"labels": ["a", "b"], "max_length": 32, "sha256": {"fp32": "0"}}')
    assert read_bundle_meta(str(path))["labels"] == ["a", "b"]
    text, why = DAMAGED_META[case]
    path.write_text(text)
    with pytest.raises(ArtifactIntegrityError, match="forgeline_meta.json of this model version") as err:
        read_bundle_meta(str(path))
    assert why in str(err.value) and "Re-register" in str(err.value)
    context = SimpleNamespace(artifacts={"meta": str(path)}, model_config={})
    with pytest.raises(ArtifactIntegrityError):
        OnnxTextClassifier().load_context(context)
