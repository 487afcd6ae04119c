"""Classical baselines: the model a user fits in five lines, trained in every run on the same split so the
gate can say when the encoder is no better (issue: never ship a model a cheap baseline beats).

Features are TF-IDF of word 1-2-grams and character 2-5-grams (within word boundaries), for a text pair
each text's own, side by side; the linear model's regularisation is chosen on the validation split by the
task's primary metric. scikit-learn only; a fit that cannot be made (one class in the training split, no
vocabulary) raises ``ClassicalError``, which the baseline stage reports and skips.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from forgeline.inference.tasks import OutputSpec

C_GRID = (0.25, 1.0, 4.0, 16.0)
"""Inverse regularisation strengths of the logistic regressions tried on validation."""
ALPHA_GRID = (0.1, 1.0, 10.0, 100.0)
"""Ridge penalties tried on validation."""


class ClassicalError(ValueError):
    """A classical baseline that cannot be fitted on these rows."""


@dataclass
class TextRows:
    """Texts (and their pairs) with their targets as the task parses them."""

    texts: list[str]
    pairs: list[str] | None
    targets: Any

    @classmethod
    def of(cls, frame: Any) -> TextRows:
        """A split's rows (a frame of ``text``, ``label`` and, for pairs, ``text_pair``)."""
        return cls(frame["text"].tolist(), frame["text_pair"].tolist() if "text_pair" in frame.columns else None,
                   frame["label"])


@dataclass
class ClassicalFit:
    """A fitted baseline: what it is (``name``, with the chosen setting), its decision settings (``spec``:
    multi-label thresholds tuned on validation) and its outputs on any rows, in the task's form."""

    name: str
    spec: OutputSpec
    predict: Callable[[TextRows], np.ndarray]
    val_metrics: dict[str, float]


class TextFeatures:
    """TF-IDF word and character n-grams, fitted on the training texts (each text of a pair on its own)."""

    def __init__(self) -> None:
        self.parts: list[Any] = []

    @staticmethod
    def _vectorisers() -> Any:
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.pipeline import FeatureUnion

        return FeatureUnion([("words", TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=1)),
                             ("chars", TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), sublinear_tf=True,
                                                       min_df=2))])

    def fit(self, rows: TextRows) -> TextFeatures:
        columns = [rows.texts] + ([rows.pairs] if rows.pairs is not None else [])
        try:
            self.parts = [self._vectorisers().fit(column) for column in columns]
        except ValueError as e:  # scikit-learn's "empty vocabulary"
            raise ClassicalError(f"no features in the training texts ({e})") from None
        return self

    def __call__(self, rows: TextRows) -> Any:
        from scipy.sparse import hstack

        columns = [rows.texts] + ([rows.pairs] if rows.pairs is not None else [])
        return hstack([part.transform(column) for part, column in zip(self.parts, columns)]).tocsr()


def _best(candidates: Sequence[tuple[str, Any, dict[str, float]]], primary: str, higher_is_better: bool):
    scores = [m[primary] for _, _, m in candidates]
    return candidates[int(np.argmax(scores) if higher_is_better else np.argmin(scores))]


def fit_logistic(task: Any, spec: OutputSpec, train: TextRows, val: TextRows) -> ClassicalFit:
    """One class per text: logistic regression, probabilities in ``spec.labels``' order."""
    from sklearn.linear_model import LogisticRegression

    features = TextFeatures().fit(train)
    x, x_val = features(train), features(val)
    y, y_val = task.y(train.targets, spec), task.y(val.targets, spec)
    if len(set(y.tolist())) < 2:
        raise ClassicalError("the training split holds one class")
    k = len(spec.labels)

    def outputs(model: Any, x_rows: Any) -> np.ndarray:
        out = np.zeros((x_rows.shape[0], k), dtype=np.float32)
        out[:, model.classes_] = model.predict_proba(x_rows)
        return out

    tried = []
    for c in C_GRID:
        model = LogisticRegression(C=c, max_iter=2000).fit(x, y)
        tried.append((f"C={c:g}", model, task.metrics(y_val, outputs(model, x_val), spec)))
    setting, model, val_metrics = _best(tried, task.primary.name, task.primary.higher_is_better)
    return ClassicalFit(f"TF-IDF + logistic regression ({setting})", spec,
                        lambda rows: outputs(model, features(rows)), val_metrics)


def fit_one_vs_rest(task: Any, spec: OutputSpec, train: TextRows, val: TextRows) -> ClassicalFit:
    """Any number of labels per text: a logistic regression per label (a label with one value in the
    training split predicts its training rate), thresholds per label tuned on validation (``task.tune``)."""
    from sklearn.linear_model import LogisticRegression

    features = TextFeatures().fit(train)
    x, x_val = features(train), features(val)
    y, y_val = task.y(train.targets, spec), task.y(val.targets, spec)

    def fitted(c: float) -> list[Any]:
        return [LogisticRegression(C=c, max_iter=2000).fit(x, y[:, j]) if 0 < y[:, j].sum() < len(y) else float(y[:, j].mean())
                for j in range(y.shape[1])]

    def outputs(models: list[Any], x_rows: Any) -> np.ndarray:
        return np.stack([m.predict_proba(x_rows)[:, 1] if not isinstance(m, float) else np.full(x_rows.shape[0], m)
                         for m in models], axis=1).astype(np.float32)

    tried = []
    for c in C_GRID:
        models = fitted(c)
        tuned = task.tune(spec, y_val, outputs(models, x_val))
        tried.append((f"C={c:g}", (models, tuned), task.metrics(y_val, outputs(models, x_val), tuned)))
    setting, (models, tuned), val_metrics = _best(tried, task.primary.name, task.primary.higher_is_better)
    return ClassicalFit(f"TF-IDF + one-vs-rest logistic regression ({setting}, thresholds tuned)", tuned,
                        lambda rows: outputs(models, features(rows)), val_metrics)


def fit_ridge(task: Any, spec: OutputSpec, train: TextRows, val: TextRows) -> ClassicalFit:
    """A number per text: ridge regression, scores in the target's units."""
    from sklearn.linear_model import Ridge

    features = TextFeatures().fit(train)
    x, x_val = features(train), features(val)
    y, y_val = task.y(train.targets, spec), task.y(val.targets, spec)
    tried = []
    for alpha in ALPHA_GRID:
        model = Ridge(alpha=alpha).fit(x, y)
        tried.append((f"alpha={alpha:g}", model, task.metrics(y_val, model.predict(x_val).reshape(-1, 1), spec)))
    setting, model, val_metrics = _best(tried, task.primary.name, task.primary.higher_is_better)
    return ClassicalFit(f"TF-IDF + ridge ({setting})", spec,
                        lambda rows: model.predict(features(rows)).reshape(-1, 1).astype(np.float32), val_metrics)
