"""Property tests of the config reader: any ``--set KEY=VALUE`` and any YAML file ends as a config
(exit 0) or one bounded config error (exit 2), never an internal error (exit 1) or a flood. Examples
per test: the ``forgeline`` Hypothesis profile (tests/conftest.py)."""

from __future__ import annotations

import contextlib
import io
import tempfile
from pathlib import Path

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel

from forgeline.cli import main
from forgeline.config.schema import PipelineConfig

pytestmark = [pytest.mark.fuzz]


def _keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    out = []
    for name, field in model.model_fields.items():
        sub = field.annotation
        if isinstance(sub, type) and issubclass(sub, BaseModel):
            out += _keys(sub, f"{prefix}{name}.")
        else:
            out.append(prefix + name)
    return out


KEYS = _keys(PipelineConfig)
"""Every real dotted key: the values then reach each field's own validation."""
HOSTILE = [".inf", "-.inf", ".nan", "9" * 5000, "-" + "9" * 400, "1e400", "[" * 5000, "{a: " * 300, "&a [*a]",
           "!!python/object/apply:os.system ['true']", "!!binary AAAA", "~", "0x7fffffffffffffff", "0o777", "1_000",
           "yes", "2001-12-14", "'unterminated", "\x00", "\udc80", "? a : b", "*undefined", "'" + "x" * 3000 + "'"]
JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
                    max_leaves=12)
VALUES = st.one_of(st.sampled_from(HOSTILE), st.text(max_size=60),
                   JSON.map(lambda v: yaml.safe_dump(v, default_flow_style=True).strip()))
KEY = st.one_of(st.sampled_from(KEYS), st.sampled_from(KEYS).map(lambda k: k.rsplit(".", 1)[0]),
                st.text(alphabet="abcdefghijklmnopqrstuvwxyz._", min_size=1, max_size=30))


def run_cli(*argv: str) -> tuple[int, str]:
    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        code = main(list(argv))
    return code, err.getvalue()


def assert_config_or_bounded_error(code: int, err: str) -> None:
    assert code in (0, 2), err[:3000]
    assert "internal error" not in err and "Traceback" not in err, err[:3000]
    assert len(err.strip().splitlines()) <= 5 and len(err.encode()) <= 2048, err[:3000]
    if code == 2:
        assert err.startswith("forgeline: error: ")


@given(key=KEY, value=VALUES)
def test_any_set_override_is_a_config_or_one_bounded_error(key, value):
    assert_config_or_bounded_error(*run_cli("config", "--config", "tiny", "--set", f"{key}={value}"))


SECTIONS = st.dictionaries(st.sampled_from(sorted({k.split(".")[0] for k in KEYS}) + ["nope"]),
                           st.dictionaries(st.sampled_from(sorted({k.rsplit(".", 1)[-1] for k in KEYS})), JSON,
                                           max_size=4) | JSON, max_size=4)


@given(doc=st.one_of(SECTIONS.map(lambda d: yaml.safe_dump(d, allow_unicode=True)), st.text(max_size=300),
                     st.binary(max_size=300).map(lambda b: b.decode("latin-1"))))
def test_any_config_file_is_a_config_or_one_bounded_error(doc):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "config.yaml"
        path.write_text(doc, encoding="utf-8", errors="surrogateescape")
        assert_config_or_bounded_error(*run_cli("config", "--config", str(path)))
