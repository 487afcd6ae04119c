"""Deploy the training flow to a Prefect server: a process work pool, a cron schedule, one run at a time.

    prefect server start                                   # terminal 1 (UI + API on :4200)
    export PREFECT_API_URL=http://127.0.0.1:4200/api
    forgeline deploy --cron "0 3 * * *"                    # creates the pool, the GPU limit, the deployment
    prefect worker start --pool forgeline                  # terminal 2: runs scheduled/triggered flow runs

Two trainings never share a GPU: the deployment allows one active run, and the train task holds the
``gpu`` tag, whose concurrency limit is 1 across all deployments.

The worker imports the flow from the installed ``forgeline`` package and runs it in the directory
``forgeline deploy`` was called from, so relative paths in the config (``data.path``,
``tracking.workdir``) mean what they meant there.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

from forgeline.config.loader import load_config
from forgeline.errors import ConfigError
from forgeline.settings import GPU_TAG



@dataclass
class DeployResult:
    deployment_id: str
    name: str
    pool: str
    cron: str | None


async def _ensure_pool_and_limit(pool: str, gpu_slots: int) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    async with get_client() as client:
        try:
            await client.read_work_pool(pool)
        except ObjectNotFound:
            try:
                await client.create_work_pool(WorkPoolCreate(name=pool, type="process"))
            except ObjectAlreadyExists:
                pass
        await client.create_concurrency_limit(tag=GPU_TAG, concurrency_limit=gpu_slots)


def deploy(config: str | None, overrides: list[str], name: str = "scheduled-training", pool: str = "forgeline",
           cron: str | None = "0 3 * * *", timezone: str = "UTC", gpu_slots: int = 1) -> DeployResult:
    """Register (or update) the deployment; validates the config first so a bad preset never gets scheduled."""
    from prefect.settings import PREFECT_API_URL

    load_config(config, overrides)
    if not PREFECT_API_URL.value():
        # without it Prefect would deploy to a temporary server that is gone when this command exits
        raise ConfigError("PREFECT_API_URL is not set: start a server (`prefect server start`) and "
                          "`export PREFECT_API_URL=http://127.0.0.1:4200/api`, then deploy again")
    if cron is not None:
        from prefect.client.schemas.schedules import CronSchedule

        try:
            CronSchedule(cron=cron, timezone=timezone)
        except ValueError as e:
            raise ConfigError(f"--cron {cron!r} is not a valid cron expression: {e}") from None
    from prefect.deployments.runner import EntrypointType

    from forgeline.pipeline.flows import retraining_flow  # drift check first, train only when needed

    asyncio.run(_ensure_pool_and_limit(pool, gpu_slots))
    # to_deployment + apply: flow.deploy() also lists the pool's online workers, a call that prefect
    # 3.8.8's client and server disagree on (422); apply() only creates/updates the deployment.
    deployment = retraining_flow.to_deployment(
        name=name, cron=cron, parameters={"config": config, "overrides": list(overrides)},
        concurrency_limit=1, tags=["forgeline"], description="forgeline scheduled retraining",
        entrypoint_type=EntrypointType.MODULE_PATH, job_variables={"working_dir": str(Path.cwd())},
    )
    deployment_id = deployment.apply(work_pool_name=pool)  # sync here: no running event loop
    return DeployResult(deployment_id=str(deployment_id), name=f"forgeline-retraining/{name}", pool=pool, cron=cron)
