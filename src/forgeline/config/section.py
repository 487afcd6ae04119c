"""The base of every configuration section: unknown keys refused, no NaN or infinity, no booleans for
numbers, the docstring under a key its description (docs/configuration-reference.md). Shared by
``config.schema`` and the task options declared beside each task (``forgeline.tasks``)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, field_validator


def _admits(annotation: object, kinds: tuple[type, ...]) -> bool:
    """Whether a field's annotation (unions, Annotated, containers' own type aside) names one of ``kinds``."""
    from typing import Any, get_args, get_origin

    if annotation is Any or annotation in kinds:
        return True
    origin = get_origin(annotation)
    if origin is Annotated:
        return _admits(get_args(annotation)[0], kinds)
    if origin is Literal:
        return any(isinstance(a, kinds) for a in get_args(annotation))
    if origin in (list, dict, tuple, set):
        return False
    return any(_admits(a, kinds) for a in get_args(annotation))


class Section(BaseModel):
    # allow_inf_nan=False: YAML's .inf / .nan are refused for every float key (a NaN threshold compares
    # false with everything and would silently switch a check off)
    # use_attribute_docstrings: the docstring under a key is its description (docs/configuration-reference.md)
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False,
                              use_attribute_docstrings=True)

    @field_validator("*", mode="before")
    @classmethod
    def _no_booleans_for_numbers(cls, value: object, info) -> object:
        """YAML's true/false/yes/no for a number key: pydantic reads them as 1 and 0 (``--set train.epochs=true``
        trained one epoch)."""
        if isinstance(value, bool) and info.field_name:
            annotation = cls.model_fields[info.field_name].annotation
            if _admits(annotation, (int, float)) and not _admits(annotation, (bool,)):
                raise ValueError(f"{str(value).lower()} is a boolean; this key takes a number")
        return value


