import pandas as pd
import pytest

from forgeline.errors import LeakageError
from forgeline.config.schema import SplitConfig
from forgeline.data.split import Splits, check_no_leakage, split_dataset
from forgeline.tasks import get_task

SINGLE = get_task("single_label")


def frame(n_neg=300, n_pos=100) -> pd.DataFrame:
    rows = [{"text": f"negative example {i}", "label": "neg"} for i in range(n_neg)]
    rows += [{"text": f"positive example {i}", "label": "pos"} for i in range(n_pos)]
    return pd.DataFrame(rows)


def test_split_sizes_stratified_and_disjoint():
    df = frame()
    s = split_dataset(df, SplitConfig(val_fraction=0.1, test_fraction=0.2), seed=1, task=SINGLE)
    assert sum(s.sizes().values()) == len(df)
    assert abs(s.sizes()["test"] - 80) <= 1 and abs(s.sizes()["val"] - 40) <= 1
    for part in (s.train, s.val, s.test):
        assert part["label"].value_counts(normalize=True)["pos"] == pytest.approx(0.25, abs=0.02)
    texts = [set(p["text"]) for p in (s.train, s.val, s.test)]
    assert not (texts[0] & texts[1]) and not (texts[0] & texts[2]) and not (texts[1] & texts[2])


def test_split_is_seeded():
    df = frame()
    cfg = SplitConfig()
    a, b, c = split_dataset(df, cfg, 3, SINGLE), split_dataset(df, cfg, 3, SINGLE), split_dataset(df, cfg, 4, SINGLE)
    assert list(a.test.index) == list(b.test.index)
    assert list(a.test.index) != list(c.test.index)


def test_leakage_check_catches_near_duplicates_across_splits():
    train = pd.DataFrame({"text": ["Same  Text here", "other"], "label": ["a", "b"]})
    test = pd.DataFrame({"text": ["same text HERE"], "label": ["a"]})
    with pytest.raises(LeakageError, match="train and test"):
        check_no_leakage(Splits(train=train, val=train.iloc[:0], test=test))


def test_too_small_class_is_a_clear_error():
    from forgeline.errors import DataValidationError

    with pytest.raises(DataValidationError, match="fewer than the 20 rows that split.val_fraction=0.1 and "
                       r"split.test_fraction=0.15 need for a stratified split: '\w+' has 3\. "):
        split_dataset(frame(n_pos=3), SplitConfig(), seed=0, task=SINGLE)
