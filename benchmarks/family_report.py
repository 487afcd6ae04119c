"""`python benchmarks/family_report.py NAME...` (a store at sqlite:////tmp/demo/.forgeline/mlflow.db): for each registered model
name's newest version (a demo preset run with model.family=auto): the family it registered and why, the encoder's and the
baseline's test metric, the gate's paired comparison of the registered version with the baseline."""
import json, sys
from mlflow.tracking import MlflowClient
uri = "sqlite:////tmp/demo/.forgeline/mlflow.db"
c = MlflowClient(uri, uri)
out = []
for name in sys.argv[1:]:
    mvs = sorted(c.search_model_versions(f"name='{name}'"), key=lambda m: int(m.version))
    mv = mvs[-1]
    run = c.get_run(mv.run_id)
    m, t = run.data.metrics, mv.tags
    primary = next(k[len("metric.teacher.test_"):] for k in t if k.startswith("metric.teacher.test_")) if any(k.startswith("metric.teacher.test_") for k in t) else None
    gate = json.loads(open(c.download_artifacts(mv.run_id, "gate.json", "/tmp/demo/dl")).read())
    metric = gate["metric"]
    out.append({"model": f"{name}/{mv.version}", "run": mv.run_id, "task": t.get("task"), "metric": metric,
                "family": t.get("model.family"), "variants": t.get("variants"), "reason": t.get("model.family.reason"),
                "teacher_test": m.get(f"test_{metric}"), "baseline_test": m.get(f"baseline.test_{metric}"),
                "baseline_val": m.get(f"baseline.val_{metric}"), "registered_test": float(t.get(f"metric.test_{metric}", "nan")),
                "gate_vs_baseline": gate.get("classical"), "promoted": gate.get("promote"), "gate_reason": gate.get("reason"),
                "baseline_model": run.data.tags.get("baseline.model"), "baseline_cpu_p50_b32_ms": m.get("baseline.cpu_p50_b32_ms")})
print(json.dumps(out, indent=1))
