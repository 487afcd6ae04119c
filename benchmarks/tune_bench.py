"""The tuning benchmark: the default config of a preset trained and registered, then `forgeline tune` on the
same preset; the gate scores the tuned model against the default one on the same test rows (paired
bootstrap), and the study's record says how many trials were pruned and how many epochs that saved.

    python benchmarks/tune_bench.py PRESET TRIALS OUT.json [--set KEY=VALUE ...]

The issue's benchmark is the default preset with 12 trials (hours on a 2-core CPU); smaller presets give
the same record in minutes.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mlflow.tracking import MlflowClient


def main() -> None:
    preset, trials, out = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3])
    extra = [a for s in sys.argv[4:] if s != "--set" for a in ("--set", s)]
    work = Path(tempfile.mkdtemp(prefix="forgeline-tune-bench-"))
    common = ["--config", preset, "--set", f"tracking.workdir={work}", "--set", "registry.model_name=tune-bench", *extra]
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "forgeline", "run", *common], check=True, capture_output=True)
    default_s = time.perf_counter() - started
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "forgeline", "tune", "--trials", str(trials), *common], check=True,
                   capture_output=True)
    tune_s = time.perf_counter() - started
    uri = f"sqlite:///{work / 'mlflow.db'}"
    client = MlflowClient(uri, uri)
    v2 = client.get_model_version("tune-bench", "2")
    gate = json.loads(Path(client.download_artifacts(v2.run_id, "gate.json", str(work))).read_text())
    parent_id = client.get_run(v2.run_id).data.tags["mlflow.parentRunId"]
    study = json.loads(Path(client.download_artifacts(parent_id, "study.json", str(work))).read_text())
    epochs_run = {t["number"]: t["last_epoch"] for t in study["all"]}
    planned = {t["number"]: int(t["params"].get("train.epochs", 0) or 0) for t in study["all"]}
    saved = sum(max(0, planned[n] - (epochs_run[n] or 0)) for n, t in enumerate(study["all"]) if t["state"] == "pruned")
    record = {
        "date": time.strftime("%Y-%m-%d"), "machine": "2-core CPU, 24 GiB", "preset": preset, "trials": trials,
        "command": " ".join(["python benchmarks/tune_bench.py", *sys.argv[1:]]),
        "default_run_s": round(default_s, 1), "tune_s": round(tune_s, 1), "states": study["states"],
        "seconds_by_state": study["seconds"], "epochs_saved_by_pruning": saved, "best": study["best"],
        "gate": {k: gate.get(k) for k in ("promote", "reason", "metric", "comparison")},
    }
    out.write_text(json.dumps(record, indent=1))
    print(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
