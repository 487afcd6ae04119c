import numpy as np
import pytest
import torch

from forgeline.config.schema import CompressConfig
from forgeline.inference.runtime import create_session, predict_proba_ids
from forgeline.export import compress as cmp
from forgeline.training.loop import encode


def test_global_pruning_hits_the_target_sparsity_on_a_copy(trained):
    _, _, result = trained
    before = cmp.sparsity(result.model)
    pruned = cmp.prune_global(result.model, 0.4)
    assert cmp.sparsity(pruned) == pytest.approx(0.4, abs=0.01)
    assert cmp.sparsity(result.model) == before, "the trained model itself must stay unpruned"
    # global, not per-layer: layers end up with different sparsities
    per_layer = [float((m.weight == 0).float().mean()) for m, _ in cmp.linear_weights(pruned)]
    assert max(per_layer) - min(per_layer) > 0.05
    assert not any(name.endswith("_orig") for name, _ in pruned.named_parameters())


def test_int8_variant_is_smaller_and_close(tmp_path, trained, exported):
    cfg, splits, result = trained
    q = cmp.quantize_int8(exported, tmp_path / "model.int8.onnx")
    assert q.stat().st_size < exported.stat().st_size / 2.5
    texts = splits.test["text"].tolist()
    ids = encode(result.tokenizer, texts, cfg.model.max_length)
    p32 = predict_proba_ids(create_session(exported, "cpu"), ids, result.tokenizer.pad_token_id)
    p8 = predict_proba_ids(create_session(q, "cpu"), ids, result.tokenizer.pad_token_id)
    assert cmp.agreement(p32, p8) >= 0.9
    from forgeline.inference.runtime import model_metadata

    assert model_metadata(q)["labels"] == model_metadata(exported)["labels"]
    import onnx

    ops = {n.op_type for n in onnx.load(str(q)).graph.node}
    assert {"QAttention", "MatMulInteger"} <= ops, "the fused graph is quantized, attention included"


def test_budget_decides_which_variants_are_registered(tmp_path):
    f = tmp_path / "m.onnx"
    f.write_bytes(b"x" * 1000)
    base = {"accuracy": 0.90, "macro_f1": 0.88}
    cfg = CompressConfig(max_accuracy_drop=0.02)
    ok = cmp.make_variant("int8", f, {"accuracy": 0.885, "macro_f1": 0.87}, base, cfg)
    over = cmp.make_variant("pruned", f, {"accuracy": 0.85, "macro_f1": 0.84}, base, cfg)
    assert ok.within_budget and ok.accuracy_delta == pytest.approx(-0.015) and ok.size_bytes == 1000
    assert not over.within_budget and over.macro_f1_delta == pytest.approx(-0.04)
    assert over.gzip_bytes < 1000


def test_pruning_zero_amount_changes_nothing(trained):
    _, _, result = trained
    pruned = cmp.prune_global(result.model, 0.0)
    after = pruned.state_dict()
    for name, value in result.model.state_dict().items():
        assert torch.equal(value.cpu(), after[name].cpu()), name
    assert np.isclose(cmp.sparsity(pruned), cmp.sparsity(result.model))


def test_fp16_variant_is_half_size_and_close(tmp_path, trained, exported):
    cfg, splits, result = trained
    half = cmp.convert_fp16(exported, tmp_path / "model.fp16.onnx")
    assert half.stat().st_size < exported.stat().st_size * 0.6
    ids = encode(result.tokenizer, splits.test["text"].tolist(), cfg.model.max_length)
    p32 = predict_proba_ids(create_session(exported, "cpu"), ids, result.tokenizer.pad_token_id)
    p16 = predict_proba_ids(create_session(half, "cpu"), ids, result.tokenizer.pad_token_id)
    assert np.abs(p32 - p16).max() < 1e-2 and cmp.agreement(p32, p16) >= 0.95
    from forgeline.inference.runtime import model_metadata

    assert model_metadata(half)["labels"] == model_metadata(exported)["labels"]
