"""Typed configuration: pydantic models, YAML presets, errors."""

from config.errors import ConfigError, ForgelineError
from config.loader import load_config
from config.schema import PipelineConfig

__all__ = ["ConfigError", "ForgelineError", "PipelineConfig", "load_config"]
