"""One variant registry (``inference.contract.VARIANTS``): the file names, devices, the converters the
compress stage runs, the pyfunc's fallback and `forgeline serve --set variant=` all derive from it."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from forgeline.config.schema import ServeConfig
from forgeline.export.compress import precision_of
from forgeline.inference.contract import FALLBACK, PARITY_TOLERANCE, RUNS_ON, VARIANT_FILES, VARIANTS
from forgeline.inference.pyfunc import choose_variant


def test_every_variant_is_declared_once_with_a_file_devices_and_a_tolerance():
    names = [v.name for v in VARIANTS]
    assert len(set(names)) == len(names) and len({v.file for v in VARIANTS}) == len(names)
    assert list(VARIANT_FILES) == names and list(RUNS_ON) == names
    for v in VARIANTS:
        assert precision_of(v.name) in PARITY_TOLERANCE and set(v.runs_on) <= {"cpu", "cuda"}
    assert all(name in VARIANT_FILES for order in FALLBACK.values() for name in order)


@pytest.mark.parametrize("name", [v.name for v in VARIANTS] + ["auto"])
def test_serve_accepts_every_declared_variant(name):
    assert ServeConfig(model="m@champion", variant=name).variant == name


def test_an_unknown_variant_is_refused_with_a_did_you_mean():
    with pytest.raises(ValidationError, match="did you mean 'student_int8'"):
        ServeConfig(model="m@champion", variant="student-int8")


def test_a_bundled_student_can_be_asked_for_and_the_device_default_wins_otherwise():
    bundled = ["fp32", "student", "student_int8"]
    assert choose_variant(bundled, "cpu", "student") == "student"
    assert choose_variant(bundled, "cpu", "auto", {"cpu": "student_int8"}) == "student_int8"
    assert choose_variant(["fp32", "int8"], "cpu") == "int8"  # bundles from before per-device defaults
