"""Token classification, torch-free: texts to word pieces in overlapping windows, the model's per-piece
tag probabilities back to words, and words to entity spans with character offsets into the original text.

A *word* is a run of word characters or one other non-space character (``WORD``), the same rule the
training data is cut by (``forgeline.data.spans``), so a span the model returns always starts and ends
on a boundary a training span could have had. Tags are IOB2 over the entity types (``tag_names``).

Texts longer than the model's window are not cut: their pieces are scored in windows of
``max_length`` with ``stride`` pieces of overlap, and each piece keeps the prediction of the window in
which it sits farthest from an edge (the most context on both sides).

numpy and tokenizers only: this file ships with every registered model.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

WORD = re.compile(r"\w+|[^\w\s]", re.UNICODE)
"""Runs of word characters, and each other non-space character."""
AGGREGATIONS = ("first", "average", "max")
"""How a word's pieces become the word's tag probabilities: its first piece's (the one training labels),
their mean, or the piece with the highest probability."""
IGNORE = -100
"""Label of pieces the loss skips (special tokens, and pieces after a word's first)."""


def word_spans(text: str) -> list[tuple[int, int]]:
    return [(m.start(), m.end()) for m in WORD.finditer(text)]


def tag_names(types: Sequence[str]) -> tuple[str, ...]:
    """``O`` then ``B-X``, ``I-X`` per entity type: the model's outputs, in order."""
    return ("O", *(f"{p}-{t}" for t in types for p in "BI"))


def word_tags(words: Sequence[tuple[int, int]], spans: Sequence[tuple[int, int, str]], types: Sequence[str]) -> list[int]:
    """Tag id per word for character ``spans`` (start, end, type) that start and end on word boundaries."""
    index = {t: k for k, t in enumerate(types)}
    out = [0] * len(words)
    for start, end, kind in spans:
        first = True
        for k, (a, b) in enumerate(words):
            if a >= start and b <= end:
                out[k] = 1 + 2 * index[kind] + (0 if first else 1)
                first = False
    return out


@dataclass
class Tagged:
    """One text's words and their tag probabilities, (words, tags)."""

    text: str
    words: list[tuple[int, int]]
    probs: np.ndarray

    def entities(self, types: Sequence[str]) -> list[dict[str, Any]]:
        """Entity spans, ``{label, start, end, text, score}``: a B- word and the I- words of its type
        after it; an I- word after O or another type starts an entity (the model, not the file, made
        that tag). ``score``: the mean over the span's words of the chosen tag's probability."""
        if not len(self.words):
            return []
        best = self.probs.argmax(axis=1)
        conf = self.probs.max(axis=1)
        out: list[dict[str, Any]] = []
        current: list[Any] | None = None  # [type index, first word, last word]
        for k, tag in enumerate(best.tolist()):
            kind, inside = (tag - 1) // 2, (tag - 1) % 2 == 1
            if current is not None and (tag == 0 or not inside or kind != current[0]):
                out.append(self._span(current, types, conf))
                current = None
            if tag == 0:
                continue
            if current is None:
                current = [kind, k, k]
            else:
                current[2] = k
        if current is not None:
            out.append(self._span(current, types, conf))
        return out

    def _span(self, current: list[Any], types: Sequence[str], conf: np.ndarray) -> dict[str, Any]:
        kind, first, last = current
        start, end = self.words[first][0], self.words[last][1]
        return {"label": types[kind], "start": start, "end": end, "text": self.text[start:end],
                "score": float(conf[first : last + 1].mean())}


class TokenEncoder:
    """A ``tokenizers.Tokenizer`` used without truncation: word pieces with character offsets, cut
    into model windows with the tokenizer's own special tokens around each. ``tokenizer``: a
    ``tokenizers.Tokenizer``, or a transformers fast tokenizer (its ``backend_tokenizer`` is the same
    object a bundle ships as ``tokenizer.json``)."""

    def __init__(self, tokenizer, max_length: int, stride: int) -> None:
        from tokenizers import Tokenizer

        tokenizer = getattr(tokenizer, "backend_tokenizer", tokenizer)
        self._tok = Tokenizer.from_str(tokenizer.to_str())  # a copy: truncation/padding are per instance
        self._tok.no_truncation()
        self._tok.no_padding()
        probe = self._tok.encode("a", add_special_tokens=True)
        special = probe.special_tokens_mask
        first = special.index(0) if 0 in special else len(special)
        self.prefix = probe.ids[:first]
        self.suffix = [i for i, s in zip(probe.ids[first:], special[first:]) if s]
        pad = self._tok.token_to_id("[PAD]")
        if pad is None:
            pad = self._tok.token_to_id("<pad>")
        self.pad_id = 0 if pad is None else pad
        self.window = max(1, max_length - len(self.prefix) - len(self.suffix))
        self.stride = min(max(0, stride), self.window - 1)

    @classmethod
    def from_file(cls, path, max_length: int, stride: int) -> "TokenEncoder":
        from tokenizers import Tokenizer

        return cls(Tokenizer.from_file(str(path)), max_length, stride)

    def pieces(self, text: str, words: Sequence[tuple[int, int]]) -> tuple[list[int], np.ndarray]:
        """The text's piece ids and each piece's word index (-1: a piece in no word)."""
        enc = self._tok.encode(text, add_special_tokens=False)
        if not enc.ids:
            return [], np.zeros(0, dtype=np.int64)
        starts = np.fromiter((w[0] for w in words), dtype=np.int64, count=len(words))
        ends = np.fromiter((w[1] for w in words), dtype=np.int64, count=len(words))
        offsets = np.asarray(enc.offsets, dtype=np.int64).reshape(-1, 2)
        k = np.searchsorted(ends, offsets[:, 0], side="right")  # per piece, the first word ending after it starts
        inside = (k < len(words)) & (offsets[:, 1] > offsets[:, 0])
        inside[inside] &= starts[k[inside]] <= offsets[inside, 0]
        return list(enc.ids), np.where(inside, k, -1)

    def windows(self, n: int) -> list[tuple[int, int]]:
        """[start, end) piece ranges covering ``n`` pieces, each at most ``window`` long, overlapping by
        ``stride``."""
        if n <= self.window:
            return [(0, n)]
        step = self.window - self.stride
        out = []
        start = 0
        while True:
            end = min(start + self.window, n)
            out.append((start, end))
            if end == n:
                return out
            start += step

    def wrap(self, ids: Sequence[int]) -> list[int]:
        return [*self.prefix, *ids, *self.suffix]


def owner_window(n: int, spans: list[tuple[int, int]]) -> np.ndarray:
    """For each of ``n`` pieces, the window in which it sits farthest from an edge."""
    best = np.zeros(n, dtype=np.int64)
    if len(spans) == 1:
        return best
    margin = np.full(n, -1, dtype=np.int64)
    positions = np.arange(n)
    for w, (a, b) in enumerate(spans):
        inside = (positions >= a) & (positions < b)
        m = np.minimum(positions - a, b - 1 - positions)
        better = inside & (m > margin)
        best[better], margin[better] = w, m[better]
    return best


def to_words(piece_probs: np.ndarray, word_of: np.ndarray, n_words: int, tags: int, how: str = "first") -> np.ndarray:
    """(words, tags) from (pieces, tags). A word without a piece (nothing the tokenizer kept) reads O."""
    out = np.zeros((n_words, tags), dtype=np.float32)
    out[:, 0] = 1.0
    has = word_of >= 0
    if not has.any():
        return out
    p, w = piece_probs[has], word_of[has]
    if how == "first":
        first = np.r_[True, w[1:] != w[:-1]]
        out[w[first]] = p[first]
    elif how == "average":
        sums = np.zeros((n_words, tags), dtype=np.float64)
        np.add.at(sums, w, p)
        counts = np.bincount(w, minlength=n_words)
        seen = counts > 0
        out[seen] = (sums[seen] / counts[seen, None]).astype(np.float32)
    elif how == "max":
        score = p.max(axis=1)
        order = np.lexsort((-score, w))  # per word, its most confident piece first
        w_sorted = w[order]
        first = np.r_[True, w_sorted[1:] != w_sorted[:-1]]
        out[w_sorted[first]] = p[order][first]
    else:
        raise ValueError(f"aggregation {how!r}: use one of {AGGREGATIONS}")
    return out


def softmax_last(logits: np.ndarray) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float32)
    z = z - z.max(axis=-1, keepdims=True)
    np.exp(z, out=z)
    z /= z.sum(axis=-1, keepdims=True)
    return z


LogitsFn = Callable[[np.ndarray, np.ndarray], np.ndarray]
"""(input_ids, attention_mask) → logits (batch, sequence, tags)."""


def predict_tagged(encoder: TokenEncoder, texts: Sequence[str], logits_fn: LogitsFn, tags: int, batch_size: int = 32,
                   how: str = "first") -> np.ndarray:
    """Each text scored in its windows (batched by length across texts), the windows merged piece by piece,
    the pieces aggregated to words: an object array of ``Tagged``, one per text."""
    rows: list[tuple[int, list[int], int]] = []  # (text, window ids, offset of its first piece)
    parts = []
    for t, text in enumerate(texts):
        words = word_spans(text)
        ids, word_of = encoder.pieces(text, words)
        spans = encoder.windows(len(ids))
        parts.append((words, word_of, spans))
        rows += [(t, encoder.wrap(ids[a:b]), a) for a, b in spans]
    results: list[np.ndarray | None] = [None] * len(rows)
    order = np.argsort([len(r[1]) for r in rows], kind="stable")
    lead = len(encoder.prefix)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        width = max(len(rows[i][1]) for i in idx)
        input_ids = np.full((len(idx), width), encoder.pad_id, dtype=np.int64)
        mask = np.zeros((len(idx), width), dtype=np.int64)
        for r, i in enumerate(idx):
            ids = rows[i][1]
            input_ids[r, : len(ids)] = ids
            mask[r, : len(ids)] = 1
        probs = softmax_last(logits_fn(input_ids, mask))
        for r, i in enumerate(idx):
            n = len(rows[i][1]) - lead - len(encoder.suffix)
            results[i] = probs[r, lead : lead + n]
    out = np.empty(len(texts), dtype=object)
    k = 0
    for t, text in enumerate(texts):
        words, word_of, spans = parts[t]
        mine = [r for r in results[k : k + len(spans)] if r is not None]  # every window was scored above
        k += len(spans)
        n = len(word_of)
        piece_probs = np.zeros((n, tags), dtype=np.float32)
        if n:
            owner = owner_window(n, spans)
            for w, (a, b) in enumerate(spans):
                sel = np.flatnonzero(owner[a:b] == w)
                piece_probs[a + sel] = mine[w][sel]
        out[t] = Tagged(text, words, to_words(piece_probs, word_of, len(words), tags, how))
    return out


def spans_of(entities: Sequence[dict[str, Any]]) -> tuple[tuple[int, int, str], ...]:
    return tuple((e["start"], e["end"], e["label"]) for e in entities)
