"""The model card: one markdown page per registered version, written at registration.

It is logged as the run's ``model_card.md`` and set as the model version's description, so it is the
first thing a reviewer reads on the version page of the MLflow UI (and what the REST API returns as
``model_version.description``). The numbers come from the gate's own inputs — the same rows, the
same comparison — so the card and ``gate.json`` cannot disagree.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from forgeline.registry.gate import GateDecision


@dataclass
class CardContext:
    """What the register stage knows about the run beyond the gate's inputs."""

    data: str = "unknown"
    """Where the training data came from (path or bundled corpus)."""
    rows: int | None = None
    quarantined: int | None = None
    splits: dict[str, int] = field(default_factory=dict)
    variants: list[dict[str, Any]] = field(default_factory=list)
    """Each compression variant: name, size_mb, accuracy, macro_f1, bundled, and any measured extras."""
    defaults: dict[str, str] = field(default_factory=dict)
    """Device -> the variant served there by default, and why."""
    max_length: int | None = None
    config_hash: str | None = None
    git_commit: str | None = None


def _f(value: Any, digits: int = 4) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def model_card(name: str, version: str, run_id: str, decision: GateDecision, metrics: dict[str, float],
               labels: list[str], fingerprint: str, ctx: CardContext, macro_f1_ci: tuple[float, float] | None) -> str:
    word = "promoted to champion" if decision.promote else "kept as challenger"
    ci = f" (95% CI {macro_f1_ci[0]:.4f}–{macro_f1_ci[1]:.4f})" if macro_f1_ci else ""
    lines = [
        f"# {name} v{version}",
        "",
        f"**Gate: {word}.** {decision.reason}",
        "",
        f"Rule: {decision.rule or 'stored-metric comparison (no same-data rows)'}. Full record: `gate.json` in run "
        f"`{run_id}`.",
        "",
        "## Data",
        f"- source: {ctx.data}; fingerprint `{fingerprint[:16]}`",
        f"- rows: {ctx.rows if ctx.rows is not None else '?'}, splits {ctx.splits or '?'}"
        + (f"; {ctx.quarantined} quarantined" if ctx.quarantined is not None else ""),
        f"- labels ({len(labels)}): {', '.join(f'`{lab}`' for lab in labels)}",
        "",
        "## Test metrics (this run's test split)",
        f"- macro-F1 **{metrics.get('test_macro_f1', float('nan')):.4f}**{ci}; accuracy "
        f"{metrics.get('test_accuracy', float('nan')):.4f}",
    ]
    c = decision.comparison
    if c:
        lines += [
            "",
            f"## Against champion v{decision.champion_version}, on the same {c['n']} rows",
            "| | this version | champion | difference (CI) | McNemar p |",
            "|---|---:|---:|---:|---:|",
            f"| macro-F1 | {c['challenger_macro_f1']:.4f} | {c['champion_macro_f1']:.4f} | {c['diff']:+.4f} "
            f"[{c['ci_low']:+.4f}, {c['ci_high']:+.4f}] | {c['mcnemar_p']:.3g} |",
        ]
    elif decision.champion_problem:
        lines += ["", f"## Champion v{decision.champion_version} not compared", f"It could not be scored: "
                  f"{decision.champion_problem}"]
    if decision.slices:
        lines += ["", "## Slices", "| slice | rows | metric | this version | champion | drop |", "|---|---:|---|---:|---:|---:|"]
        lines += [f"| {r['slice']} | {r['n']} | {r['metric']} | {_f(r['challenger'], 3)} | {_f(r['champion'], 3)} | "
                  f"{_f(r['drop'], 3)} |" for r in decision.slices]
    if ctx.variants:
        extra_keys = sorted({k for v in ctx.variants for k in v.get("extra", {})})
        lines += ["", "## Compression variants",
                  "| variant | size MB | accuracy | macro-F1 | bundled |" + "".join(f" {k} |" for k in extra_keys),
                  "|---|---:|---:|---:|---|" + "---:|" * len(extra_keys)]
        lines += [f"| {v['name']} | {v['size_mb']:.1f} | {v['accuracy']:.4f} | {v['macro_f1']:.4f} | "
                  f"{'yes' if v['bundled'] else 'no'} |" + "".join(f" {_f(v.get('extra', {}).get(k), 3)} |" for k in extra_keys)
                  for v in ctx.variants]
        lines += [f"- Served by default on {d}: {why}" for d, why in ctx.defaults.items()]
    lines += [
        "",
        "## Limits",
        f"- Predicts only the {len(labels)} labels above; a text about something else still gets one of them.",
        f"- Reads at most {ctx.max_length or '?'} tokens of a text; the rest is cut off.",
        "- Texts that are empty, hold control characters or are not valid UTF-8 are refused (HTTP 422), as "
        "training quarantined them.",
        "- Scores hold for data like the training data; check drift (`forgeline drift`, or on served traffic "
        "with `forgeline drift --traffic`) before trusting them on new data.",
        "",
        "## How to load",
        "```",
        f"forgeline serve -m {name}/{version}            # HTTP, micro-batching",
        f"mlflow.pyfunc.load_model('models:/{name}/{version}').predict(pd.DataFrame({{'text': [...]}}))",
        "```",
        "",
        f"config hash `{ctx.config_hash or '?'}` · code `{ctx.git_commit or '?'}`",
    ]
    return "\n".join(lines) + "\n"
