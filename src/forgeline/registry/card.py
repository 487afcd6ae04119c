"""The model card: one markdown page per registered version, written at registration.

It is logged as the run's ``model_card.md`` and set as the model version's description, so it is the
first thing a reviewer reads on the version page of the MLflow UI (and what the REST API returns as
``model_version.description``). The numbers come from the gate's own inputs — the same rows, the
same comparison — so the card and ``gate.json`` cannot disagree.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from forgeline.inference.tasks import OutputSpec
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
    """Each compression variant: name, size_mb, its metrics (``metrics``: the task's primary one first),
    bundled, and any measured extras."""
    defaults: dict[str, str] = field(default_factory=dict)
    """Device -> the variant served there by default, and why."""
    choice_rows: int | None = None
    """Validation rows the compression choice was made on (the split's and ``compress.validation_rows``)."""
    family: str = ""
    """Which model family was registered and why (``model.family: auto``), with the validation evidence."""
    student: str = ""
    """Where the student's settings came from: the fixed ``compress.*`` ones, or the search's chosen trial."""
    max_length: int | None = None
    config_hash: str | None = None
    git_commit: str | None = None


REPRODUCIBILITY = ("- Reproducibility: the same config and seed give every variant the same validation and test "
                   "metrics to 3 decimals on the CPU (seeded training, distillation and calibration rows). Which "
                   "eligible variant is served rests on latencies measured during the run; variants within "
                   "compress.latency_tie of the fastest count as tied (the smallest file wins), but on a heavily "
                   "loaded machine timings can move by more than that, and another run may serve another eligible variant.")


def _f(value: Any, digits: int = 4) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def model_card(name: str, version: str, run_id: str, decision: GateDecision, metrics: dict[str, float],
               labels: list[str], fingerprint: str, ctx: CardContext, metric_ci: tuple[float, float] | None,
               spec: OutputSpec, served: str | None = None) -> str:
    """``served``: the variant the metrics were measured on (what the version serves on the CPU)."""
    m = decision.metric
    word = "promoted to champion" if decision.promote else "kept as challenger"
    ci = f" (95% CI {metric_ci[0]:.4f}–{metric_ci[1]:.4f})" if metric_ci else ""
    others = [f"{k.removeprefix('test_')} {v:.4f}" for k, v in metrics.items()
              if k.startswith("test_") and k != f"test_{m}" and isinstance(v, float) and v == v][:6]
    lines = [
        f"# {name} v{version}",
        "",
        f"**Gate: {word}.** {decision.reason}",
        "",
        f"**Task: {spec.task}**{' on text pairs' if spec.pairs else ''} — {spec.summary}.",
        "",
        f"Rule: {decision.rule or 'stored-metric comparison (no same-data rows)'}. Full record: `gate.json` in run "
        f"`{run_id}`.",
        "",
        "## Data",
        f"- source: {ctx.data}; fingerprint `{fingerprint[:16]}`",
        f"- rows: {ctx.rows if ctx.rows is not None else '?'}, splits {ctx.splits or '?'}"
        + (f"; {ctx.quarantined} quarantined" if ctx.quarantined is not None else ""),
        spec.target_line(),
        "",
        "## Test metrics (this run's test split" + (f", as served: `{served}` on the CPU)" if served else ")"),
        f"- {m} (primary, {'higher' if decision.higher_is_better else 'lower'} is better) "
        f"**{metrics.get(f'test_{m}', float('nan')):.4f}**{ci}" + (f"; {', '.join(others)}" if others else ""),
    ]
    if decision.baseline_value is not None:
        lines.append(f"- trivial baseline on the same rows: {m} {decision.baseline_value:.4f}")
    if decision.classical:
        k = decision.classical
        lines.append(f"- classical baseline ({k['name']}, fitted on the same split) on the same rows: {m} "
                     f"{k['champion_value']:.4f}; this version {k['diff']:+.4f} [{k['ci_low']:+.4f}, {k['ci_high']:+.4f}]")
    c = decision.comparison
    if c:
        test = "McNemar p" if c.get("mcnemar_p") is not None else "paired test"
        p_value = f"{c['mcnemar_p']:.3g}" if c.get("mcnemar_p") is not None else "– (no per-row right/wrong)"
        lines += [
            "",
            f"## Against champion v{decision.champion_version}, on the same {c['n']} rows",
            f"| | this version | champion | difference (CI) | {test} |",
            "|---|---:|---:|---:|---:|",
            f"| {m} | {c['challenger_value']:.4f} | {c['champion_value']:.4f} | {c['diff']:+.4f} "
            f"[{c['ci_low']:+.4f}, {c['ci_high']:+.4f}] | {p_value} |",
        ]
    elif decision.champion_problem:
        lines += ["", f"## Champion v{decision.champion_version} not compared", f"It could not be scored: "
                  f"{decision.champion_problem}"]
    if decision.slices:
        lines += ["", "## Slices", "| slice | rows | metric | this version | champion | drop |", "|---|---:|---|---:|---:|---:|"]
        lines += [f"| {r['slice']} | {r['n']} | {r['metric']} | {_f(r['challenger'], 3)} | {_f(r['champion'], 3)} | "
                  f"{_f(r['drop'], 3)} |" for r in decision.slices]
    if ctx.family:
        lines += ["", "## Model family", f"- {ctx.family}"]
    if ctx.variants:
        keys = list(dict.fromkeys(k for v in ctx.variants for k in v.get("metrics", {})))
        extra_keys = sorted({k for v in ctx.variants for k in v.get("extra", {})})
        lines += ["", "## Compression variants",
                  f"Chosen on the validation split{f' ({ctx.choice_rows:,} rows)' if ctx.choice_rows else ''}: a variant is within the accuracy budget when its validation "
                  "metrics are, and counts as more accurate than another only when the paired bootstrap interval "
                  "of the difference excludes zero (else the faster, then the smaller, wins). The metrics below "
                  "are the test split's, which chose nothing.", "",
                  "| variant | size MB |" + "".join(f" {k} |" for k in keys) + " bundled |" + "".join(f" {k} |" for k in extra_keys),
                  "|---|---:|" + "---:|" * len(keys) + "---|" + "---:|" * len(extra_keys)]
        lines += [f"| {v['name']} | {v['size_mb']:.1f} |" + "".join(f" {_f(v.get('metrics', {}).get(k))} |" for k in keys)
                  + f" {'yes' if v['bundled'] else 'no'} |" + "".join(f" {_f(v.get('extra', {}).get(k), 3)} |" for k in extra_keys)
                  for v in ctx.variants]
        lines += [f"- Served by default on {d}: {why}" for d, why in ctx.defaults.items()]
        if ctx.student:
            lines.append(f"- The student: {ctx.student}")
        lines.append(REPRODUCIBILITY)
    example = ("pd.DataFrame({'text': [...], 'text_pair': [...]})" if spec.pairs else "pd.DataFrame({'text': [...]})")
    lines += [
        "",
        "## Limits",
        *spec.limits(ctx.max_length),
        "- Texts that are empty, hold control characters or are not valid UTF-8 are refused (HTTP 422), as "
        "training quarantined them.",
        "- Scores hold for data like the training data; check drift (`forgeline drift`, or on served traffic "
        "with `forgeline drift --traffic`) before trusting them on new data.",
        "",
        "## How to load",
        "```",
        f"forgeline serve -m {name}/{version}            # HTTP, micro-batching",
        f"mlflow.pyfunc.load_model('models:/{name}/{version}').predict({example})",
        "```",
        "",
        f"config hash `{ctx.config_hash or '?'}` · code `{ctx.git_commit or '?'}`",
    ]
    return "\n".join(lines) + "\n"
