"""Classical baselines: the model a user fits in five lines, trained in every run on the same split so the
gate can say when the encoder is no better (issue: never ship a model a cheap baseline beats).

Features are TF-IDF of word 1-2-grams and character 2-5-grams, for a text pair each text's own, side by
side; the linear model's regularisation is chosen on the validation split by the task's primary metric.
Every fit ends as one linear layer over the features giving the task's logits (``OutputSpec.activate``
makes them its outputs), so its served form (``export.classical``: skl2onnx, string input) is the same
two steps. scikit-learn only; a fit that cannot be made (one class in the training split, no
vocabulary) raises ``ClassicalError``, which the baseline stage reports and skips.
"""

from __future__ import annotations

from collections.abc import Sequence
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
    multi-label thresholds tuned on validation), and the linear layer (``weights`` (outputs, features),
    ``bias``) over ``features`` that gives the task's logits."""

    name: str
    spec: OutputSpec
    features: TextFeatures
    weights: np.ndarray
    bias: np.ndarray
    val_metrics: dict[str, float]

    def logits(self, rows: TextRows) -> np.ndarray:
        return np.asarray(self.features(rows) @ self.weights.T + self.bias, dtype=np.float32)

    def predict(self, rows: TextRows) -> np.ndarray:
        """Outputs in the task's form (probabilities, scores in the target's units)."""
        return self.spec.activate(self.logits(rows))


# The word pattern is an explicit class that Python's re and ONNX Runtime's re2 read alike (\w is Unicode
# in one and ASCII in the other: "très" would split in the served graph), holding every character
# str.isspace() counts (skl2onnx splits the vocabulary's bigrams with str.split(): a word holding U+0085,
# as latin-1 mojibake does, failed the export of the confidence preset). The character n-grams are plain
# "char": skl2onnx has no converter for "char_wb".
_SPACES = "".join(chr(c) for c in range(0x3001) if chr(c).isspace())
WORD_PATTERN = "[^" + _SPACES + r".,;:!?()\[\]{}<>\"'`/\\|@#$%^&*+=~_-]{2,}"
"""Tokens: runs of two or more characters other than whitespace and ASCII punctuation."""


class TextFeatures:
    """TF-IDF word and character n-grams fitted on the training texts; a pair's two texts each get their
    own (a ``ColumnTransformer`` over columns 0 and 1)."""

    def __init__(self) -> None:
        self.transformer: Any = None

    @staticmethod
    def vectorisers() -> Any:
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.pipeline import FeatureUnion

        return FeatureUnion([("words", TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, token_pattern=WORD_PATTERN)),
                             ("chars", TfidfVectorizer(analyzer="char", ngram_range=(2, 5), sublinear_tf=True, min_df=2))])

    @staticmethod
    def columns(rows: TextRows) -> Any:
        """The model's input: a list of texts, or a (rows, 2) array of text and pair."""
        return rows.texts if rows.pairs is None else np.array([rows.texts, rows.pairs], dtype=object).T

    def fit(self, rows: TextRows) -> TextFeatures:
        from sklearn.compose import ColumnTransformer

        self.transformer = (self.vectorisers() if rows.pairs is None else
                            ColumnTransformer([("text", self.vectorisers(), 0), ("text_pair", self.vectorisers(), 1)]))
        try:
            self.transformer.fit(self.columns(rows))
        except ValueError as e:  # scikit-learn's "empty vocabulary"
            raise ClassicalError(f"no features in the training texts ({e})") from None
        return self

    def __call__(self, rows: TextRows) -> Any:
        from scipy.sparse import csr_matrix

        return csr_matrix(self.transformer.transform(self.columns(rows)))


def _best(candidates: Sequence[tuple[str, Any, dict[str, float]]], primary: str, higher_is_better: bool):
    scores = [m[primary] for _, _, m in candidates]
    return candidates[int(np.argmax(scores) if higher_is_better else np.argmin(scores))]


ABSENT_LOGIT = -30.0
"""A class the training split lacks: its logit (softmax ≈ 1e-13, where scikit-learn says 0)."""


def fit_logistic(task: Any, spec: OutputSpec, train: TextRows, val: TextRows) -> ClassicalFit:
    """One class per text: multinomial logistic regression (a binary one as the logits [0, z])."""
    from sklearn.linear_model import LogisticRegression

    features = TextFeatures().fit(train)
    x, x_val = features(train), features(val)
    y, y_val = task.y(train.targets, spec), task.y(val.targets, spec)
    if len(set(y.tolist())) < 2:
        raise ClassicalError("the training split holds one class")
    k = len(spec.labels)

    def layer(model: Any) -> tuple[np.ndarray, np.ndarray]:
        w, b = np.zeros((k, x.shape[1])), np.full(k, ABSENT_LOGIT)
        if len(model.classes_) == 2:
            b[model.classes_[0]] = 0.0
            w[model.classes_[1]], b[model.classes_[1]] = model.coef_[0], model.intercept_[0]
        else:
            w[model.classes_], b[model.classes_] = model.coef_, model.intercept_
        return w, b

    tried = []
    for c in C_GRID:
        w, b = layer(LogisticRegression(C=c, max_iter=2000).fit(x, y))
        tried.append((f"C={c:g}", (w, b), task.metrics(y_val, spec.activate(x_val @ w.T + b), spec)))
    setting, (w, b), val_metrics = _best(tried, task.primary.name, task.primary.higher_is_better)
    return ClassicalFit(f"TF-IDF + logistic regression ({setting})", spec, features, w, b, val_metrics)


def fit_one_vs_rest(task: Any, spec: OutputSpec, train: TextRows, val: TextRows) -> ClassicalFit:
    """Any number of labels per text: a logistic regression per label (a label with one value in the
    training split keeps its training rate), thresholds per label tuned on validation (``task.tune``)."""
    from sklearn.linear_model import LogisticRegression

    features = TextFeatures().fit(train)
    x, x_val = features(train), features(val)
    y, y_val = task.y(train.targets, spec), task.y(val.targets, spec)

    def layer(c: float) -> tuple[np.ndarray, np.ndarray]:
        w, b = np.zeros((y.shape[1], x.shape[1])), np.zeros(y.shape[1])
        for j in range(y.shape[1]):
            if 0 < y[:, j].sum() < len(y):
                model = LogisticRegression(C=c, max_iter=2000).fit(x, y[:, j])
                w[j], b[j] = model.coef_[0], model.intercept_[0]
            else:
                rate = float(np.clip(y[:, j].mean(), 1e-6, 1 - 1e-6))
                b[j] = np.log(rate / (1 - rate))
        return w, b

    tried = []
    for c in C_GRID:
        w, b = layer(c)
        val_out = spec.activate(x_val @ w.T + b)
        tuned = task.tune(spec, y_val, val_out)
        tried.append((f"C={c:g}", (w, b, tuned), task.metrics(y_val, val_out, tuned)))
    setting, (w, b, tuned), val_metrics = _best(tried, task.primary.name, task.primary.higher_is_better)
    return ClassicalFit(f"TF-IDF + one-vs-rest logistic regression ({setting}, thresholds tuned)", tuned, features,
                        w, b, val_metrics)


def fit_ridge(task: Any, spec: Any, train: TextRows, val: TextRows) -> ClassicalFit:
    """A number per text: ridge regression, folded into the spec's standardised logits."""
    from sklearn.linear_model import Ridge

    features = TextFeatures().fit(train)
    x, x_val = features(train), features(val)
    y, y_val = task.y(train.targets, spec), task.y(val.targets, spec)
    tried = []
    for alpha in ALPHA_GRID:
        model = Ridge(alpha=alpha).fit(x, y)
        w, b = model.coef_.reshape(1, -1) / spec.scale, (np.atleast_1d(model.intercept_) - spec.mean) / spec.scale
        tried.append((f"alpha={alpha:g}", (w, b), task.metrics(y_val, spec.activate(x_val @ w.T + b), spec)))
    setting, (w, b), val_metrics = _best(tried, task.primary.name, task.primary.higher_is_better)
    return ClassicalFit(f"TF-IDF + ridge ({setting})", spec, features, w, b, val_metrics)


CRF_GRID = ((0.0, 0.01), (0.1, 0.01), (0.1, 0.1), (0.5, 0.1))
"""(L1, L2) penalties of the CRF tried on validation (postag-id chose (0.1, 0.01), 2026-12-02)."""


def _word_features(text: str, words: Sequence[tuple[int, int]]) -> list[dict[str, Any]]:
    """Each word, its affixes and shape and its neighbours' (the features of sklearn-crfsuite's tutorial)."""
    tokens = [text[a:b] for a, b in words]

    def of(w: str, at: str) -> dict[str, Any]:
        return {f"{at}lower": w.lower(), f"{at}title": w.istitle(), f"{at}upper": w.isupper(), f"{at}digit": w.isdigit()}

    out = []
    for k, w in enumerate(tokens):
        f = {"bias": 1.0, "suffix3": w[-3:].lower(), "suffix2": w[-2:].lower(), "prefix3": w[:3].lower(),
             "alpha": w.isalpha(), **of(w, "")}
        f.update(of(tokens[k - 1], "-1:") if k else {"BOS": True})
        f.update(of(tokens[k + 1], "+1:") if k + 1 < len(tokens) else {"EOS": True})
        out.append(f)
    return out


@dataclass
class CrfFit:
    """Token tags: a linear-chain CRF on word features (sklearn-crfsuite), words split as the served model
    splits them (``inference.tokens.word_spans``); its outputs are per-word tag marginals. A baseline only:
    it has no ONNX form, so ``model.family: auto`` registers the encoder for token tags."""

    name: str
    spec: OutputSpec
    crf: Any
    val_metrics: dict[str, float]

    def predict(self, rows: TextRows) -> np.ndarray:
        from forgeline.inference.tokens import Tagged, tag_names, word_spans

        names = tag_names(self.spec.labels)
        out = np.empty(len(rows.texts), dtype=object)
        for i, text in enumerate(rows.texts):
            words = word_spans(text)
            marginals = self.crf.predict_marginals_single(_word_features(text, words)) if words else []
            probs = np.array([[m.get(t, 0.0) for t in names] for m in marginals], dtype=np.float32).reshape(-1, len(names))
            out[i] = Tagged(text, words, probs)
        return out


def fit_crf(task: Any, spec: OutputSpec, train: TextRows, val: TextRows) -> CrfFit:
    import sklearn_crfsuite

    from forgeline.inference.tokens import tag_names, word_spans, word_tags

    names = tag_names(spec.labels)
    x, y = [], []
    for text, spans in zip(train.texts, train.targets):
        words = word_spans(text)
        x.append(_word_features(text, words))
        y.append([names[k] for k in word_tags(words, spans, spec.labels)])
    if not any(t != "O" for tags in y for t in tags):
        raise ClassicalError("the training split tags no entity")
    y_val = task.y(val.targets, spec)
    tried = []
    for c1, c2 in CRF_GRID:
        crf = sklearn_crfsuite.CRF(algorithm="lbfgs", c1=c1, c2=c2, max_iterations=100).fit(x, y)
        probe = CrfFit("", spec, crf, {})
        tried.append((f"c1={c1:g}, c2={c2:g}", crf, task.metrics(y_val, probe.predict(val), spec)))
    setting, crf, val_metrics = _best(tried, task.primary.name, task.primary.higher_is_better)
    return CrfFit(f"CRF on word features ({setting})", spec, crf, val_metrics)
