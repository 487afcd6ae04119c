"""A task declared here alone and registered with one line: a binary flag whose decision threshold is tuned
on the validation split (one sigmoid logit, F1 of the flagged class). It goes through the whole path:
train, export, register, the pyfunc where torch cannot be imported, `forgeline serve`, `forgeline score`.

This module is also what a registered flag model ships as its task code (``registry.register.stage_model_code``):
its outputs half imports with ``forgeline.inference`` alone; the training half is declared where
``forgeline.tasks`` is importable (not in a process that has only a registered model's code).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, ClassVar

import numpy as np
import pytest

from forgeline.inference.tasks import OutputSpec, sigmoid


@dataclass(frozen=True)
class FlagOutputs(OutputSpec):
    """``labels``: (not flagged, flagged); one logit, flagged when its probability reaches ``threshold``."""

    threshold: float = 0.5

    task: ClassVar[str] = "flag"
    summary: ClassVar[str] = "whether a text is flagged (one probability, a threshold tuned on the validation split)"
    prediction_shape: ClassVar[dict[str, Any]] = {"label": "str", "score": "float"}

    @classmethod
    def read_options(cls, raw: dict[str, Any]) -> dict[str, Any]:
        return {"threshold": float(raw.get("threshold", 0.5))}

    def check(self) -> None:
        if len(self.labels) != 2 or not 0.0 <= self.threshold <= 1.0:
            raise ValueError("a flag spec needs two labels and a threshold in [0, 1]")

    @property
    def width(self) -> int:
        return 1

    @property
    def head_names(self) -> tuple[str, ...]:
        return self.labels[1:]

    def activate(self, logits):
        return sigmoid(np.asarray(logits, dtype=np.float32).reshape(-1, 1))

    def decisions(self, outputs) -> list[Any]:
        return [self.labels[int(p >= self.threshold)] for p in np.asarray(outputs).reshape(-1)]

    def logged(self, outputs):
        return self.decisions(outputs), np.asarray(outputs, dtype=float).reshape(-1).tolist()

    def frame(self, outputs):
        import pandas as pd

        return pd.DataFrame({"label": self.decisions(outputs), "score": np.asarray(outputs, dtype=float).reshape(-1)})

    def frame_types(self):
        import pyarrow as pa

        return [("label", pa.string()), ("score", pa.float64())]

    def answers(self, outputs) -> list[dict[str, Any]]:
        return [{"label": d, "score": float(p)} for d, p in zip(self.decisions(outputs), np.asarray(outputs).reshape(-1))]

    def target_line(self) -> str:
        return f"- flagged: `{self.labels[1]}` when its probability is at least {self.threshold:.2f}; else `{self.labels[0]}`"

    def limits(self, max_length: Any) -> list[str]:
        return ["- Says only whether a text is flagged.", *super().limits(max_length)]


try:
    from forgeline.tasks import Metric, Task, register
except ImportError:  # only a registered model's code (forgeline.inference) is here
    Task = None

if Task is not None:
    from forgeline.tasks.base import as_text

    def f1(y: np.ndarray, flagged: np.ndarray, weights: np.ndarray) -> np.ndarray:
        """F1 of the flagged class per row of ``weights`` (bootstrap row counts)."""
        tp, fp, fn = (weights @ (a & b).astype(float) for a, b in ((y, flagged), (~y, flagged), (y, ~flagged)))
        return np.divide(2 * tp, 2 * tp + fp + fn, out=np.zeros_like(tp), where=2 * tp + fp + fn > 0)

    class Flag(Task):
        type = "flag"
        outputs = FlagOutputs
        metrics_known = {"f1": Metric("f1")}
        default_primary = "f1"

        def parse_target(self, value, delimiter):
            text = as_text(value)
            return None if text is None else text.strip() or None

        def labels_from(self, targets, declared):
            return list(declared) if declared else sorted({str(t) for t in targets})

        def rows_per_class(self, targets, labels):
            return {str(k): int(v) for k, v in targets.value_counts().items()}

        def strata(self, targets, labels, rows_needed, why="the split"):
            return np.asarray(targets)

        def y(self, targets, spec):
            return np.array([t == spec.labels[1] for t in targets], dtype=np.float32)

        def loss(self, logits, y, reduction="mean"):
            import torch

            return torch.nn.functional.binary_cross_entropy_with_logits(logits.float()[:, 0], y.float(), reduction=reduction)

        def distill_loss(self, student_logits, teacher_logits, y, temperature, alpha):
            import torch

            soft = torch.sigmoid(teacher_logits.float()[:, 0] / temperature)
            bce = torch.nn.functional.binary_cross_entropy_with_logits
            return alpha * bce(student_logits.float()[:, 0] / temperature, soft) + (1 - alpha) * self.loss(student_logits, y)

        def logits_of(self, outputs, spec):
            import torch

            p = np.clip(np.asarray(outputs, dtype=np.float64), 1e-7, 1 - 1e-7)
            return torch.from_numpy(np.log(p / (1 - p)))

        def tune(self, spec, y_val, outputs_val):
            """The threshold of the best validation F1 (the first of ties)."""
            grid = np.linspace(0.05, 0.95, 19)
            scores = [self.resampled(y_val, outputs_val, replace(spec, threshold=float(t)), np.ones((1, len(y_val))))[0]
                      for t in grid]
            return replace(spec, threshold=float(grid[int(np.argmax(scores))]))

        def metrics(self, y, outputs, spec):
            flagged = np.asarray(outputs).reshape(-1) >= spec.threshold
            truth = np.asarray(y) > 0.5
            return {"f1": float(f1(truth, flagged, np.ones((1, len(truth))))[0]),
                    "accuracy": float((flagged == truth).mean()) if len(truth) else 0.0}

        def resampled(self, y, outputs, spec, weights):
            return f1(np.asarray(y) > 0.5, np.asarray(outputs).reshape(-1) >= spec.threshold, np.asarray(weights, dtype=float))

        def baseline(self, y, spec):
            rate = float(np.mean(np.asarray(y) > 0.5)) if len(y) else 0.0
            return 2 * rate / (1 + rate), "always flagged"

        def target_profile(self, targets, labels):
            return {"label_distribution": {lab: float((targets == lab).mean()) for lab in labels}}

        def describe_targets(self):
            return "one of two labels per row; the second (sorted) is the flagged one"

    register(Flag)


@pytest.mark.e2e
def test_a_task_declared_in_a_test_module_runs_from_file_to_served_and_scored_model(prefect_api, tiny, tmp_path):
    import httpx
    import pandas as pd
    from mlflow.tracking import MlflowClient

    from forgeline.pipeline.flows import training_flow
    from forgeline.scoring.flow import score, score_config
    from tests.conftest import flow_overrides
    from tests.serving.conftest import ROOT, Server
    from tests.tasks.test_task_flows import PROBE, predict_where_torch_is_blocked, rows

    frame = rows()
    data = tmp_path / "flags.csv"
    pd.DataFrame({"text": frame["text"], "label": np.where(frame["positive"], "yes", "no")}).to_csv(data, index=False)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    first = training_flow(config="tiny", overrides=flow_overrides(tmp_path, data, *tiny, "train.epochs=4",
                                                                  "task.type=flag", "data.labels=null"))
    assert first["promoted"] and first["version"] == "1", first
    assert first["metrics"]["test_f1"] > 0.9, first["metrics"]
    client = MlflowClient(uri, uri)
    assert client.get_model_version("e2e", "1").tags["task"] == "flag"
    card = client.get_model_version("e2e", "1").description
    assert "**Task: flag**" in card and "flagged: `yes` when its probability is at least" in card

    # the registered pyfunc loads where neither torch nor forgeline's training half can be imported
    loaded = predict_where_torch_is_blocked(uri, f"pd.DataFrame({{'text': {PROBE!r}}})", tmp_path)
    assert loaded["columns"] == ["label", "score"]
    assert [r["label"] for r in loaded["rows"]] == ["yes", "no"]

    server = Server(uri, "e2e@champion", log=tmp_path / "serve.log", env={"PYTHONPATH": str(ROOT)})
    try:
        info = httpx.get(f"{server.url}/v1/model", timeout=10).json()
        assert info["task"] == "flag" and info["schema"]["prediction"] == {"label": "str", "score": "float"}
        answer = httpx.post(f"{server.url}/v1/predict", json={"texts": PROBE}, timeout=30)
        assert answer.status_code == 200, answer.text
        preds = answer.json()["predictions"]
    finally:
        assert server.stop() == 0
    assert [p["label"] for p in preds] == ["yes", "no"] and preds[0]["score"] > preds[1]["score"]

    pd.DataFrame({"text": PROBE}).to_json(tmp_path / "probe.jsonl", orient="records", lines=True)
    job = score(score_config({"model": "e2e/1", "input": str(tmp_path / "probe.jsonl"), "output": str(tmp_path / "scored"),
                              "tracking_uri": uri}, [f"tracking.workdir={tmp_path / 'work'}"]))
    assert job.drift["checked"] and "max_rate_change" in job.drift, job.drift
    scored = pd.read_parquet(tmp_path / "scored").sort_values("row")
    assert scored.label.tolist() == ["yes", "no"]
    assert np.allclose(scored.score, [p["score"] for p in preds], atol=1e-5)
    assert job.distribution == {"no": 0.5, "yes": 0.5}
