import numpy as np
import pytest

from forgeline.inference.runtime import FastTokenizer, create_session, pad_batch, run_logits, session_device, softmax
from tests.conftest import run_if


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


def test_cpu_sessions_leave_skip_layernorm_and_bias_gelu_unfused(tmp_path, trained, exported):
    """What the CPU session runs (its optimized graph, saved by onnxruntime): Attention stays fused,
    Skip+LayerNorm and bias+GELU stay as LayerNormalization / Gelu, which are faster on CPU."""
    import onnx
    import onnxruntime as ort

    from forgeline.inference.runtime import CPU_DISABLED_FUSIONS, CPU_EP

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    opts.optimized_model_filepath = str(tmp_path / "as_run.onnx")

    def ops(disabled):
        ort.InferenceSession(str(exported), opts, providers=[CPU_EP], disabled_optimizers=list(disabled))
        return {n.op_type for n in onnx.load(str(tmp_path / "as_run.onnx")).graph.node}

    assert "SkipLayerNormalization" in ops(())  # what onnxruntime would do by default
    as_run = ops(CPU_DISABLED_FUSIONS)
    assert "Attention" in as_run and "SkipLayerNormalization" not in as_run and "BiasGelu" not in as_run
    assert create_session(exported, device="cpu").get_providers() == [CPU_EP]


def test_sessions_timed_side_by_side_park_their_threads(exported):
    """A serving session's threads spin between calls (faster batch-1 calls); the sessions that
    compress.measure_latency times side by side park theirs, so one does not take the cores from the
    next (benchmarks/latency_interference.py)."""
    def spins(session):
        opts = session.get_session_options()
        try:
            return opts.get_session_config_entry("session.intra_op.allow_spinning")
        except RuntimeError:  # unset: onnxruntime's default, spinning
            return "default"

    assert spins(create_session(exported, device="cpu")) == "default"
    assert spins(create_session(exported, device="cpu", spin=False)) == "0"
    # the parked session computes the same logits
    ids = np.array([[101, 2023, 102, 0]], dtype=np.int64)
    mask = (ids != 0).astype(np.int64)
    assert np.array_equal(run_logits(create_session(exported, device="cpu"), ids, mask),
                          run_logits(create_session(exported, device="cpu", spin=False), ids, mask))


def test_cuda_graph_runner_needs_cuda(exported):
    from forgeline.inference.runtime import CudaGraphRunner, cuda_available

    if cuda_available():
        pytest.skip("CUDA present: covered by test_cuda_graphs_match_a_plain_cuda_session")
    with pytest.raises(RuntimeError, match="CUDAExecutionProvider"):
        CudaGraphRunner(exported, 3)


def test_bucketed_batches_give_the_same_probabilities(trained, exported):
    """predict_proba_graphs pads batches to power-of-two rows and widths to multiples of 16; padding
    must not change any answer. A CPU session stands in for the CUDA graph runner's call."""
    from forgeline.inference.runtime import bucket, graph_shape, pad_rows, predict_proba_graphs, predict_proba_ids

    _, splits, result = trained
    session = create_session(exported, device="cpu")
    shapes = []

    class Runner:
        num_labels = len(result.labels)

        def __call__(self, input_ids, mask):
            shapes.append(input_ids.shape)
            return run_logits(session, input_ids, mask)

    tok = FastTokenizer(result.checkpoint_dir / "tokenizer.json", 32)
    ids = tok.encode(splits.test["text"].tolist()[:23])
    want = predict_proba_ids(session, ids, tok.pad_id, batch_size=8)
    got = predict_proba_graphs(Runner(), ids, tok.pad_id, max_batch=8, max_length=32)  # 23 texts: sorted, 3 batches
    assert np.abs(got - want).max() < 1e-5
    assert {b for b, _ in shapes} <= {1, 2, 4, 8} and {w for _, w in shapes} <= {16, 32} and len(shapes) == 3
    shapes.clear()
    got = predict_proba_graphs(Runner(), ids[:5], tok.pad_id, max_batch=8, max_length=32)  # one batch as it comes
    assert np.abs(got - want[:5]).max() < 1e-5 and shapes[0][0] == 8
    assert bucket(3, [1, 2, 4, 8]) == 4 and bucket(9, [1, 2, 4, 8]) == 8
    padded, mask = pad_rows([[101, 5, 102], [101, 102]], (3, 4), 0)
    assert padded.tolist() == [[101, 5, 102, 0], [101, 102, 0, 0], [101, 5, 102, 0]]
    assert mask.tolist() == [[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 0]]
    full, full_mask = pad_rows([[101, 5, 102], [101, 102]], (2, 3), 0)  # no extra rows
    assert full.tolist() == [[101, 5, 102], [101, 102, 0]] and full_mask.tolist() == [[1, 1, 1], [1, 1, 0]]
    assert graph_shape(256, 62, 256, 128) == (256, 64) and graph_shape(3, 130, 256, 128) == (4, 128)
    assert graph_shape(100, 20, 96, 128) == (96, 32)  # a max_batch that is no power of two is a bucket itself


@run_if(ort_cuda=True)
def test_cuda_graphs_match_a_plain_cuda_session(tmp_path, trained, exported):
    """The registered model's CUDA path: the fp16 graph replayed as captured CUDA graphs, one per shape,
    gives what a plain CUDA session gives, whatever order the shapes come in."""
    from forgeline.export.compress import convert_fp16
    from forgeline.inference.runtime import CudaGraphRunner, predict_proba_graphs, predict_proba_ids

    _, splits, result = trained
    fp16 = convert_fp16(exported, tmp_path / "model.fp16.onnx")
    plain = create_session(fp16, device="cuda")
    assert session_device(plain) == "cuda"
    runner = CudaGraphRunner(fp16, len(result.labels))
    tok = FastTokenizer(result.checkpoint_dir / "tokenizer.json", 32)
    ids = tok.encode(splits.test["text"].tolist())
    for rows in (1, 7, 32, 3, 1):  # new shapes are captured on first use, old ones replayed
        want = predict_proba_ids(plain, ids[:rows], tok.pad_id, batch_size=rows)
        got = predict_proba_graphs(runner, ids[:rows], tok.pad_id, max_batch=32, max_length=32)
        assert np.abs(got - want).max() < 2e-3, rows
    assert len(runner.shapes) >= 3
