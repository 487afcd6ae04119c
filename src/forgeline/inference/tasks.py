"""What a model's outputs mean, per task, declared once for the code a registered model ships.

The ONNX graph of every task has the same interface (``contract.INPUTS`` → ``logits``); a task says how
logits become outputs (softmax, sigmoid, or an affine map back to the target's units), how outputs
become decisions (a label, a set of labels, a score), the pyfunc's columns and the serving JSON, and
how two models' decisions agree (shadow traffic). The training side of a task (loss, metrics, data
checks) lives in ``forgeline.tasks``, which builds an ``OutputSpec`` and stores it in the bundle
metadata; bundles from before tasks existed have no ``task`` key and read as ``single_label``.

numpy and pandas only: this file ships with every registered model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

TASK_TYPES = ("single_label", "multi_label", "regression", "token_classification")
"""Every task type; ``forgeline.tasks.TASKS`` holds one declaration for each (tests check they match)."""
TASK_KEY = "task"
"""Bundle-metadata key of the ``OutputSpec`` (a dict); absent in bundles from before tasks."""
REGRESSION_AGREE_SCALES = 0.1
"""Shadow agreement of two regression models: their scores differ by at most this many target
standard deviations."""


def softmax(logits: np.ndarray) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float32) - logits.max(axis=1, keepdims=True)
    np.exp(z, out=z)
    z /= z.sum(axis=1, keepdims=True)
    return z


def sigmoid(logits: np.ndarray) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float32)
    return (0.5 * (1.0 + np.tanh(0.5 * z))).astype(np.float32)  # tanh form: no overflow warning for large |z|


@dataclass(frozen=True)
class OutputSpec:
    """How a model's logits are read. ``labels``: class names (single/multi-label) or the target's
    name (regression, one entry). ``thresholds``: multi-label decision thresholds per label, tuned on
    the validation split. ``mean``/``scale``: a regression model predicts the standardised target;
    its score is ``logit * scale + mean``. ``pairs``: inputs are (text, text_pair).
    ``token_classification``: ``labels`` are the entity types, the model's outputs are their IOB2
    tags (``tokens.tag_names``) per word piece; ``aggregation`` and ``stride`` say how pieces become
    words and how long texts are windowed (``forgeline.inference.tokens``). Its outputs are an object
    array of ``tokens.Tagged``, one per text, not a (rows, width) matrix."""

    task: str = "single_label"
    labels: tuple[str, ...] = ()
    thresholds: tuple[float, ...] | None = None
    mean: float = 0.0
    scale: float = 1.0
    pairs: bool = False
    aggregation: str = "first"
    stride: int = 32

    @classmethod
    def from_meta(cls, meta: dict[str, Any]) -> "OutputSpec":
        raw = meta.get(TASK_KEY) or {}
        if not isinstance(raw, dict):
            raise ValueError(f"bundle metadata '{TASK_KEY}' is a {type(raw).__name__}, not an object")
        task = raw.get("task", "single_label")
        if task not in TASK_TYPES:
            raise ValueError(f"bundle metadata names task {task!r}; this forgeline knows {list(TASK_TYPES)}")
        labels = tuple(str(x) for x in (raw.get("labels") or meta.get("labels") or ()))
        thresholds = raw.get("thresholds")
        spec = cls(task=task, labels=labels,
                   thresholds=tuple(float(t) for t in thresholds) if thresholds is not None else None,
                   mean=float(raw.get("mean", 0.0)), scale=float(raw.get("scale", 1.0)), pairs=bool(raw.get("pairs", False)),
                   aggregation=str(raw.get("aggregation", "first")), stride=int(raw.get("stride", 32)))
        spec.check()
        return spec

    def check(self) -> None:
        if self.task == "regression":
            if len(self.labels) != 1 or not (np.isfinite(self.scale) and self.scale > 0 and np.isfinite(self.mean)):
                raise ValueError("a regression spec needs one target name and a finite positive scale")
        elif len(self.labels) < (1 if self.task in ("multi_label", "token_classification") else 2):
            raise ValueError(f"a {self.task} spec needs labels")
        if self.task == "multi_label" and self.thresholds is not None and len(self.thresholds) != len(self.labels):
            raise ValueError("multi_label thresholds must be one per label")
        if self.task == "token_classification":
            from forgeline.inference.tokens import AGGREGATIONS

            if self.aggregation not in AGGREGATIONS or self.stride < 0:
                raise ValueError(f"token aggregation must be one of {AGGREGATIONS} and stride >= 0")

    def to_meta(self) -> dict[str, Any]:
        out: dict[str, Any] = {"task": self.task, "labels": list(self.labels), "pairs": self.pairs}
        if self.task == "multi_label":
            out["thresholds"] = [float(t) for t in self.thresholds] if self.thresholds is not None else [0.5] * len(self.labels)
        if self.task == "regression":
            out |= {"mean": self.mean, "scale": self.scale}
        if self.task == "token_classification":
            out |= {"aggregation": self.aggregation, "stride": self.stride}
        return out

    @property
    def tokens(self) -> bool:
        """Outputs per word (token classification), not per text."""
        return self.task == "token_classification"

    @property
    def tag_names(self) -> tuple[str, ...]:
        from forgeline.inference.tokens import tag_names

        return tag_names(self.labels)

    @property
    def width(self) -> int:
        """Logits per row (per word piece for token classification)."""
        if self.tokens:
            return 1 + 2 * len(self.labels)
        return 1 if self.task == "regression" else len(self.labels)

    @property
    def cutoffs(self) -> np.ndarray:
        if self.thresholds is None:
            return np.full(len(self.labels), 0.5, dtype=np.float32)
        return np.asarray(self.thresholds, dtype=np.float32)

    @property
    def input_columns(self) -> tuple[str, ...]:
        return ("text", "text_pair") if self.pairs else ("text",)

    # --- logits → outputs → decisions ------------------------------------------------------------
    def activate(self, logits: np.ndarray) -> np.ndarray:
        """Outputs, (rows, width): class probabilities, per-label probabilities, or scores in the
        target's units."""
        logits = np.asarray(logits, dtype=np.float32)
        if self.tokens:
            from forgeline.inference.tokens import softmax_last

            return softmax_last(logits)
        if self.task == "single_label":
            return softmax(logits)
        if self.task == "multi_label":
            return sigmoid(logits)
        return (logits * np.float32(self.scale) + np.float32(self.mean)).astype(np.float32)

    def comparable(self, outputs: np.ndarray) -> np.ndarray:
        """Outputs on a unit scale, for parity tolerances that hold for every task: probabilities as
        they are, scores in target standard deviations."""
        if self.task == "regression":
            return (np.asarray(outputs, dtype=np.float64) - self.mean) / self.scale
        if self.tokens:  # every word's tag probabilities, one row per word
            return np.concatenate([t.probs for t in outputs]) if len(outputs) else np.zeros((0, self.width))
        return np.asarray(outputs)

    def decisions(self, outputs: np.ndarray) -> list[Any]:
        """Per row: the label (single_label), the sorted tuple of labels (multi_label), the score
        (regression), the tuple of (start, end, label) spans (token_classification)."""
        if self.tokens:
            return [tuple((e["start"], e["end"], e["label"]) for e in t.entities(self.labels)) for t in outputs]
        outputs = np.asarray(outputs)
        if self.task == "single_label":
            return [self.labels[j] for j in outputs.argmax(axis=1)] if len(outputs) else []
        if self.task == "multi_label":
            on = outputs >= self.cutoffs[None, :]
            return [tuple(self.labels[j] for j in np.flatnonzero(row)) for row in on]
        return [float(v) for v in outputs[:, 0]]

    def agree(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Per row, whether two models' outputs lead to the same decision: same label, same label set,
        or scores within ``REGRESSION_AGREE_SCALES`` target standard deviations."""
        if self.tokens:  # the same spans, types and boundaries
            return np.array([x == y for x, y in zip(self.decisions(a), self.decisions(b))], dtype=bool)
        a, b = np.asarray(a), np.asarray(b)
        if self.task == "single_label":
            return a.argmax(axis=1) == b.argmax(axis=1)
        if self.task == "multi_label":
            cut = self.cutoffs[None, :]
            return ((a >= cut) == (b >= cut)).all(axis=1)
        return np.abs(a[:, 0] - b[:, 0]) <= REGRESSION_AGREE_SCALES * self.scale

    def agreement(self, a: Any, b: Any) -> float:
        """The share of decisions two models' outputs agree on, as parity reports it: per row, and for
        token classification per word (its tag's argmax)."""
        if self.tokens:
            x, y = self.comparable(a), self.comparable(b)
            return float((x.argmax(axis=1) == y.argmax(axis=1)).mean()) if len(x) else 1.0
        return float(self.agree(a, b).mean())

    def decided(self, outputs: np.ndarray) -> tuple[np.ndarray, "OutputSpec"]:
        """(outputs, spec) whose decisions are this spec's, with thresholds every model shares (0.5):
        two multi-label models tuned their own thresholds, so their probabilities are compared only after
        each passed its own. Other tasks: as they are."""
        if self.task != "multi_label":
            return (outputs if self.tokens else np.asarray(outputs)), self
        from dataclasses import replace

        on = (np.asarray(outputs) >= self.cutoffs[None, :]).astype(np.float32)
        return on, replace(self, thresholds=tuple([0.5] * len(self.labels)))

    def same(self, a: Any, b: Any) -> bool:
        """Whether two decisions (``decisions``' items, possibly of two versions) agree."""
        if self.task == "regression":
            return abs(float(a) - float(b)) <= REGRESSION_AGREE_SCALES * self.scale
        return tuple(a) == tuple(b) if self.task == "multi_label" else a == b

    def prediction_counts(self, outputs: Any) -> dict[str, float]:
        """Additive counts of the decisions (parts of a batch job, splits, add up): ``n`` and ``label:<x>``
        per label for classifiers (rows with it) and token classification (spans of that type); ``n``,
        ``sum`` and ``sumsq`` of the score for regression."""
        n = len(outputs)
        if self.task == "regression":
            v = np.asarray(outputs, dtype=np.float64).reshape(-1)
            return {"n": n, "sum": float(v.sum()), "sumsq": float((v * v).sum())}
        counts: dict[str, float] = {"n": n}
        for d in self.decisions(outputs) if n else []:
            for item in ([d] if isinstance(d, str) else [x[2] if isinstance(x, tuple) else x for x in d]):
                counts[f"label:{item}"] = counts.get(f"label:{item}", 0) + 1
        return counts

    def logged(self, outputs: np.ndarray) -> tuple[list[str], list[float]]:
        """Per row, the decision as a string and a confidence, for the traffic log: the label and its
        probability; the labels joined by ``|`` and the highest probability; the score and NaN; the spans
        as ``label:start-end`` joined by ``|`` and their lowest score (NaN with none)."""
        if self.tokens:
            found = [t.entities(self.labels) for t in outputs]
            return (["|".join(f"{e['label']}:{e['start']}-{e['end']}" for e in ents) for ents in found],
                    [min((e["score"] for e in ents), default=float("nan")) for ents in found])
        outputs = np.asarray(outputs, dtype=np.float32).reshape(-1, self.width)
        if self.task == "regression":
            return [f"{v:.6g}" for v in outputs[:, 0].tolist()], [float("nan")] * len(outputs)
        confidence = outputs.max(axis=1).astype(float).tolist() if len(outputs) else []
        decided = self.decisions(outputs)
        return ([d if isinstance(d, str) else "|".join(d) for d in decided], confidence)

    # --- what callers get ------------------------------------------------------------------------
    def frame(self, outputs: np.ndarray):
        """The pyfunc's DataFrame: single_label ``label, confidence, probabilities, proba_<label>``;
        multi_label ``labels, probabilities, proba_<label>``; regression ``score``; token_classification
        ``entities`` (a list of ``{label, start, end, text, score}`` per text)."""
        import pandas as pd

        if self.tokens:
            return pd.DataFrame({"entities": [t.entities(self.labels) for t in outputs]})

        outputs = np.asarray(outputs, dtype=np.float32).reshape(-1, self.width)
        if self.task == "regression":
            return pd.DataFrame({"score": outputs[:, 0].astype(float)})
        rows = [row.astype(float).tolist() for row in outputs]
        if self.task == "single_label":
            idx = outputs.argmax(axis=1) if len(outputs) else np.zeros(0, dtype=int)
            out = pd.DataFrame({"label": [self.labels[i] for i in idx],
                                "confidence": outputs.max(axis=1).astype(float) if len(outputs) else np.zeros(0),
                                "probabilities": rows})
        else:
            out = pd.DataFrame({"labels": [list(d) for d in self.decisions(outputs)], "probabilities": rows})
        for j, lab in enumerate(self.labels):
            out[f"proba_{lab}"] = outputs[:, j].astype(float)
        return out

    def frame_types(self) -> list[tuple[str, Any]]:
        """``frame``'s columns with their Arrow types, so every Parquet part of a batch job has one schema
        (a part with no entity, or no row, would otherwise be typed ``list<null>`` and not read with the others)."""
        import pyarrow as pa

        f64, text = pa.float64(), pa.string()
        entity = pa.struct([("label", text), ("start", pa.int64()), ("end", pa.int64()), ("text", text), ("score", f64)])
        head = {"single_label": [("label", text), ("confidence", f64), ("probabilities", pa.list_(f64))],
                "multi_label": [("labels", pa.list_(text)), ("probabilities", pa.list_(f64))],
                "regression": [("score", f64)], "token_classification": [("entities", pa.list_(entity))]}[self.task]
        return head + ([(f"proba_{lab}", f64) for lab in self.labels] if self.task in ("single_label", "multi_label") else [])

    def answers(self, outputs: np.ndarray) -> list[dict[str, Any]]:
        """The serving JSON's ``predictions``: ``{label, confidence, probabilities}``,
        ``{labels, probabilities}``, ``{score}`` or ``{entities}`` per input."""
        if self.tokens:
            return [{"entities": t.entities(self.labels)} for t in outputs]
        outputs = np.asarray(outputs, dtype=np.float32).reshape(-1, self.width)
        if self.task == "regression":
            return [{"score": v} for v in outputs[:, 0].tolist()]
        rows = outputs.tolist()  # Python floats in one call, not one numpy scalar at a time
        labels = self.labels
        if self.task == "single_label":
            idx = outputs.argmax(axis=1).tolist() if len(outputs) else []
            return [{"label": labels[j], "confidence": row[j], "probabilities": dict(zip(labels, row))}
                    for j, row in zip(idx, rows)]
        return [{"labels": list(d), "probabilities": dict(zip(labels, row))}
                for d, row in zip(self.decisions(outputs), rows)]

    def describe(self) -> dict[str, Any]:
        """What ``/v1/model`` says about the request and response shapes."""
        request = ({"pairs": [["text", "text_pair"]]} if self.pairs else {"texts": ["text"]})
        response = {"single_label": {"label": "str", "confidence": "float", "probabilities": {"<label>": "float"}},
                    "multi_label": {"labels": ["str"], "probabilities": {"<label>": "float"}},
                    "regression": {"score": "float"},
                    "token_classification": {"entities": [{"label": "str", "start": "int", "end": "int", "text": "str",
                                                           "score": "float"}]}}[self.task]
        return {"task": self.task, "request": request, "prediction": response}
