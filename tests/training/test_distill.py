"""Distillation: the loss is the documented mix, and training the student on the teacher lowers it."""

import numpy as np
import pytest
import torch

from forgeline.config.schema import CompressConfig
from forgeline.training.distill import distillation_loss, make_student
from forgeline.tasks import get_task

SINGLE = get_task("single_label")


def test_loss_is_soft_kl_scaled_by_t_squared_plus_hard_cross_entropy():
    s = torch.tensor([[2.0, 0.5, -1.0], [0.1, 0.2, 0.3]])
    t = torch.tensor([[1.0, 1.0, -2.0], [0.0, 3.0, 0.0]])
    y = torch.tensor([0, 1])
    T, alpha = 2.0, 0.3
    p_t = torch.softmax(t / T, -1)
    kl = (p_t * (torch.log(p_t) - torch.log_softmax(s / T, -1))).sum(-1).mean() * T * T
    ce = torch.nn.functional.cross_entropy(s, y)
    assert distillation_loss(s, t, y, T, alpha, SINGLE).item() == pytest.approx((alpha * kl + (1 - alpha) * ce).item(), rel=1e-6)
    assert distillation_loss(t, t, y, T, 1.0, SINGLE).item() == pytest.approx(0.0, abs=1e-6), "identical logits: no soft loss"


def test_distillation_lowers_the_loss_and_the_student_learns_the_task(trained):
    cfg, splits, result = trained
    index = {lab: i for i, lab in enumerate(result.labels)}
    y_train = np.array([index[v] for v in splits.train["label"]])
    y_val = np.array([index[v] for v in splits.val["label"]])
    c = CompressConfig(student_layers=1, prune_heads=0.5, prune_ffn=0.75, distill_epochs=3, importance_batches=2,
                       distill_learning_rate=5e-4)
    student = make_student(result.model, result.tokenizer, splits.train["text"].tolist(), y_train,
                           splits.val["text"].tolist(), y_val, c, cfg.train, cfg.model.max_length, "cpu", cfg.seed, task=SINGLE)
    losses = [h["distill_loss"] for h in student.history]
    assert len(losses) == 3 and losses[-1] < losses[0]
    assert student.info["heads_per_layer"] == 6 and student.info["ffn_per_layer"] == 384
    assert student.info["parameters"] < student.info["teacher_parameters"] / 3
    assert student.info["distill_val_macro_f1"] >= 0.9, "a separable task stays learned"


def test_the_teachers_layer_outputs_kept_from_one_pass_train_the_student_as_a_forward_per_step_did(trained, monkeypatch):
    """The frozen teacher's layer outputs are computed once (``teacher_outputs``) instead of at every step:
    the distillation losses are the same to float rounding (padding widths differ between the passes)."""
    from forgeline.training import distill

    cfg, splits, result = trained
    index = {lab: i for i, lab in enumerate(result.labels)}
    y_train = np.array([index[v] for v in splits.train["label"]])
    y_val = np.array([index[v] for v in splits.val["label"]])
    c = CompressConfig(student_layers=1, prune_heads=0.5, prune_ffn=0.75, distill_epochs=2, importance_batches=2,
                       distill_hidden_weight=1.0)

    def losses():
        student = make_student(result.model, result.tokenizer, splits.train["text"].tolist(), y_train,
                               splits.val["text"].tolist(), y_val, c, cfg.train, cfg.model.max_length, "cpu", cfg.seed, task=SINGLE)
        return [h["distill_loss"] for h in student.history]

    kept = losses()
    monkeypatch.setattr(distill, "HIDDEN_CACHE_BYTES", 0)  # too big to keep: a teacher forward per step
    assert kept == pytest.approx(losses(), rel=1e-4)


def test_transfer_texts_join_the_distillation_with_the_teachers_labels_and_their_tokens(trained):
    cfg, splits, result = trained
    index = {lab: i for i, lab in enumerate(result.labels)}
    y_train = np.array([index[v] for v in splits.train["label"]])
    y_val = np.array([index[v] for v in splits.val["label"]])
    c = CompressConfig(student_layers=1, prune_heads=0.5, prune_ffn=0.75, distill_epochs=1, importance_batches=2)
    transfer = ["a zygomorphic xylophone recital", "quixotic jellyfish parade tonight"]

    def make(extra):
        return make_student(result.model, result.tokenizer, splits.train["text"].tolist(), y_train,
                            splits.val["text"].tolist(), y_val, c, cfg.train, cfg.model.max_length, "cpu", cfg.seed,
                            task=SINGLE, transfer=extra)

    plain, more = make(()), make(transfer)
    assert plain.info["transfer_rows"] == 0 and more.info["transfer_rows"] == 2
    assert more.info["vocabulary"] > plain.info["vocabulary"], "the transfer texts' tokens are kept"


def test_the_cut_vocabulary_keeps_the_unlabelled_texts_tokens_and_never_the_validation_texts(trained):
    """Validation texts' tokens are not kept (the choice scores the student on unseen words as serving
    does); ``vocab_texts`` (``compress.vocab_rows``) are, and the distillation is the same."""
    cfg, splits, result = trained
    index = {lab: i for i, lab in enumerate(result.labels)}
    y_train = np.array([index[v] for v in splits.train["label"]])
    c = CompressConfig(student_layers=1, prune_heads=0.5, prune_ffn=0.75, distill_epochs=1, importance_batches=2)
    rare = ["zygomorphic xylophone", "quixotic jellyfish"]

    def make(val_texts, vocab=()):
        return make_student(result.model, result.tokenizer, splits.train["text"].tolist(), y_train, val_texts,
                            np.zeros(len(val_texts), dtype=np.int64), c, cfg.train, cfg.model.max_length, "cpu",
                            cfg.seed, task=SINGLE, vocab_texts=vocab)

    plain = make(splits.val["text"].tolist()[:2])
    assert make(rare).info["vocabulary"] == plain.info["vocabulary"], "validation texts add no token"
    more = make(splits.val["text"].tolist()[:2], rare)
    assert more.info["vocabulary"] > plain.info["vocabulary"]
    assert [h["distill_loss"] for h in more.history] == pytest.approx([h["distill_loss"] for h in plain.history], rel=1e-4)
