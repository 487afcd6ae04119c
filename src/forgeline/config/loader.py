"""Load a PipelineConfig from a YAML preset/file plus ``key=value`` overrides."""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from forgeline.errors import ConfigError
from forgeline.config.schema import PipelineConfig

PRESETS_DIR = Path(__file__).resolve().parent / "presets"
DEFAULT_PRESET = "default"


def available_presets() -> list[str]:
    return sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))


def resolve_config_path(name_or_path: str | None) -> Path:
    """A preset name (``default``, ``tiny``) or a path to a YAML file."""
    if name_or_path is None:
        name_or_path = DEFAULT_PRESET
    candidate = Path(name_or_path)
    if candidate.suffix in {".yaml", ".yml"} or candidate.exists():
        if not candidate.is_file():
            raise ConfigError(f"config file {candidate} does not exist; pass a YAML file or one of the "
                              f"presets {available_presets()}")
        return candidate
    preset = PRESETS_DIR / f"{name_or_path}.yaml"
    if not preset.is_file():
        raise ConfigError(f"unknown preset {name_or_path!r}; use one of {available_presets()} or a path to a YAML file")
    return preset


def _known_keys(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """Field names valid at ``loc`` (for 'did you mean' hints)."""
    current: Any = model
    for part in loc:
        field = getattr(current, "model_fields", {}).get(part)
        if field is None:
            return []
        current = field.annotation
    return list(getattr(current, "model_fields", {}).keys())


def _explain(exc: ValidationError, source: str) -> ConfigError:
    lines = []
    for err in exc.errors():
        loc = tuple(p for p in err["loc"] if not isinstance(p, int))
        key = ".".join(str(p) for p in err["loc"]) or "<root>"
        if err["type"] == "extra_forbidden":
            known = _known_keys(PipelineConfig, loc[:-1])
            hint = difflib.get_close_matches(str(loc[-1]), known, n=1)
            msg = f"unknown key '{key}'"
            msg += f" (did you mean '{'.'.join(map(str, loc[:-1] + (hint[0],)))}'?)" if hint else f"; valid keys here: {known}"
        else:
            msg = f"bad value for '{key}': {err['msg']}"
            if "input" in err and not isinstance(err["input"], dict):
                msg += f" (got {err['input']!r})"
        lines.append(f"{source}: {msg}")
    return ConfigError("\n".join(lines))


def parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. --set train.epochs=2")
    key, raw = item.split("=", 1)
    parts = key.strip().split(".")
    if not all(parts):
        raise ConfigError(f"--set {item!r}: empty key segment in {key!r}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as e:
        raise ConfigError(f"--set {item!r}: value is not valid YAML: {e}") from e
    return parts, value


def apply_override(data: dict[str, Any], item: str) -> None:
    parts, value = parse_override(item)
    node = data
    for part in parts[:-1]:
        nxt = node.setdefault(part, {})
        if not isinstance(nxt, dict):
            raise ConfigError(f"--set {item!r}: '{part}' is a value, not a section")
        node = nxt
    node[parts[-1]] = value


def read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read config file: {e}") from e
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from e
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections (data:, train:, ...)")
    return data


def load_config(name_or_path: str | None = None, overrides: list[str] | None = None) -> PipelineConfig:
    path = resolve_config_path(name_or_path)
    data = read_yaml(path)
    try:
        PipelineConfig.model_validate(data)
    except ValidationError as e:
        raise _explain(e, str(path)) from None
    overrides = list(overrides or [])
    for item in overrides:
        apply_override(data, item)
    try:
        return PipelineConfig.model_validate(data)
    except ValidationError as e:
        raise _explain(e, f"{path} with --set {' '.join(overrides)}") from None
