"""Typed configuration: pydantic models and YAML presets."""

from forgeline.config.loader import load_config
from forgeline.config.schema import PipelineConfig

__all__ = ["PipelineConfig", "load_config"]
