"""The champion gate: whether a newly registered version replaces the champion.

Pure functions, no I/O, so every branch is tested directly (tests/registry/test_gate.py). Order of the
checks: parity, then the comparison with the champion, then the floor above chance (which matters
most when there is no champion yet).
"""

from __future__ import annotations

from dataclasses import dataclass


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


def chance_macro_f1(n_labels: int) -> float:
    """Macro-F1 of guessing without reading the text: 1/K for K classes when guessing at random by the class
    frequencies (each class scores F1 = its frequency); always predicting the most frequent class, or
    guessing uniformly, scores less."""
    return 1.0 / n_labels


def decide_promotion(candidate_macro_f1: float, parity_ok: bool, champion: ChampionInfo | None,
                     tolerance: float, chance_macro_f1: float | None = None,
                     min_gain_over_chance: float | None = None) -> GateDecision:
    decision = _decide(candidate_macro_f1, parity_ok, champion, tolerance, chance_macro_f1, min_gain_over_chance)
    decision.chance_macro_f1, decision.min_gain_over_chance = chance_macro_f1, min_gain_over_chance
    return decision


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
    if chance_macro_f1 is not None and min_gain_over_chance is not None \
            and candidate_macro_f1 < chance_macro_f1 + min_gain_over_chance:
        return GateDecision(
            False,
            f"macro-F1 {candidate_macro_f1:.4f} is not {min_gain_over_chance:g} (registry.min_gain_over_chance) "
            f"above chance, {chance_macro_f1:.4f}: the model has not learned the task. Check that the labels match "
            "the texts, or train longer or with a higher learning rate (train.epochs, train.learning_rate)",
            candidate_macro_f1, champion.version if champion else None, champion.macro_f1 if champion else None,
        )
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
