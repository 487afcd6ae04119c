"""Typed errors shared by every stage. Each message says what went wrong and what to do."""

from __future__ import annotations


class ForgelineError(Exception):
    """Base class: anything the user can fix by changing input, config or environment."""


class ConfigError(ForgelineError):
    """A config file or override is invalid (unknown key, bad value, unreadable file)."""


class DataLoadError(ForgelineError):
    """The dataset file cannot be read or lacks the configured columns."""


class DataValidationError(ForgelineError):
    """Too many rows failed validation, or a class has too few valid rows.

    ``report`` holds the full validation report (also written to disk and MLflow)."""

    def __init__(self, message: str, report: dict | None = None) -> None:
        super().__init__(message)
        self.report = report or {}


class LeakageError(ForgelineError):
    """The same text ended up in two splits."""


class ParityError(ForgelineError):
    """The exported ONNX model disagrees with the PyTorch model beyond tolerance."""


class TrainingError(ForgelineError):
    """Training could not run (e.g. distributed workers failed or fewer GPUs than train.devices)."""


class ExportError(ForgelineError):
    """ONNX export or the ONNX checker failed."""


class RegistryError(ForgelineError):
    """Registering or promoting a model in MLflow failed."""
