import numpy as np

from models.onnx_runtime import FastTokenizer, create_session, pad_batch, run_logits, session_device, softmax


def test_io_binding_matches_plain_run(trained, exported):
    _, splits, result = trained
    session = create_session(exported, device="cpu")
    assert session_device(session) == "cpu"
    tok = FastTokenizer(result.checkpoint_dir / "tokenizer.json", 32)
    input_ids, mask = pad_batch(tok.encode(splits.test["text"].tolist()[:7]), tok.pad_id)
    plain = run_logits(session, input_ids, mask, io_binding=False)
    bound = run_logits(session, input_ids, mask, io_binding=True)
    assert plain.shape == (7, 2) and np.array_equal(plain, bound)


def test_softmax_is_stable():
    p = softmax(np.array([[1000.0, 0.0], [-1000.0, 1000.0]], dtype=np.float32))
    assert np.allclose(p, [[1, 0], [0, 1]]) and np.isfinite(p).all()
