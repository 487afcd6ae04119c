"""Token-tagged data for span tasks (named entities and other span tags), read into one form, and
entity-level scores.

Three input shapes become ``Sentence`` objects (tokens, IOB2 tags, and where known the text and each
token's character offsets):

- CoNLL-style text: one token per line with its tag (tab or space separated, ``data.tag_column``),
  a blank line between sentences, ``-DOCSTART-`` lines skipped; a BOM and Windows line ends are read;
- JSON Lines with ``tokens`` and ``tags``;
- JSON Lines with ``text`` and character-offset ``entities`` (``[{"start", "end", "label"}]``, as
  span-annotation tools export), tokenised on word and punctuation boundaries.

Tag schemes IOB2, IOB1 and BIOES are read (``detect_scheme`` when not given) and converted to IOB2;
an I- tag that starts an entity under IOB2 is repaired to B- and counted. ``plain`` (named, never
detected: a wrong ``data.tag_column`` would otherwise pass as it) is a tag per token without a prefix, as
part-of-speech tags: each token is its own span. ``entity_scores`` is strict
entity matching (type and both boundaries), as seqeval's strict IOB2 mode scores it
(tests/data/test_spans.py checks the numbers against seqeval). Pure Python and numpy: the torch-free
post-processing of a deployed model uses the same entity extraction.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
import io
import json
from typing import Any, Iterable

from forgeline.errors import DataLoadError
from forgeline.inference.tokens import WORD  # one word rule for training data and the deployed model

SCHEMES = ("IOB2", "IOB1", "BIOES", "plain")


@dataclass
class Sentence:
    tokens: list[str]
    tags: list[str]
    line: int
    """Where it starts in the file (1-based line for CoNLL, row for JSON Lines)."""
    text: str | None = None
    offsets: list[tuple[int, int]] | None = None
    """Each token's [start, end) in ``text``."""
    problems: list[str] = field(default_factory=list)
    """Quarantine reasons found while reading (a count mismatch, a span cutting a word ...)."""


# --- readers -----------------------------------------------------------------------------------------
def read_conll(raw: str, tag_column: int = -1, where: str = "file") -> list[Sentence]:
    """Sentences of a CoNLL-style text. ``tag_column``: which whitespace-separated field holds the tag
    (default: the last); the token is the first."""
    raw = raw.lstrip("\ufeff").replace("\r\n", "\n").replace("\r", "\n")
    sentences: list[Sentence] = []
    tokens: list[str] = []
    tags: list[str] = []
    start = 0
    for lineno, line in enumerate(raw.split("\n"), start=1):
        fields = line.split("\t") if "\t" in line else line.split()
        fields = [f.strip() for f in fields if f.strip()]
        if not fields or fields[0] == "-DOCSTART-":
            if tokens:
                sentences.append(Sentence(tokens, tags, start))
            tokens, tags = [], []
            continue
        if len(fields) < 2:
            raise DataLoadError(f"{where}:{lineno}: one field ({fields[0][:60]!r}) where a token and its tag are expected; "
                                "a CoNLL line is 'TOKEN<tab or space>TAG', sentences separated by a blank line")
        try:
            tag = fields[tag_column]
        except IndexError:
            raise DataLoadError(f"{where}:{lineno}: no field {tag_column} for the tag (the line has {len(fields)}); "
                                "set data.tag_column") from None
        if not tokens:
            start = lineno
        tokens.append(fields[0])
        tags.append(tag)
    if tokens:
        sentences.append(Sentence(tokens, tags, start))
    return sentences


def read_token_rows(rows: Iterable[dict[str, Any]]) -> list[Sentence]:
    """JSON Lines rows with ``tokens`` and ``tags`` lists."""
    out = []
    for i, row in enumerate(rows, start=1):
        tokens, tags = row.get("tokens"), row.get("tags")
        if not isinstance(tokens, list) or not isinstance(tags, list):
            raise DataLoadError(f"row {i}: expected lists 'tokens' and 'tags'; got {sorted(row)[:10]}")
        s = Sentence([str(t) for t in tokens], [str(t) for t in tags], i)
        if len(tokens) != len(tags):
            s.problems.append("tag_count_mismatch")
        out.append(s)
    return out


def tokenize(text: str) -> tuple[list[str], list[tuple[int, int]]]:
    matches = list(WORD.finditer(text))
    return [m.group() for m in matches], [(m.start(), m.end()) for m in matches]


def read_span_rows(rows: Iterable[dict[str, Any]]) -> list[Sentence]:
    """JSON Lines rows with ``text`` and ``entities`` ``[{"start", "end", "label"}]`` (character
    offsets, end exclusive). A span out of bounds, overlapping another or cutting through a word is a
    problem of that row (``span_out_of_bounds``, ``span_overlap``, ``span_cuts_word``)."""
    out = []
    for i, row in enumerate(rows, start=1):
        text, entities = row.get("text"), row.get("entities", [])
        if not isinstance(text, str) or not isinstance(entities, list):
            raise DataLoadError(f"row {i}: expected 'text' (a string) and 'entities' (a list of {{start, end, label}})")
        tokens, offsets = tokenize(text)
        tags = ["O"] * len(tokens)
        s = Sentence(tokens, tags, i, text, offsets)
        taken: list[tuple[int, int]] = []
        for e in sorted((e for e in entities if isinstance(e, dict)), key=lambda e: (e.get("start", 0), e.get("end", 0))):
            start, end, label = e.get("start"), e.get("end"), e.get("label")
            if not (isinstance(start, int) and isinstance(end, int) and isinstance(label, str) and 0 <= start < end <= len(text)):
                s.problems.append("span_out_of_bounds")
                continue
            if any(start < b and a < end for a, b in taken):
                s.problems.append("span_overlap")
                continue
            inside = [k for k, (a, b) in enumerate(offsets) if a < end and start < b]
            if not inside or offsets[inside[0]][0] != start or offsets[inside[-1]][1] != end:
                s.problems.append("span_cuts_word")
                continue
            taken.append((start, end))
            tags[inside[0]] = f"B-{label}"
            for k in inside[1:]:
                tags[k] = f"I-{label}"
        if len(entities) != sum(isinstance(e, dict) for e in entities):
            s.problems.append("span_out_of_bounds")
        out.append(s)
    return out


def read_jsonl_sentences(raw: str, where: str = "file") -> list[Sentence]:
    """JSON Lines of either shape, told apart by the first row's keys."""
    rows = json_lines(raw, where)
    if rows and "text" in rows[0] and "entities" in rows[0]:
        return read_span_rows(rows)
    return read_token_rows(rows)


# --- tag schemes --------------------------------------------------------------------------------------
def _split(tag: str) -> tuple[str, str]:
    """(prefix, type): ``B-PER`` → ("B", "PER"); ``O`` → ("O", "")."""
    if tag == "O":
        return "O", ""
    prefix, _, kind = tag.partition("-")
    return (prefix, kind) if kind else ("?", tag)


def detect_scheme(sentences: list[Sentence]) -> str:
    """IOB2, IOB1 or BIOES from the tags. A file mixing BIOES (E-/S- tags) with entities that end
    without E- is refused, naming a line of each."""
    bioes_line = iob_line = None
    starts_with_i = entity_starts = 0
    for s in sentences:
        prev = ("O", "")
        for k, tag in enumerate(s.tags):
            prefix, kind = _split(tag)
            if prefix in ("E", "S"):
                bioes_line = bioes_line or s.line
            begins = prefix in ("B", "S") or (prefix == "I" and (prev[0] == "O" or prev[1] != kind or prev[0] in ("E", "S")))
            if begins:
                entity_starts += 1
                starts_with_i += prefix == "I"
            nxt = _split(s.tags[k + 1]) if k + 1 < len(s.tags) else ("O", "")
            if prefix == "B" and not (nxt[0] in ("I", "E") and nxt[1] == kind):
                iob_line = iob_line or s.line  # an entity ending on B-: IOB, never BIOES
            prev = (prefix, kind)
    if bioes_line is not None:
        if iob_line is not None:
            raise DataLoadError(f"the tags mix BIOES (E-/S- tags, e.g. the sentence at line {bioes_line}) with IOB (an "
                                f"entity ending without E-, e.g. at line {iob_line}); convert the file to one scheme, "
                                "or set data.tag_scheme")
        return "BIOES"
    return "IOB1" if entity_starts and starts_with_i / entity_starts > 0.5 else "IOB2"


def to_iob2(tags: list[str], scheme: str) -> tuple[list[str], int]:
    """The tags in IOB2 and how many were repaired (an I- starting an entity under IOB2 becomes B-)."""
    if scheme == "plain":
        return [t if t == "O" else f"B-{t}" for t in tags], 0
    out, repaired = [], 0
    prev = ("O", "")
    for tag in tags:
        prefix, kind = _split(tag)
        if scheme == "BIOES":
            prefix = {"S": "B", "E": "I"}.get(prefix, prefix)
        if prefix == "I" and (prev[0] == "O" or prev[1] != kind):
            repaired += scheme == "IOB2"
            prefix = "B"
        out.append("O" if prefix == "O" else f"{prefix}-{kind}")
        prev = (prefix, kind)
    return out, repaired


def entities(tags: list[str]) -> list[tuple[str, int, int]]:
    """(type, first token, last token + 1) of each entity in IOB2 tags, strictly: an entity is B-X and
    the I-X that follow it; an I- without its B- starts nothing."""
    out, current = [], None
    for k, tag in enumerate(list(tags) + ["O"]):
        prefix, kind = _split(tag)
        if current is not None and not (prefix == "I" and kind == current[0]):
            out.append((current[0], current[1], k))
            current = None
        if prefix == "B":
            current = (kind, k)
    return out


def entity_scores(truth: list[list[str]], predicted: list[list[str]]) -> dict[str, Any]:
    """Entity-level precision, recall, F1 (micro over all entities; macro over the types of the truth
    and the predictions), per type, and token accuracy (reported, never primary)."""
    tp: Counter = Counter()
    n_true: Counter = Counter()
    n_pred: Counter = Counter()
    right = total = 0
    for t, p in zip(truth, predicted):
        te, pe = set(entities(t)), set(entities(p))
        for kind, *_ in te:
            n_true[kind] += 1
        for kind, *_ in pe:
            n_pred[kind] += 1
        for kind, *_ in te & pe:
            tp[kind] += 1
        right += sum(a == b for a, b in zip(t, p))
        total += len(t)

    def prf(a: int, b: int, c: int) -> tuple[float, float, float]:
        precision = a / b if b else 0.0
        recall = a / c if c else 0.0
        return precision, recall, (2 * precision * recall / (precision + recall) if precision + recall else 0.0)

    per_type: dict[str, dict[str, float]] = {}
    for kind in sorted(set(n_true) | set(n_pred)):
        precision, recall, f1 = prf(tp[kind], n_pred[kind], n_true[kind])
        per_type[kind] = {"precision": precision, "recall": recall, "f1": f1, "support": n_true[kind]}
    precision, recall, f1 = prf(sum(tp.values()), sum(n_pred.values()), sum(n_true.values()))
    macro = sum(v["f1"] for v in per_type.values()) / len(per_type) if per_type else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "macro_f1": macro, "per_type": per_type,
            "token_accuracy": right / total if total else 0.0}


# --- to the pipeline's rows ---------------------------------------------------------------------------
PREFIXES = {"IOB2": "BI", "IOB1": "BI", "BIOES": "BIES", "plain": ""}


def sentence_rows(sentences: list[Sentence], scheme: str | None, repair: bool) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Each sentence as a pipeline row: ``line``, ``text`` (tokens joined by one space where the file had no
    text) and ``entities``, its character spans ``(start, end, type)``, or the first quarantine reason of
    the sentence. Also what was read: the scheme (and whether it was detected) and how many tags were repaired."""
    detected = scheme is None
    scheme = scheme or detect_scheme([s for s in sentences if not s.problems])
    allowed = set(PREFIXES[scheme])
    rows, repaired_total = [], 0
    for s in sentences:
        text = s.text if s.text is not None else " ".join(s.tokens)
        offsets = s.offsets
        if offsets is None:
            offsets, at = [], 0
            for tok in s.tokens:
                offsets.append((at, at + len(tok)))
                at += len(tok) + 1
        problem = s.problems[0] if s.problems else None
        spans: list[tuple[int, int, str]] = []
        bad = None if scheme == "plain" else next((t for t in s.tags if t != "O" and _split(t)[0] not in allowed), None)
        if problem is None and bad is not None:
            problem = "bad_tag"
        if problem is None:
            tags, repaired = to_iob2(s.tags, scheme)
            if repaired and not repair:
                problem = "invalid_transition"
            repaired_total += repaired
            spans = [(offsets[a][0], offsets[b - 1][1], kind) for kind, a, b in entities(tags)]
        rows.append({"line": s.line, "text": text, "entities": problem if problem else spans, "bad": bad})
    return rows, {"tag_scheme": scheme, "tag_scheme_detected": detected, "repaired_tags": repaired_total,
                  "sentences": len(sentences)}


def json_lines(raw: str, where: object) -> list[dict]:
    """The objects of a JSON Lines text (blank lines skipped, a BOM ignored); a line that is not a JSON
    object is a ``DataLoadError`` naming it."""
    rows = []
    for lineno, line in enumerate(io.StringIO(raw.lstrip("\ufeff")), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataLoadError(f"{where}:{lineno}: not a JSON object per line ({e.msg}); fix or remove that line") from None
        if not isinstance(obj, dict):
            raise DataLoadError(f"{where}:{lineno}: expected a JSON object, got {type(obj).__name__}")
        rows.append(obj)
    return rows
