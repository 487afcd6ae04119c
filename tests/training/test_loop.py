import numpy as np

from forgeline.training.loop import predict_proba, train_model


def test_training_learns_and_saves_best_checkpoint(trained):
    cfg, splits, result = trained
    files = {p.name for p in result.checkpoint_dir.iterdir()}
    assert "model.safetensors" in files and "tokenizer.json" in files
    assert not any(name.endswith(".bin") for name in files)
    assert result.best_val_macro_f1 == max(h["val_macro_f1"] for h in result.history)
    assert result.history[result.best_epoch - 1]["val_macro_f1"] == result.best_val_macro_f1
    # separable data: the fine-tuned 1-layer model must beat chance clearly
    proba = predict_proba(result.model, result.tokenizer, splits.test["text"].tolist(), cfg.model.max_length)
    y = np.array([result.labels.index(x) for x in splits.test["label"]])
    assert (proba.argmax(1) == y).mean() >= 0.8
    assert np.allclose(proba.sum(1), 1.0, atol=1e-5)
    assert result.history[-1]["train_loss_epoch"] < result.history[0]["train_loss_epoch"]


def test_early_stopping_stops_when_val_f1_stalls(tmp_path, trained):
    cfg, splits, _ = trained
    # a learning rate this small cannot change predictions: val macro-F1 never improves after epoch 1
    stall = cfg.model_copy(update={"train": cfg.train.model_copy(update={"epochs": 5, "patience": 1, "learning_rate": 1e-12})})
    result = train_model(splits, ["negative", "positive"], stall, tmp_path)
    assert result.stopped_early and len(result.history) == 2 and result.best_epoch == 1


def test_max_steps_and_seed_make_runs_repeatable(tmp_path, trained):
    cfg, splits, _ = trained
    short = cfg.model_copy(update={"train": cfg.train.model_copy(update={"max_steps": 3, "epochs": 1})})
    a = train_model(splits, ["negative", "positive"], short, tmp_path / "a")
    b = train_model(splits, ["negative", "positive"], short, tmp_path / "b")
    assert a.steps == 3 == b.steps
    assert a.history[0]["val_loss"] == b.history[0]["val_loss"]


def test_frozen_embeddings_stay_fixed_and_dropout_setting_reaches_the_model(tmp_path, trained):
    import torch

    from forgeline.training.classifier import build_classifier

    cfg, splits, _ = trained
    labels = ["negative", "positive"]
    variant = cfg.model_copy(update={
        "model": cfg.model.model_copy(update={"dropout": 0.0}),
        "train": cfg.train.model_copy(update={"max_steps": 3, "epochs": 1, "freeze_embeddings": True}),
    })
    before = build_classifier(variant.model, labels)
    result = train_model(splits, labels, variant, tmp_path)
    after = result.model
    assert torch.equal(after.get_input_embeddings().weight, before.get_input_embeddings().weight)
    moved = [n for (n, a), b in zip(after.named_parameters(), before.parameters()) if not torch.equal(a, b)]
    assert moved and not any("word_embeddings" in n for n in moved)
    assert after.config.hidden_dropout_prob == 0.0 == after.config.attention_probs_dropout_prob
    assert before.config.hidden_dropout_prob == 0.0
    assert build_classifier(cfg.model, labels).config.hidden_dropout_prob == 0.1  # default: the base model's


def test_length_grouped_batches_cover_every_example_once_with_less_padding():
    from forgeline.training.loop import make_batches

    rng = np.random.default_rng(0)
    lengths = rng.integers(3, 128, size=1000).tolist()
    grouped = make_batches(lengths, 32, np.random.default_rng(1), group_by_length=True)
    plain = make_batches(lengths, 32, np.random.default_rng(1), group_by_length=False)
    for batches in (grouped, plain):
        assert sorted(np.concatenate(batches).tolist()) == list(range(1000))
        assert all(len(b) <= 32 for b in batches)

    def padded(batches):
        return sum(len(b) * max(lengths[i] for i in b) for b in batches)

    assert padded(grouped) < 0.7 * padded(plain)
    # batch order is shuffled: not sorted by length across the epoch
    widths = [max(lengths[i] for i in b) for b in grouped]
    assert widths != sorted(widths) and widths != sorted(widths, reverse=True)
    again = make_batches(lengths, 32, np.random.default_rng(1), group_by_length=True)
    assert all(np.array_equal(a, b) for a, b in zip(grouped, again))


def test_collate_pads_right_to_a_multiple():
    from forgeline.training.loop import collate

    out = collate(0, [[5, 6, 7], [8]], "cpu", multiple=8)
    assert out["input_ids"].tolist() == [[5, 6, 7, 0, 0, 0, 0, 0], [8, 0, 0, 0, 0, 0, 0, 0]]
    assert out["attention_mask"].sum(1).tolist() == [3, 1]


def _tiny_classifier():
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    return BertForSequenceClassification(BertConfig(vocab_size=100, hidden_size=64, num_hidden_layers=1,
                                                    num_attention_heads=2, intermediate_size=128, num_labels=2))


def test_bf16_master_weights_take_the_update_in_fp32_and_refresh_the_bf16_copy():
    import torch

    from forgeline.training.classifier import freeze_token_embeddings
    from forgeline.training.loop import Bf16Master

    model = _tiny_classifier()
    freeze_token_embeddings(model)
    master = Bf16Master(model)
    assert all(w.dtype == torch.bfloat16 for w in master.work.parameters())
    assert len(master.pairs) == sum(p.requires_grad for p in model.parameters())  # frozen table: no pair
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    ids = torch.randint(5, 100, (4, 10), generator=torch.Generator().manual_seed(0))
    master.work(input_ids=ids).logits.float().sum().backward()
    master.grads_to_master()
    trained = [p for p, _ in master.pairs]
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in trained)
    assert all(w.grad is None for w in master.work.parameters())  # nothing left on the working copy
    before = [p.detach().clone() for p in model.parameters()]
    opt.step()
    master.master_to_work()
    changed = [not torch.equal(a, b) for a, b in zip(model.parameters(), before)]
    assert any(changed) and not changed[0]  # word embeddings (first parameter) stay fixed
    assert all(torch.equal(w, p.to(torch.bfloat16)) for p, w in zip(model.parameters(), master.work.parameters()))


def test_cpu_training_step_stays_fp32_with_stock_attention():
    import torch

    from forgeline.config.schema import TrainConfig
    from forgeline.tasks import get_task
    from forgeline.training.loop import TrainStep

    model = _tiny_classifier()
    step = TrainStep(model, TrainConfig(), "cpu", get_task("single_label"))  # precision/attention "auto": CUDA-only choices
    assert (step.precision, step.fused_attention, step.master, step.width_multiple) == ("fp32", False, None, 1)
    assert model.config._attn_implementation == "sdpa"
    ids = torch.randint(5, 100, (4, 10), generator=torch.Generator().manual_seed(0))
    before = [p.detach().clone() for p in model.parameters()]
    loss = step({"input_ids": ids, "attention_mask": torch.ones_like(ids)}, torch.tensor([0, 1, 0, 1]))
    assert loss.ndim == 0 and torch.isfinite(loss)
    assert any(not torch.equal(a, b) for a, b in zip(model.parameters(), before))
    assert all(p.grad is None for p in model.parameters())  # zeroed for the next step


def test_unknown_precision_is_a_config_error():
    import pytest

    from forgeline.errors import ConfigError
    from forgeline.config.loader import load_config

    with pytest.raises(ConfigError, match=r"train.precision.*'auto', 'amp' or 'bf16' \(got 'fp8'\)"):
        load_config("tiny", ["train.precision=fp8"])
