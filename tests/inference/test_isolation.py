"""A registered model ships forgeline/inference and nothing else, and runs where torch cannot be imported."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import mlflow
from mlflow.tracking import MlflowClient

from tests.conftest import register_version

SRC = Path(__file__).resolve().parents[2] / "src"

# Runs in a fresh interpreter: torch, transformers and prefect cannot be imported, and the installed
# forgeline (the src/ folder an editable install puts on sys.path) is gone, so the model's own code
# folder is the only place `forgeline` can come from.
LOAD_BLOCKED = r"""
import importlib.abc, json, os, sys

BLOCKED = ("torch", "transformers", "prefect")

class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{name} is blocked in this test")
        return None

sys.meta_path.insert(0, Block())
src = os.path.realpath(sys.argv[2])
sys.path = [p for p in sys.path if os.path.realpath(p or ".") != src]
"""


def test_the_registered_model_ships_only_the_inference_package_and_predicts_without_torch(tmp_path, bundle):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri, uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    reg, _ = register_version(client, bundle, bundle[1], 0.9)
    assert reg.aliases == ["champion"]

    model_dir = Path(mlflow.artifacts.download_artifacts(f"models:/m/{reg.version}", dst_path=str(tmp_path / "dl")))
    shipped = sorted(str(p.relative_to(model_dir / "code")) for p in (model_dir / "code").rglob("*.py"))
    assert shipped and all(p == "forgeline/__init__.py" or p.startswith("forgeline/inference/") for p in shipped), shipped
    assert "forgeline/inference/pyfunc.py" in shipped

    script = LOAD_BLOCKED + r"""
import mlflow.pyfunc
import pandas as pd
mlflow.set_tracking_uri(sys.argv[1])
model = mlflow.pyfunc.load_model("models:/m@champion", dst_path=sys.argv[3])
out = model.predict(pd.DataFrame({"text": ["the ride is wonderful and amazing", "this car is awful and horrible"]}))
mods = {n: getattr(m, "__file__", None) for n, m in sys.modules.items() if n == "forgeline" or n.startswith("forgeline.")}
print(json.dumps({"labels": out["label"].tolist(), "modules": mods,
                  "torch": "torch" in sys.modules, "transformers": "transformers" in sys.modules}))
"""
    dst = tmp_path / "load"
    dst.mkdir()
    proc = subprocess.run([sys.executable, "-c", script, uri, str(SRC), str(dst)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["labels"] == ["positive", "negative"]
    assert not result["torch"] and not result["transformers"]
    modules = result["modules"]
    assert "forgeline.inference.pyfunc" in modules
    assert all(name == "forgeline" or name.startswith("forgeline.inference") for name in modules), modules
    assert all(Path(f).resolve().is_relative_to(dst.resolve()) for f in modules.values() if f), modules
