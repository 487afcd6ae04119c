"""Damaged and hostile input found by hand, each a clear message and exit 2 from the CLI, bounded in
size, never an internal error (exit 1) or a flood."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from forgeline.cli import main

BOMB = """\
a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]
b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]
c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]
d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]
e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]
f: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]
g: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f]
data:
  labels: *g
"""


def cli(capsys, *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    return code, capsys.readouterr().err


def assert_bounded(err: str) -> None:
    assert len(err.strip().splitlines()) <= 5 and len(err.encode()) <= 2048, err[:3000]
    assert "internal error" not in err and "Traceback" not in err


def test_a_yaml_alias_bomb_is_refused_in_one_short_message(tmp_path, capsys):
    """It printed 312 MB of error text in 9.5 s: the message echoed the whole expanded value."""
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(BOMB)
    start = time.time()
    code, err = cli(capsys, "config", "--config", str(bomb))
    assert code == 2 and time.time() - start < 5
    assert_bounded(err)
    assert "expands to" in err and "aliases" in err and str(bomb) in err


def test_a_5000_digit_integer_is_a_config_error_naming_the_key(capsys):
    """It ended as `internal error: ValueError: Exceeds the limit (4300 digits)`, exit 1."""
    code, err = cli(capsys, "config", "--config", "tiny", "--set", "train.epochs=" + "9" * 5000)
    assert code == 2, err
    assert_bounded(err)
    assert "train.epochs" in err and "cannot be read" in err


def test_a_value_nested_20000_deep_is_a_config_error(capsys):
    code, err = cli(capsys, "config", "--config", "tiny", "--set", "train.epochs=" + "[" * 20000)
    assert code == 2 and "nested too deeply" in err and "train.epochs" in err, err
    assert_bounded(err)


def test_a_long_bad_value_is_echoed_cut_with_its_length(capsys):
    code, err = cli(capsys, "config", "--config", "tiny", "--set", "train.epochs=" + "x" * 100_000)
    assert code == 2 and "train.epochs" in err and "characters)" in err
    assert_bounded(err)


def no_file(tmp_path: Path, what: str, name: str) -> tuple[Path, str]:
    """A path that is no regular file, and how forgeline should name it."""
    if what == "directory":
        return tmp_path, "is a directory"
    if what == "device":
        return Path("/dev/null"), "is a character device"
    os.mkfifo(tmp_path / name)  # reading it would block for ever
    return tmp_path / name, "is a named pipe (FIFO)"


@pytest.mark.parametrize("what", ["directory", "device", "fifo"])
def test_a_config_path_that_is_no_file_is_named_as_what_it_is(tmp_path, capsys, what):
    """A directory, /dev/null and a FIFO were reported as "does not exist"."""
    path, said = no_file(tmp_path, what, "pipe.yaml")
    code, err = cli(capsys, "config", "--config", str(path))
    assert code == 2 and said in err and "pass a readable YAML file" in err, err
    assert_bounded(err)


@pytest.mark.parametrize("what", ["directory", "fifo", "device"])
def test_a_data_path_that_is_no_file_is_named_as_what_it_is_before_anything_starts(tmp_path, capsys, what):
    path, said = no_file(tmp_path, what, "data.csv")
    code, err = cli(capsys, "run", "--config", "tiny", "--set", "data.source=file", "--set", f"data.path={path}",
                    "--set", f"tracking.workdir={tmp_path / 'wd'}")
    assert code == 2 and said in err and "set data.path to a readable" in err, err
    assert_bounded(err)
    assert not (tmp_path / "wd").exists(), "nothing was started or written"


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads every file")
def test_an_unreadable_data_file_says_permission(tmp_path, capsys):
    path = tmp_path / "data.csv"
    path.write_text("text,label\n")
    path.chmod(0)
    code, err = cli(capsys, "run", "--config", "tiny", "--set", "data.source=file", "--set", f"data.path={path}")
    assert code == 2 and "may not read" in err


def test_every_cli_failure_is_at_most_5_lines_and_2_kb(capsys):
    from forgeline.cli import report_error
    from forgeline.errors import ConfigError

    assert report_error(ConfigError("\n".join(f"problem {i}: " + "y" * 500 for i in range(50))), verbose=False) == 2
    err = capsys.readouterr().err
    assert_bounded(err)
    assert "characters in all; --verbose shows everything" in err


def test_a_full_disk_while_marking_stale_runs_is_a_disk_full_error_not_an_internal_one(tmp_path, capsys, monkeypatch):
    """The reliability probe: ENOSPC while `forgeline run` / `doctor` marked a killed run's scratch ended as
    `internal error: OSError`, exit 1."""
    from forgeline.settings import FAILPOINT_ENV
    from tests.conftest import sqlite_store

    sqlite_store(tmp_path / "wd" / "mlflow.db")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv(FAILPOINT_ENV, "runs.mark_failed:enospc")
    code, err = cli(capsys, "doctor", "--config", "tiny", "--set", f"tracking.workdir={tmp_path / 'wd'}",
                    "--set", "tracking.tracking_uri=null")
    assert code == 2 and "the disk is full (No space left on device" in err and "forgeline gc" in err, err
    assert_bounded(err)
