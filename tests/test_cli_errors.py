"""A failure reads as one clear message: real `forgeline run` processes on the file shapes users have,
checked for the message, the exit code, the stderr budget and that nothing was registered."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import sentiment_rows

ROOT = Path(__file__).resolve().parents[1]


def stray_quote_first_row(tmp: Path) -> Path:
    rows = sentiment_rows(60)
    lines = ["text,label", '"I love this car,positive'] + [f"{t},{lab}" for t, lab in zip(rows.text, rows.label)]
    path = tmp / "quote.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


def no_header_row(tmp: Path) -> Path:
    rows = sentiment_rows(60)
    path = tmp / "noheader.csv"
    path.write_text("".join(f"{t} and some more words here,{lab}\n" for t, lab in zip(rows.text, rows.label)))
    return path


def class_left_small_by_sampling(tmp: Path) -> Path:
    rows = sentiment_rows(250)  # 250 positive, and 40 of the negative: enough, until a 100-row sample
    path = tmp / "skewed.csv"
    pd.concat([rows[rows.label == "positive"], rows[rows.label == "negative"].head(40)]).to_csv(path, index=False)
    return path


def label_lists(tmp: Path) -> Path:
    rows = sentiment_rows(30)
    path = tmp / "lists.jsonl"
    rows.assign(label=[[lab] for lab in rows.label]).to_json(path, orient="records", lines=True)
    return path


def text_target(tmp: Path) -> Path:
    path = tmp / "words.csv"
    sentiment_rows(30).to_csv(path, index=False)
    return path


def pairs_with_a_missing_column(tmp: Path) -> Path:
    path = tmp / "pairs.csv"
    sentiment_rows(30).to_csv(path, index=False)
    return path


def conll_tag_in_another_column(tmp: Path) -> Path:
    path = tmp / "pos.conll"  # token, POS tag, entity tag
    path.write_text("\n\n".join(f"Zoë NNP B-PER\nflew VBD O\nto TO O\nParis NNP B-LOC\n#{k} CD O" for k in range(20)) + "\n")
    return path


def conll_mixing_schemes(tmp: Path) -> Path:
    path = tmp / "mixed.conll"
    path.write_text("\ufeffZoë\tB-PER\r\nflew\tO\r\n\r\nParis\tS-LOC\r\nrocks\tO\r\n")
    return path


def spans_cutting_words(tmp: Path) -> Path:
    path = tmp / "spans.jsonl"
    path.write_text("\n".join(f'{{"text": "Paris {k} is big", "entities": [{{"start": 1, "end": 5, "label": "LOC"}}]}}'
                              for k in range(20)))
    return path


TOKENS = ["task.type=token_classification", "data.labels=null"]

# name -> (file maker, extra --set, text the message holds, found before any server starts)
CASES = {
    "stray quote in the first data row": (stray_quote_first_row, [], ["quote.csv:2: malformed CSV",
                                                                         "'\"I love this car,positive'"], True),
    "CSV without a header row": (no_header_row, [], ["column(s) ['text', 'label'] not found", "data.header=false"],
                                 True),
    "a class left too small by data.sample_rows": (
        class_left_small_by_sampling, ["data.sample_rows=100", "data.min_rows_per_class=10"],
        ["after subsampling to data.sample_rows=100", "'negative' has 14 (of 40 valid)",
         "Raise data.sample_rows to at least 145"], False),
    "label lists given to a single-label task": (label_lists, [], ["holds lists of labels", "task.type=multi_label"], True),
    "a regression target that is text": (text_target, ["task.type=regression", "data.labels=null"],
                                         ["holds text (e.g. ", "not numbers", "task.type=single_label"], True),
    "a pair column the file does not have": (pairs_with_a_missing_column, ["data.text_pair_column=question"],
                                            ["column(s) ['question'] not found"], True),
    "an unknown task type": (text_target, ["task.type=multilabel"], ["did you mean 'multi_label'?"], True),
    "entity tags in another column than the configured one": (
        conll_tag_in_another_column, [*TOKENS, "data.tag_column=1"],
        ["pos.conll: 20 of 20 sentences", "'NNP' in the sentence at line 1", "data.tag_column=1 does not hold the tags"], True),
    "a CoNLL file mixing IOB2 and BIOES (BOM, Windows line ends)": (
        conll_mixing_schemes, TOKENS, ["mixed.conll: the tags mix BIOES", "line 4", "line 1"], True),
    "entity spans cutting through words": (
        spans_cutting_words, TOKENS, ["20 of 20 sentences", "span_cuts_word 20 (first at row 1"], True),
}


def run(tmp_path: Path, data: Path, *extra: str, verbose: bool = False) -> subprocess.CompletedProcess:
    args = [sys.executable, "-m", "forgeline", "run", "--config", "tiny", "--set", "data.source=file",
            "--set", f"data.path={data}", "--set", "data.encoding=utf-8", "--set", "data.label_column=label",
            "--set", "data.labels=[negative, positive]", "--set", f"tracking.workdir={tmp_path / 'wd'}"]
    for item in extra:
        args += ["--set", item]
    if verbose:
        args.append("--verbose")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_API_URL", "MLFLOW_"))}
    return subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def assert_nothing_registered(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'wd' / 'mlflow.db'}"
    client = MlflowClient(uri, uri)
    assert client.search_registered_models() == []
    (failed,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert failed.info.status == "FAILED"
    artifacts = {a.path for a in client.list_artifacts(failed.info.run_id)}
    assert "error.log" in artifacts  # the full traceback, for whoever reviews the run


@pytest.mark.parametrize("case", [pytest.param(name, marks=() if CASES[name][3] else pytest.mark.e2e) for name in CASES])
def test_a_bad_file_is_one_message_exit_2_and_registers_nothing(tmp_path, case):
    make, extra, needles, preflight = CASES[case]
    out = run(tmp_path, make(tmp_path), *extra)
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) <= 5, out.stderr
    assert lines[0].startswith("forgeline: error: ") and "Traceback" not in out.stderr
    for needle in needles:
        assert needle in out.stderr, (needle, out.stderr)
    assert "np.int64" not in out.stderr
    if preflight:  # found before anything started: no server, no MLflow store, no run, nothing registered
        assert "Starting temporary server" not in out.stdout + out.stderr
        assert not (tmp_path / "wd" / "mlflow.db").exists()
        return
    log = Path(lines[-1].split("full traceback in ", 1)[1].split(" (or run", 1)[0])
    assert log.name == "error.log" and "Traceback" in log.read_text()
    assert_nothing_registered(tmp_path)


def test_verbose_prints_the_traceback_too(tmp_path):
    out = run(tmp_path, stray_quote_first_row(tmp_path), verbose=True)
    assert out.returncode == 2
    assert "Traceback (most recent call last)" in out.stderr and "DataLoadError" in out.stderr
    assert any(line.startswith("forgeline: error: ") and "quote.csv:2: malformed CSV" in line for line in out.stderr.splitlines())


def test_an_internal_error_is_exit_1_with_a_pointer_to_its_traceback(capsys):
    from forgeline.cli import report_error

    try:
        raise KeyError("a bug")
    except KeyError as e:
        assert report_error(e, verbose=False) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0] == "forgeline: internal error: KeyError: 'a bug'"
    log = Path(err[1].split("full traceback in ", 1)[1].split(" (or run", 1)[0])
    assert "Traceback" in log.read_text() and "KeyError" in log.read_text()
    log.unlink()
