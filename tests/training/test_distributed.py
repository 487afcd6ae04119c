"""Distributed training: two gloo processes on CPU under torchrun (real processes, real collectives)."""

from __future__ import annotations

from forgeline.training.distributed import launch
from forgeline.training.loop import train_model


def test_two_gloo_processes_match_one_process_on_the_same_global_batch(tmp_path, trained):
    cfg, splits, _ = trained
    labels = ["negative", "positive"]
    # dropout off: each rank draws its own masks, which no tolerance on the loss should have to absorb
    same = cfg.model_copy(update={"model": cfg.model.model_copy(update={"dropout": 0.0}),
                                  "train": cfg.train.model_copy(update={"epochs": 2, "max_steps": 14, "num_threads": 1})})
    one = train_model(splits, labels, same, tmp_path / "one")
    two = launch(splits, labels, same.model_copy(update={"train": same.train.model_copy(update={"devices": 2})}),
                 tmp_path / "two", None, None)

    assert two.steps == one.steps == 14 and len(two.history) == len(one.history) == 2
    for a, b in zip(one.history, two.history):
        assert abs(a["train_loss_epoch"] - b["train_loss_epoch"]) < 1e-4 * a["train_loss_epoch"], (a, b)
        assert abs(a["val_loss"] - b["val_loss"]) < 1e-4 and a["val_macro_f1"] == b["val_macro_f1"]
    assert two.best_epoch == one.best_epoch and two.checkpoint_dir.is_relative_to(tmp_path / "two")
    worst = max((p1 - p2).abs().max().item() for p1, p2 in zip(one.model.parameters(), two.model.parameters()))
    assert worst < 1e-4, f"weights after 14 steps differ by {worst}"
