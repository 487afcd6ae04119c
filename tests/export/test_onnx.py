import json

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from forgeline.errors import ParityError
from forgeline.inference.runtime import create_session, model_metadata, pad_batch, run_logits
from forgeline.export.onnx import check_parity
from forgeline.training.loop import encode


def test_export_is_checked_and_carries_labels(trained, exported):
    _, _, result = trained
    onnx.checker.check_model(str(exported), full_check=True)
    meta = model_metadata(exported)
    assert json.loads(meta["labels"]) == result.labels
    assert int(meta["max_length"]) == 32
    assert not list(exported.parent.glob("*.data")), "weights must live inside the .onnx file"


@pytest.mark.parametrize("batch,texts_len", [(1, 3), (5, 20)])
def test_dynamic_batch_and_sequence_axes(trained, exported, batch, texts_len):
    _, _, result = trained
    session = create_session(exported, device="cpu")
    ids = encode(result.tokenizer, [" ".join(["word"] * texts_len)] * batch, 32)
    input_ids, mask = pad_batch(ids, result.tokenizer.pad_token_id)
    assert run_logits(session, input_ids, mask).shape == (batch, len(result.labels))


def test_parity_passes_on_real_test_batches(trained, exported):
    cfg, splits, result = trained
    report = check_parity(result.model, result.tokenizer, exported, splits.test["text"], cfg.model.max_length, cfg.export)
    assert report.ok and report.max_abs_prob_diff < 1e-4 and report.argmax_agreement == 1.0
    assert report.rows == min(len(splits.test), cfg.export.parity_batches * 32)


def test_tampered_onnx_fails_parity(tmp_path, trained, exported):
    cfg, splits, result = trained
    model = onnx.load(str(exported))
    # scale the classifier's weight matrix: still a valid graph, different answers
    target = next(init for init in model.graph.initializer
                  if numpy_helper.to_array(init).shape == (len(result.labels), 384)
                  or numpy_helper.to_array(init).shape == (384, len(result.labels)))
    arr = numpy_helper.to_array(target)
    target.CopyFrom(numpy_helper.from_array((arr * -3.0).astype(arr.dtype), target.name))
    tampered = tmp_path / "tampered.onnx"
    onnx.save(model, str(tampered))
    with pytest.raises(ParityError, match="differs from PyTorch"):
        check_parity(result.model, result.tokenizer, tampered, splits.test["text"], cfg.model.max_length, cfg.export)
    report = check_parity(result.model, result.tokenizer, tampered, splits.test["text"], cfg.model.max_length,
                          cfg.export, raise_on_fail=False)
    assert not report.ok and report.max_abs_prob_diff > cfg.export.parity_atol
    assert np.isfinite(report.max_abs_logit_diff)


def test_exported_graph_has_fused_attention_per_layer(trained, exported):
    from forgeline.export.onnx import fused_operators

    _, _, result = trained
    ops = fused_operators(exported)
    layers = result.model.config.num_hidden_layers
    assert ops["Attention"] == layers and ops["EmbedLayerNormalization"] == 1
    assert json.loads(model_metadata(exported)["fused_operators"])["Attention"] == layers


def test_default_minilm_fuses_all_six_attention_blocks_and_keeps_parity(tmp_path):
    """The full 6-layer MiniLM (untrained head is enough for the graph): >= 6 fused Attention nodes,
    the same answers as PyTorch on a right-padded batch, and no shape subgraph left to run on the host."""
    import torch

    from forgeline.config.schema import ExportConfig, ModelConfig
    from forgeline.training.classifier import build_classifier, load_tokenizer
    from forgeline.export.onnx import export_onnx, fused_operators

    labels = ["negative", "neutral", "positive"]
    model = build_classifier(ModelConfig(), labels).eval()
    tok = load_tokenizer(ModelConfig())
    path = export_onnx(model, tok, labels, tmp_path / "model.onnx", ExportConfig(), 64)
    ops = fused_operators(path)
    assert ops["Attention"] >= 6 and ops["EmbedLayerNormalization"] == 1 and ops["Gelu"] == 6
    graph_ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert not graph_ops & {"Shape", "ConstantOfShape", "Expand", "Where"}, graph_ops
    texts = ["a short one", "a much longer sentence that needs quite a few more tokens than the first"]
    input_ids, mask = pad_batch(encode(tok, texts, 64), tok.pad_token_id)
    with torch.inference_mode():
        ref = model(input_ids=torch.from_numpy(input_ids), attention_mask=torch.from_numpy(mask)).logits.numpy()
    got = run_logits(create_session(path, device="cpu"), input_ids, mask)
    assert np.abs(ref - got).max() < 1e-4


def test_dynamo_exporter_and_unoptimized_export_still_work(tmp_path, trained):
    from forgeline.export.onnx import export_onnx, fused_operators

    cfg, splits, result = trained
    for name, overrides in (("dynamo", {"exporter": "dynamo"}), ("plain", {"optimize": False})):
        path = export_onnx(result.model, result.tokenizer, result.labels, tmp_path / f"{name}.onnx",
                           cfg.export.model_copy(update=overrides), cfg.model.max_length)
        assert fused_operators(path)["Attention"] == 0
        assert check_parity(result.model, result.tokenizer, path, splits.test["text"], cfg.model.max_length, cfg.export).ok


def test_an_unfusable_model_type_is_named_in_a_warning_on_the_run(tmp_path, trained, exported):
    """A DeBERTa-v2 graph exports and passes parity, but the optimizer fuses none of its attention: the
    run says so (tag, metric, summary, log) instead of shipping a slow graph silently."""
    import torch
    from mlflow.tracking import MlflowClient
    from transformers import DebertaV2Config, DebertaV2ForSequenceClassification

    from forgeline.config.schema import ExportConfig
    from forgeline.export.onnx import export_onnx, fusion_report, fusion_warning
    from forgeline.pipeline.stages import Exported, _log_export
    from forgeline.pipeline.tracking import Tracker

    cfg, _, result = trained
    minilm = fusion_report(exported, "bert", optimized=True)
    assert minilm["attention"] >= 1 and fusion_warning(minilm) is None

    torch.manual_seed(0)
    deberta = DebertaV2ForSequenceClassification(DebertaV2Config(
        vocab_size=result.tokenizer.vocab_size, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=64, num_labels=2, type_vocab_size=0)).eval()
    path = export_onnx(deberta, result.tokenizer, result.labels, tmp_path / "deberta.onnx", ExportConfig(), 32)
    report = fusion_report(path, deberta.config.model_type, optimized=True)
    assert report["attention"] == 0 and report["nodes"] > 50
    assert "no attention in this deberta-v2 graph" in fusion_warning(report)
    assert fusion_warning(report | {"optimized": False}) is None  # export.optimize=false: nothing was tried

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri, uri)
    run = client.create_run(client.create_experiment("e"))
    parity = check_parity(deberta, result.tokenizer, path, ["a short text", "another one"], 32, ExportConfig())
    _log_export(Tracker(client, run.info.run_id, uri), cfg, Exported(path, parity, report), {})
    data = client.get_run(run.info.run_id).data
    assert data.tags["onnx.attention_fused"] == "false" and "deberta-v2" in data.tags["onnx.warning"]
    assert data.metrics["onnx.fused.attention"] == 0 and data.metrics["onnx.nodes"] == report["nodes"]
