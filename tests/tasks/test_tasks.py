"""Each task's declaration on constructed cases with known answers: targets, quarantine, strata, metrics,
the bootstrap's resampled metric, baselines and the torch-free output handling."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import f1_score

from forgeline.config.schema import DataConfig
from forgeline.data.load import validate_frame
from forgeline.errors import DataValidationError
from forgeline.inference.tasks import OUTPUTS, OutputSpec, spec_for
from forgeline.tasks import TASKS, Problem, get_task


def test_every_task_type_has_one_declaration_and_output_handling():
    assert set(TASKS) == set(OUTPUTS)
    for name, cls in TASKS.items():
        task = cls()
        assert task.type == name and task.primary.name in task.metrics_known


def test_multi_label_targets_from_lists_delimited_strings_and_json_cells():
    task = get_task("multi_label")
    assert task.parse_target(["b", "a", "a "], None) == ("a", "b")
    assert task.parse_target("sports| politics ", "|") == ("politics", "sports")
    assert task.parse_target('["x", "y"]', None) == ("x", "y")
    assert task.parse_target([], None) == "no_label" and isinstance(task.parse_target("", "|"), Problem)
    assert task.parse_target(None, "|") is None


def test_multi_label_metrics_match_scikit_learn_and_resampling_is_weighting():
    task = get_task("multi_label")
    rng = np.random.default_rng(0)
    y = (rng.random((300, 4)) < 0.3).astype(np.float32)
    out = np.clip(y * 0.7 + rng.random((300, 4)) * 0.5, 0, 1)
    spec = spec_for("multi_label", ("a", "b", "c", "d"), thresholds=(0.5, 0.5, 0.6, 0.4))
    pred = out >= np.array(spec.thresholds)
    m = task.metrics(y, out, spec)
    assert m["macro_f1"] == pytest.approx(f1_score(y, pred, average="macro", zero_division=0))
    assert m["micro_f1"] == pytest.approx(f1_score(y, pred, average="micro"))
    assert m["samples_f1"] == pytest.approx(f1_score(y, pred, average="samples", zero_division=1))
    idx = rng.integers(0, 300, 300)
    w = np.bincount(idx, minlength=300)[None, :]
    assert task.resampled(y, out, spec, w)[0] == pytest.approx(f1_score(y[idx], pred[idx], average="macro", zero_division=0))


def test_multi_label_thresholds_are_tuned_per_label_on_validation():
    task = get_task("multi_label")
    y = np.array([[1, 0]] * 50 + [[0, 1]] * 50, dtype=np.float32)
    out = np.where(y > 0, 0.3, 0.1).astype(np.float32)  # label scores low but separable at 0.2
    out[:, 1] = np.where(y[:, 1] > 0, 0.9, 0.6)
    spec = task.tune(task.output_spec(["a", "b"], pd.Series([("a",)]), False), y, out)
    assert spec.thresholds[0] <= 0.3 and spec.thresholds[0] > 0.1
    assert 0.6 < spec.thresholds[1] <= 0.9
    assert task.metrics(y, out, spec)["macro_f1"] == 1.0


def test_regression_metrics_resampling_and_baseline():
    task = get_task("regression")
    rng = np.random.default_rng(1)
    y = rng.normal(10, 2, 400)
    out = (y + rng.normal(0, 0.5, 400))[:, None]
    spec = task.output_spec(["score"], pd.Series(y), False)
    assert spec.mean == pytest.approx(y.mean()) and spec.scale == pytest.approx(y.std())
    m = task.metrics(y, out, spec)
    assert m["rmse"] == pytest.approx(np.sqrt(np.mean((out[:, 0] - y) ** 2)))
    assert m["r2"] > 0.9 and m["spearman"] > 0.9
    baseline, what = task.baseline(y, spec)
    assert baseline == pytest.approx(y.std(), rel=1e-6) and "mean" in what
    assert not task.primary.higher_is_better and task.primary.worse_by(1.1, 1.0) == pytest.approx(0.1)
    # standardised training targets map back through the spec
    z = task.train_y(list(y), spec)
    assert np.allclose(spec.activate(z[:, None]).ravel(), y, atol=1e-4)


@pytest.mark.parametrize("value,expected", [("3.5", 3.5), (2, 2.0), ("nan", "target_not_finite"), (float("nan"), None), ("  ", None), ("inf", "target_not_finite"),
                                            ("high", "target_not_numeric"), ([1, 2], "target_not_numeric"), (None, None)])
def test_regression_targets(value, expected):
    assert get_task("regression").parse_target(value, None) == expected


def test_regression_range_is_configurable():
    task = get_task("regression")
    bounded = type(task)(min_value=0.0, max_value=5.0)
    assert bounded.parse_target("6", None) == "target_out_of_range" and bounded.parse_target("4", None) == 4.0


def test_wrong_target_shapes_are_one_clear_error_naming_the_task_that_fits():
    lists = pd.DataFrame({"text": ["a text", "another"], "label": [["x"], ["y", "z"]]})
    with pytest.raises(DataValidationError, match="holds lists of labels.*task.type=multi_label"):
        validate_frame(lists, DataConfig(source="file", path="x"), get_task("single_label"))
    words = pd.DataFrame({"text": ["a text", "another", "third"], "label": ["high", "low", "high"]})
    with pytest.raises(DataValidationError, match="holds text.*not numbers.*task.type=single_label"):
        validate_frame(words, DataConfig(source="file", path="x"), get_task("regression"))


def test_multi_label_quarantine_reasons_and_pairs():
    raw = pd.DataFrame({"text": ["one", "two", "three", "four", "five"],
                        "pair": ["p1", None, "p3", "p4", "p5"],
                        "label": ["a|b", "a", "", "a|zz", "b "]})
    cfg = DataConfig(source="file", path="x", text_pair_column="pair", label_delimiter="|", labels=["a", "b"])
    valid, quarantine, reasons = validate_frame(raw, cfg, get_task("multi_label"))
    assert reasons == {1: ["pair_null_text"], 2: ["no_label"], 3: ["unknown_label"]}
    assert valid["label"].tolist() == [("a", "b"), ("b",)] and valid["text_pair"].tolist() == ["p1", "p5"]


def test_a_delimiter_inside_a_label_name_is_refused():
    with pytest.raises(ValueError, match="appears inside the label name"):
        DataConfig(source="file", path="x", labels=["sci-fi", "drama"], label_delimiter="-")


def test_strata_keep_every_stratum_splittable():
    task = get_task("multi_label")
    targets = pd.Series([("a",)] * 40 + [("a", "b")] * 30 + [("c",)] * 3 + [("b", "c")] * 2)
    keys = task.strata(targets, ["a", "b", "c"], 10)
    counts = pd.Series(keys).value_counts()
    assert counts.min() >= 5 and {"a", "a|b"} <= set(counts.index)
    bins = get_task("regression").strata(pd.Series(np.arange(100.0)), [], 10)
    assert len(set(bins)) == 10


def test_output_spec_round_trips_through_the_bundle_metadata_and_old_bundles_read_as_single_label():
    spec = spec_for("multi_label", ("a", "b"), thresholds=(0.3, 0.7), pairs=True)
    assert OutputSpec.from_meta({"task": spec.to_meta()}) == spec
    old = OutputSpec.from_meta({"labels": ["neg", "pos"]})
    assert old.task == "single_label" and old.labels == ("neg", "pos")
    with pytest.raises(ValueError, match="knows"):
        OutputSpec.from_meta({"task": {"task": "ranking", "labels": ["x"]}})


@pytest.mark.parametrize("task,outputs,expected", [
    ("single_label", [[0.2, 0.8]], {"label": "b", "confidence": 0.8}),
    ("multi_label", [[0.9, 0.1]], {"labels": ["a"]}),
    ("regression", [[2.5]], {"score": 2.5}),
])
def test_answers_and_frames_per_task(task, outputs, expected):
    labels = ("a", "b") if task != "regression" else ("y",)
    spec = spec_for(task, labels)
    answer = spec.answers(np.array(outputs, dtype=np.float32))[0]
    assert {k: (pytest.approx(v) if isinstance(v, float) else v) for k, v in expected.items()} == {k: answer[k] for k in expected}
    frame = spec.frame(np.array(outputs, dtype=np.float32))
    assert set(expected) <= set(frame.columns)


SPECS = {
    "multi_label": spec_for("multi_label", ("a", "b", "c"), thresholds=(0.4, 0.5, 0.6)),
    "regression": spec_for("regression", ("y",), mean=3.0, scale=2.0),
    "pairs": spec_for("single_label", ("neg", "pos"), pairs=True),
}


@pytest.fixture(scope="module", params=list(SPECS))
def exported_task(request, tiny_bert, tmp_path_factory):
    """A random tiny BERT built for the task (no training: parity needs none), exported to ONNX."""
    from transformers import AutoTokenizer

    from forgeline.config.schema import ExportConfig, ModelConfig
    from forgeline.export.onnx import export_onnx
    from forgeline.training.classifier import build_classifier

    spec = SPECS[request.param]
    tok = AutoTokenizer.from_pretrained(tiny_bert, local_files_only=True)
    model = build_classifier(ModelConfig(base=str(tiny_bert), max_length=32), spec,
                             sep_id=tok.sep_token_id if spec.pairs else None).eval()
    if spec.pairs:  # make the second segment's embedding matter, so a wrong segment id shows
        import torch

        with torch.no_grad():
            table = model.base_model.embeddings.token_type_embeddings.weight
            table[1] = torch.randn(table.shape[1], generator=torch.Generator().manual_seed(0)) * 3.0
            model.classifier.weight *= 30.0  # random init answers ~0.5 for everything: spread the logits
    path = export_onnx(model, tok, list(spec.labels), tmp_path_factory.mktemp(request.param) / "model.onnx",
                       ExportConfig(), 32)
    return spec, model, tok, path


TEXTS = ["the ride is wonderful", "an awful, dreadful app", "a much longer sentence about the future of driving cars"]
PAIRS = ["is it good?", "what do people say?", "and the update?"]


def test_every_task_exports_with_parity_and_segment_ids_in_the_graph(exported_task):
    """PyTorch and ONNX Runtime agree on the task's outputs; a pair model's graph computes the segment
    ids itself, so swapping the two texts changes its answer (the segments matter) in both engines alike."""
    from forgeline.config.schema import ExportConfig
    from forgeline.export.onnx import check_parity
    from forgeline.inference.runtime import FastTokenizer, create_session, predict_proba_ids
    from forgeline.training.loop import predict_proba

    spec, model, tok, path = exported_task
    pairs = PAIRS if spec.pairs else None
    report = check_parity(model, tok, path, TEXTS, 32, ExportConfig(), pairs=pairs)
    assert report.ok and report.argmax_agreement == 1.0
    fast = FastTokenizer(path.parent / "tokenizer.json" if (path.parent / "tokenizer.json").exists() else _tokenizer_file(tok, path), 32)
    ids = fast.encode(TEXTS, pairs)
    assert ids == [list(x) for x in tok(TEXTS, pairs, truncation=True, max_length=32)["input_ids"]]
    got = predict_proba_ids(create_session(path, "cpu"), ids, fast.pad_id, activate=spec.activate)
    ref = predict_proba(model, tok, TEXTS, 32, device="cpu", pairs=pairs)
    assert np.abs(spec.comparable(got) - spec.comparable(ref)).max() < 1e-3
    assert got.shape == (3, spec.width)
    if spec.pairs:  # the graph's segment ids are BERT's: without them the answer differs
        import torch

        from forgeline.inference.runtime import pad_batch, run_logits

        x, mask = pad_batch(ids, fast.pad_id)
        onnx_logits = run_logits(create_session(path, "cpu"), x, mask)
        t = torch.from_numpy(x)
        with torch.no_grad():
            zeros = model(input_ids=t, attention_mask=torch.from_numpy(mask), token_type_ids=t * 0).logits.numpy()
            segments = model(**tok(TEXTS, pairs, padding=True, return_tensors="pt")).logits.numpy()
        assert np.abs(onnx_logits - segments).max() < 1e-3 < np.abs(onnx_logits - zeros).max()


def _tokenizer_file(tok, path):
    tok.save_pretrained(path.parent / "tok")
    return path.parent / "tok" / "tokenizer.json"


@pytest.mark.gpu
def test_every_task_runs_as_cuda_graphs_like_the_cpu_session(exported_task):
    from tests.conftest import _ort_cuda

    if not _ort_cuda():
        pytest.skip("needs onnxruntime's CUDAExecutionProvider")
    from forgeline.inference.runtime import CudaGraphRunner, FastTokenizer, create_session, predict_proba_graphs, predict_proba_ids

    spec, model, tok, path = exported_task
    fast = FastTokenizer(_tokenizer_file(tok, path), 32)
    ids = fast.encode(TEXTS, PAIRS if spec.pairs else None)
    cpu = predict_proba_ids(create_session(path, "cpu"), ids, fast.pad_id, activate=spec.activate)
    runner = CudaGraphRunner(path, spec.width)
    gpu = predict_proba_graphs(runner, ids, fast.pad_id, 64, 32, activate=spec.activate)
    assert np.abs(spec.comparable(gpu) - spec.comparable(cpu)).max() < 1e-3


def test_shadow_agreement_and_the_traffic_log_per_task():
    reg = spec_for("regression", ("y",), mean=0.0, scale=2.0)
    assert reg.same(1.0, 1.19) and not reg.same(1.0, 1.3)  # within 0.1 target standard deviations (0.2)
    multi = spec_for("multi_label", ("a", "b"), thresholds=(0.5, 0.5))
    assert multi.same(("a",), ("a",)) and not multi.same(("a",), ("a", "b"))
    out = np.array([[0.9, 0.6], [0.1, 0.2]], dtype=np.float32)
    assert multi.logged(out) == (["a|b", ""], [pytest.approx(0.9), pytest.approx(0.2)])
    assert reg.logged(np.array([[1.5]]))[0] == ["1.5"]


def test_multi_label_output_bias_starts_at_each_labels_prior():
    import torch

    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 3))
    y = np.array([[1, 0, 0]] * 9 + [[1, 1, 0]], dtype=np.float32)  # rates 1.0, 0.1, 0.0 (clipped)
    get_task("multi_label").init_head(model, y)
    assert torch.sigmoid(model[1].bias).tolist() == pytest.approx([0.999, 0.1, 0.001], abs=1e-6)


def test_two_multi_label_models_are_compared_each_at_its_own_thresholds():
    """The champion's probabilities pass its own tuned thresholds, not the challenger's: the same
    decisions score the same, whatever thresholds produced them."""
    from forgeline.registry.compare import compare_outputs

    task = get_task("multi_label")
    y = np.array([[1, 0], [0, 1], [1, 1], [0, 0]] * 25, dtype=np.float32)
    low = spec_for("multi_label", ("a", "b"), thresholds=(0.2, 0.2))
    high = spec_for("multi_label", ("a", "b"), thresholds=(0.8, 0.8))
    a, a_spec = low.decided(np.where(y > 0, 0.3, 0.1))  # right at 0.2, wrong at 0.8
    b, _ = high.decided(np.where(y > 0, 0.9, 0.7))  # right at 0.8, wrong at 0.2
    assert a_spec.thresholds == (0.5, 0.5)
    paired = compare_outputs(task, a_spec, y, a, b)
    assert paired.challenger_value == paired.champion_value == 1.0
