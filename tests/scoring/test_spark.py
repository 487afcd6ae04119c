"""`--engine spark` on a real Spark session (local[2]): the same parts, rows and answers as the local
engine, the same manifest, and a rerun that skips every finished part."""

from __future__ import annotations

import importlib.util
import shutil

import pandas as pd
import pytest

from forgeline.scoring.flow import score
from tests.scoring.conftest import mixed_inputs
from tests.scoring.test_score import config, read_scores

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(importlib.util.find_spec("pyspark") is None or shutil.which("java") is None,
                                reason="needs pyspark and a Java runtime (.ci/run installs Debian's headless JRE)")]


def test_spark_local2_gives_the_local_engines_predictions_and_manifest(tmp_path, scoring_registry):
    uri, _ = scoring_registry
    mixed_inputs(tmp_path / "in")
    local, spark = tmp_path / "local", tmp_path / "spark"
    score(config(uri, tmp_path / "in", local))
    summary = score(config(uri, tmp_path / "in", spark, "engine=spark", "spark_master=local[2]", "log_sample=1.0"))

    want, got = read_scores(local), read_scores(spark)
    pd.testing.assert_frame_equal(got, want)
    assert sorted(p.name for p in spark.glob("part-*.parquet")) == sorted(p.name for p in local.glob("part-*.parquet"))
    pd.testing.assert_frame_equal(pd.read_parquet(spark / "_rejected").sort_values(["source", "row"]).reset_index(drop=True),
                                  pd.read_parquet(local / "_rejected").sort_values(["source", "row"]).reset_index(drop=True))
    assert summary.scored == len(want) and summary.parts_skipped == 0

    again = score(config(uri, tmp_path / "in", spark, "engine=spark", "spark_master=local[2]"))
    assert again.parts_skipped == again.parts == summary.parts  # every part finished: nothing scored twice
    pd.testing.assert_frame_equal(read_scores(spark), want)
