"""Load a PipelineConfig from a YAML preset/file plus ``key=value`` overrides."""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from forgeline.errors import SHOWN_CHARS, ConfigError, path_kind, shown
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
        if (what := path_kind(candidate)) is not None:
            raise ConfigError(f"config file {candidate} {what}; pass a readable YAML file or one of the "
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
            said = err["msg"].removeprefix("Value error, ")[:SHOWN_CHARS]
            # a check across sections, or one whose message names its key itself (task options)
            msg = said if key == "<root>" or said.startswith((f"{key}.", "unknown key")) else f"bad value for '{key}': {err['msg'][:SHOWN_CHARS]}"
            if "input" in err and not isinstance(err["input"], dict):
                msg += f" (got {shown(err['input'])})"
            if err["type"] == "literal_error" and isinstance(err.get("input"), str):
                allowed = [a.strip().strip("'") for a in str(err.get("ctx", {}).get("expected", "")).replace(" or ", ",").split(",")]
                hint = difflib.get_close_matches(err["input"], [a for a in allowed if a], n=1)
                msg += f" (did you mean '{hint[0]}'?)" if hint else ""
        lines.append(f"{shown_source(source)}: {msg}")
    more = f"\n… and {len(lines) - 5} more problems" if len(lines) > 5 else ""
    return ConfigError("\n".join(lines[:5]) + more)


def shown_source(source: str) -> str:
    return source if len(source) <= 2 * SHOWN_CHARS else source[: 2 * SHOWN_CHARS] + "…"


MAX_YAML_VALUES = 100_000
"""The most values a config document may expand to through its aliases (``&a`` / ``*a``): a real
config has a few hundred; an alias bomb under ``data.labels`` expanded to millions and took 9.5 s to
refuse."""


class _BoundedLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing documents whose aliases expand past ``MAX_YAML_VALUES``."""

    def construct_document(self, node):
        sizes: dict[int, int] = {}

        def size(n) -> int:  # values after alias expansion; a node seen again is counted again
            if id(n) in sizes:
                return sizes[id(n)]
            sizes[id(n)] = 1  # a recursive alias counts once
            if isinstance(n, yaml.SequenceNode):
                total = 1 + sum(size(c) for c in n.value)
            elif isinstance(n, yaml.MappingNode):
                total = 1 + sum(size(k) + size(v) for k, v in n.value)
            else:
                total = 1
            sizes[id(n)] = total
            return total

        expanded = size(node)
        if expanded > MAX_YAML_VALUES:
            raise ConfigError(f"the YAML expands to {expanded:,} values through its aliases (&name / *name), more "
                              f"than the {MAX_YAML_VALUES:,} a config may hold; write the values out instead")
        return super().construct_document(node)


def load_yaml(text: str):
    """``yaml.safe_load`` with alias expansion bounded, and numbers too long for Python (an integer
    of more than 4,300 digits) reported as a YAML error instead of Python's ValueError."""
    loader = _BoundedLoader(text)
    try:
        return loader.get_single_data()
    except ValueError as e:  # int("9" * 5000): "Exceeds the limit (4300 digits) for integer string conversion"
        raise yaml.YAMLError(f"a number in it cannot be read ({str(e).split(';')[0][:SHOWN_CHARS]})") from None
    except RecursionError:  # PyYAML composes nested collections recursively: "[" * 20000 was an internal error
        raise yaml.YAMLError("its collections are nested too deeply") from None
    finally:
        loader.dispose()


def parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise ConfigError(f"--set {shown(item)}: expected KEY=VALUE, e.g. --set train.epochs=2")
    key, raw = item.split("=", 1)
    parts = key.strip().split(".")
    if not all(parts):
        raise ConfigError(f"--set {shown(item)}: empty key segment in {shown(key)}")
    try:
        value = load_yaml(raw) if raw.strip() else None
    except yaml.YAMLError as e:
        raise ConfigError(f"--set {shown(key)}=…: value is not valid YAML: {str(e)[:SHOWN_CHARS]}") from None
    return parts, value


def apply_override(data: dict[str, Any], item: str) -> None:
    parts, value = parse_override(item)
    node = data
    for part in parts[:-1]:
        nxt = node.setdefault(part, {})
        if not isinstance(nxt, dict):
            raise ConfigError(f"--set {shown(item)}: {shown(part)} is a value, not a section")
        node = nxt
    node[parts[-1]] = value


def read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = load_yaml(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read config file: {str(e)[:SHOWN_CHARS]}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {str(e)[:2 * SHOWN_CHARS]}") from None
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections (data:, train:, ...)")
    return data


def load_config(name_or_path: str | None = None, overrides: list[str] | None = None) -> PipelineConfig:
    path = resolve_config_path(name_or_path)
    data = read_yaml(path)
    overrides = list(overrides or [])
    for item in overrides:
        apply_override(data, item)
    try:
        return PipelineConfig.model_validate(data)
    except ValidationError as e:  # validated once, with the overrides: the generic preset gets data.path from --data
        raise _explain(e, f"{path} with --set {' '.join(overrides)}" if overrides else str(path)) from None
