"""MLflow pyfunc that serves the bundled ONNX model(s) with ONNX Runtime.

``mlflow.pyfunc.load_model("models:/NAME@champion").predict(pd.DataFrame({"text": [...]}))`` returns
one row per text, in the task's columns (``inference.tasks.OutputSpec.frame``): single_label
``label``, ``confidence``, ``probabilities`` (in ``labels`` order) and ``proba_<label>`` per class;
multi_label ``labels`` (a list), ``probabilities`` and ``proba_<label>``; regression ``score``. A
pair model takes a ``text_pair`` column beside ``text``. CUDA EP is used when onnxruntime has it, else CPU; the variant
is the one registration chose for that device (fastest within the compression budgets, measured).
``model_config={"variant": ..., "device": ...}`` at load time overrides both.

Imports only numpy, pandas, onnxruntime, tokenizers and mlflow.
"""

from __future__ import annotations

from typing import Any

from mlflow.pyfunc.model import PythonModel
import numpy as np
import pandas as pd

from forgeline.inference.contract import (
    CLASSICAL,
    DEFAULT_VARIANT_KEY,
    FALLBACK,
    VARIANT,
    VARIANT_FILES,
    read_bundle_meta,
    verify_artifacts,
)
from forgeline.inference.tasks import OutputSpec, WordOutputs
from forgeline.inference.runtime import (
    CudaGraphRunner,
    FastTokenizer,
    create_session,
    cuda_available,
    graph_logits,
    predict_proba_graphs,
    predict_proba_ids,
    predict_proba_texts,
    predict_tagged_onnx,
    session_device,
)
from forgeline.inference.tokens import TokenEncoder

MAX_TEXTS = 10_000


class PredictInputError(ValueError):
    """Malformed predict input (kept local so a deployed model needs only this package)."""


def choose_variant(available: list[str], device: str, requested: str = "auto",
                   defaults: dict[str, str] | None = None) -> str:
    """``requested`` if given; else the variant chosen for ``device`` at registration (the fastest
    within the accuracy budgets, measured there); else a fixed preference (bundles from before)."""
    if requested != "auto":
        if requested not in available:
            raise PredictInputError(f"variant {requested!r} is not bundled with this model; bundled: {available}")
        return requested
    chosen = (defaults or {}).get(device)
    if chosen in available:
        return chosen
    for name in FALLBACK.get(device, FALLBACK["cpu"]):
        if name in available:
            return name
    raise PredictInputError(f"no ONNX variant bundled (found {available})")


DEFAULT_BATCH_SIZE = {"cuda": 256, "cpu": 64}


def batch_size_for(value: Any, device: str) -> int:
    """``model_config["batch_size"]``: a positive int, or "auto" (256 on CUDA, 64 on CPU)."""
    if value is None or value == "auto":
        return DEFAULT_BATCH_SIZE.get(device, 64)
    try:
        size = int(value)
    except (TypeError, ValueError):
        size = 0
    if isinstance(value, bool) or size < 1 or str(size) != str(value).strip():
        raise PredictInputError(f"model_config batch_size must be a positive integer or 'auto'; got {value!r}")
    return size


def _strings(values: list, what: str) -> list[str]:
    bad = [i for i, v in enumerate(values) if not isinstance(v, str)]
    if bad:
        raise PredictInputError(f"every {what} must be a string; rows {bad[:10]} are not (e.g. {values[bad[0]]!r})")
    if len(values) > MAX_TEXTS:
        raise PredictInputError(f"{len(values)} texts in one call; send at most {MAX_TEXTS}")
    return values


def texts_from_input(model_input: Any) -> list[str]:
    if isinstance(model_input, pd.DataFrame):
        if "text" not in model_input.columns:
            if model_input.shape[1] == 1:
                col = model_input.iloc[:, 0]
            else:
                raise PredictInputError(f"input DataFrame needs a 'text' column; got columns {list(model_input.columns)}")
        else:
            col = model_input["text"]
        values = col.tolist()
    elif isinstance(model_input, pd.Series):
        values = model_input.tolist()
    elif isinstance(model_input, dict) and "text" in model_input:
        values = model_input["text"]
        values = [values] if isinstance(values, str) else list(values)
    elif isinstance(model_input, str):
        values = [model_input]
    elif isinstance(model_input, (list, tuple, np.ndarray)):
        values = list(model_input)
    else:
        raise PredictInputError(f"unsupported input type {type(model_input).__name__}; pass a DataFrame with a 'text' column")
    return _strings(values, "text")


def pairs_from_input(model_input: Any) -> tuple[list[str], list[str]]:
    """(texts, text pairs) of a pair model's input: a DataFrame (or dict) with ``text`` and ``text_pair``
    columns, or a list of [text, text_pair] pairs."""
    if isinstance(model_input, (pd.DataFrame, dict)) and "text" in model_input and "text_pair" in model_input:
        texts, pairs = model_input["text"], model_input["text_pair"]
        texts = [texts] if isinstance(texts, str) else list(texts)
        pairs = [pairs] if isinstance(pairs, str) else list(pairs)
    elif isinstance(model_input, (list, tuple)) and all(isinstance(p, (list, tuple)) and len(p) == 2 for p in model_input):
        texts, pairs = [p[0] for p in model_input], [p[1] for p in model_input]
    else:
        cols = list(model_input.columns) if isinstance(model_input, pd.DataFrame) else type(model_input).__name__
        raise PredictInputError(f"this model scores text pairs: pass a DataFrame with 'text' and 'text_pair' columns "
                                f"(got {cols})")
    if len(texts) != len(pairs):
        raise PredictInputError(f"{len(texts)} texts but {len(pairs)} text pairs")
    return _strings(texts, "text"), _strings(pairs, "text_pair")


class OnnxTextClassifier(PythonModel):
    def load_context(self, context) -> None:
        meta = read_bundle_meta(context.artifacts["meta"])
        self.spec = OutputSpec.from_meta(meta)
        self.labels: list[str] = list(self.spec.labels)
        self.max_length = int(meta["max_length"])
        cfg = dict(context.model_config or {})
        device = cfg.get("device", "auto")
        device = ("cuda" if cuda_available() else "cpu") if device == "auto" else device
        available = [v for v in VARIANT_FILES if v in context.artifacts]
        self.variant = choose_variant(available, device, cfg.get("variant", "auto"), meta.get(DEFAULT_VARIANT_KEY))
        # a classical variant (model.family: auto) reads the strings themselves: no tokenizer, no CUDA graphs
        self.classical = VARIANT[self.variant].source == CLASSICAL
        verify_artifacts(context.artifacts, meta, [self.variant] + ([] if self.classical else ["tokenizer"]))
        # On CUDA the model is replayed as CUDA graphs (bucketed shapes, captured on first use): no
        # per-kernel launch cost. model_config {"cuda_graphs": false} turns it off.
        self.graphs: CudaGraphRunner | None = None
        if device == "cuda" and bool(cfg.get("cuda_graphs", True)) and not self.classical:
            self.graphs = CudaGraphRunner(context.artifacts[self.variant], self.spec.width, per_token=self.spec.tokens)
            self.session = self.graphs.session
        else:
            # "threads": ONNX Runtime's intra-op threads (default: one per core); a server with several
            # worker processes gives each its share, else N sessions contend for every core
            threads = cfg.get("threads")
            self.session = create_session(context.artifacts[self.variant], device=device,
                                          threads=int(threads) if threads else None)
        self.device = session_device(self.session)
        self.tokenizer = None if self.classical else FastTokenizer(context.artifacts["tokenizer"], self.max_length)
        self.token_encoder = (TokenEncoder.from_file(context.artifacts["tokenizer"], self.max_length, self.spec.stride)
                              if isinstance(self.spec, WordOutputs) and not self.classical else None)
        self.batch_size = batch_size_for(cfg.get("batch_size", "auto"), self.device)

    @property
    def task(self) -> str:
        return self.spec.task

    def predict_proba(self, texts: list[str], pairs: list[str] | None = None) -> np.ndarray:
        """The task's outputs (probabilities, or scores for regression), one row per text (or pair)."""
        if not texts:
            return np.empty(0, dtype=object) if self.spec.tokens else np.zeros((0, self.spec.width), dtype=np.float32)
        if self.spec.pairs and pairs is None:
            raise PredictInputError("this model scores text pairs; give a text_pair for every text")
        if self.spec.tokens:  # windows over long texts, word pieces back to words and character spans
            fn = (graph_logits(self.graphs, self.batch_size, self.max_length) if self.graphs is not None else None)
            return predict_tagged_onnx(self.session, self.token_encoder, texts, self.spec, self.batch_size, fn)
        if self.tokenizer is None:  # classical
            return predict_proba_texts(self.session, texts, pairs if self.spec.pairs else None, self.batch_size,
                                       self.spec.activate)
        return self.predict_proba_token_ids(self.tokenizer.encode(texts, pairs if self.spec.pairs else None))

    def predict_proba_token_ids(self, ids: list[list[int]]) -> np.ndarray:
        """The model part of ``predict``: unpadded token ids in, outputs out."""
        if not ids:
            return np.zeros((0, self.spec.width), dtype=np.float32)
        assert self.tokenizer is not None, "a classical model takes texts (predict_proba), not token ids"
        if self.graphs is not None:
            return predict_proba_graphs(self.graphs, ids, self.tokenizer.pad_id, self.batch_size, self.max_length,
                                        activate=self.spec.activate)
        return predict_proba_ids(self.session, ids, self.tokenizer.pad_id, self.batch_size, activate=self.spec.activate)

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        """``model_input``: a DataFrame with ``text`` (and ``text_pair`` for a pair model); a list of
        texts, a Series or a dict of columns are read too. The hint tells MLflow the shape without making
        it validate against one (a DataFrame hint infers no schema): the signature logged with the model does."""
        if self.spec.pairs:
            texts, pairs = pairs_from_input(model_input)
        else:
            texts, pairs = texts_from_input(model_input), None
        return self.spec.frame(self.predict_proba(texts, pairs))
