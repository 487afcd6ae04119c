"""The champion gate: whether a newly registered version replaces the champion.

``decide(policy, evidence)``: the policy comes from config and the task (which metric, its direction,
the tolerance, the floor above the trivial baseline, the slice limits); the evidence from the register
stage (the new version's test value, parity, the champion, both models on the same rows, slices). Pure
functions, no I/O, so every branch is tested directly (tests/registry/test_gate.py). Order of the
checks: parity, then the comparison with the champion, then the floor above the baseline (which
matters most when there is no champion yet).

The comparison is on the same rows when the register stage could score both models on the current
test split (``registry.compare.PairedComparison``): the challenger is refused when the bound of the
confidence interval of (challenger − champion) on the worse side passes the tolerance. Without such a
comparison (a caller with no rows) it falls back to the champion's stored value.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from forgeline.registry.compare import PairedComparison, worst_slice
from forgeline.tasks import Task
from forgeline.tasks.base import Metric

MACRO_F1 = Metric("macro_f1")


@dataclass(frozen=True)
class GatePolicy:
    """What the gate asks, from ``registry.*`` and the task's primary metric."""

    metric: Metric = MACRO_F1
    tolerance: float = 0.01
    """How much worse than the champion the interval's bound may reach: in the metric's units, or a
    fraction of the champion's value for a ``relative_drop`` metric (RMSE, MAE)."""
    min_gain_over_baseline: float | None = None
    """How far the new version must be beyond the trivial baseline (same units rule as ``tolerance``)."""
    max_slice_drop: float | None = None
    min_slice_rows: int = 30
    beat_classical: bool = True
    """Refuse a version significantly worse than the run's classical baseline (``registry.beat_classical``)."""

    @classmethod
    def of(cls, cfg, task: Task) -> "GatePolicy":
        """From a ``RegistryConfig`` and the task (its primary metric)."""
        metric = task.primary
        tolerance = cfg.metric_tolerance if cfg.metric_tolerance is not None else (
            0.02 if metric.relative_drop else cfg.f1_tolerance)
        return cls(metric, tolerance, cfg.min_gain_over_chance, cfg.max_slice_drop, cfg.min_slice_rows,
                   cfg.beat_classical)

    @property
    def setting(self) -> str:
        return "registry.f1_tolerance" if self.metric.name == "macro_f1" else "registry.metric_tolerance"

    def allowed(self, champion_value: float) -> float:
        """The largest "worse by" (in the metric's units) still within tolerance of ``champion_value``."""
        return self.tolerance * abs(champion_value) if self.metric.relative_drop else self.tolerance


@dataclass
class ChampionInfo:
    version: str
    value: float | None
    """Its stored test value of the gate's metric (its own split: used only without same-data rows)."""


@dataclass
class GateEvidence:
    """What the register stage knows about the new version."""

    value: float
    """Its test value of the policy's metric."""
    parity_ok: bool
    champion: ChampionInfo | None = None
    baseline: float | None = None
    """The metric of the trivial baseline on the same rows (chance for macro-F1: 1/K)."""
    baseline_what: str = "chance"
    paired: PairedComparison | None = None
    champion_problem: str | None = None
    """Why the champion could not be scored on this data (not loadable, another label set, another task)."""
    slices: list[dict] | None = None
    classical: PairedComparison | None = None
    """The new version against the run's classical baseline on the same rows (the baseline as "champion")."""
    classical_name: str = ""


@dataclass
class GateDecision:
    promote: bool
    reason: str
    candidate_value: float
    champion_version: str | None = None
    champion_value: float | None = None
    metric: str = "macro_f1"
    higher_is_better: bool = True
    baseline_value: float | None = None
    min_gain_over_baseline: float | None = None
    comparison: dict | None = None
    """The same-data comparison (``PairedComparison.to_dict()``), when there was one."""
    rule: str | None = None
    champion_problem: str | None = None
    slices: list[dict] | None = field(default=None)
    """Both models per slice of the same rows (``registry.compare.slice_rows``)."""
    classical: dict | None = None
    """The comparison with the run's classical baseline (``PairedComparison.to_dict()`` and its ``name``)."""


def chance_macro_f1(n_labels: int) -> float:
    """Macro-F1 of guessing without reading the text: 1/K for K classes when guessing at random by the class
    frequencies (each class scores F1 = its frequency); always predicting the most frequent class, or
    guessing uniformly, scores less."""
    return 1.0 / n_labels


def _rule(policy: GatePolicy, confidence: float) -> str:
    m = policy.metric
    side = "lower" if m.higher_is_better else "upper"
    bound = (f"-{policy.setting} ({policy.tolerance:g})" if m.higher_is_better else
             f"+{policy.setting} ({policy.tolerance:g}{' of the champion' if m.relative_drop else ''})")
    return (f"promote when the {side} bound of the {confidence:.0%} paired-bootstrap interval of "
            f"{m.title}(challenger) - {m.title}(champion), both scored on this run's test split, is "
            f"{'above' if m.higher_is_better else 'below'} {bound}")


def _below_baseline(policy: GatePolicy, e: GateEvidence) -> str | None:
    gain = policy.min_gain_over_baseline
    if e.baseline is None or gain is None:
        return None
    m = policy.metric
    if -m.worse_by(e.value, e.baseline) >= gain - 1e-12:  # both a fraction of the baseline for a relative metric
        return None
    what = f"{gain:g} ({gain:.0%} of it)" if m.relative_drop else f"{gain:g}"
    return (f"{m.title} {e.value:.4f} is not {what} (registry.min_gain_over_chance) "
            f"{'above' if m.higher_is_better else 'below'} {e.baseline_what}, {e.baseline:.4f}: the model has not learned "
            "the task. Check that the targets match the texts, or train longer or with a higher learning rate "
            "(train.epochs, train.learning_rate)")


def decide(policy: GatePolicy, evidence: GateEvidence) -> GateDecision:
    """The gate: ``evidence.paired`` (both models on the same rows) or ``champion_problem`` (why there
    is none although there is a champion, which is then replaced when the rest of the gate passes);
    otherwise the champion's stored value."""
    e = evidence
    decision = (_same_data(policy, e) if e.paired is not None or e.champion_problem is not None else _stored(policy, e))
    decision.metric, decision.higher_is_better = policy.metric.name, policy.metric.higher_is_better
    decision.baseline_value, decision.min_gain_over_baseline = e.baseline, policy.min_gain_over_baseline
    decision.slices = e.slices
    c = e.classical
    if c is not None:
        decision.classical = c.to_dict() | {"name": e.classical_name}
        worse = c.ci_high < 0 if policy.metric.higher_is_better else c.ci_low > 0
        if worse and decision.promote and policy.beat_classical:
            decision.promote = False
            decision.reason = (f"the classical baseline ({e.classical_name}) is better on the same {c.n} test rows: "
                               f"{policy.metric.title} {c.challenger_value:.4f} vs {c.champion_value:.4f}, difference "
                               f"{c.diff:+.4f}, {c.confidence:.0%} CI [{c.ci_low:+.4f}, {c.ci_high:+.4f}] wholly on the "
                               "worse side (registry.beat_classical=false registers it anyway)")
    return decision


def _same_data(policy: GatePolicy, e: GateEvidence) -> GateDecision:
    version = e.champion.version if e.champion else None
    m = policy.metric

    def decision(promote: bool, reason: str) -> GateDecision:
        return GateDecision(promote, reason, e.value, version, e.paired.champion_value if e.paired else None,
                            comparison=e.paired.to_dict() if e.paired else None,
                            rule=_rule(policy, e.paired.confidence if e.paired else 0.95), champion_problem=e.champion_problem)

    if not e.parity_ok:
        return decision(False, "parity check failed: ONNX model disagrees with PyTorch")
    if e.paired is not None:
        p = e.paired
        test = (f"; McNemar p={p.mcnemar_p:.3g} ({p.only_challenger_right} rows only the challenger gets right, "
                f"{p.only_champion_right} only the champion)" if p.mcnemar_p is not None else
                f"; no McNemar test ({m.title} has no per-row right or wrong)")
        same = (f"on the same {p.n} test rows {m.title} {p.challenger_value:.4f} vs champion v{version} "
                f"{p.champion_value:.4f}: difference {p.diff:+.4f}, {p.confidence:.0%} CI [{p.ci_low:+.4f}, "
                f"{p.ci_high:+.4f}]{test}")
        worst = -p.ci_low if m.higher_is_better else p.ci_high  # how much worse it may be, at the interval's edge
        allowed = policy.allowed(p.champion_value)
        if worst >= allowed:
            return decision(False, f"{same}: the interval reaches {'below' if m.higher_is_better else 'above'} "
                                   f"{'-' if m.higher_is_better else '+'}{allowed:.4g} ({policy.setting} "
                                   f"{policy.tolerance:g}{' of the champion' if m.relative_drop else ''}), so it may be "
                                   "worse than the champion")
        r = worst_slice(e.slices or [], policy.max_slice_drop, policy.min_slice_rows)
        if r is not None:
            return decision(False, f"slice {r['slice']} ({r['n']} rows): {r['metric']} {r['challenger']:.3f} vs champion "
                                   f"{r['champion']:.3f}, a drop of {r['drop']:.3f}, more than registry.max_slice_drop "
                                   f"{policy.max_slice_drop:g} ({same})")
    floor = _below_baseline(policy, e)
    if floor:
        return decision(False, floor)
    if e.paired is None:
        return decision(True, f"champion v{version} could not be scored on this data ({e.champion_problem}); "
                              f"replaced by a model with parity ok and {m.title} {e.value:.4f}")
    return decision(True, f"{same}: not worse than the champion by more than {policy.setting} "
                          f"{policy.tolerance:g}: promoted")


def _stored(policy: GatePolicy, e: GateEvidence) -> GateDecision:
    m, champion = policy.metric, e.champion
    version, value = (champion.version, champion.value) if champion else (None, None)
    if not e.parity_ok:
        return GateDecision(False, "parity check failed: ONNX model disagrees with PyTorch", e.value, version, value)
    if value is not None and m.worse_by(e.value, value) > policy.tolerance:  # both a fraction for a relative metric
        gap = abs(e.value - value)
        return GateDecision(
            False,
            f"{m.title} {e.value:.4f} is {gap:.4f} {'below' if m.higher_is_better else 'above'} champion v{version} "
            f"({value:.4f}), more than {policy.setting} {policy.tolerance:g}", e.value, version, value)
    floor = _below_baseline(policy, e)
    if floor:
        return GateDecision(False, floor, e.value, version, value)
    if champion is None:
        return GateDecision(True, f"no champion yet; first model with parity ok ({m.title} {e.value:.4f})", e.value)
    if value is None:
        return GateDecision(True, f"champion v{version} has no {m.title} recorded; replacing it", e.value, version, None)
    return GateDecision(True, f"{m.title} {e.value:.4f} vs champion v{version} {value:.4f} "
                              f"(tolerance {policy.tolerance:g}): promoted", e.value, version, value)
