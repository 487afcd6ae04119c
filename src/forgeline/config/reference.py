"""The configuration reference (docs/configuration-reference.md), written from the schema itself so that
it cannot drift from it: every key of ``PipelineConfig``, ``ServeConfig`` and ``ScoreConfig`` with its
type, default, bounds and the docstring under it. ``python -m forgeline.config.reference`` prints it;
``tests/config/test_reference.py`` fails when the committed page differs."""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from forgeline.config.schema import PipelineConfig, ScoreConfig, ServeConfig, TaskConfig

TOP = ((PipelineConfig, "`forgeline run` / `tune` (YAML presets, `--set section.key=value`)", ""),
       (ServeConfig, "`forgeline serve` (`--set key=value`)", "serve."),
       (ScoreConfig, "`forgeline score` (`--set key=value`)", "score."))


def _type(annotation: Any) -> str:
    text = getattr(annotation, "__name__", None) if isinstance(annotation, type) else None
    text = text or str(annotation).replace("typing.", "").replace("forgeline.config.schema.", "")
    return text.replace("|", "\\|")


def _default(field: FieldInfo) -> str:
    if field.is_required():
        return "required"
    if field.default_factory is not None:
        import os
        from unittest import mock

        # a default read from the environment ($FORGELINE_WORKDIR) is shown as it is where that is unset
        with mock.patch.dict(os.environ, {k: v for k, v in os.environ.items() if not k.startswith("FORGELINE_")},
                             clear=True):
            value = field.default_factory()  # type: ignore[call-arg]  # no factory here takes the validated data
        if isinstance(value, BaseModel):
            return "(section)"
    else:
        value = field.default
    text = json.dumps(value, default=str)
    return f"`{text if len(text) <= 60 else text[:57] + '...'}`"


def _bounds(field: FieldInfo, tasks: list[str] | None = None) -> str:
    said = []
    for m in field.metadata:
        for name, word in (("ge", "≥"), ("gt", ">"), ("le", "≤"), ("lt", "<")):
            if getattr(m, name, None) is not None:
                said.append(f"{word} {getattr(m, name)}")
    if tasks:
        said.append("only for " + ", ".join(tasks))
    return ", ".join(said)


def _row(key: str, field: FieldInfo, tasks: list[str] | None = None) -> str:
    about = " ".join((field.description or "").split()).replace("|", "\\|")
    return f"| `{key}` | {_type(field.annotation)} | {_default(field)} | {_bounds(field, tasks)} | {about} |"


def _task_options(prefix: str) -> list[str]:
    """Every task's own options (``Task.Options``, declared beside each task), once per key."""
    from forgeline.tasks import TASKS

    takers: dict[str, list[str]] = {}
    fields: dict[str, FieldInfo] = {}
    for task in TASKS.values():
        for name, field in task.Options.model_fields.items():
            takers.setdefault(name, []).append(task.type)
            fields.setdefault(name, field)
    return [_row(f"{prefix}{name}", fields[name], takers[name]) for name in fields]


def _section(model: type[BaseModel], prefix: str, out: list[str]) -> None:
    rows, nested = [], []
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            nested.append((annotation, f"{prefix}{name}."))
            continue
        rows.append(_row(f"{prefix}{name}", field))
    if model is TaskConfig:
        rows += _task_options(prefix)
    if rows:
        out += ["", f"### `{prefix.rstrip('.') or 'top level'}`", "", "| key | type | default | bounds | what |",
                "|---|---|---|---|---|", *rows]
    for sub, sub_prefix in nested:
        _section(sub, sub_prefix, out)


def render() -> str:
    out = ["# Configuration reference", "",
           "Written from `forgeline/config/schema.py` by `python -m forgeline.config.reference`; do not edit by "
           "hand (a test compares it with the schema). Unknown keys are refused with a did-you-mean; a boolean "
           "for a number key, a value out of bounds, or a task option under another task exits 2."]
    for model, title, prefix in TOP:
        out += ["", f"## {title}"]
        _section(model, prefix, out)
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    print(render(), end="")
