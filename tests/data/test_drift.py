import numpy as np
import pandas as pd

from forgeline.config.schema import DriftConfig, ModelConfig
from forgeline.data.drift import build_profile, compare
from tests.conftest import sentiment_rows

CFG = DriftConfig(sample_size=64)
MODEL = ModelConfig(num_layers=1)


def profile(df, seed=0):
    return build_profile(df, ["negative", "positive"], CFG, MODEL, seed)


def test_same_distribution_is_not_drift():
    a, b = sentiment_rows(100, seed=1), sentiment_rows(100, seed=2)
    report = compare(*profile(a), *profile(b), CFG)
    assert not report.retrain and report.label_tv < 0.05 and report.embedding_cosine < CFG.embedding_cosine_threshold


def test_label_shift_is_drift():
    a = sentiment_rows(100, seed=1)
    b = pd.concat([a[a.label == "positive"], a[a.label == "negative"].head(10)])
    report = compare(*profile(a), *profile(b), CFG)
    assert report.retrain and any("label distribution" in r for r in report.reasons)


def test_length_and_content_shift_is_drift():
    a = sentiment_rows(100, seed=1)
    b = pd.DataFrame({"text": [f"quarterly earnings call transcript number {i} discussing revenue guidance, margins "
                               f"and the outlook for the next fiscal year in considerable detail" for i in range(200)],
                      "label": ["negative", "positive"] * 100})
    report = compare(*profile(a), *profile(b), CFG)
    assert report.retrain
    assert report.length_ks > CFG.length_ks_threshold
    assert report.embedding_cosine > CFG.embedding_cosine_threshold


def test_embeddings_are_normalized():
    _, emb = profile(sentiment_rows(20))
    assert emb.shape == (40, 384) and np.allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-4)


def test_labels_the_champion_never_saw_are_named():
    a = sentiment_rows(100, seed=1)
    b = pd.concat([sentiment_rows(100, seed=2), pd.DataFrame({"text": [f"meh, it is a car {i}" for i in range(5)],
                                                              "label": ["neutral"] * 5})])
    current = build_profile(b, ["negative", "neutral", "positive"], CFG, MODEL, 0)
    report = compare(*profile(a), *current, CFG)
    # 5 of 205 rows: far below the label-distribution threshold, named all the same
    assert report.label_tv < CFG.label_tv_threshold
    assert report.retrain and report.new_labels == ["neutral"]
    assert "labels new to the model: 'neutral'" in report.reasons[0]
    assert compare(*profile(a), *profile(sentiment_rows(100, seed=2)), CFG).new_labels == []
