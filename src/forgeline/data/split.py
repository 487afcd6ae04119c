"""Stratified, seeded train/val/test split with a leakage check."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
from sklearn.model_selection import train_test_split

from forgeline.config.schema import SplitConfig
from forgeline.errors import LeakageError
from forgeline.data.load import normalize_text
from forgeline.tasks import Task


@dataclass
class Splits:
    train: pd.DataFrame
    val: pd.DataFrame
    test: pd.DataFrame

    def sizes(self) -> dict[str, int]:
        return {"train": len(self.train), "val": len(self.val), "test": len(self.test)}


def check_no_leakage(splits: Splits) -> None:
    """Raise LeakageError if any (normalized) text appears in more than one split."""
    seen: dict[str, str] = {}
    for name in ("train", "val", "test"):
        frame = getattr(splits, name)
        pairs = frame["text_pair"] if "text_pair" in frame.columns else [None] * len(frame)
        for text, pair in zip(frame["text"], pairs):
            key = normalize_text(text) + ("" if pair is None else "\x1f" + normalize_text(pair))
            other = seen.get(key)
            if other is not None and other != name:
                raise LeakageError(
                    f"text {text[:60]!r} is in both the {other} and {name} splits; deduplicate the data "
                    "(data validation quarantines duplicates) before splitting"
                )
            seen[key] = name


def split_dataset(df: pd.DataFrame, cfg: SplitConfig, seed: int, task: Task, labels: list[str] | None = None) -> Splits:
    """Seeded train/val/test split, stratified on the task's keys (the label; label combinations for
    multi-label; target quantiles for regression)."""
    strata = task.strata(df["label"], labels or [], cfg.min_rows_per_class, cfg.describe())
    holdout = cfg.val_fraction + cfg.test_fraction
    train, rest = train_test_split(df, test_size=holdout, stratify=strata, random_state=seed)
    rest_strata = None if strata is None else pd.Series(strata, index=df.index).loc[rest.index].to_numpy()
    try:
        val, test = train_test_split(rest, test_size=cfg.test_fraction / holdout, stratify=rest_strata, random_state=seed)
    except ValueError:  # a stratum left with one row in the holdout (multi-label, regression bins)
        val, test = train_test_split(rest, test_size=cfg.test_fraction / holdout, random_state=seed)
    splits = Splits(train=train.sort_index(), val=val.sort_index(), test=test.sort_index())
    check_no_leakage(splits)
    return splits
