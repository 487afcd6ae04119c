"""Compression on the 2-core CPU: the registered CPU default against the teacher's dynamic INT8, on the
default preset's data.

    python benchmarks/compression.py [--workdir DIR] [--out benchmarks/results/compression-cpu.json] [--set KEY=VALUE ...]

Runs `forgeline run` (default preset, stages cached in DIR), reads the run's compression table
(`compression/variants.json`: accuracy and macro-F1 of every variant on the same test split) and
times the teacher's dynamic INT8 and the variant chosen for the CPU side by side in this process,
interleaved rounds, batch 32 × 64 tokens of real corpus text. No GPU variant here: the issue's GPU
comparison (b256 s128 against the fp16 CUDA-graph path) needs a lent GPU machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--workdir", default=os.environ.get("FORGELINE_WORKDIR", ".forgeline-bench"))
    p.add_argument("--out", default=None)
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--set", dest="overrides", action="append", default=[])
    args = p.parse_args()
    workdir = Path(args.workdir).resolve()
    env = dict(os.environ, FORGELINE_WORKDIR=str(workdir))
    env.pop("MLFLOW_TRACKING_URI", None)
    cmd = [sys.executable, "-m", "forgeline", "run", *sum((["--set", o] for o in args.overrides), [])]
    start = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)
    run_seconds = time.perf_counter() - start

    from mlflow.tracking import MlflowClient

    from forgeline.config.loader import load_config
    from forgeline.data.load import read_table, dataset_path
    from forgeline.export.compress import measure_latency
    from forgeline.training.classifier import load_tokenizer

    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    client = MlflowClient(uri, uri)
    exp = client.get_experiment_by_name("forgeline")
    run = client.search_runs([exp.experiment_id], "attributes.status = 'FINISHED'", order_by=["attributes.start_time DESC"],
                             max_results=1)[0]
    table = json.loads(Path(client.download_artifacts(run.info.run_id, "compression/variants.json", str(workdir))).read_text())
    variants = {v["name"]: v for v in table["variants"]}
    cpu = next(s for s in table["selections"] if s["device"] == "cpu")
    best, int8, teacher = variants[cpu["variant"]], variants["int8"], variants["fp32"]

    cfg = load_config("default", args.overrides)
    texts = read_table(dataset_path(cfg.data), cfg.data)[cfg.data.text_column].dropna().astype(str).head(2000).tolist()
    ids = load_tokenizer(cfg.model)(texts, truncation=True, max_length=cfg.model.max_length)["input_ids"]
    lat = measure_latency({"int8": Path(int8["path"]), "best": Path(best["path"])}, "cpu", ids, cfg.model.max_length,
                          args.rounds)
    result = {
        "what": "registered CPU default vs the teacher's dynamic INT8, default preset, batch 32 x 64 tokens",
        "date": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()} {os.cpu_count()} cores, CPU only",
        "command": "python benchmarks/compression.py --out benchmarks/results/compression-cpu.json",
        "mlflow_run_id": run.info.run_id, "pipeline_seconds": round(run_seconds, 1), "rounds": args.rounds,
        "int8_dynamic_ms_b32s64": lat["int8"]["p50_b32_ms"], "best_ms_b32s64": lat["best"]["p50_b32_ms"],
        "int8_dynamic_ms_b1s64": lat["int8"]["p50_b1_ms"], "best_ms_b1s64": lat["best"]["p50_b1_ms"],
        "speedup_vs_int8": lat["int8"]["p50_b32_ms"] / lat["best"]["p50_b32_ms"],
        "teacher_macro_f1": teacher["metrics"]["macro_f1"], "best_macro_f1": best["metrics"]["macro_f1"],
        "macro_f1_drop": teacher["metrics"]["macro_f1"] - best["metrics"]["macro_f1"],
        "teacher_accuracy": teacher["metrics"]["accuracy"], "best_accuracy": best["metrics"]["accuracy"],
        "best_variant": best["name"], "best_size_mb": best["size_bytes"] / 1e6,
        "int8_size_mb": int8["size_bytes"] / 1e6, "teacher_size_mb": teacher["size_bytes"] / 1e6,
        "selection_reason": cpu["reason"], "student": table["student"],
        "table": [{"name": v["name"], "size_mb": round(v["size_bytes"] / 1e6, 2), "accuracy": v["metrics"]["accuracy"],
                   "macro_f1": v["metrics"]["macro_f1"], "bundled": v["bundled"], "note": v["note"],
                   "latency_in_run": v["latency"]} for v in table["variants"]],
    }
    result["targets"] = {"speedup_vs_int8>=2.0": result["speedup_vs_int8"] >= 2.0,
                         "macro_f1_drop<=0.01": result["macro_f1_drop"] <= 0.01,
                         "best_size_mb<=12": result["best_size_mb"] <= 12}
    print(json.dumps({k: v for k, v in result.items() if k != "table"}, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    np.set_printoptions(precision=4)
    main()
