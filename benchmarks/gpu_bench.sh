#!/usr/bin/env bash
# Issue-3 GPU benchmark, run by hand on a CUDA machine (not by CI); results go to $OUT.
#   bash benchmarks/gpu_bench.sh train   # 30K-row runs: eager (registers the champion) and compiled with CUDA graphs
#                                   # (RANDOM_BATCHES=1: also one without length grouping)
#   bash benchmarks/gpu_bench.sh bench   # forgeline bench on the champion of the first run
set -u
OUT=${OUT:-/tmp}
W=${W:-/tmp/fl}
URI=sqlite:///$W/mlflow.db
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
BIG=(--set train.device=cuda --set data.sample_rows=30000 --set train.batch_size=256 --set model.max_length=128
     --set train.eval_batch_size=512 --set train.progress_bar=false --set tracking.workdir=$W)
report() {
  python3 - "$URI" "$1" <<'PY'
import json, sys
from mlflow.tracking import MlflowClient
c = MlflowClient(sys.argv[1], sys.argv[1])
mv = max(c.search_model_versions(f"name='{sys.argv[2]}'"), key=lambda v: int(v.version))
m = c.get_run(mv.run_id).data.metrics
keys = ["test_macro_f1", "test_accuracy", "train.best_val_macro_f1", "train.best_epoch", "train.steps", "train.seconds",
        "train.samples_per_second", "train.step_samples_per_second", "train.tokens_per_second",
        "variant.fp32.macro_f1", "variant.int8.macro_f1", "variant.fp16.macro_f1"]
print(json.dumps({"model": sys.argv[2], "version": mv.version} | {k: m.get(k) for k in keys}))
PY
}
case "${1:-}" in
  train)
    python3 -m forgeline.cli run "${BIG[@]}" > "$OUT/run_grouped.log" 2>&1; echo "grouped run exit $?"
    report forgeline-sentiment | tee "$OUT/run_grouped.json"
    NOVARIANTS=(--set compress.prune=false --set compress.quantize_int8=false --set compress.fp16=false)
    python3 -m forgeline.cli run "${BIG[@]}" "${NOVARIANTS[@]}" --set train.compile=true --set registry.model_name=compiled \
      > "$OUT/run_compiled.log" 2>&1
    echo "compiled (CUDA graphs) run exit $?"
    report compiled | tee "$OUT/run_compiled.json"
    if [ -n "${RANDOM_BATCHES:-}" ]; then
      python3 -m forgeline.cli run "${BIG[@]}" "${NOVARIANTS[@]}" --set train.length_grouping=false \
        --set registry.model_name=baseline-random-batches > "$OUT/run_random.log" 2>&1
      echo "random-batches run exit $?"
      report baseline-random-batches | tee "$OUT/run_random.json"
    fi
    ;;
  bench)
    python3 -m forgeline.cli bench -m forgeline-sentiment@champion --tracking-uri "$URI" --json "$OUT/bench.json" 2>&1 \
      | grep -v Warning | tee "$OUT/bench.txt"
    ;;
  *) echo "usage: $0 train|bench" >&2; exit 2 ;;
esac
