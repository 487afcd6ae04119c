"""`forgeline run --data FILE`: the columns and the task of a user's file, inferred where the file leaves
no doubt, said out loud, and turned into ``--set`` overrides of the ``generic`` preset.

A user's file is read with the generic preset, not the bundled corpus's settings (its labels, latin-1,
long texts quarantined), which refuse most real files: it reads UTF-8, takes the labels from the data and
lets the tokenizer truncate long texts; this module picks the columns and the task.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from forgeline.errors import DataLoadError
from forgeline.inference.tasks import DEFAULT_TASK

TEXT_NAMES = ("text", "sentence", "review", "content", "body", "description", "comment", "message", "tweet", "document")
TARGET_NAMES = ("label", "labels", "target", "class", "category", "sentiment", "tags", "topic", "score", "rating",
                "stars", "grade", "priority", "confidence", "y")
PAIRS = (("text", "text_pair"), ("text_a", "text_b"), ("sentence1", "sentence2"), ("sentence_a", "sentence_b"),
         ("premise", "hypothesis"), ("question", "context"), ("query", "passage"), ("query", "document"),
         ("question", "answer"), ("claim", "evidence"), ("text1", "text2"))
"""(first, second) column names of a text pair as datasets name them (Hugging Face's tokenizer calls the
second ``text_pair``; GLUE's sentence1/sentence2, SQuAD's question/context): a file with both columns is
read as pairs. A user's pair file named this way trained on its first text alone, and half its rows were
then quarantined as duplicates."""
SECOND_NAMES = tuple(dict.fromkeys(second for _, second in PAIRS if second not in ("answer", "document")))
"""Second-text names that mean a pair beside any text column ("answer" and "document" only with their first)."""


@dataclass
class Inferred:
    text_column: str
    label_column: str
    task: str
    why: list[str] = field(default_factory=list)
    pair_column: str | None = None
    own_shape: bool = False
    """The file is in its task's own shape (``Task.recognise_file``): no columns were inferred."""

    def overrides(self, path: str) -> list[str]:
        sets = ["data.source=file", f"data.path={json.dumps(str(path))}", f"data.text_column={json.dumps(self.text_column)}",
                f"data.label_column={json.dumps(self.label_column)}", f"task.type={self.task}"]
        if self.pair_column is not None:
            sets.append(f"data.text_pair_column={json.dumps(self.pair_column)}")
        return sets


def _mean_length(col: pd.Series) -> float:
    strings = col.dropna().map(lambda v: len(v) if isinstance(v, str) else -1)
    return float(strings.mean()) if len(strings) and (strings >= 0).mean() > 0.9 else -1.0


def _named(columns: list[str], names: tuple[str, ...]) -> str | None:
    lower = {str(c).lower(): c for c in columns}
    return next((lower[n] for n in names if n in lower), None)


def task_of(col: pd.Series) -> tuple[str, str]:
    """(task type, why) from a target column's cells: the first task in ``TASKS`` that recognises them
    (lists → multi_label; numbers with many distinct values → regression), else the default task."""
    from forgeline.tasks import TASKS

    cells = col.dropna()
    if not len(cells):
        return DEFAULT_TASK, "empty"
    for task in TASKS.values():
        why = task.recognise(cells)
        if why:
            return task.type, why
    return DEFAULT_TASK, f"holds {int(cells.map(str).nunique())} distinct values"


def file_task(path: Path, cfg) -> tuple[str, str] | None:
    """(task type, why) of a file in a task's own shape (a CoNLL file...), or None for a table."""
    from forgeline.tasks import TASKS

    why = token_file(path, cfg)
    shaped = [t for t in TASKS.values() if t.file_shape == "sentences"]
    return (shaped[0].type, why) if why and shaped else None


def token_file(path: Path, cfg) -> str | None:
    """What makes ``path`` a token-classification file (CoNLL; JSON Lines of tokens + tags or of text +
    entities, told by the first row's keys), or None for a table."""
    from forgeline.data.load import _format, _read_bytes

    fmt = _format(path, cfg)
    if fmt == "conll":
        return "a CoNLL file (a token and its tag per line)"
    if fmt != "jsonl":
        return None
    first = next((line for line in _read_bytes(path).decode(cfg.encoding, errors="replace").splitlines() if line.strip()), "")
    try:
        row = json.loads(first)
    except ValueError:
        return None  # the reader names the line
    if isinstance(row, dict) and {"tokens", "tags"} <= set(row):
        return "JSON Lines of tokens and tags"
    if isinstance(row, dict) and {"text", "entities"} <= set(row):
        return "JSON Lines of texts and their entity spans"
    return None


def pair_of(columns: list, text: str | None) -> tuple[str, str] | None:
    """(first, second) text columns named as a pair (``PAIRS``), the first being ``text`` when it is given."""
    lower = {str(c).lower(): c for c in columns}
    for first, second in PAIRS:
        if first in lower and second in lower and (text is None or lower[first] == text):
            return lower[first], lower[second]
    if text is not None:
        other = next((lower[n] for n in SECOND_NAMES if n in lower and lower[n] != text), None)
        return (text, other) if other is not None else None
    return None


def infer(raw: pd.DataFrame, path: Path, text_column: str | None, label_column: str | None,
          pair_column: str | None = None, pairs: bool = True) -> Inferred:
    """The text and target columns (given ones are checked, missing ones inferred), a second text column
    when the file names one (``pair_column`` given, or found by ``PAIRS``; ``pairs=False``: none) and the
    task type."""
    # identifiers are neither texts nor targets
    columns = [c for c in raw.columns if c != pair_column and str(c).lower() not in ("id", "index")
               and not str(c).lower().endswith("_id")]
    for given, what in ((text_column, "--text-column"), (label_column, "--label-column"), (pair_column, "--text-pair-column")):
        if given is not None and given not in raw.columns:
            raise DataLoadError(f"{path}: {what} {given!r} is not a column; the columns are {list(map(str, raw.columns))[:20]}")
    why: list[str] = []
    text = text_column
    if pair_column is None and pairs and (named := pair_of([c for c in columns if c != label_column], text_column)):
        if all(_mean_length(raw[c]) >= 0 for c in named):  # both hold strings
            text, pair_column = named
            columns = [c for c in columns if c != pair_column]
            why.append(f"text pair columns {text!r} and {pair_column!r}: by their names (--no-pairs for one text)")
    if text is None:
        text = _named(columns, TEXT_NAMES)
        if text is None:
            lengths = {c: _mean_length(raw[c]) for c in columns if c != label_column}
            if not lengths or max(lengths.values()) < 0:
                raise DataLoadError(f"{path}: no column holds text; name it with --text-column")
            text = max(lengths, key=lambda c: lengths[c])
            why.append(f"text column {text!r}: the longest strings (mean {lengths[text]:.0f} characters)")
        else:
            why.append(f"text column {text!r}: by its name")
    label = label_column
    if label is None:
        rest = [c for c in columns if c != text]
        label = _named(rest, TARGET_NAMES)
        if label is not None:
            why.append(f"target column {label!r}: by its name")
        elif len(rest) == 1:
            label = rest[0]
            why.append(f"target column {label!r}: the only other column")
        else:
            raise DataLoadError(f"{path}: cannot tell which of {list(map(str, rest))[:20]} is the target; name it with "
                                "--label-column")
    task, reason = task_of(raw[label])
    from forgeline.tasks import TASKS

    problem = TASKS[task].inferred_problem(raw[label].dropna())
    if problem:
        raise DataLoadError(f"{path}: the target column {label!r} {problem}")
    why.append(f"task {task}: target column {reason}")
    return Inferred(str(text), str(label), task, why, None if pair_column is None else str(pair_column))
