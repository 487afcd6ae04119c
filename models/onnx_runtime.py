"""ONNX Runtime sessions and batched inference, shared by parity checks, evaluation and the pyfunc.

Only numpy, onnxruntime and tokenizers are imported here, so a deployed model needs neither torch
nor transformers.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

CUDA_EP = "CUDAExecutionProvider"
CPU_EP = "CPUExecutionProvider"


def available_providers() -> list[str]:
    import onnxruntime as ort

    return list(ort.get_available_providers())


def cuda_available() -> bool:
    return CUDA_EP in available_providers()


def create_session(path: str | Path, device: str = "auto", threads: int | None = None):
    """An InferenceSession on CUDA when asked/available, else CPU."""
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
    if threads:
        opts.intra_op_num_threads = threads
    providers = [CUDA_EP, CPU_EP] if use_cuda else [CPU_EP]
    return ort.InferenceSession(str(path), sess_options=opts, providers=providers)


def session_device(session) -> str:
    return "cuda" if session.get_providers()[0] == CUDA_EP else "cpu"


def model_metadata(path: str | Path) -> dict[str, str]:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return {p.key: p.value for p in model.metadata_props}


def labels_from_metadata(meta: dict[str, str]) -> list[str]:
    return list(json.loads(meta["labels"]))


def pad_batch(ids: Sequence[Sequence[int]], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    width = max(len(x) for x in ids)
    input_ids = np.full((len(ids), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(ids), width), dtype=np.int64)
    for i, x in enumerate(ids):
        input_ids[i, : len(x)] = x
        mask[i, : len(x)] = 1
    return input_ids, mask


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


def run_logits(session, input_ids: np.ndarray, attention_mask: np.ndarray, io_binding: bool | None = None) -> np.ndarray:
    """Logits for one padded batch. On CUDA (or when asked) inputs and outputs go through IOBinding:
    one host→device copy per input, the output allocated by ORT on the host, no intermediate copies."""
    names = {i.name for i in session.get_inputs()}
    feed = {"input_ids": input_ids, "attention_mask": attention_mask}
    if "token_type_ids" in names:
        feed["token_type_ids"] = np.zeros_like(input_ids)
    if io_binding is None:
        io_binding = session_device(session) == "cuda"
    if not io_binding:
        return np.asarray(session.run(["logits"], feed)[0], dtype=np.float32)
    binding = session.io_binding()
    for name, value in feed.items():
        binding.bind_cpu_input(name, np.ascontiguousarray(value))
    binding.bind_output("logits", "cpu")
    session.run_with_iobinding(binding)
    return np.asarray(binding.copy_outputs_to_cpu()[0], dtype=np.float32)


def predict_proba_ids(session, ids: Sequence[Sequence[int]], pad_id: int, batch_size: int = 64) -> np.ndarray:
    """Probabilities for pre-tokenized ids, batching by length (little padding)."""
    order = np.argsort([len(x) for x in ids], kind="stable")
    out: np.ndarray | None = None
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        input_ids, mask = pad_batch([ids[i] for i in idx], pad_id)
        proba = softmax(run_logits(session, input_ids, mask))
        if out is None:
            out = np.zeros((len(ids), proba.shape[1]), dtype=np.float32)
        out[idx] = proba
    return out if out is not None else np.zeros((0, 0), dtype=np.float32)


class FastTokenizer:
    """The bundled ``tokenizer.json`` with fixed truncation; padding is done per batch."""

    def __init__(self, path: str | Path, max_length: int) -> None:
        from tokenizers import Tokenizer

        self._tok = Tokenizer.from_file(str(path))
        self._tok.no_padding()
        self._tok.enable_truncation(max_length=max_length)
        pad = self._tok.token_to_id("[PAD]")
        self.pad_id = 0 if pad is None else pad

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        return [e.ids for e in self._tok.encode_batch(list(texts))]
