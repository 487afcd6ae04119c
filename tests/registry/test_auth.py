"""A read-only registry identity for serving (docker/compose.yaml): a real `mlflow server` with MLflow's
basic-auth app on loopback, the training identity (admin) registering, a READ-only `serving` user that
loads and serves the champion but is refused every write."""

from __future__ import annotations

import os

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import register_version

pytestmark = [pytest.mark.e2e]

ADMIN = ("admin", "admin-password-0123456789")
SERVING = ("serving", "serving-password-0123456789")


def _as(monkeypatch, who: tuple[str, str]) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", who[0])
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", who[1])


def test_serving_with_a_read_only_identity_loads_the_champion_and_can_change_nothing(tmp_path, bundle, monkeypatch):
    """The probe: compose gave serving the training worker's full-rights tracking URI, so anything that could
    reach serving's identity could move aliases or replace versions."""
    from mlflow.server import get_app_client

    from forgeline.config.schema import ServeConfig
    from forgeline.serving.watcher import RegistrySource
    from tests.pipeline.test_deploy import BIN, free_port, start, stop
    from tests.serving.conftest import ROOT

    ini = tmp_path / "auth.ini"  # as docker/mlflow-auth.ini, with the auth store in this test's folder
    ini.write_text((ROOT / "docker" / "mlflow-auth.ini").read_text()
                   .replace("sqlite:////auth/basic_auth.db", f"sqlite:///{tmp_path / 'auth.db'}"))
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    env = dict(os.environ, MLFLOW_AUTH_CONFIG_PATH=str(ini), MLFLOW_AUTH_ADMIN_PASSWORD=ADMIN[1],
               MLFLOW_FLASK_SERVER_SECRET_KEY="test-secret-key-0123456789")
    server = start([str(BIN / "mlflow"), "server", "--app-name", "basic-auth", "--backend-store-uri",
                    f"sqlite:///{tmp_path / 'server.db'}", "--artifacts-destination", str(tmp_path / "artifacts"),
                    "--host", "127.0.0.1", "--port", str(port), "--workers", "1"], tmp_path / "mlflow.log", env,
                   f"{uri}/health")
    try:
        _as(monkeypatch, ADMIN)  # the training worker: registers, and creates the serving user (compose: mlflow-users)
        mlflow.set_tracking_uri(uri)
        mlflow.set_registry_uri(uri)
        admin = MlflowClient(uri, uri)
        reg, run_id = register_version(admin, bundle, bundle[1], 0.8)
        get_app_client("basic-auth", tracking_uri=uri).create_user(*SERVING)

        _as(monkeypatch, SERVING)
        source = RegistrySource(ServeConfig(model="m@champion", tracking_uri=uri))
        version, _ = source.current_version()
        model = source.load(version, None)  # downloaded, digest-checked, loaded
        assert version == reg.version and model.impl.predict_proba(["the ride is wonderful"]).shape == (1, 2)
        reader = MlflowClient(uri, uri)
        experiment = admin.get_run(run_id).info.experiment_id
        for write in (lambda: reader.set_registered_model_alias("m", "champion", reg.version),
                      lambda: reader.set_model_version_tag("m", reg.version, "forgeline.bundle_sha256", "0" * 64),
                      lambda: reader.delete_model_version("m", reg.version),
                      lambda: reader.create_run(experiment)):
            with pytest.raises(mlflow.exceptions.MlflowException, match="403"):
                write()
        _as(monkeypatch, ADMIN)
        assert admin.get_model_version_by_alias("m", "champion").version == reg.version
    finally:
        stop(server)
