"""``engine: spark``: the same ``score_file`` as the local engine, one input file per Spark task, run with
``mapInPandas`` (a pandas function over a DataFrame of file descriptors).

The verified model folder is shipped with ``SparkContext.addFile`` and loaded once per Python worker
(kept in ``_MODELS``; Spark reuses its Python workers across tasks), not once per batch. Each task
writes its parts and their manifest records itself, under the same names as the local engine, so a
task Spark retries (or a whole job rerun) rewrites a part under its name and the output holds each row
once. Input and output must therefore be paths every executor reaches (a shared filesystem, ``s3://``).
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

from forgeline.config.schema import ScoreConfig
from forgeline.scoring.inputs import InputFile
from forgeline.scoring.job import FileResult, Job, done_starts

_MODELS: dict[str, Any] = {}
"""Per Python worker: model folder → loaded implementation."""


def spark_session(master: str | None):
    from pyspark.sql import SparkSession

    master = master or os.environ.get("SPARK_MASTER") or "local[2]"
    if master.startswith("local"):  # workers on this machine: this interpreter (the one with forgeline)
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    return (SparkSession.builder.master(master).appName("forgeline-score")
            .config("spark.ui.enabled", "false")
            .config("spark.sql.execution.arrow.pyspark.enabled", "true")
            .config("spark.python.worker.reuse", "true")
            .getOrCreate())


def _model(folder: str, device: str, variant: str, batch_size):
    from forgeline.scoring.job import load_bundle

    key = f"{folder}|{device}|{variant}|{batch_size}"
    if key not in _MODELS:
        _MODELS[key] = load_bundle(Path(folder), device, variant, batch_size)
    return _MODELS[key]


def score_on_spark(cfg: ScoreConfig, job: Job, files: list[InputFile], earlier: dict[str, dict[str, Any]],
                   local_model: Path) -> list[FileResult]:
    import pandas as pd
    from pyspark import SparkFiles

    from forgeline.scoring.job import score_file

    spark = spark_session(cfg.spark_master)
    spark.sparkContext.addFile(str(local_model), recursive=True)
    folder_name = local_model.name
    job_json = json.dumps(asdict(job))
    tasks = pd.DataFrame({"index": list(range(len(files))),
                          "file": [json.dumps(asdict(f)) for f in files],
                          "done": [json.dumps(sorted(done_starts(earlier, i))) for i in range(len(files))]})
    device, batch_size = ("cpu" if cfg.device == "auto" else cfg.device), cfg.batch_size

    def run(batches):
        for frame in batches:
            out = []
            the_job = Job(**json.loads(job_json))
            impl = _model(SparkFiles.get(folder_name), device, the_job.variant, batch_size)
            for index, file_json, done in zip(frame["index"], frame["file"], frame["done"]):
                f = InputFile(**json.loads(file_json))
                result = score_file(impl, the_job, int(index), f, set(json.loads(done)))
                out.append({"index": int(index), "result": json.dumps(asdict(result))})
            yield pd.DataFrame(out, columns=["index", "result"])

    df = spark.createDataFrame(tasks).repartition(max(1, len(files)), "index")
    rows = df.mapInPandas(run, schema="index long, result string").collect()
    results = []
    for row in sorted(rows, key=lambda r: r["index"]):
        data = json.loads(row["result"])
        data["samples"] = [tuple(s) for s in data["samples"]]
        results.append(FileResult(**data))
    return results
