"""GPU smoke check, run by hand on a CUDA machine after `python -m forgeline.cli run` (not collected by pytest).

Loads the champion through the MLflow registry and reports which ONNX Runtime provider and variant
serve it, its predictions and its latency, and the training run's device and throughput."""

from __future__ import annotations

import json
import statistics
import sys
import time

import mlflow
import pandas as pd
from mlflow.tracking import MlflowClient


def main(uri: str, name: str) -> dict:
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    client = MlflowClient(uri, uri)
    mv = client.get_model_version_by_alias(name, "champion")
    run = client.get_run(mv.run_id)
    model = mlflow.pyfunc.load_model(f"models:/{name}@champion")
    inner = model.unwrap_python_model()
    texts = ["I'd never trust a self-driving car to take my kid to school.",
             "Can't wait to ride in an autonomous car, the future is here!",
             "Google is testing driverless cars in California."]
    out = model.predict(pd.DataFrame({"text": texts}))
    batch = pd.DataFrame({"text": (texts * 22)[:64]})
    lat = {}
    for label, frame in (("b1", pd.DataFrame({"text": texts[:1]})), ("b64", batch)):
        for _ in range(10):
            model.predict(frame)
        times = []
        for _ in range(50):
            t = time.perf_counter()
            model.predict(frame)
            times.append((time.perf_counter() - t) * 1000)
        lat[label] = {"p50_ms": statistics.median(times), "p99_ms": sorted(times)[int(0.99 * len(times)) - 1]}
    result = {
        "version": mv.version,
        "onnx_device": inner.device,
        "providers": inner.session.get_providers(),
        "variant": inner.variant,
        "predictions": out[["label", "confidence"]].to_dict("records"),
        "pyfunc_latency": lat,
        "train_device": run.data.tags.get("train.device"),
        "train_samples_per_second": run.data.metrics.get("train.samples_per_second"),
        "test_macro_f1": run.data.metrics.get("test_macro_f1"),
        "variant_int8_accuracy_delta": run.data.metrics.get("variant.int8.accuracy_delta"),
        "gate": mv.tags.get("gate.reason"),
    }
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
