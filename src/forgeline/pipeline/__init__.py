"""Orchestration: the stage runner (cache, MLflow logging, retries, Prefect tasks), the flows, deployment."""
