"""The classical baseline as an ONNX graph (skl2onnx): strings in, the task's logits out, so the same
torch-free pyfunc, ``forgeline serve`` and ``forgeline score`` serve it (``model.family: auto``).

The graph is the fitted vectorisers (``tasks.classical.TextFeatures``) followed by the fit's linear layer
as a multi-output ``LinearRegression``; its parity against scikit-learn is checked on real test rows.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from forgeline.inference.contract import LOGITS, TEXT
from forgeline.tasks.classical import ClassicalFit, TextRows

LOCALE = "C.UTF-8"
"""ONNX Runtime's StringNormalizer (lower-casing) builds this locale; its default, en_US.UTF-8, is missing
on slim images and the session then fails to load."""


def export_classical(fit: ClassicalFit, path: Path, pairs: bool) -> Path:
    from sklearn.linear_model import LinearRegression
    from sklearn.pipeline import Pipeline
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType, StringTensorType

    from forgeline.export.onnx import add_metadata
    from forgeline.tasks.classical import WORD_PATTERN

    linear = LinearRegression()
    linear.coef_, linear.intercept_ = fit.weights.astype(np.float64), fit.bias.astype(np.float64)
    linear.n_features_in_ = fit.weights.shape[1]
    transformer = fit.features.transformer
    unions = [transformer] if not pairs else [t for name, t, _ in transformer.transformers_ if name != "remainder"]
    options: dict[int, dict[str, Any]] = {}
    for union in unions:
        for name, vectoriser in union.transformer_list:
            options[id(vectoriser)] = {"locale": LOCALE} | ({"tokenexp": WORD_PATTERN} if name == "words" else {})
    import warnings

    with warnings.catch_warnings():  # skl2onnx warns that analyzer="char" "may not work": parity says
        warnings.simplefilter("ignore", UserWarning)
        graph = convert_sklearn(Pipeline([("features", transformer), ("linear", linear)]),
                                initial_types=[(TEXT, StringTensorType([None, 2 if pairs else 1]))],
                                final_types=[(LOGITS, FloatTensorType([None, fit.weights.shape[0]]))],
                                options=options, target_opset={"": 17, "ai.onnx.ml": 3})
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(graph.SerializeToString())
    add_metadata(path, {"labels": json.dumps(list(fit.spec.labels)), "producer": "forgeline", "family": "classical",
                        "model": fit.name})
    return path


def classical_parity(fit: ClassicalFit, path: Path, rows: TextRows) -> dict[str, float]:
    """The graph against scikit-learn on ``rows`` (``compress.parity_against`` with the ``tfidf``
    tolerance)."""
    from forgeline.export.compress import parity_against
    from forgeline.inference.runtime import create_session, predict_proba_texts

    session = create_session(path, device="cpu")
    ours = predict_proba_texts(session, rows.texts, rows.pairs, activate=fit.spec.activate)
    return parity_against(fit.predict(rows), ours, "tfidf", 0.0, fit.spec)


def classical_latency(path: Path, texts: list[str], pairs: list[str] | None, batch: int, rounds: int = 20) -> float:
    """Median ms of one batch of ``batch`` test texts through the graph on the CPU (the encoder's CPU
    variants are measured at the same batch in compress)."""
    from forgeline.inference.runtime import create_session, predict_proba_texts

    session = create_session(path, device="cpu")
    reps = max(1, -(-batch // max(1, len(texts))))
    rows, pair_rows = (texts * reps)[:batch], (pairs * reps)[:batch] if pairs is not None else None
    times = []
    for _ in range(rounds + 2):
        start = time.perf_counter()
        predict_proba_texts(session, rows, pair_rows, batch_size=batch, activate=lambda x: x)
        times.append((time.perf_counter() - start) * 1000)
    return float(np.median(times[2:]))
