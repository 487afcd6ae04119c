"""A dictionary tagger built from a training split: the baseline a token-classification model must beat.

Every entity string of the training rows (case-folded) is tagged with its most frequent type wherever it
occurs in a text, on word boundaries, longest match first. It knows every name it has seen and nothing
else: it cannot tag an unseen name from its context, nor leave a seen one untagged where the context says
it is no entity ("nice" the city, "nice" the word).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence

from forgeline.inference.tokens import word_spans


class Gazetteer:
    def __init__(self, texts: Iterable[str], spans: Iterable[Sequence[tuple[int, int, str]]]) -> None:
        kinds: dict[tuple[str, ...], Counter] = defaultdict(Counter)
        for text, found in zip(texts, spans):
            for start, end, kind in found:
                kinds[self._key(text[start:end])][kind] += 1
        self.entries = {key: c.most_common(1)[0][0] for key, c in kinds.items()}
        self.longest = max((len(k) for k in self.entries), default=0)

    @staticmethod
    def _key(text: str) -> tuple[str, ...]:
        return tuple(text[a:b].casefold() for a, b in word_spans(text))

    def tag(self, text: str) -> tuple[tuple[int, int, str], ...]:
        words = word_spans(text)
        folded = [text[a:b].casefold() for a, b in words]
        out, k = [], 0
        while k < len(words):
            for n in range(min(self.longest, len(words) - k), 0, -1):
                kind = self.entries.get(tuple(folded[k : k + n]))
                if kind is not None:
                    out.append((words[k][0], words[k + n - 1][1], kind))
                    k += n
                    break
            else:
                k += 1
        return tuple(out)


def micro_f1(truth: Sequence[Sequence[tuple[int, int, str]]], found: Sequence[Sequence[tuple[int, int, str]]]) -> float:
    """Strict entity micro-F1 over sentences (type and both boundaries)."""
    tp = sum(len(set(t) & set(f)) for t, f in zip(truth, found))
    n_true, n_found = sum(len(set(t)) for t in truth), sum(len(set(f)) for f in found)
    return 2 * tp / (n_true + n_found) if n_true + n_found else 0.0
