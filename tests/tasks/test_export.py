import json

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from config.errors import ParityError
from models.onnx_runtime import create_session, model_metadata, pad_batch, run_logits
from tasks.export import check_parity
from tasks.train import encode


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
