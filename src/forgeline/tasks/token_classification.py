"""Token classification: entity spans in text (people, products, places...), tagged per word in IOB2
over the entity types, scored per entity.

A row is a text and its entities as character spans ``(start, end, type)``; CoNLL files and token/tag
JSON Lines are turned into that form when read (``forgeline.data.spans.sentence_rows``). Words are the
``inference.tokens.WORD`` runs; each word's first piece carries its tag in the loss (the others are
ignored, or with ``task.label_all_tokens`` carry I- of the word's type). Metrics are strict entity
matching (type and both boundaries: seqeval's strict IOB2 mode), micro-F1 primary; the gate's bootstrap
resamples sentences.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import Field

from forgeline.inference.tasks import TokenOutputs
from forgeline.inference.tokens import IGNORE, TokenEncoder, word_spans, word_tags
from forgeline.tasks.base import EvalResult, Metric, Problem, Task, TaskOptions, is_listlike


class TokenOptions(TaskOptions):
    aggregation: Literal["first", "average", "max"] = "first"
    """A word's tag from its first word piece (the one trained), the mean of its pieces, or its most
    confident piece."""
    stride: int = Field(32, ge=0, le=4096)
    """Word pieces of overlap between the windows a long text is scored in."""
    label_all_tokens: bool = False
    """Train every piece of a word (I- after the first), not only the first."""


def _f1(tp, n_pred, n_true):
    tp, n_pred, n_true = (np.asarray(a, dtype=np.float64) for a in (tp, n_pred, n_true))
    denom = n_pred + n_true
    return np.divide(2 * tp, denom, out=np.zeros_like(denom), where=denom > 0)


class TokenClassification(Task[TokenOutputs]):
    type = "token_classification"
    metrics_known = {"micro_f1": Metric("micro_f1"), "macro_f1": Metric("macro_f1")}
    default_primary = "micro_f1"
    min_labels = 1
    outputs = TokenOutputs
    Options = TokenOptions
    options: TokenOptions
    auto_model = "AutoModelForTokenClassification"
    file_shape = "sentences"
    reasons = {"tag_count_mismatch": "the sentence has a different number of tokens and tags",
               "bad_tag": "a tag is neither O nor PREFIX-TYPE with a prefix of the tag scheme (B, I, E, S)",
               "invalid_transition": "an I- tag starts an entity under IOB2 (repaired to B- unless data.repair_tags=false)",
               "span_out_of_bounds": "an entity span is outside the text or not {start, end, label}",
               "span_overlap": "an entity span overlaps another",
               "span_cuts_word": "an entity span starts or ends inside a word",
               "bad_spans": "the entities cell is not a list of [start, end, label] spans"}

    # --- data ------------------------------------------------------------------------------------
    def parse_target(self, value: Any, delimiter: str | None) -> Any:
        if isinstance(value, Problem) or value is None:
            return value
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except ValueError:
                return Problem("bad_spans")
        if not is_listlike(value):
            return Problem("bad_spans")
        spans = []
        for item in value:
            if isinstance(item, dict):
                item = (item.get("start"), item.get("end"), item.get("label"))
            if not (is_listlike(item) and len(item) == 3):
                return Problem("bad_spans")
            start, end, label = item
            if not (isinstance(start, (int, np.integer)) and isinstance(end, (int, np.integer)) and isinstance(label, str)):
                return Problem("bad_spans")
            spans.append((int(start), int(end), label))
        return tuple(sorted(spans))

    def target_labels(self, target: Any) -> tuple[str, ...]:
        return tuple(s[2] for s in target)

    def labels_from(self, targets: pd.Series, declared: list[str] | None) -> list[str]:
        return list(declared) if declared else sorted({s[2] for t in targets for s in t})

    def rows_per_class(self, targets: pd.Series, labels: list[str]) -> dict[str, int]:
        """Sentences holding each entity type."""
        counts = {lab: 0 for lab in labels}
        for t in targets:
            for lab in {s[2] for s in t}:
                if lab in counts:
                    counts[lab] += 1
        return counts

    def strata(self, targets: pd.Series, labels: list[str], rows_needed: int, why: str = "the split") -> np.ndarray:
        """A sentence's rarest entity type (``-`` for none); what is too rare shares the largest stratum."""
        per = self.rows_per_class(targets, labels)
        keys = pd.Series([min((s[2] for s in t), key=lambda lab: (per.get(lab, 0), lab), default="-") for t in targets])
        small = keys.map(keys.value_counts()) < rows_needed
        if small.any():
            keys[small] = keys.value_counts().idxmax()
        return keys.to_numpy()

    # --- model -----------------------------------------------------------------------------------
    def output_spec(self, labels: list[str], train_targets: pd.Series, pairs: bool) -> TokenOutputs:
        return TokenOutputs(tuple(labels), aggregation=self.options.aggregation, stride=self.options.stride)

    def fit_classical(self, spec, train, val):
        from forgeline.tasks.classical import fit_crf

        return fit_crf(self, spec, train, val)

    def y(self, targets, spec: TokenOutputs) -> np.ndarray:
        """Per sentence, its gold spans (an object array: sentences differ in length)."""
        out = np.empty(len(targets), dtype=object)
        for i, t in enumerate(targets):
            out[i] = tuple(t)
        return out

    def encode_train(self, tokenizer, texts: list[str], targets, spec: TokenOutputs, max_length: int):
        """Training windows: (token ids with special tokens, a label per piece: the word's tag on its
        first piece, ``IGNORE`` elsewhere), a text longer than the window giving several."""
        enc = TokenEncoder(tokenizer, max_length, spec.stride)
        label_all = self.options.label_all_tokens
        ids_out, labels_out = [], []
        lead, tail = [IGNORE] * len(enc.prefix), [IGNORE] * len(enc.suffix)
        for text, spans in zip(texts, targets):
            words = word_spans(text)
            tags = word_tags(words, spans, spec.labels)
            ids, word_of = enc.pieces(text, words)
            piece = np.full(len(ids), IGNORE, dtype=np.int64)
            if len(ids):
                first = np.r_[True, word_of[1:] != word_of[:-1]] & (word_of >= 0)
                tag_of = np.asarray(tags, dtype=np.int64)[np.maximum(word_of, 0)] if tags else np.zeros(len(ids), dtype=np.int64)
                piece[first] = tag_of[first]
                if label_all:
                    rest = ~first & (word_of >= 0)
                    piece[rest] = np.where(tag_of[rest] > 0, tag_of[rest] + (tag_of[rest] % 2), 0)  # B-X → I-X
            for a, b in enc.windows(len(ids)):
                ids_out.append(enc.wrap(ids[a:b]))
                labels_out.append([*lead, *piece[a:b].tolist(), *tail])
        return ids_out, labels_out

    def loss(self, logits, y, reduction: str = "mean"):
        """Cross-entropy per labelled piece, averaged per sentence, then over sentences (or summed)."""
        import torch

        per_piece = torch.nn.functional.cross_entropy(logits.float().transpose(1, 2), y, ignore_index=IGNORE,
                                                      reduction="none")
        counted = (y != IGNORE).sum(1).clamp(min=1)
        per_row = per_piece.sum(1) / counted
        return per_row.sum() if reduction == "sum" else per_row.mean()

    def distill_loss(self, student_logits, teacher_logits, y, temperature: float, alpha: float):
        """Per labelled piece: alpha · T² · KL(teacher/T ‖ student/T) + (1 − alpha) · CE(student, y)."""
        import torch

        t = temperature
        on = y != IGNORE
        s, te = student_logits.float()[on], teacher_logits.float()[on]
        soft = torch.nn.functional.kl_div(torch.log_softmax(s / t, -1), torch.softmax(te / t, -1),
                                          reduction="batchmean") * (t * t)
        return alpha * soft + (1 - alpha) * self.loss(student_logits, y)

    # --- evaluation ------------------------------------------------------------------------------
    def counts(self, y, outputs, spec: TokenOutputs) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per sentence and entity type: (matched, predicted, true) entity counts, each (n, K)."""
        index = {lab: k for k, lab in enumerate(spec.labels)}
        n, k = len(y), len(spec.labels)
        tp, n_pred, n_true = (np.zeros((n, k)) for _ in range(3))
        for i, (truth, found) in enumerate(zip(y, spec.decisions(outputs))):
            truth, found = set(truth), set(found)
            for s in truth:
                n_true[i, index[s[2]]] += 1
            for s in found:
                n_pred[i, index[s[2]]] += 1
            for s in truth & found:
                tp[i, index[s[2]]] += 1
        return tp, n_pred, n_true

    def metrics(self, y, outputs, spec: TokenOutputs) -> dict[str, float]:
        return self._metrics(self.counts(y, outputs, spec), y, outputs, spec)

    def _metrics(self, counts, y, outputs, spec: TokenOutputs) -> dict[str, float]:
        tp, n_pred, n_true = (a.sum(0) for a in counts)
        present = (n_pred + n_true) > 0
        per_type = _f1(tp, n_pred, n_true)
        p, t = float(n_pred.sum()), float(n_true.sum())
        return {"micro_f1": float(_f1(tp.sum(), p, t)), "macro_f1": float(per_type[present].mean()) if present.any() else 0.0,
                "precision": float(tp.sum() / p) if p else 0.0, "recall": float(tp.sum() / t) if t else 0.0,
                "token_accuracy": self.token_accuracy(y, outputs, spec)}

    def token_accuracy(self, y, outputs, spec: TokenOutputs) -> float:
        """Words whose predicted tag is the gold one (reported, never primary: O dominates it)."""
        right = total = 0
        for truth, tagged in zip(y, outputs):
            gold = np.asarray(word_tags(tagged.words, truth, spec.labels), dtype=np.int64)
            if len(gold):
                right += int((tagged.probs.argmax(axis=1) == gold).sum())
                total += len(gold)
        return right / total if total else 0.0

    def evaluate(self, y, outputs, spec: TokenOutputs, out_dir: Path, name: str = "test") -> EvalResult:
        counts = self.counts(y, outputs, spec)  # decoding every sentence's spans once
        result = EvalResult(metrics=self._metrics(counts, y, outputs, spec))
        tp, n_pred, n_true = (a.sum(0) for a in counts)
        for j, lab in enumerate(spec.labels):
            result.per_class[lab] = {"precision": tp[j] / n_pred[j] if n_pred[j] else 0.0,
                                     "recall": tp[j] / n_true[j] if n_true[j] else 0.0,
                                     "f1-score": float(_f1(tp[j], n_pred[j], n_true[j])), "support": float(n_true[j])}
        return self.report(result, out_dir, name, per_type=result.per_class)

    def resampled(self, y, outputs, spec: TokenOutputs, weights: np.ndarray) -> np.ndarray:
        """Sentences resampled: entity counts per resample in three matrix products."""
        tp, n_pred, n_true = self.counts(y, outputs, spec)
        w = np.asarray(weights, dtype=np.float64)
        tp, n_pred, n_true = w @ tp, w @ n_pred, w @ n_true
        if self.primary.name == "micro_f1":
            return _f1(tp.sum(1), n_pred.sum(1), n_true.sum(1))
        present = (n_pred + n_true) > 0
        return (_f1(tp, n_pred, n_true) * present).sum(1) / np.maximum(present.sum(1), 1)

    def baseline(self, y, spec: TokenOutputs) -> tuple[float, str]:
        return 0.0, "tagging nothing"

    def group_slices(self, y, spec: TokenOutputs):
        """Per entity type: that type's entity F1 (over every sentence: a false positive counts wherever it is);
        the slice's rows are the sentences holding the type."""
        def type_f1(j: int):
            def score(outputs, m=None) -> float:
                tp, n_pred, n_true = self.counts(y, outputs, spec)
                return float(_f1(tp[:, j].sum(), n_pred[:, j].sum(), n_true[:, j].sum()))
            return score

        return [(f"type={lab}", np.array([any(s[2] == lab for s in t) for t in y], dtype=bool), "f1", type_f1(j))
                for j, lab in enumerate(spec.labels)]

    # --- drift -----------------------------------------------------------------------------------
    def target_profile(self, targets: pd.Series, labels: list[str]) -> dict[str, Any]:
        """Per type, the share of sentences holding it (drift reads these as label rates), and spans per sentence."""
        counts = self.rows_per_class(targets, labels)
        n = max(len(targets), 1)
        return {"label_rates": {lab: counts[lab] / n for lab in labels},
                "spans_per_text": float(sum(len(t) for t in targets) / n)}

    def served_profile(self, decisions: list[str | None], reference: dict[str, Any]) -> dict[str, Any]:
        """Entity-type rates and spans per text of the answers (``label:start-end`` joined by ``|``): with no
        gold spans on traffic, the model's own spans are what can move (a new kind of text, a broken
        upstream tokenizer, a model tagging everything)."""
        said = [d for d in decisions if d is not None]
        if not said:
            return {}
        kinds = [{part.rsplit(":", 1)[0] for part in d.split("|") if part} for d in said]
        types = sorted(set(reference.get("label_rates", {})) | {k for ks in kinds for k in ks})
        return {"label_rates": {t: sum(t in ks for ks in kinds) / len(said) for t in types},
                "spans_per_text": sum(len([p for p in d.split("|") if p]) for d in said) / len(said)}

    def describe_targets(self) -> str:
        return ("entity spans: a CoNLL file (token and tag per line), JSON Lines with tokens + tags, or JSON Lines with "
                "text + entities [{start, end, label}]")
