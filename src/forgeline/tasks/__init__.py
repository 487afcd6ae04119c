"""Tasks, one declaration each (``forgeline.tasks.base.Task`` with its ``OutputSpec`` class and its
``Options``), looked up by ``task.type``.

Adding a task: one module with a ``Task`` subclass and its ``inference.tasks.OutputSpec`` subclass, then
``register(TheTask)`` (docs/architecture.md). A task declared outside forgeline registers the same way;
its bundles record the module of its outputs, imported where a registered model is loaded.
"""

from __future__ import annotations

from typing import Any

from forgeline.inference.tasks import register_outputs
from forgeline.tasks.base import EvalResult, Metric, Problem, Task, TaskOptions
from forgeline.tasks.multi_label import MultiLabel
from forgeline.tasks.regression import Regression
from forgeline.tasks.single_label import SingleLabel
from forgeline.tasks.token_classification import TokenClassification

TASKS: dict[str, type[Task[Any]]] = {}
"""Task type → its declaration, in the order ``forgeline run --data`` asks them to recognise a column."""


def register(task: type[Task[Any]]) -> type[Task[Any]]:
    """Make ``task`` (and its ``outputs``) known under ``task.type``; usable as a class decorator."""
    if task.outputs.task != task.type:
        raise ValueError(f"task {task.type!r} declares the outputs of {task.outputs.task!r}")
    TASKS[task.type] = task
    register_outputs(task.outputs)
    return task


for _task in (SingleLabel, MultiLabel, Regression, TokenClassification):
    register(_task)


def get_task(cfg) -> Task[Any]:
    """The task a ``TaskConfig`` (or a type name) declares."""
    if isinstance(cfg, str):
        return TASKS[cfg]()
    options = cfg.model_dump(exclude={"type", "primary_metric"})
    return TASKS[cfg.type](cfg.primary_metric, **options)


__all__ = ["TASKS", "EvalResult", "Metric", "Problem", "Task", "TaskOptions", "get_task", "register"]
