"""The student search's pieces called directly: the choice among trials, the space checked against the
teacher before any trial, the fixed student as the first trial, and the INT8 sensitivity pass."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from forgeline.config.schema import CompressConfig, StudentSearchSpace
from forgeline.export import compress as cmp
from forgeline.export.search import SearchError, TrialRecord, check_space, choose, fixed_params


def trial(n, ratio, ok, metric=0.8, size=10):
    return TrialRecord(n, {}, "complete", val_metric=metric, latency_ratio=ratio, size_bytes=size, within_budget=ok)


def test_the_fastest_trial_within_budget_is_chosen_and_near_ties_go_to_the_smaller_file():
    trials = [trial(0, 0.5, True, size=30), trial(1, 0.2, False), trial(2, 0.52, True, size=20),
              trial(3, 0.9, True, size=5), TrialRecord(4, {}, "failed", error="boom")]
    chosen, reason = choose(trials, tie=0.1)
    assert chosen == 2 and "within the budgets" in reason  # 0.52 is within 10 % of 0.5, and smaller
    assert choose(trials, tie=0.0)[0] == 0


def test_without_a_trial_within_budget_the_most_accurate_is_kept_in_the_metrics_direction():
    trials = [trial(0, 0.3, False, metric=0.70), trial(1, 0.4, False, metric=0.75)]
    assert choose(trials, 0.1)[0] == 1
    assert choose(trials, 0.1, higher_is_better=False)[0] == 0  # RMSE: lower is better
    assert choose([TrialRecord(0, {}, "failed")], 0.1) == (None, "no trial completed")


def test_a_space_the_teacher_cannot_take_is_refused_with_what_to_use(trained):
    _, _, result = trained  # a 1-layer MiniLM, 12 heads
    with pytest.raises(SearchError, match=r"layers \[2, 3\] keep more layers than the teacher has \(1\): use values from 1 to 1"):
        check_space(StudentSearchSpace(layers=[1, 2, 3]), result.model, "cpu")
    with pytest.raises(SearchError, match=r"prune_heads \[0\.99\] remove every one of the teacher's 12 heads"):
        check_space(StudentSearchSpace(layers=[1], prune_heads=[0.5, 0.99]), result.model, "cpu")
    check_space(StudentSearchSpace(layers=[1]), result.model, "cpu")


def test_fractions_that_remove_everything_and_empty_choices_are_refused_by_the_config():
    with pytest.raises(ValueError, match="prune_ffn.1\n  Input should be less than 1"):
        StudentSearchSpace(prune_ffn=[0.5, 1.0])
    with pytest.raises(ValueError, match="at least 1"):
        StudentSearchSpace(layers=[])


def test_the_fixed_student_is_the_first_trial_only_when_the_space_holds_its_settings():
    c = CompressConfig()
    first = fixed_params(c, "cpu")
    assert first["layers"] == c.student_layers and first["quantization"] == "dynamic" and first["fp32_layers"] == 0
    assert "quantization" not in fixed_params(c, "cuda")
    assert fixed_params(c.model_copy(update={"search": StudentSearchSpace(layers=[1, 2])}), "cpu") is None


def test_the_sensitivity_pass_keeps_whole_layers_in_fp32_and_the_quantizer_leaves_them(tmp_path, exported):
    groups = cmp.layer_groups(exported)
    assert len(groups) == 1 and any(n.startswith("Attention") for n in groups[0]) and len(groups[0]) >= 3
    rng = np.random.default_rng(0)
    ids = rng.integers(1000, 2000, size=(8, 16)).astype(np.int64)
    calibration = [(ids, np.ones_like(ids))]
    kept = cmp.sensitive_layers(exported, lambda src, dst, r: cmp.quantize_int8(src, dst, r), calibration, 1, tmp_path)
    assert kept == tuple(groups[0])
    assert cmp.sensitive_layers(exported, None, calibration, 0, tmp_path) == ()
    out = cmp.quantize_int8(exported, tmp_path / "q.onnx", cmp.QuantRecipe(per_channel=False, exclude=kept))
    ops = {n.op_type for n in onnx.load(str(out)).graph.node}
    assert "Attention" in ops and "QAttention" not in ops, "the kept layer's attention stays fp32"
