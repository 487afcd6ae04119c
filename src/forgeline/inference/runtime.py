"""ONNX Runtime sessions and batched inference, shared by parity checks, evaluation and the pyfunc.

Only numpy, onnxruntime and tokenizers are imported here, so a deployed model needs neither torch
nor transformers.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from forgeline.inference.contract import ATTENTION_MASK, INPUT_IDS, LOGITS, TEXT, TOKEN_TYPE_IDS
from forgeline.inference.tasks import softmax

CUDA_EP = "CUDAExecutionProvider"
CPU_EP = "CPUExecutionProvider"


def available_providers() -> list[str]:
    import onnxruntime as ort

    return list(ort.get_available_providers())


def cuda_available() -> bool:
    return CUDA_EP in available_providers()


# On CPU, onnxruntime's fused SkipLayerNormalization and BiasGelu kernels are slower than the plain
# LayerNormalization / Gelu kernels with the Add left to MatMul's bias (measured on 2 AVX-512 cores,
# INT8 MiniLM b32 s64: 110 ms fused vs 92 ms unfused), so CPU sessions leave them unfused. The CUDA EP
# fuses them at load time, where they are faster.
CPU_DISABLED_FUSIONS = ("SkipLayerNormFusion", "BiasGeluFusion")


def create_session(path: str | Path, device: str = "auto", threads: int | None = None, cuda_graph: bool = False,
                   spin: bool = True):
    """An InferenceSession on CUDA when asked/available, else CPU.

    ``cuda_graph`` captures the whole model as one CUDA graph on the first run; every later run must
    bind inputs and output at the same device addresses and shapes (see ``CudaGraphRunner``).
    ``spin=False``: the intra-op threads park as soon as a call ends instead of spinning for the next
    one. A lone serving session spins (the student INT8 at batch 1: 0.96 ms against 1.49 ms parked,
    2-core CPU); sessions timed side by side must not, or each one's spinning threads take the cores
    from the next (``compress.measure_latency``)."""
    import onnxruntime as ort

    use_cuda = device == "cuda" or (device == "auto" and cuda_available())
    if device == "cuda" and not cuda_available():
        raise RuntimeError("device 'cuda' asked for but onnxruntime has no CUDAExecutionProvider; "
                           "install onnxruntime-gpu or use device 'cpu'")
    if use_cuda and hasattr(ort, "preload_dlls"):
        try:
            ort.preload_dlls()
        except Exception:  # noqa: BLE001 - best effort; the session reports real failures
            pass
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    if not spin:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if threads:
        opts.intra_op_num_threads = threads
    if use_cuda:
        cuda_opts = {"enable_cuda_graph": "1"} if cuda_graph else {}
        return ort.InferenceSession(str(path), sess_options=opts, providers=[(CUDA_EP, cuda_opts), CPU_EP])
    return ort.InferenceSession(str(path), sess_options=opts, providers=[CPU_EP],
                                disabled_optimizers=list(CPU_DISABLED_FUSIONS))


class CudaGraphRunner:
    """The model replayed as captured CUDA graphs, one per (batch, seq) shape, all in one session.

    Each shape gets preallocated device buffers and its own graph id: a call copies the ids and mask
    into the buffers, replays that shape's graph and copies the logits back. The first calls of a new
    shape run normally and capture it (onnxruntime does this inside ``run_with_iobinding``)."""

    def __init__(self, path: str | Path, num_labels: int, device_id: int = 0, per_token: bool = False) -> None:
        self.session = create_session(path, device="cuda", cuda_graph=True)
        self.num_labels = num_labels
        self.per_token = per_token
        """Logits per piece, (batch, sequence, tags): token classification."""
        self.device_id = device_id
        self._graphs: dict[tuple[int, int], tuple] = {}

    @property
    def shapes(self) -> list[tuple[int, int]]:
        return list(self._graphs)

    def _graph(self, shape: tuple[int, int]) -> tuple:
        import onnxruntime as ort

        if shape not in self._graphs:
            ids = ort.OrtValue.ortvalue_from_shape_and_type(shape, np.int64, "cuda", self.device_id)
            mask = ort.OrtValue.ortvalue_from_shape_and_type(shape, np.int64, "cuda", self.device_id)
            out_shape = (*shape, self.num_labels) if self.per_token else (shape[0], self.num_labels)
            out = ort.OrtValue.ortvalue_from_shape_and_type(out_shape, np.float32, "cuda", self.device_id)
            binding = self.session.io_binding()
            binding.bind_ortvalue_input(INPUT_IDS, ids)
            binding.bind_ortvalue_input(ATTENTION_MASK, mask)
            binding.bind_ortvalue_output(LOGITS, out)
            options = ort.RunOptions()
            options.add_run_config_entry("gpu_graph_id", str(len(self._graphs) + 1))
            self._graphs[shape] = (ids, mask, out, binding, options)
        return self._graphs[shape]

    def __call__(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        ids, mask, out, binding, options = self._graph(tuple(input_ids.shape))
        ids.update_inplace(np.ascontiguousarray(input_ids, dtype=np.int64))
        mask.update_inplace(np.ascontiguousarray(attention_mask, dtype=np.int64))
        self.session.run_with_iobinding(binding, options)
        return binding.copy_outputs_to_cpu()[0]


def bucket(n: int, buckets: Sequence[int]) -> int:
    """The smallest bucket >= n (the largest one if n is bigger than all)."""
    for b in buckets:
        if b >= n:
            return b
    return buckets[-1]


def pad_rows(rows: Sequence[Sequence[int]], shape: tuple[int, int], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Token id rows into a right-padded ``shape`` (rows, width) batch in a few numpy operations.
    Extra rows copy row 0 (a real row: no all-padding row reaches attention); callers drop their
    outputs."""
    n = len(rows)
    total, width = shape
    lengths = np.empty(total, dtype=np.int64)
    lengths[:n] = np.fromiter(map(len, rows), dtype=np.int64, count=n)
    lengths[n:] = lengths[0]
    flat: list[int] = []
    for row in rows:  # list concatenation then one conversion: the cheapest way from Python ints
        flat += row
    mask = np.arange(width) < lengths[:, None]
    input_ids = np.full(shape, pad_id, dtype=np.int64)
    if n == total:
        input_ids[mask] = np.fromiter(flat, dtype=np.int64, count=len(flat))
    else:
        input_ids[:n][mask[:n]] = np.fromiter(flat, dtype=np.int64, count=len(flat))
        input_ids[n:] = input_ids[0]
    return input_ids, mask.astype(np.int64)


def graph_shape(rows: int, longest: int, max_batch: int, max_length: int, width_step: int = 16) -> tuple[int, int]:
    """The captured shape a batch of ``rows`` texts (longest ``longest`` tokens) runs as: rows up to
    the next power of two (capped at ``max_batch``), width up to the next multiple of ``width_step``
    (capped at ``max_length``)."""
    batches = [1 << i for i in range(max_batch.bit_length()) if (1 << i) <= max_batch]
    if batches[-1] != max_batch:
        batches.append(max_batch)
    widths = sorted({min(max_length, w) for w in range(width_step, max_length + width_step, width_step)})
    return bucket(rows, batches), bucket(longest, widths)


def graph_logits(runner: CudaGraphRunner, max_batch: int, max_length: int, width_step: int = 16):
    """A logits function for padded batches (token classification's ``predict_tagged``) replayed on the
    runner's captured shapes: the batch is padded up to its graph shape (extra rows copy row 0, extra
    columns are masked) and the logits cut back."""
    def fn(input_ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        rows, width = input_ids.shape
        shape = graph_shape(rows, width, max_batch, max_length, width_step)
        ids = np.zeros(shape, dtype=np.int64)
        m = np.zeros(shape, dtype=np.int64)
        ids[:rows, :width], m[:rows, :width] = input_ids, mask
        ids[rows:], m[rows:] = ids[0], m[0]
        return runner(ids, m)[:rows, :width]
    return fn


def predict_proba_graphs(runner: CudaGraphRunner, ids: Sequence[Sequence[int]], pad_id: int, max_batch: int,
                         max_length: int, width_step: int = 16, activate=softmax) -> np.ndarray:
    """Like ``predict_proba_ids`` but on CUDA graphs: batches are padded up to power-of-two sizes and
    widths to multiples of ``width_step``, so a handful of captured shapes serve every request. Up to
    ``max_batch`` texts go in one batch as they come; more are sorted by length first."""
    out = np.empty((len(ids), runner.num_labels), dtype=np.float32)
    chunks: list[tuple[np.ndarray | None, Sequence[Sequence[int]]]]
    if len(ids) <= max_batch:
        chunks = [(None, ids)]
    else:
        order = np.argsort([len(x) for x in ids], kind="stable")
        chunks = [(idx, [ids[i] for i in idx]) for idx in (order[s : s + max_batch] for s in range(0, len(order), max_batch))]
    for idx, rows in chunks:
        shape = graph_shape(len(rows), max(map(len, rows)), max_batch, max_length, width_step)
        proba = activate(runner(*pad_rows(rows, shape, pad_id))[: len(rows)])
        if idx is None:
            out[:] = proba
        else:
            out[idx] = proba
    return out


def session_device(session) -> str:
    return "cuda" if session.get_providers()[0] == CUDA_EP else "cpu"


def model_metadata(path: str | Path) -> dict[str, str]:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return {p.key: p.value for p in model.metadata_props}


def labels_from_metadata(meta: dict[str, str]) -> list[str]:
    return list(json.loads(meta["labels"]))


def pad_batch(ids: Sequence[Sequence[int]], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Right-pad to the longest row."""
    return pad_rows(ids, (len(ids), max(len(x) for x in ids)), pad_id)


def run_logits(session, input_ids: np.ndarray, attention_mask: np.ndarray, io_binding: bool | None = None) -> np.ndarray:
    """Logits for one padded batch. On CUDA (or when asked) inputs and outputs go through IOBinding:
    one host→device copy per input, the output allocated by ORT on the host, no intermediate copies."""
    names = {i.name for i in session.get_inputs()}
    feed = {INPUT_IDS: input_ids, ATTENTION_MASK: attention_mask}
    if TOKEN_TYPE_IDS in names:
        feed[TOKEN_TYPE_IDS] = np.zeros_like(input_ids)
    if io_binding is None:
        io_binding = session_device(session) == "cuda"
    if not io_binding:
        return np.asarray(session.run([LOGITS], feed)[0], dtype=np.float32)
    binding = session.io_binding()
    for name, value in feed.items():
        binding.bind_cpu_input(name, np.ascontiguousarray(value))
    binding.bind_output(LOGITS, "cpu")
    session.run_with_iobinding(binding)
    return np.asarray(binding.copy_outputs_to_cpu()[0], dtype=np.float32)


def predict_proba_ids(session, ids: Sequence[Sequence[int]], pad_id: int, batch_size: int = 64,
                      activate=softmax) -> np.ndarray:
    """Outputs (``activate`` of the logits: softmax probabilities by default; ``OutputSpec.activate``
    for any task) for pre-tokenized ids, batching by length (little padding)."""
    order = np.argsort([len(x) for x in ids], kind="stable")
    out: np.ndarray | None = None
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        input_ids, mask = pad_batch([ids[i] for i in idx], pad_id)
        proba = activate(run_logits(session, input_ids, mask))
        if out is None:
            out = np.zeros((len(ids), proba.shape[1]), dtype=np.float32)
        out[idx] = proba
    return out if out is not None else np.zeros((0, 0), dtype=np.float32)


def predict_proba_texts(session, texts: Sequence[str], pairs: Sequence[str] | None, batch_size: int = 256,
                        activate=softmax) -> np.ndarray:
    """Outputs of a classical graph (``contract.TEXT`` in: the raw strings, a pair's two side by side),
    in batches: its TF-IDF rows are dense inside the graph (batch × vocabulary floats)."""
    columns = [list(texts)] if pairs is None else [list(texts), list(pairs)]
    table = np.array(columns, dtype=object).T
    out = [activate(np.asarray(session.run([LOGITS], {TEXT: table[s : s + batch_size]})[0], dtype=np.float32))
           for s in range(0, len(table), batch_size)]
    return np.concatenate(out) if out else np.zeros((0, 0), dtype=np.float32)


def predict_tagged_onnx(session, encoder, texts: Sequence[str], spec, batch_size: int = 32, logits_fn=None) -> np.ndarray:
    """Token classification: ``tokens.predict_tagged`` with this session (or ``logits_fn``, e.g. CUDA
    graphs) as the logits function."""
    from forgeline.inference.tokens import predict_tagged

    fn = logits_fn or (lambda input_ids, mask: run_logits(session, input_ids, mask))
    return predict_tagged(encoder, list(texts), fn, spec.width, batch_size, spec.aggregation)


class FastTokenizer:
    """The bundled ``tokenizer.json`` with fixed truncation; padding is done per batch."""

    def __init__(self, path: str | Path, max_length: int) -> None:
        from tokenizers import Tokenizer

        self._tok = Tokenizer.from_file(str(path))
        self._tok.no_padding()
        # longest_first: a pair is cut from its longer text first, as transformers' tokenizer does in training
        self._tok.enable_truncation(max_length=max_length, strategy="longest_first")
        pad = self._tok.token_to_id("[PAD]")
        self.pad_id = 0 if pad is None else pad

    def encode(self, texts: Sequence[str], pairs: Sequence[str] | None = None) -> list[list[int]]:
        """Token ids per text, or per (text, pair) when ``pairs`` is given (``[CLS] a [SEP] b [SEP]``)."""
        # encode_batch_fast skips character offsets, which nothing here uses (tokenizers >= 0.20)
        encode = getattr(self._tok, "encode_batch_fast", self._tok.encode_batch)
        batch = list(texts) if pairs is None else list(zip(texts, pairs))
        return [e.ids for e in encode(batch)]
