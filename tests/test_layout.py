"""The installed distribution is one package, ``forgeline``: nothing else lands at the top level of
site-packages, where generic names (config, models, tasks, flows) would collide with users' modules."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", ["config", "models", "tasks", "flows"])
def test_old_top_level_packages_are_not_importable(name, tmp_path):
    proc = subprocess.run([sys.executable, "-c", f"import {name}"], cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode != 0 and "ModuleNotFoundError" in proc.stderr


def test_forgeline_is_importable_from_anywhere(tmp_path):
    proc = subprocess.run([sys.executable, "-c", "import forgeline.cli, forgeline.config; print(forgeline.__file__)"],
                          cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert Path(proc.stdout.strip()).resolve() == ROOT / "src" / "forgeline" / "__init__.py"


def test_the_wheel_holds_only_the_forgeline_package(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                           str(tmp_path), str(ROOT)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (wheel,) = tmp_path.glob("forgeline-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names}
    assert top == {"forgeline", next(t for t in top if t.endswith(".dist-info"))}, top
    assert "forgeline/config/presets/default.yaml" in names  # presets travel with the package
    assert "forgeline/inference/pyfunc.py" in names
