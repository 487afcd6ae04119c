"""Explicit MLflow logging against one run id (no reliance on the fluent 'active run' state).

Tasks may run in Prefect worker threads, so everything goes through MlflowClient with the run id.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient

from forgeline.config.schema import TrackingConfig
from forgeline.settings import store_lock


def open_client(uri: str) -> MlflowClient:
    """A client on ``uri`` whose store exists: a new SQLite store creates and migrates its tables while
    ``store_lock`` is held (MLflow does it when the client first opens the store), so runs started
    together on a new workdir do not run the migration twice."""
    with store_lock(uri):
        client = MlflowClient(tracking_uri=uri, registry_uri=uri)
        client.search_experiments(max_results=1)
        client.search_registered_models(max_results=1)
    return client


def check_not_copied(cfg: TrackingConfig, tracking_uri: str) -> None:
    """Refuse a workdir whose embedded store names artifact folders outside it: after ``cp -a wdA wdB``,
    runs in wdB wrote into wdA and ``forgeline gc`` in wdB deleted wdA's files."""
    from forgeline.errors import ConfigError
    from forgeline.pipeline.doctor import foreign_artifact_root
    from forgeline.settings import sqlite_file

    db = sqlite_file(tracking_uri)
    if db is None:
        return
    foreign = foreign_artifact_root(Path(db), Path(cfg.workdir))
    if foreign is not None:
        raise ConfigError(f"the MLflow store {db} keeps its artifacts in {foreign}, outside its workdir {cfg.workdir}: "
                          "the workdir was copied or moved, and runs here would write there. Run `forgeline doctor "
                          "--relocate` with the same --set options to point the store at this workdir, or use the original")


def ensure_experiment(client: MlflowClient, cfg: TrackingConfig, tracking_uri: str) -> str:
    """The experiment's id, created if missing. The first call on a new SQLite store also creates its
    tables; both happen under ``store_lock`` so runs started together do not race on them."""
    from mlflow.exceptions import MlflowException

    check_not_copied(cfg, tracking_uri)
    with store_lock(tracking_uri):
        exp = client.get_experiment_by_name(cfg.experiment)
        if exp is not None:
            return exp.experiment_id
        artifact_location = None
        if tracking_uri.startswith("sqlite:"):
            artifact_location = (Path(cfg.workdir).resolve() / "mlartifacts").as_uri()
        try:
            return client.create_experiment(cfg.experiment, artifact_location=artifact_location)
        except MlflowException:  # another process on a server store created it first
            exp = client.get_experiment_by_name(cfg.experiment)
            if exp is None:
                raise
            return exp.experiment_id


@dataclass
class Tracker:
    client: MlflowClient
    run_id: str
    tracking_uri: str

    def params(self, params: dict[str, Any]) -> None:
        items = [Param(k, str(v)[:6000]) for k, v in params.items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[i : i + 100])

    def metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        import time

        ts = int(time.time() * 1000)
        items = [Metric(k, float(v), ts, step or 0) for k, v in metrics.items() if v is not None]
        for i in range(0, len(items), 500):
            self.client.log_batch(self.run_id, metrics=items[i : i + 500])

    def tags(self, tags: dict[str, Any]) -> None:
        for k, v in tags.items():
            self.client.set_tag(self.run_id, k, str(v))

    def artifact(self, path: Path, artifact_path: str | None = None) -> None:
        if path.is_dir():
            self.client.log_artifacts(self.run_id, str(path), artifact_path)
        else:
            self.client.log_artifact(self.run_id, str(path), artifact_path)

    def dataset(self, name: str, digest: str, source: str, columns: list[str], profile: dict[str, Any],
                context: str = "training") -> None:
        """Record a dataset as a run input: the MLflow UI lists it under the run's datasets."""
        from mlflow.entities import Dataset, DatasetInput, InputTag

        ds = Dataset(name=name, digest=digest[:16], source_type="local",
                     source=json.dumps({"uri": Path(source).resolve().as_uri()}),
                     schema=json.dumps({"mlflow_colspec": [{"type": "string", "name": c} for c in columns]}),
                     profile=json.dumps(profile))
        self.client.log_inputs(self.run_id, [DatasetInput(ds, [InputTag("mlflow.data.context", context)])])

    def json(self, data: Any, name: str) -> None:
        self.client.log_dict(self.run_id, data, name)

    def text(self, text: str, name: str) -> None:
        self.client.log_text(self.run_id, text, name)

    def temp_json(self, data: Any, name: str) -> None:
        with tempfile.TemporaryDirectory() as d:
            p = Path(d) / name
            p.write_text(json.dumps(data, indent=2))
            self.artifact(p)
