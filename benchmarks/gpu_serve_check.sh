#!/usr/bin/env bash
# GPU serving check, run by hand on a CUDA machine after a `forgeline.cli run` into /tmp/fl (not run by CI).
# Starts `forgeline serve` on loopback (CUDA EP, fp16 variant, CUDA graphs), runs bounded load, then
# hot-swaps: registers the champion's model again as a new version and moves the alias under load;
# the server must report the new version with no failed request. Then stops it.
set -u
OUT=${OUT:-/tmp}
python3 -m forgeline.cli serve -m forgeline-sentiment@champion --tracking-uri sqlite:////tmp/fl/mlflow.db --port 8765 \
  --set poll_interval_s=2 > "$OUT/gpu_serve.log" 2>&1 &
pid=$!
for _ in $(seq 1 120); do curl -sf 127.0.0.1:8765/readyz >/dev/null && break; sleep 1; done
curl -s 127.0.0.1:8765/v1/model; echo
for spec in "1 1000 1" "8 4000 1" "32 6000 1" "8 1000 16"; do
  set -- $spec
  python3 -m forgeline.cli loadtest --url http://127.0.0.1:8765 --concurrency "$1" --requests "$2" \
    --texts-per-request "$3" --json "$OUT/gpu_load_c$1_t$3.json" >/dev/null
  python3 -c "import json;d=json.load(open('$OUT/gpu_load_c$1_t$3.json'));print({k:d[k] for k in ['concurrency','requests','texts_per_request','requests_per_s','texts_per_s','p50_ms','p99_ms','errors']})"
done
curl -s 127.0.0.1:8765/metrics | grep -E "^forgeline_batch_texts_(sum|count)"
python3 -m forgeline.cli loadtest --url http://127.0.0.1:8765 --concurrency 8 --requests 20000 --texts-per-request 4 \
  --json "$OUT/gpu_load_swap.json" >/dev/null &
load=$!
sleep 2
python3 - <<'PY'
import mlflow
from mlflow.tracking import MlflowClient
uri = "sqlite:////tmp/fl/mlflow.db"
mlflow.set_tracking_uri(uri)  # the registry resolves the version's logged-model source in this store
mlflow.set_registry_uri(uri)
c = MlflowClient(uri, uri)
mv = c.get_model_version_by_alias("forgeline-sentiment", "champion")
new = c.create_model_version("forgeline-sentiment", mv.source, run_id=mv.run_id, description="gpu hot-swap check")
c.set_registered_model_alias("forgeline-sentiment", "champion", new.version)
print("champion", mv.version, "->", new.version)
PY
for _ in $(seq 1 60); do curl -s 127.0.0.1:8765/v1/model | grep -q "\"version\": *\"\?$(python3 -c "
from mlflow.tracking import MlflowClient; u='sqlite:////tmp/fl/mlflow.db'
print(MlflowClient(u,u).get_model_version_by_alias('forgeline-sentiment','champion').version)")" && break; sleep 1; done
echo "after swap: $(curl -s 127.0.0.1:8765/v1/model)"
wait $load
python3 -c "import json;d=json.load(open('$OUT/gpu_load_swap.json'));print('during swap', {k:d[k] for k in ['requests','requests_per_s','p50_ms','p99_ms','errors']})"
grep -i "swap\|loaded\|version" "$OUT/gpu_serve.log" | tail -5
kill -TERM $pid; wait $pid; echo "serve exit code $?"
