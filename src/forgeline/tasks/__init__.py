"""Tasks, one declaration each (``forgeline.tasks.base.Task``), looked up by ``task.type``.

Adding a task: one module with a ``Task`` subclass, one line in ``TASKS``, its name in
``forgeline.inference.tasks.TASK_TYPES`` with its output handling, and its tests (docs/architecture.md).
"""

from __future__ import annotations

from forgeline.tasks.base import EvalResult, Metric, Problem, Task
from forgeline.tasks.multi_label import MultiLabel
from forgeline.tasks.regression import Regression
from forgeline.tasks.single_label import SingleLabel
from forgeline.tasks.token_classification import TokenClassification

TASKS: dict[str, type[Task]] = {t.type: t for t in (SingleLabel, MultiLabel, Regression, TokenClassification)}


def get_task(cfg) -> Task:
    """The task a ``TaskConfig`` (or a type name) declares."""
    if isinstance(cfg, str):
        return TASKS[cfg]()
    options = cfg.model_dump(exclude={"type", "primary_metric"})
    return TASKS[cfg.type](cfg.primary_metric, **options)


__all__ = ["TASKS", "EvalResult", "Metric", "Problem", "Task", "get_task"]
