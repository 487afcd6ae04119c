#!/usr/bin/env bash
# GPU serving check, run by hand on a CUDA machine after a `flows.cli run` into /tmp/fl (not run by CI).
# Starts `forgeline serve` on loopback (CUDA EP, fp16 variant, IOBinding), runs bounded load, stops it.
set -u
OUT=${OUT:-/tmp}
python3 -m flows.cli serve -m forgeline-sentiment@champion --tracking-uri sqlite:////tmp/fl/mlflow.db --port 8765 \
  > "$OUT/gpu_serve.log" 2>&1 &
pid=$!
for _ in $(seq 1 120); do curl -sf 127.0.0.1:8765/readyz >/dev/null && break; sleep 1; done
curl -s 127.0.0.1:8765/v1/model; echo
for spec in "1 1000 1" "8 4000 1" "32 6000 1" "8 1000 16"; do
  set -- $spec
  python3 -m flows.cli loadtest --url http://127.0.0.1:8765 --concurrency "$1" --requests "$2" \
    --texts-per-request "$3" --json "$OUT/gpu_load_c$1_t$3.json" >/dev/null
  python3 -c "import json;d=json.load(open('$OUT/gpu_load_c$1_t$3.json'));print({k:d[k] for k in ['concurrency','requests','texts_per_request','requests_per_s','texts_per_s','p50_ms','p99_ms','errors']})"
done
curl -s 127.0.0.1:8765/metrics | grep -E "^forgeline_batch_texts_(sum|count)"
kill -TERM $pid; wait $pid; echo "serve exit code $?"
