"""What a model's outputs mean, one class per task, declared once for the code a registered model ships.

The ONNX graph of every task has the same interface (``contract.INPUTS`` → ``logits``); a task's
``OutputSpec`` subclass says how logits become outputs (softmax, sigmoid, an affine map back to the
target's units), how outputs become decisions (a label, a set of labels, a score), the pyfunc's columns
and their Arrow types, the serving JSON, how two models' decisions agree (shadow traffic, the gate) and
what the card says about them. The training side of a task (loss, metrics, data checks) is its
``forgeline.tasks.Task``, which builds its ``OutputSpec`` and stores it in the bundle metadata; bundles
from before tasks have no ``task`` key and read as ``single_label``.

A task declared outside forgeline registers its class here with ``register_outputs`` (``forgeline.tasks.register``
does it for both halves); its bundle records the module, imported on load where the class is not registered.

numpy and pandas only: this file ships with every registered model.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, fields, replace
from typing import Any, ClassVar

import numpy as np

TASK_KEY = "task"
"""Bundle-metadata key of the ``OutputSpec`` (a dict); absent in bundles from before tasks."""
DEFAULT_TASK = "single_label"
"""The task of a bundle or checkpoint from before tasks existed."""
REGRESSION_AGREE_SCALES = 0.1
"""Shadow agreement of two regression models: their scores differ by at most this many target
standard deviations."""
OUTPUTS: dict[str, type[OutputSpec]] = {}
"""Task type → its ``OutputSpec`` class (``register_outputs``)."""


def softmax(logits: np.ndarray) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float32) - logits.max(axis=1, keepdims=True)
    np.exp(z, out=z)
    z /= z.sum(axis=1, keepdims=True)
    return z


def sigmoid(logits: np.ndarray) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float32)
    return (0.5 * (1.0 + np.tanh(0.5 * z))).astype(np.float32)  # tanh form: no overflow warning for large |z|


def register_outputs(cls: type[OutputSpec]) -> type[OutputSpec]:
    """Make ``cls`` the outputs of task ``cls.task`` (a class decorator)."""
    OUTPUTS[cls.task] = cls
    return cls


def outputs_class(task: str, module: str | None = None) -> type[OutputSpec]:
    """The ``OutputSpec`` class of ``task``, importing ``module`` (a bundle's record of where a task declared
    outside forgeline lives) when it is not registered yet."""
    if task not in OUTPUTS and module:
        try:
            found = importlib.import_module(module)
        except ImportError as e:
            raise ValueError(f"bundle task {task!r} is declared in module {module!r}, which cannot be imported here "
                             f"({e}); install the package that declares it") from e
        for obj in list(vars(found).values()):  # its outputs half, where the training half is not importable
            if isinstance(obj, type) and issubclass(obj, OutputSpec) and getattr(obj, "task", None) == task:
                register_outputs(obj)
    if task not in OUTPUTS:
        raise ValueError(f"bundle metadata names task {task!r}; this forgeline knows {sorted(OUTPUTS)}")
    return OUTPUTS[task]


def spec_for(task: str, labels, **options: Any) -> OutputSpec:
    """The ``OutputSpec`` of ``task`` for ``labels`` (its own fields in ``options``)."""
    return outputs_class(task)(labels=tuple(labels), **options)


@dataclass(frozen=True)
class OutputSpec:
    """How a model's logits are read. ``labels``: class names, or the target's name (regression, one
    entry). ``pairs``: inputs are (text, text_pair). A subclass per task adds its own fields
    (thresholds, the target's mean and scale, ...) and the behaviour below."""

    labels: tuple[str, ...] = ()
    pairs: bool = False

    task: ClassVar[str]
    tokens: ClassVar[bool] = False
    """Outputs per word (an object array of ``tokens.Tagged``, one per text), not a (rows, width) matrix."""
    classes: ClassVar[bool] = True
    """``labels`` are classes (a champion must predict the same ones); False where it is the target's name."""
    summary: ClassVar[str] = ""
    """What the model predicts, in a few words (the card's task line)."""
    min_labels: ClassVar[int] = 2

    # --- metadata --------------------------------------------------------------------------------
    @classmethod
    def from_meta(cls, meta: dict[str, Any]) -> OutputSpec:
        raw = meta.get(TASK_KEY) or {}
        if not isinstance(raw, dict):
            raise ValueError(f"bundle metadata '{TASK_KEY}' is a {type(raw).__name__}, not an object")
        kind = outputs_class(str(raw.get("task", DEFAULT_TASK)), raw.get("module"))
        labels = tuple(str(x) for x in (raw.get("labels") or meta.get("labels") or ()))
        spec = kind(labels=labels, pairs=bool(raw.get("pairs", False)), **kind.read_options(raw))
        spec.check()
        return spec

    @classmethod
    def read_options(cls, raw: dict[str, Any]) -> dict[str, Any]:
        """The subclass's own fields from bundle metadata, converted to their types."""
        return {}

    def options(self) -> dict[str, Any]:
        """The subclass's own fields, as JSON (``to_meta``)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("labels", "pairs")}

    def to_meta(self) -> dict[str, Any]:
        out: dict[str, Any] = {"task": self.task, "labels": list(self.labels), "pairs": self.pairs, **self.options()}
        if type(self).__module__ != __name__:  # a task declared elsewhere: where a loader finds it
            out["module"] = type(self).__module__
        return out

    def check(self) -> None:
        if len(self.labels) < self.min_labels:
            raise ValueError(f"a {self.task} spec needs at least {self.min_labels} label(s)")

    # --- shape -----------------------------------------------------------------------------------
    @property
    def width(self) -> int:
        """Logits per row (per word piece for token classification)."""
        return len(self.labels)

    @property
    def head_names(self) -> tuple[str, ...]:
        """The name of each logit (the model config's ``id2label``)."""
        return self.labels

    @property
    def input_columns(self) -> tuple[str, ...]:
        return ("text", "text_pair") if self.pairs else ("text",)

    # --- logits → outputs → decisions ------------------------------------------------------------
    def activate(self, logits: np.ndarray) -> np.ndarray:
        """Outputs, (rows, width): probabilities, or scores in the target's units."""
        raise NotImplementedError

    def comparable(self, outputs: Any) -> np.ndarray:
        """Outputs on a unit scale, for parity tolerances that hold for every task."""
        return np.asarray(outputs)

    def decisions(self, outputs: Any) -> list[Any]:
        """One decision per row (a label, a tuple of labels, a score, a tuple of spans)."""
        raise NotImplementedError

    def agree(self, a: Any, b: Any) -> np.ndarray:
        """Per row, whether two models' outputs lead to the same decision."""
        return np.array([self.same(x, y) for x, y in zip(self.decisions(a), self.decisions(b))], dtype=bool)

    def agreement(self, a: Any, b: Any) -> float:
        """The share of decisions two models' outputs agree on, as parity reports it."""
        return float(self.agree(a, b).mean()) if len(a) else 1.0

    def decided(self, outputs: Any) -> tuple[Any, OutputSpec]:
        """(outputs, spec) whose decisions are this spec's under settings every model shares (two models
        that tuned their own thresholds are compared after each passed its own)."""
        return outputs, self

    def same(self, a: Any, b: Any) -> bool:
        """Whether two decisions (``decisions``' items, possibly of two versions) agree."""
        return a == b

    def champion_problem(self, other: OutputSpec) -> str | None:
        """Why another model's outputs cannot be compared with this one's on the same rows, or None."""
        if (other.task, other.pairs) != (self.task, self.pairs):
            return (f"it is a {other.task}{' pair' if other.pairs else ''} model, this run trains "
                    f"{self.task}{' pairs' if self.pairs else ''}")
        if self.classes and sorted(other.labels) != sorted(self.labels):
            return f"it predicts {sorted(other.labels)}, this data has {sorted(self.labels)}"
        return None

    def aligned(self, other: OutputSpec, outputs: Any) -> Any:
        """Another model's outputs with their columns in this model's label order."""
        if not self.classes or list(other.labels) == list(self.labels):
            return outputs
        order = [list(other.labels).index(lab) for lab in self.labels]
        return np.asarray(outputs)[:, order]

    def prediction_counts(self, outputs: Any) -> dict[str, float]:
        """Additive counts of the decisions (parts of a batch job add up): ``n`` and ``label:<x>`` per label
        (rows with it)."""
        counts: dict[str, float] = {"n": len(outputs)}
        for d in self.decisions(outputs) if len(outputs) else []:
            for item in ([d] if isinstance(d, str) else d):
                counts[f"label:{item}"] = counts.get(f"label:{item}", 0) + 1
        return counts

    def distribution(self, counts: dict[str, float]) -> dict[str, float]:
        """``prediction_counts`` of a batch as shares: rows with each label."""
        n = counts.get("n", 0) or 0
        return {lab: counts.get(f"label:{lab}", 0) / n for lab in self.labels} if n else {}

    def prediction_drift(self, counts: dict[str, float], reference: dict[str, float], alpha: float,
                         threshold: float) -> dict[str, Any]:
        """A batch's ``prediction_counts`` against the validation split's (both with rows): the largest
        change of a label's rate, reported without a decision (no test of ours fits every task)."""
        n, ref_n = counts["n"], reference["n"]
        rates = np.array([counts.get(f"label:{lab}", 0) / n for lab in self.labels])
        ref_rates = np.array([reference.get(f"label:{lab}", 0) / ref_n for lab in self.labels])
        return {"checked": True, "max_rate_change": float(np.abs(rates - ref_rates).max()) if len(rates) else 0.0}

    def logged(self, outputs: Any) -> tuple[list[str], list[float]]:
        """Per row, the decision as a string and a confidence, for the traffic log."""
        raise NotImplementedError

    # --- what callers get ------------------------------------------------------------------------
    def frame(self, outputs: Any):
        """The pyfunc's DataFrame, one row per text, in ``frame_types``' columns."""
        raise NotImplementedError

    def frame_types(self) -> list[tuple[str, Any]]:
        """``frame``'s columns with their Arrow types, so every Parquet part of a batch job has one schema
        (a part with no entity, or no row, would otherwise be typed ``list<null>``)."""
        raise NotImplementedError

    def answers(self, outputs: Any) -> list[dict[str, Any]]:
        """The serving JSON's ``predictions``, one per input."""
        raise NotImplementedError

    prediction_shape: ClassVar[dict[str, Any]] = {}
    """One answer's fields and their types, as ``/v1/model`` describes them."""

    def describe(self) -> dict[str, Any]:
        """What ``/v1/model`` says about the request and response shapes."""
        request = ({"pairs": [["text", "text_pair"]]} if self.pairs else {"texts": ["text"]})
        return {"task": self.task, "request": request, "prediction": self.prediction_shape}

    # --- what the card says ----------------------------------------------------------------------
    def target_line(self) -> str:
        """The card's line about the target."""
        return f"- labels ({len(self.labels)}): {', '.join(f'`{lab}`' for lab in self.labels)}"

    def limits(self, max_length: Any) -> list[str]:
        """The card's limits of what the model answers and reads."""
        return [f"- Reads at most {max_length or '?'} tokens of a text{' pair' if self.pairs else ''}; the rest is cut off."]


def _probability_frame(spec: OutputSpec, outputs: np.ndarray, head: dict[str, Any]):
    import pandas as pd

    out = pd.DataFrame(head)
    for j, lab in enumerate(spec.labels):
        out[f"proba_{lab}"] = outputs[:, j].astype(float)
    return out


@register_outputs
@dataclass(frozen=True)
class SingleLabelOutputs(OutputSpec):
    task: ClassVar[str] = "single_label"
    summary: ClassVar[str] = "one label per text"
    prediction_shape: ClassVar[dict[str, Any]] = {"label": "str", "confidence": "float", "probabilities": {"<label>": "float"}}

    def activate(self, logits: np.ndarray) -> np.ndarray:
        return softmax(np.asarray(logits, dtype=np.float32))

    def decisions(self, outputs: Any) -> list[Any]:
        outputs = np.asarray(outputs)
        return [self.labels[j] for j in outputs.argmax(axis=1)] if len(outputs) else []

    def agree(self, a: Any, b: Any) -> np.ndarray:
        return np.asarray(a).argmax(axis=1) == np.asarray(b).argmax(axis=1)

    def prediction_drift(self, counts: dict[str, float], reference: dict[str, float], alpha: float,
                         threshold: float) -> dict[str, Any]:
        """Chi-square goodness of fit of the label counts and total variation distance, firing when both
        say so (as ``forgeline drift``'s label test)."""
        from scipy.stats import chisquare

        n, ref_n = counts["n"], reference["n"]
        rates = np.array([counts.get(f"label:{lab}", 0) / n for lab in self.labels])
        expected = np.maximum(np.array([reference.get(f"label:{lab}", 0) / ref_n for lab in self.labels]), 1e-9)
        expected /= expected.sum()
        _, p = chisquare(rates * n, expected * n)
        tv = float(0.5 * np.abs(rates - expected).sum())
        return {"checked": True, "label_tv": tv, "label_p": float(p), "drift": bool(p < alpha and tv > threshold)}

    def logged(self, outputs: Any) -> tuple[list[str], list[float]]:
        outputs = np.asarray(outputs, dtype=np.float32).reshape(-1, self.width)
        return self.decisions(outputs), (outputs.max(axis=1).astype(float).tolist() if len(outputs) else [])

    def frame(self, outputs: Any):
        outputs = np.asarray(outputs, dtype=np.float32).reshape(-1, self.width)
        idx = outputs.argmax(axis=1) if len(outputs) else np.zeros(0, dtype=int)
        return _probability_frame(self, outputs, {
            "label": [self.labels[i] for i in idx],
            "confidence": outputs.max(axis=1).astype(float) if len(outputs) else np.zeros(0),
            "probabilities": [row.astype(float).tolist() for row in outputs]})

    def frame_types(self) -> list[tuple[str, Any]]:
        import pyarrow as pa

        return ([("label", pa.string()), ("confidence", pa.float64()), ("probabilities", pa.list_(pa.float64()))]
                + [(f"proba_{lab}", pa.float64()) for lab in self.labels])

    def answers(self, outputs: Any) -> list[dict[str, Any]]:
        outputs = np.asarray(outputs, dtype=np.float32).reshape(-1, self.width)
        rows = outputs.tolist()  # Python floats in one call, not one numpy scalar at a time
        idx = outputs.argmax(axis=1).tolist() if len(outputs) else []
        return [{"label": self.labels[j], "confidence": row[j], "probabilities": dict(zip(self.labels, row))}
                for j, row in zip(idx, rows)]

    def limits(self, max_length: Any) -> list[str]:
        return [f"- Predicts only the {len(self.labels)} labels above; a text about something else still gets one of them.",
                *super().limits(max_length)]


@register_outputs
@dataclass(frozen=True)
class MultiLabelOutputs(OutputSpec):
    """``thresholds``: decision thresholds per label, tuned on the validation split."""

    thresholds: tuple[float, ...] | None = None

    task: ClassVar[str] = "multi_label"
    summary: ClassVar[str] = "any number of labels per text (per-label thresholds tuned on the validation split)"
    min_labels: ClassVar[int] = 1
    prediction_shape: ClassVar[dict[str, Any]] = {"labels": ["str"], "probabilities": {"<label>": "float"}}

    @classmethod
    def read_options(cls, raw: dict[str, Any]) -> dict[str, Any]:
        t = raw.get("thresholds")
        return {"thresholds": tuple(float(x) for x in t) if t is not None else None}

    def options(self) -> dict[str, Any]:
        return {"thresholds": [float(t) for t in self.thresholds] if self.thresholds is not None else [0.5] * len(self.labels)}

    def check(self) -> None:
        super().check()
        if self.thresholds is not None and len(self.thresholds) != len(self.labels):
            raise ValueError("multi_label thresholds must be one per label")

    @property
    def cutoffs(self) -> np.ndarray:
        if self.thresholds is None:
            return np.full(len(self.labels), 0.5, dtype=np.float32)
        return np.asarray(self.thresholds, dtype=np.float32)

    def activate(self, logits: np.ndarray) -> np.ndarray:
        return sigmoid(logits)

    def decisions(self, outputs: Any) -> list[Any]:
        on = np.asarray(outputs) >= self.cutoffs[None, :]
        return [tuple(self.labels[j] for j in np.flatnonzero(row)) for row in on]

    def agree(self, a: Any, b: Any) -> np.ndarray:
        cut = self.cutoffs[None, :]
        return ((np.asarray(a) >= cut) == (np.asarray(b) >= cut)).all(axis=1)

    def decided(self, outputs: Any) -> tuple[Any, OutputSpec]:
        on = (np.asarray(outputs) >= self.cutoffs[None, :]).astype(np.float32)
        return on, replace(self, thresholds=tuple([0.5] * len(self.labels)))

    def same(self, a: Any, b: Any) -> bool:
        return tuple(a) == tuple(b)

    def logged(self, outputs: Any) -> tuple[list[str], list[float]]:
        outputs = np.asarray(outputs, dtype=np.float32).reshape(-1, self.width)
        return (["|".join(d) for d in self.decisions(outputs)],
                outputs.max(axis=1).astype(float).tolist() if len(outputs) else [])

    def frame(self, outputs: Any):
        outputs = np.asarray(outputs, dtype=np.float32).reshape(-1, self.width)
        return _probability_frame(self, outputs, {"labels": [list(d) for d in self.decisions(outputs)],
                                                  "probabilities": [row.astype(float).tolist() for row in outputs]})

    def frame_types(self) -> list[tuple[str, Any]]:
        import pyarrow as pa

        return ([("labels", pa.list_(pa.string())), ("probabilities", pa.list_(pa.float64()))]
                + [(f"proba_{lab}", pa.float64()) for lab in self.labels])

    def answers(self, outputs: Any) -> list[dict[str, Any]]:
        outputs = np.asarray(outputs, dtype=np.float32).reshape(-1, self.width)
        return [{"labels": list(d), "probabilities": dict(zip(self.labels, row))}
                for d, row in zip(self.decisions(outputs), outputs.tolist())]

    def target_line(self) -> str:
        line = super().target_line()
        if self.thresholds:
            line += "; thresholds " + ", ".join(f"`{lab}` {t:.2f}" for lab, t in zip(self.labels, self.thresholds))
        return line

    def limits(self, max_length: Any) -> list[str]:
        return [f"- Predicts only the {len(self.labels)} labels above; a text may get none of them.",
                *super().limits(max_length)]


@register_outputs
@dataclass(frozen=True)
class RegressionOutputs(OutputSpec):
    """The model predicts the standardised target; its score is ``logit * scale + mean``."""

    mean: float = 0.0
    scale: float = 1.0

    task: ClassVar[str] = "regression"
    summary: ClassVar[str] = "a score per text, in the target's units"
    classes: ClassVar[bool] = False
    min_labels: ClassVar[int] = 1
    prediction_shape: ClassVar[dict[str, Any]] = {"score": "float"}

    @classmethod
    def read_options(cls, raw: dict[str, Any]) -> dict[str, Any]:
        return {"mean": float(raw.get("mean", 0.0)), "scale": float(raw.get("scale", 1.0))}

    def check(self) -> None:
        if len(self.labels) != 1 or not (np.isfinite(self.scale) and self.scale > 0 and np.isfinite(self.mean)):
            raise ValueError("a regression spec needs one target name and a finite positive scale")

    @property
    def width(self) -> int:
        return 1

    def activate(self, logits: np.ndarray) -> np.ndarray:
        logits = np.asarray(logits, dtype=np.float32)
        return (logits * np.float32(self.scale) + np.float32(self.mean)).astype(np.float32)

    def comparable(self, outputs: Any) -> np.ndarray:
        """Scores in target standard deviations."""
        return (np.asarray(outputs, dtype=np.float64) - self.mean) / self.scale

    def decisions(self, outputs: Any) -> list[Any]:
        return [float(v) for v in np.asarray(outputs)[:, 0]]

    def agree(self, a: Any, b: Any) -> np.ndarray:
        """Scores within ``REGRESSION_AGREE_SCALES`` target standard deviations."""
        return np.abs(np.asarray(a)[:, 0] - np.asarray(b)[:, 0]) <= REGRESSION_AGREE_SCALES * self.scale

    def same(self, a: Any, b: Any) -> bool:
        return abs(float(a) - float(b)) <= REGRESSION_AGREE_SCALES * self.scale

    def prediction_counts(self, outputs: Any) -> dict[str, float]:
        """``n``, ``sum`` and ``sumsq`` of the score."""
        v = np.asarray(outputs, dtype=np.float64).reshape(-1)
        return {"n": len(outputs), "sum": float(v.sum()), "sumsq": float((v * v).sum())}

    def distribution(self, counts: dict[str, float]) -> dict[str, float]:
        n = counts.get("n", 0) or 0
        if not n:
            return {}
        mean = counts.get("sum", 0.0) / n
        return {"score_mean": mean, "score_std": max(0.0, counts.get("sumsq", 0.0) / n - mean * mean) ** 0.5}

    def prediction_drift(self, counts: dict[str, float], reference: dict[str, float], alpha: float,
                         threshold: float) -> dict[str, Any]:
        """The score's mean shift in validation standard deviations, reported without a decision."""
        n, ref_n = counts["n"], reference["n"]
        mean, ref_mean = counts["sum"] / n, reference["sum"] / ref_n
        ref_std = max(reference["sumsq"] / ref_n - ref_mean ** 2, 0.0) ** 0.5 or 1.0
        return {"checked": True, "score_mean_shift_sd": (mean - ref_mean) / ref_std}

    def logged(self, outputs: Any) -> tuple[list[str], list[float]]:
        outputs = np.asarray(outputs, dtype=np.float32).reshape(-1, 1)
        return [f"{v:.6g}" for v in outputs[:, 0].tolist()], [float("nan")] * len(outputs)

    def frame(self, outputs: Any):
        import pandas as pd

        return pd.DataFrame({"score": np.asarray(outputs, dtype=np.float32).reshape(-1, 1)[:, 0].astype(float)})

    def frame_types(self) -> list[tuple[str, Any]]:
        import pyarrow as pa

        return [("score", pa.float64())]

    def answers(self, outputs: Any) -> list[dict[str, Any]]:
        return [{"score": v} for v in np.asarray(outputs, dtype=np.float32).reshape(-1, 1)[:, 0].tolist()]

    def target_line(self) -> str:
        return f"- target: `{self.labels[0]}` (standardised in training: mean {self.mean:.4g}, scale {self.scale:.4g})"

    def limits(self, max_length: Any) -> list[str]:
        return ["- Scores outside the range seen in training are extrapolations.", *super().limits(max_length)]


@dataclass(frozen=True)
class WordOutputs(OutputSpec):
    """Outputs per word, not per text: long texts are scored in windows overlapping by ``stride`` word
    pieces, and a word's output comes from its pieces by ``aggregation`` (``forgeline.inference.tokens``)."""

    aggregation: str = "first"
    stride: int = 32

    tokens: ClassVar[bool] = True


@register_outputs
@dataclass(frozen=True)
class TokenOutputs(WordOutputs):
    """``labels`` are the entity types, the model's outputs their IOB2 tags (``tokens.tag_names``) per word
    piece."""

    task: ClassVar[str] = "token_classification"
    min_labels: ClassVar[int] = 1
    summary: ClassVar[str] = ("entity spans in each text, with character offsets (entity micro-F1: type and both "
                              "boundaries must match)")
    prediction_shape: ClassVar[dict[str, Any]] = {
        "entities": [{"label": "str", "start": "int", "end": "int", "text": "str", "score": "float"}]}

    @classmethod
    def read_options(cls, raw: dict[str, Any]) -> dict[str, Any]:
        return {"aggregation": str(raw.get("aggregation", "first")), "stride": int(raw.get("stride", 32))}

    def check(self) -> None:
        from forgeline.inference.tokens import AGGREGATIONS

        super().check()
        if self.aggregation not in AGGREGATIONS or self.stride < 0:
            raise ValueError(f"token aggregation must be one of {AGGREGATIONS} and stride >= 0")

    @property
    def tag_names(self) -> tuple[str, ...]:
        from forgeline.inference.tokens import tag_names

        return tag_names(self.labels)

    @property
    def width(self) -> int:
        return 1 + 2 * len(self.labels)

    @property
    def head_names(self) -> tuple[str, ...]:
        return self.tag_names

    def activate(self, logits: np.ndarray) -> np.ndarray:
        from forgeline.inference.tokens import softmax_last

        return softmax_last(np.asarray(logits, dtype=np.float32))

    def comparable(self, outputs: Any) -> np.ndarray:
        """Every word's tag probabilities, one row per word."""
        return np.concatenate([t.probs for t in outputs]) if len(outputs) else np.zeros((0, self.width))

    def decisions(self, outputs: Any) -> list[Any]:
        """The tuple of (start, end, label) spans of each text."""
        return [tuple((e["start"], e["end"], e["label"]) for e in t.entities(self.labels)) for t in outputs]

    def agreement(self, a: Any, b: Any) -> float:
        """Per word: its tag's argmax."""
        x, y = self.comparable(a), self.comparable(b)
        return float((x.argmax(axis=1) == y.argmax(axis=1)).mean()) if len(x) else 1.0

    def champion_problem(self, other: OutputSpec) -> str | None:
        if list(other.labels) != list(self.labels) and (other.task, other.pairs) == (self.task, self.pairs):
            return f"it tags {list(other.labels)}, this data has {list(self.labels)}"  # its tag columns are in its own order
        return super().champion_problem(other)

    def aligned(self, other: OutputSpec, outputs: Any) -> Any:
        return outputs

    def prediction_counts(self, outputs: Any) -> dict[str, float]:
        """``n`` (texts) and ``label:<type>``: spans of each type."""
        counts: dict[str, float] = {"n": len(outputs)}
        for spans in self.decisions(outputs) if len(outputs) else []:
            for _, _, label in spans:
                counts[f"label:{label}"] = counts.get(f"label:{label}", 0) + 1
        return counts

    def logged(self, outputs: Any) -> tuple[list[str], list[float]]:
        """The spans as ``label:start-end`` joined by ``|`` and their lowest score (NaN with none)."""
        found = [t.entities(self.labels) for t in outputs]
        return (["|".join(f"{e['label']}:{e['start']}-{e['end']}" for e in ents) for ents in found],
                [min((e["score"] for e in ents), default=float("nan")) for ents in found])

    def frame(self, outputs: Any):
        import pandas as pd

        return pd.DataFrame({"entities": [t.entities(self.labels) for t in outputs]})

    def frame_types(self) -> list[tuple[str, Any]]:
        import pyarrow as pa

        text = pa.string()
        entity = pa.struct([("label", text), ("start", pa.int64()), ("end", pa.int64()), ("text", text),
                            ("score", pa.float64())])
        return [("entities", pa.list_(entity))]

    def answers(self, outputs: Any) -> list[dict[str, Any]]:
        return [{"entities": t.entities(self.labels)} for t in outputs]

    def target_line(self) -> str:
        return (f"- entity types ({len(self.labels)}): {', '.join(f'`{lab}`' for lab in self.labels)}; tagged IOB2 per "
                f"word, a word's tag from its {self.aggregation} piece")

    def limits(self, max_length: Any) -> list[str]:
        return [f"- Finds only the {len(self.labels)} entity types above; a span starts and ends on a word boundary "
                "(a run of letters and digits, or one other character).",
                f"- Reads a text in windows of {max_length or '?'} tokens overlapping by {self.stride}: a long text is "
                "tagged whole, not cut."]
