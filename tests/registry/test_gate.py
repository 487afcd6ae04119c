"""The champion gate as a pure function: every branch, no store."""

import numpy as np
import pytest

from forgeline.registry.gate import ChampionInfo, GateEvidence, GatePolicy, chance_macro_f1, decide
from forgeline.tasks.base import Metric


def decide_promotion(candidate_macro_f1, parity_ok, champion, tolerance, chance_macro_f1=None,
                     min_gain_over_chance=None, paired=None, champion_problem=None, slices=None, max_slice_drop=None,
                     min_slice_rows=30):
    """The single-label gate of macro-F1 as policy + evidence."""
    policy = GatePolicy(Metric("macro_f1"), tolerance, min_gain_over_chance, max_slice_drop, min_slice_rows)
    return decide(policy, GateEvidence(candidate_macro_f1, parity_ok, champion, chance_macro_f1, "chance", paired,
                                       champion_problem, slices))


@pytest.mark.parametrize(
    "candidate,parity,champion,promote,needle",
    [
        (0.70, True, None, True, "no champion yet"),
        (0.70, False, None, False, "parity"),
        (0.80, False, ChampionInfo("1", 0.50), False, "parity"),
        (0.795, True, ChampionInfo("1", 0.80), True, "promoted"),
        (0.60, True, ChampionInfo("1", 0.80), False, "below champion v1"),
        (0.90, True, ChampionInfo("3", 0.80), True, "promoted"),
        (0.10, True, ChampionInfo("2", None), True, "no macro-F1"),
    ],
)
def test_gate(candidate, parity, champion, promote, needle):
    d = decide_promotion(candidate, parity, champion, tolerance=0.01)
    assert d.promote is promote and needle in d.reason


@pytest.mark.parametrize(
    "candidate,champion,promote,needle",
    [
        (0.3261, None, False, "not 0.05 (registry.min_gain_over_chance) above chance, 0.3333"),  # always one class
        (0.3834, None, True, "no champion yet"),
        (0.36, ChampionInfo("1", 0.365), False, "above chance"),  # within tolerance of a champion that is no better
        (0.30, ChampionInfo("1", 0.80), False, "below champion v1"),  # the bigger problem is named first
        (0.36, ChampionInfo("1", None), False, "above chance"),
    ],
)
def test_gate_keeps_a_model_at_chance_level_from_becoming_champion(candidate, champion, promote, needle):
    d = decide_promotion(candidate, True, champion, 0.01, chance_macro_f1=1 / 3, min_gain_over_chance=0.05)
    assert d.promote is promote and needle in d.reason
    assert (d.baseline_value, d.min_gain_over_baseline) == (1 / 3, 0.05)
    assert decide_promotion(candidate, True, champion, 0.01, 1 / 3, None).promote is (champion is None or candidate > 0.35)


def test_chance_is_one_over_the_number_of_classes_and_no_label_blind_guess_beats_it():
    from sklearn.metrics import f1_score

    rng = np.random.default_rng(0)
    y = rng.choice(3, size=20_000, p=[0.7, 0.2, 0.1])
    assert chance_macro_f1(3) == pytest.approx(1 / 3)
    guesses = {"always the most frequent": np.zeros_like(y), "uniform": rng.integers(0, 3, size=y.size),
               "by class frequency": rng.choice(3, size=y.size, p=[0.7, 0.2, 0.1])}
    for name, pred in guesses.items():
        assert f1_score(y, pred, average="macro") <= chance_macro_f1(3) + 0.01, name


def test_gate_refuses_worse_model_just_beyond_tolerance():
    assert decide_promotion(0.7899, True, ChampionInfo("1", 0.80), 0.01).promote is False
    assert decide_promotion(0.7901, True, ChampionInfo("1", 0.80), 0.01).promote is True


def test_a_slice_that_drops_beyond_the_limit_blocks_promotion_and_is_named():
    from tests.registry.class_ids import compare_paired

    y = np.array([0, 1] * 100)
    paired = compare_paired(y, y, y, 2)  # overall identical: the paired test alone would promote
    slices = [{"slice": "class=pos", "n": 100, "metric": "f1", "challenger": 0.9, "champion": 0.92, "drop": 0.02},
              {"slice": "source=forum", "n": 40, "metric": "accuracy", "challenger": 0.6, "champion": 0.8, "drop": 0.2},
              {"slice": "source=app", "n": 5, "metric": "accuracy", "challenger": 0.0, "champion": 1.0, "drop": 1.0}]
    args = dict(candidate_macro_f1=0.9, parity_ok=True, champion=ChampionInfo("1", 0.9), tolerance=0.01, paired=paired,
                slices=slices, min_slice_rows=30)
    blocked = decide_promotion(**args, max_slice_drop=0.1)
    assert not blocked.promote
    assert blocked.reason.startswith("slice source=forum (40 rows): accuracy 0.600 vs champion 0.800, a drop of 0.200, "
                                     "more than registry.max_slice_drop 0.1")
    assert blocked.slices == slices
    assert decide_promotion(**args, max_slice_drop=0.25).promote  # within the limit; 5-row slice too small to count
    assert decide_promotion(**args, max_slice_drop=None).promote


@pytest.mark.parametrize("challenger_rmse,promote", [(1.00, True), (1.01, True), (1.20, False)])
def test_a_lower_is_better_metric_refuses_a_higher_rmse_beyond_a_relative_tolerance(challenger_rmse, promote):
    """RMSE: the upper bound of (challenger − champion) against 2 % of the champion's value."""
    from forgeline.inference.tasks import spec_for
    from forgeline.registry.compare import compare_outputs
    from forgeline.tasks import get_task

    task = get_task("regression")
    rng = np.random.default_rng(0)
    y = rng.normal(0, 1, 400)
    noise = rng.normal(0, 0.3, 400)
    champion = (y + noise)[:, None]  # RMSE ~0.3; predicting the mean: ~1
    challenger = (y + noise * challenger_rmse)[:, None]
    spec = spec_for("regression", ("y",), mean=0.0, scale=1.0)
    paired = compare_outputs(task, spec, y, challenger, champion)
    assert paired.mcnemar_p is None and paired.metric == "rmse"
    policy = GatePolicy(task.primary, 0.02, 0.05)
    d = decide(policy, GateEvidence(paired.challenger_value, True, ChampionInfo("1", paired.champion_value),
                                    task.baseline(y, spec)[0], "the mean", paired))
    assert d.promote is promote, d.reason
    assert not d.higher_is_better and d.metric == "rmse"
    if not promote:
        assert "reaches above" in d.reason and "no McNemar" in d.reason


def test_the_floor_of_a_relative_metric_is_a_fraction_of_the_baseline():
    """RMSE 0.185 against the mean's 0.1925 is 3.9 % better: below a 5 % floor, above a 3 % one."""
    from forgeline.tasks import get_task

    rmse = get_task("regression").primary
    evidence = GateEvidence(0.185, True, None, 0.1925, "the training mean")
    refused = decide(GatePolicy(rmse, 0.02, 0.05), evidence)
    assert not refused.promote and "not 0.05 (5% of it)" in refused.reason and "below the training mean, 0.1925" in refused.reason
    assert decide(GatePolicy(rmse, 0.02, 0.03), evidence).promote


@pytest.mark.parametrize("metric, ours, theirs, refused", [("macro_f1", 0.70, 0.85, True), ("macro_f1", 0.84, 0.85, False),
                                                           ("rmse", 0.30, 0.20, True), ("rmse", 0.20, 0.30, False)])
def test_a_version_significantly_worse_than_the_classical_baseline_is_not_promoted(metric, ours, theirs, refused):
    """The classical baseline's outputs on the same rows, compared with the version's by the gate's own paired
    bootstrap (``compare_outputs``): refused only when the interval is wholly on the worse side, with the
    reason; ``registry.beat_classical=false`` keeps the comparison on the record and promotes."""
    from forgeline.inference.tasks import spec_for
    from forgeline.registry.compare import compare_outputs
    from forgeline.tasks import get_task

    rng = np.random.default_rng(0)
    if metric == "macro_f1":
        task, spec = get_task("single_label"), spec_for("single_label", ("a", "b"))
        y = rng.integers(0, 2, 600)

        def outputs(accuracy: float) -> np.ndarray:
            right = rng.random(600) < accuracy
            return np.eye(2, dtype=np.float32)[np.where(right, y, 1 - y)]
    else:
        task, spec = get_task("regression"), spec_for("regression", ("y",))
        y = rng.normal(0, 1, 600)

        def outputs(rmse: float) -> np.ndarray:
            return (y + rng.normal(0, rmse, 600))[:, None]
    c = compare_outputs(task, spec, y, outputs(ours), outputs(theirs))
    evidence = GateEvidence(c.challenger_value, True, None, None, "chance", classical=c, classical_name="TF-IDF + x")
    d = decide(GatePolicy(task.primary, 0.02, None), evidence)
    assert d.promote is not refused, d.reason
    assert d.classical["name"] == "TF-IDF + x" and d.classical["champion_value"] == c.champion_value
    if refused:
        assert d.reason.startswith("the classical baseline (TF-IDF + x) is better on the same 600 test rows")
        assert decide(GatePolicy(task.primary, 0.02, None, beat_classical=False), evidence).promote
