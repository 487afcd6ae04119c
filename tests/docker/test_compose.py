"""docker/: the compose stack validates and wires services through environment URLs."""

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

DOCKER = Path(__file__).resolve().parents[2] / "docker"


def compose_command() -> list[str] | None:
    if shutil.which("docker") and subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    return None


SECRETS = ("POSTGRES_PASSWORD", "S3_ACCESS_KEY", "S3_SECRET_KEY", "FORGELINE_SERVE_TOKEN", "MLFLOW_ADMIN_PASSWORD",
           "MLFLOW_SERVING_PASSWORD", "MLFLOW_FLASK_SECRET_KEY")
STRONG = {name: f"{name.lower()}-0123456789abcdef" for name in SECRETS}


def _without_secrets() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in SECRETS}


def test_compose_config_validates_with_secrets_and_refuses_without():
    cmd = compose_command()
    if cmd is None:
        pytest.skip("neither `docker compose` nor `docker-compose` is installed")
    args = [*cmd, "-f", str(DOCKER / "compose.yaml"), "config", "-q"]
    out = subprocess.run(args, capture_output=True, text=True, cwd=DOCKER, env=_without_secrets() | STRONG)
    assert out.returncode == 0, out.stderr
    missing = subprocess.run(args, capture_output=True, text=True, cwd=DOCKER, env=_without_secrets())
    assert missing.returncode != 0 and "docker/.env" in missing.stderr


@pytest.mark.parametrize("env, needle", [
    ({}, "POSTGRES_PASSWORD is unset or a published default"),
    (STRONG | {"S3_SECRET_KEY": "forgeline-secret"}, "S3_SECRET_KEY is unset or a published default"),
    (STRONG | {"FORGELINE_SERVE_TOKEN": "short-token"}, "FORGELINE_SERVE_TOKEN is 11 characters"),
])
def test_the_secrets_check_refuses_defaults_and_short_secrets(env, needle):
    out = subprocess.run(["sh", str(DOCKER / "check-secrets.sh")], capture_output=True, text=True,
                         env=_without_secrets() | env)
    assert out.returncode == 1 and needle in out.stderr


def test_the_secrets_check_passes_strong_secrets_and_the_example_is_refused():
    assert subprocess.run(["sh", str(DOCKER / "check-secrets.sh")], env=_without_secrets() | STRONG,
                          capture_output=True).returncode == 0
    example = dict(line.split("=", 1) for line in (DOCKER / "env.example").read_text().splitlines()
                   if line and not line.startswith("#"))
    assert set(example) == set(SECRETS)
    assert subprocess.run(["sh", str(DOCKER / "check-secrets.sh")], env=_without_secrets() | example,
                          capture_output=True).returncode == 1


def test_internal_services_publish_nothing_and_nothing_runs_as_root():
    services = yaml.safe_load((DOCKER / "compose.yaml").read_text())["services"]
    published = {name: s.get("ports", []) for name, s in services.items() if s.get("ports")}
    assert published.pop("serving") == ["8080:8080"]
    assert all(p.startswith("127.0.0.1:") for ports in published.values() for p in ports), published
    assert set(published) == {"prefect-server", "mlflow"}  # UIs on the host's loopback only
    for name, s in services.items():
        for key, value in (s.get("environment") or {}).items():
            if key in SECRETS or "PASSWORD" in key or "SECRET" in key:
                assert "${" in str(value) and "forgeline" not in str(value).split("${")[1].split("}")[0].split(":")[-1], \
                    (name, key, value)
    root_ok = {"postgres", "volume-owner"}  # postgres's entrypoint drops to its user; volume-owner only chowns
    for name, s in services.items():
        if "build" in s:
            text = (DOCKER.parent / s["build"]["dockerfile"]).read_text()
            assert "\nUSER " in text and "USER root" not in text, name
        elif name not in root_ok:
            assert str(s.get("user", "0")).split(":")[0] not in ("0", "root"), name
    for path in ("worker-gpu.Dockerfile", "serve-cpu.Dockerfile", "serve-gpu.Dockerfile", "mlflow.Dockerfile"):
        assert "\nUSER " in (DOCKER / path).read_text(), path
    assert services["serving"]["environment"]["FORGELINE_SERVE_TOKEN"].startswith("${FORGELINE_SERVE_TOKEN:?")


def test_the_multi_gpu_job_template_requests_the_gpus_it_is_given():
    template = json.loads((DOCKER / "k8s-multigpu-job-template.json").read_text())
    pod = template["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "{{ gpus }}"
    assert {"name": "dshm", "mountPath": "/dev/shm"} in container["volumeMounts"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    variables = template["variables"]["properties"]
    assert variables["gpus"]["type"] == "integer" and "train.devices" in variables["gpus"]["description"]
    placeholders = set(re.findall(r"{{ (\w+) }}", json.dumps(template["job_configuration"])))
    assert placeholders <= set(variables), placeholders - set(variables)


def test_stack_services_and_urls():
    spec = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    services = spec["services"]
    assert {"postgres", "minio", "prefect-server", "mlflow", "worker", "serving"} <= set(services)
    assert services["prefect-server"]["environment"]["PREFECT_API_DATABASE_CONNECTION_URL"].startswith("postgresql")
    assert services["mlflow"]["environment"]["MLFLOW_BACKEND_STORE_URI"].startswith("postgresql")
    assert services["mlflow"]["environment"]["MLFLOW_ARTIFACTS_DESTINATION"].startswith("s3://")
    for name in ("worker", "serving"):
        env = services[name]["environment"]
        assert env["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
        assert services[name]["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
    assert services["worker"]["environment"]["PREFECT_API_URL"] == "http://prefect-server:4200/api"
    for name in ("mlflow", "worker", "serving"):
        assert (DOCKER.parent / services[name]["build"]["dockerfile"]).is_file()


def test_serving_reads_the_registry_as_a_read_only_user_and_never_holds_the_training_identity():
    """tests/registry/test_auth.py shows what the READ-only user may do against a real server."""
    services = yaml.safe_load((DOCKER / "compose.yaml").read_text())["services"]
    serving, worker = services["serving"]["environment"], services["worker"]["environment"]
    assert serving["MLFLOW_TRACKING_USERNAME"] == "serving" and worker["MLFLOW_TRACKING_USERNAME"] == "admin"
    assert serving["MLFLOW_TRACKING_PASSWORD"].startswith("${MLFLOW_SERVING_PASSWORD:?")
    assert worker["MLFLOW_TRACKING_PASSWORD"].startswith("${MLFLOW_ADMIN_PASSWORD:?")
    assert "MLFLOW_ADMIN_PASSWORD" not in json.dumps(services["serving"])
    assert services["serving"]["depends_on"]["mlflow-users"]["condition"] == "service_completed_successfully"
    assert "--app-name basic-auth" in (DOCKER / "mlflow.Dockerfile").read_text()
    mlflow_env = services["mlflow"]["environment"]  # what the basic-auth app needs to start
    assert mlflow_env["MLFLOW_AUTH_ADMIN_PASSWORD"].startswith("${MLFLOW_ADMIN_PASSWORD:?")
    assert mlflow_env["MLFLOW_FLASK_SERVER_SECRET_KEY"].startswith("${MLFLOW_FLASK_SECRET_KEY:?")
    ini = (DOCKER / "mlflow-auth.ini").read_text()
    assert "default_permission = READ" in ini and "/auth/" in ini
    assert any(v.startswith("mlflowauth:/auth") for v in services["mlflow"]["volumes"])
