"""The champion gate: whether a newly registered version replaces the champion.

Pure functions, no I/O, so every branch is tested directly (tests/registry/test_gate.py). Order of the
checks: parity, then the comparison with the champion, then the floor above chance (which matters
most when there is no champion yet).

The comparison is on the same rows when the register stage could score both models on the current
test split (``registry.compare.PairedComparison``): the challenger is refused when the lower bound of
the confidence interval of its macro-F1 minus the champion's reaches below ``-registry.f1_tolerance``.
Without such a comparison (a caller with no rows) it falls back to the champion's stored macro-F1.
"""

from __future__ import annotations

from dataclasses import dataclass

from forgeline.registry.compare import PairedComparison, worst_slice

SAME_DATA_RULE = ("promote when the lower bound of the {confidence:.0%} paired-bootstrap interval of "
                  "macro-F1(challenger) - macro-F1(champion), both scored on this run's test split, is above "
                  "-registry.f1_tolerance ({tolerance:g})")


@dataclass
class ChampionInfo:
    version: str
    macro_f1: float | None


@dataclass
class GateDecision:
    promote: bool
    reason: str
    candidate_macro_f1: float
    champion_version: str | None = None
    champion_macro_f1: float | None = None
    chance_macro_f1: float | None = None
    min_gain_over_chance: float | None = None
    comparison: dict | None = None
    """The same-data comparison (``PairedComparison.to_dict()``), when there was one."""
    rule: str | None = None
    champion_problem: str | None = None
    """Why the champion could not be scored on this data (not loadable, another label set)."""
    slices: list[dict] | None = None
    """Both models per slice of the same rows (``registry.compare.slice_table``)."""


def chance_macro_f1(n_labels: int) -> float:
    """Macro-F1 of guessing without reading the text: 1/K for K classes when guessing at random by the class
    frequencies (each class scores F1 = its frequency); always predicting the most frequent class, or
    guessing uniformly, scores less."""
    return 1.0 / n_labels


def decide_promotion(candidate_macro_f1: float, parity_ok: bool, champion: ChampionInfo | None,
                     tolerance: float, chance_macro_f1: float | None = None,
                     min_gain_over_chance: float | None = None, paired: PairedComparison | None = None,
                     champion_problem: str | None = None, slices: list[dict] | None = None,
                     max_slice_drop: float | None = None, min_slice_rows: int = 30) -> GateDecision:
    """``paired``: both models on the same rows; ``champion_problem``: why there is no such comparison
    although there is a champion (it is then replaced when the rest of the gate passes); ``slices``:
    the per-slice table of those rows, where a drop beyond ``max_slice_drop`` blocks promotion."""
    if paired is not None or champion_problem is not None:
        decision = _decide_same_data(candidate_macro_f1, parity_ok, champion, tolerance, chance_macro_f1,
                                     min_gain_over_chance, paired, champion_problem,
                                     worst_slice(slices or [], max_slice_drop, min_slice_rows), max_slice_drop)
    else:
        decision = _decide(candidate_macro_f1, parity_ok, champion, tolerance, chance_macro_f1, min_gain_over_chance)
    decision.chance_macro_f1, decision.min_gain_over_chance = chance_macro_f1, min_gain_over_chance
    decision.slices = slices
    return decision


def _below_chance(candidate_macro_f1: float, chance_macro_f1: float | None, min_gain_over_chance: float | None) -> str | None:
    if chance_macro_f1 is None or min_gain_over_chance is None or candidate_macro_f1 >= chance_macro_f1 + min_gain_over_chance:
        return None
    return (f"macro-F1 {candidate_macro_f1:.4f} is not {min_gain_over_chance:g} (registry.min_gain_over_chance) "
            f"above chance, {chance_macro_f1:.4f}: the model has not learned the task. Check that the labels match "
            "the texts, or train longer or with a higher learning rate (train.epochs, train.learning_rate)")


def _decide_same_data(candidate_macro_f1: float, parity_ok: bool, champion: ChampionInfo | None, tolerance: float,
                      chance_macro_f1: float | None, min_gain_over_chance: float | None,
                      paired: PairedComparison | None, champion_problem: str | None,
                      slice_drop: dict | None = None, max_slice_drop: float | None = None) -> GateDecision:
    version = champion.version if champion else None

    def decision(promote: bool, reason: str) -> GateDecision:
        return GateDecision(promote, reason, candidate_macro_f1, version,
                            paired.champion_macro_f1 if paired else None,
                            comparison=paired.to_dict() if paired else None,
                            rule=SAME_DATA_RULE.format(confidence=paired.confidence if paired else 0.95,
                                                       tolerance=tolerance),
                            champion_problem=champion_problem)

    if not parity_ok:
        return decision(False, "parity check failed: ONNX model disagrees with PyTorch")
    if paired is not None:
        p = paired
        same = (f"on the same {p.n} test rows macro-F1 {p.challenger_macro_f1:.4f} vs champion v{version} "
                f"{p.champion_macro_f1:.4f}: difference {p.diff:+.4f}, {p.confidence:.0%} CI [{p.ci_low:+.4f}, "
                f"{p.ci_high:+.4f}]; McNemar p={p.mcnemar_p:.3g} ({p.only_challenger_right} rows only the challenger "
                f"gets right, {p.only_champion_right} only the champion)")
        if p.ci_low <= -tolerance:
            return decision(False, f"{same}: the interval reaches below -registry.f1_tolerance {tolerance:g}, so it "
                                   "may be worse than the champion")
        if slice_drop is not None:
            r = slice_drop
            return decision(False, f"slice {r['slice']} ({r['n']} rows): {r['metric']} {r['challenger']:.3f} vs champion "
                                   f"{r['champion']:.3f}, a drop of {r['drop']:.3f}, more than registry.max_slice_drop "
                                   f"{max_slice_drop:g} ({same})")
    floor = _below_chance(candidate_macro_f1, chance_macro_f1, min_gain_over_chance)
    if floor:
        return decision(False, floor)
    if paired is None:
        return decision(True, f"champion v{version} could not be scored on this data ({champion_problem}); "
                              f"replaced by a model with parity ok and macro-F1 {candidate_macro_f1:.4f}")
    return decision(True, f"{same}: not worse than the champion by more than registry.f1_tolerance "
                          f"{tolerance:g}: promoted")


def _decide(candidate_macro_f1: float, parity_ok: bool, champion: ChampionInfo | None, tolerance: float,
            chance_macro_f1: float | None, min_gain_over_chance: float | None) -> GateDecision:
    if not parity_ok:
        return GateDecision(False, "parity check failed: ONNX model disagrees with PyTorch", candidate_macro_f1,
                            champion.version if champion else None, champion.macro_f1 if champion else None)
    if champion is not None and champion.macro_f1 is not None and champion.macro_f1 - candidate_macro_f1 > tolerance:
        gap = champion.macro_f1 - candidate_macro_f1
        return GateDecision(
            False,
            f"macro-F1 {candidate_macro_f1:.4f} is {gap:.4f} below champion v{champion.version} "
            f"({champion.macro_f1:.4f}), more than registry.f1_tolerance {tolerance:g}",
            candidate_macro_f1, champion.version, champion.macro_f1,
        )
    floor = _below_chance(candidate_macro_f1, chance_macro_f1, min_gain_over_chance)
    if floor:
        return GateDecision(False, floor, candidate_macro_f1, champion.version if champion else None,
                            champion.macro_f1 if champion else None)
    if champion is None:
        return GateDecision(True, f"no champion yet; first model with parity ok (macro-F1 {candidate_macro_f1:.4f})",
                            candidate_macro_f1)
    if champion.macro_f1 is None:
        return GateDecision(True, f"champion v{champion.version} has no macro-F1 recorded; replacing it",
                            candidate_macro_f1, champion.version, None)
    return GateDecision(
        True,
        f"macro-F1 {candidate_macro_f1:.4f} vs champion v{champion.version} {champion.macro_f1:.4f} "
        f"(tolerance {tolerance:g}): promoted",
        candidate_macro_f1, champion.version, champion.macro_f1,
    )
