"""Your own file on the first try: `forgeline run --data FILE` infers the columns and the task, and files
as real users have them (semicolons, Excel, a zipped CSV, a 1 MB text) read without extra settings."""

from __future__ import annotations

import argparse
import zipfile

import pandas as pd
import pytest

from forgeline.cli import data_overrides
from forgeline.config.loader import load_config
from forgeline.config.schema import DataConfig
from forgeline.data.infer import infer
from forgeline.data.load import load_and_validate, read_table
from forgeline.errors import ConfigError, DataLoadError
from forgeline.tasks import get_task
from tests.conftest import SINGLE_LABEL


def args(data, *sets, pairs=True, **columns):
    return argparse.Namespace(data=str(data), config=None, overrides=list(sets), text_column=columns.get("text"),
                              label_column=columns.get("label"), text_pair_column=columns.get("pair"), pairs=pairs)


def test_columns_and_task_are_inferred_and_said(tmp_path, capsys):
    f = tmp_path / "reviews.csv"
    pd.DataFrame({"id": range(40), "review": ["a fairly long review text, number %d" % i for i in range(40)],
                  "stars": [str(i % 5 + 1) for i in range(40)]}).to_csv(f, index=False)
    a = args(f)
    sets = data_overrides(a)
    assert a.config == "generic"
    cfg = load_config(a.config, sets)
    assert (cfg.data.text_column, cfg.data.label_column, cfg.task.type) == ("review", "stars", "single_label")
    assert cfg.data.encoding == "utf-8" and cfg.data.labels is None and cfg.registry.model_name == "forgeline-reviews"
    said = capsys.readouterr().err
    assert "text column 'review'" in said and "target column 'stars'" in said and "--set task.type" in said


@pytest.mark.parametrize("target,task", [([0.1 * i for i in range(60)], "regression"), ([[f"t{i % 3}"] for i in range(60)], "multi_label"),
                                         ([i % 2 for i in range(60)], "single_label")])
def test_the_task_comes_from_the_targets_shape(target, task):
    raw = pd.DataFrame({"text": [f"text {i}" for i in range(60)], "label": target})
    assert infer(raw, "f", None, None).task == task


def test_given_columns_are_checked_and_the_users_task_wins(tmp_path, capsys):
    f = tmp_path / "d.jsonl"
    pd.DataFrame({"body": ["x y z"] * 3, "score": [1.5, 2.5, 3.5]}).to_json(f, orient="records", lines=True)
    with pytest.raises(DataLoadError, match="--label-column 'nope' is not a column"):
        data_overrides(args(f, label="nope"))
    sets = data_overrides(args(f, "task.type=single_label"))
    assert "task.type=regression" not in sets
    with pytest.raises(ConfigError, match="go with --data"):
        data_overrides(argparse.Namespace(data=None, config=None, overrides=[], text_column="t", label_column=None,
                                          text_pair_column=None))


def test_semicolon_excel_zip_and_a_huge_text_are_read(tmp_path):
    rows = pd.DataFrame({"text": ["one; with a semicolon inside quotes", "two", "x" * 1_200_000], "label": ["a", "b", "a"]})
    semi = tmp_path / "semi.csv"
    rows.to_csv(semi, index=False, sep=";")
    cfg = DataConfig(source="file", path=str(semi))
    assert read_table(semi, cfg)["text"].tolist() == rows["text"].tolist()
    xlsx = tmp_path / "sheet.xlsx"
    rows.iloc[:2].to_excel(xlsx, index=False)
    assert read_table(xlsx, DataConfig(source="file", path=str(xlsx)))["label"].tolist() == ["a", "b"]
    zipped = tmp_path / "data.zip"
    with zipfile.ZipFile(zipped, "w") as z:
        z.writestr("data.csv", rows.iloc[:2].to_csv(index=False))
    assert len(read_table(zipped, DataConfig(source="file", path=str(zipped)))) == 2
    with pytest.raises(DataLoadError, match="save the sheet as"):
        read_table(tmp_path / "old.xls", DataConfig(source="file", path=str(tmp_path / "old.xls")))
    # the 1.2 MB text is one quarantined row, not a failed read
    big = tmp_path / "big.csv"
    pd.concat([rows] + [pd.DataFrame({"text": [f"row {i}" for i in range(40)], "label": ["a", "b"] * 20})]).to_csv(big, index=False)
    result = load_and_validate(DataConfig(source="file", path=str(big), min_rows_per_class=5, max_text_chars=100_000),
                               tmp_path / "out", task=get_task("single_label"))
    assert result.report["reasons"] == {"text_too_long": 1}


def test_labels_with_spaces_around_them_are_one_class_and_the_report_says_so(tmp_path):
    f = tmp_path / "d.csv"
    pd.DataFrame({"text": [f"text number {i}" for i in range(40)], "label": [" pos", "pos", "neg ", "neg"] * 10}).to_csv(f, index=False)
    result = load_and_validate(DataConfig(source="file", path=str(f), min_rows_per_class=5), tmp_path / "out", task=SINGLE_LABEL)
    assert result.labels == ["neg", "pos"] and result.report["stripped_labels"] == 20
    assert "were stripped" in (tmp_path / "out" / "validation_report.md").read_text()


def test_token_classification_files_are_told_by_their_shape(tmp_path):
    from forgeline.data.infer import token_file

    files = {"ner.conll": "Zoë\tB-PER\nflew\tO\n", "tok.jsonl": '{"tokens": ["Zoë"], "tags": ["B-PER"]}\n',
             "spans.jsonl": '\n{"text": "Zoë", "entities": [{"start": 0, "end": 3, "label": "PER"}]}\n',
             "rows.jsonl": '{"text": "good", "label": "pos"}\n', "rows.csv": "text,label\ngood,pos\n"}
    found = {}
    for name, body in files.items():
        (tmp_path / name).write_text(body, encoding="utf-8")
        found[name] = token_file(tmp_path / name, DataConfig(source="file", path=str(tmp_path / name)))
    assert found == {"ner.conll": "a CoNLL file (a token and its tag per line)", "tok.jsonl": "JSON Lines of tokens and tags",
                     "spans.jsonl": "JSON Lines of texts and their entity spans", "rows.jsonl": None, "rows.csv": None}


def test_forgeline_run_data_on_a_conll_file_trains_token_classification(tmp_path, capsys):
    f = tmp_path / "ner.conll"
    f.write_text("Zoë\tB-PER\nflew\tO\n\nParis\tB-LOC\n", encoding="utf-8")
    a = args(f)
    sets = data_overrides(a)
    cfg = load_config(a.config, sets)
    assert cfg.task.type == "token_classification" and cfg.registry.model_name == "forgeline-ner"
    assert "task token_classification: a CoNLL file" in capsys.readouterr().err
    data = cfg.data.model_copy(update={"min_rows_per_class": 1})
    assert len(load_and_validate(data, tmp_path / "out", task=get_task(cfg.task)).valid) == 2


def _pair_file(path, first="text", second="text_pair"):
    """A pair file whose first texts repeat (a question asked of many answers): read on its first text
    alone, most of its rows are duplicates."""
    n = 60
    pd.DataFrame({first: [f"what do people think of thing {i % 6}?" for i in range(n)],
                  second: [f"an answer that is {'good' if i % 2 else 'bad'}, number {i}" for i in range(n)],
                  "label": ["positive" if i % 2 else "negative" for i in range(n)]}).to_csv(path, index=False)
    return path


@pytest.mark.parametrize("first,second", [("text", "text_pair"), ("sentence1", "sentence2"), ("question", "context"),
                                          ("premise", "hypothesis"), ("Text_A", "Text_B")])
def test_a_pair_file_is_recognised_by_its_column_names_and_said(tmp_path, capsys, first, second):
    """Found by the reliability probe: a `text,text_pair,label` CSV (Hugging Face's names) trained on `text`
    alone, quarantined half its rows as duplicates and failed without a word about the second column."""
    f = _pair_file(tmp_path / "pairs.csv", first, second)
    cfg = load_config("generic", data_overrides(args(f)))
    assert (cfg.data.text_column, cfg.data.text_pair_column, cfg.data.label_column) == (first, second, "label")
    said = capsys.readouterr().err
    assert f"text pair columns {first!r} and {second!r}" in said and "--text-pair-column" in said
    result = load_and_validate(cfg.data.model_copy(update={"min_rows_per_class": 5}), tmp_path / "out",
                               task=get_task("single_label"))
    assert result.report["quarantined_rows"] == 0 and "text_pair" in result.valid.columns


def test_one_text_is_kept_when_asked_and_the_duplicates_message_names_the_second_text(tmp_path, capsys):
    f = _pair_file(tmp_path / "pairs.csv", "text", "reply")  # a name no pair convention uses
    cfg = load_config("generic", data_overrides(args(f)))
    assert cfg.data.text_pair_column is None
    with pytest.raises(Exception, match=r"Column 'reply' holds texts too.*--text-pair-column reply") as err:
        load_and_validate(cfg.data, tmp_path / "out", task=get_task("single_label"))
    assert "duplicate_text" in str(err.value)
    named = _pair_file(tmp_path / "named.csv")
    assert load_config("generic", data_overrides(args(named, pairs=False))).data.text_pair_column is None
    assert load_config("generic", data_overrides(args(named, pair="text_pair"))).data.text_pair_column == "text_pair"
    with pytest.raises(DataLoadError, match="--text-pair-column 'nope' is not a column"):
        infer(pd.read_csv(named), "f", None, None, "nope")


def test_labels_differing_only_in_case_are_named_and_can_be_merged(tmp_path):
    """Found by the reliability probe: "Computers" and " computers" became two classes, and the message that
    followed ("2 of 24 classes below data.min_rows_per_class") did not say why."""
    f = tmp_path / "topics.csv"
    labels = ["computers"] * 20 + ["Computers"] * 3 + [" computers"] * 2 + ["sports"] * 25
    pd.DataFrame({"text": [f"a text about topic number {i}" for i in range(50)], "label": labels}).to_csv(f, index=False)
    cfg = DataConfig(source="file", path=str(f), min_rows_per_class=5)
    with pytest.raises(Exception, match=r"'Computers' and 'computers'.*data.label_case=lower merges them"):
        load_and_validate(cfg, tmp_path / "out", task=get_task("single_label"))
    merged = load_and_validate(cfg.model_copy(update={"label_case": "lower"}), tmp_path / "out2",
                               task=get_task("single_label"))
    assert merged.labels == ["computers", "sports"] and merged.report["rows_per_class"]["computers"] == 25


def test_tune_takes_a_users_file_as_run_does(tmp_path, capsys):
    """`forgeline tune` had no --data: a user of `run --data file` had to rediscover five --set keys."""
    from forgeline.cli import _parser

    f = _pair_file(tmp_path / "pairs.csv")
    run_args, tune_args = (_parser().parse_args([command, "--data", str(f)]) for command in ("run", "tune"))
    run_sets, tune_sets = data_overrides(run_args), data_overrides(tune_args)
    assert tune_sets == run_sets and tune_args.config == run_args.config == "generic"
    assert load_config("generic", tune_sets).registry.model_name == "forgeline-pairs"  # the same registered model


def test_a_target_of_all_distinct_values_is_refused_with_a_hint(tmp_path):
    """399 distinct values in 399 rows were inferred as 399 classes."""
    f = tmp_path / "ids.csv"
    pd.DataFrame({"text": [f"a text number {i}" for i in range(60)], "label": [f"code-{i}" for i in range(60)]}).to_csv(f, index=False)
    with pytest.raises(DataLoadError, match="holds 60 distinct values in 60 rows: too many to be classes.*--label-column"):
        data_overrides(args(f))
