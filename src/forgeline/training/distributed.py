"""Training on several processes (GPUs, or gloo on CPU) with torch.distributed: ``train.devices`` and
``train.nodes`` above 1.

The training stage (one Prefect task) writes the splits and the config to its scratch folder and
launches ``torchrun`` (``torch.distributed.run``, the launcher PyTorch maintains: rendezvous, worker
restarts on failure, signal forwarding) on this module. Every rank runs the same
``training.loop.train_model``, which wraps the model in DistributedDataParallel and gives each rank
its share of every global batch; rank 0 alone logs to MLflow, evaluates, decides early stopping
(broadcast to the others), saves the best checkpoint and writes ``result.json``. The stage then loads
that checkpoint as it would after one process, so export, compression and registration are unchanged.

Why not accelerate: the loop already owns its precision path (bf16 master weights, fused attention,
CUDA graphs); ``Accelerator.prepare`` would wrap the model and optimizer again for the same DDP call,
and the one-process path must stay exactly as fast as before (issue 16: regress at most 3%). Plain
``torch.distributed`` touches nothing when the world is one process.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

from forgeline.config.schema import PipelineConfig
from forgeline.data.split import Splits
from forgeline.errors import TrainingError

SPEC = "spec.json"
RESULT = "result.json"


def world_size(cfg: PipelineConfig) -> int:
    return cfg.train.devices * cfg.train.nodes


def launch(splits: Splits, labels: list[str], cfg: PipelineConfig, out_dir: Path, tracking_uri: str | None,
           run_id: str | None):
    """Train under torchrun; returns the ``TrainResult`` of rank 0 with the best model loaded."""
    from forgeline.data.frames import write_parquet
    from forgeline.training.classifier import load_checkpoint, load_tokenizer
    from forgeline.training.loop import TrainResult, resolve_device

    device = resolve_device(cfg.train.device)
    if device == "cuda":
        import torch

        if torch.cuda.device_count() < cfg.train.devices:
            raise TrainingError(f"train.devices={cfg.train.devices} but this machine sees {torch.cuda.device_count()} "
                                "GPU(s); lower train.devices or set CUDA_VISIBLE_DEVICES")
    work = out_dir / "distributed"
    work.mkdir(parents=True, exist_ok=True)
    write_parquet(splits.train, work / "train.parquet")  # token spans and label sets survive the trip
    write_parquet(splits.val, work / "val.parquet")
    (work / SPEC).write_text(json.dumps({"config": cfg.model_dump(mode="json"), "labels": labels,
                                         "out_dir": str(out_dir), "tracking_uri": tracking_uri, "run_id": run_id}))
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={cfg.train.devices}", *_rendezvous(cfg),
           "-m", "forgeline.training.distributed", str(work / SPEC)]
    log_path = work / "workers.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                env={**os.environ, "OMP_NUM_THREADS": str(_threads(cfg))})
        try:
            code = proc.wait()
        finally:
            _stop(proc)  # Ctrl-C, SIGTERM or a failure here: no worker outlives the stage
    if code != 0:
        tail = log_path.read_text(errors="replace").strip().splitlines()[-15:]
        raise TrainingError(f"distributed training ({world_size(cfg)} processes) failed with exit code {code}; "
                            f"worker log {log_path}:\n" + "\n".join(tail))
    result = json.loads((work / RESULT).read_text())
    ckpt = Path(result.pop("checkpoint_dir"))
    from forgeline.inference.tasks import OutputSpec

    result["spec"] = OutputSpec.from_meta({"task": result["spec"]}) if result.get("spec") else None
    model = load_checkpoint(ckpt).to(device).eval()
    return TrainResult(model=model, tokenizer=load_tokenizer(cfg.model), checkpoint_dir=ckpt, **result)


def _rendezvous(cfg: PipelineConfig) -> list[str]:
    if cfg.train.nodes == 1:
        return ["--standalone"]
    endpoint, rank = os.environ.get("FORGELINE_RDZV_ENDPOINT"), os.environ.get("FORGELINE_NODE_RANK")
    if not endpoint or rank is None:
        raise TrainingError(f"train.nodes={cfg.train.nodes} needs $FORGELINE_RDZV_ENDPOINT (host:port of node 0) and "
                            "$FORGELINE_NODE_RANK (0..nodes-1) on every node")
    return [f"--nnodes={cfg.train.nodes}", f"--node-rank={rank}", "--rdzv-backend=c10d",
            f"--rdzv-endpoint={endpoint}", "--rdzv-id=forgeline"]


def _threads(cfg: PipelineConfig) -> int:
    """CPU threads per process: the cores shared out (2 gloo processes on 2 cores each ran 2 threads
    before, and each step took about twice as long)."""
    return cfg.train.num_threads or max(1, (os.cpu_count() or 1) // cfg.train.devices)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)  # torchrun passes it to the workers
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _worker(spec_path: str) -> None:
    """One rank, as torchrun starts it."""
    from forgeline.data.frames import read_parquet
    import torch
    import torch.distributed as dist

    from forgeline.training.loop import train_model

    spec = json.loads(Path(spec_path).read_text())
    cfg = PipelineConfig.model_validate(spec["config"])
    cuda = cfg.train.device != "cpu" and torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    dist.init_process_group("nccl" if cuda else "gloo")
    try:
        work = Path(spec_path).parent
        splits = Splits(read_parquet(work / "train.parquet"), read_parquet(work / "val.parquet"), None)
        rank0 = dist.get_rank() == 0
        log = _run_metrics(spec["tracking_uri"], spec["run_id"]) if rank0 and spec["run_id"] else None
        result = train_model(splits, spec["labels"], cfg, Path(spec["out_dir"]), log=log)
        if rank0:
            out = {f.name: getattr(result, f.name) for f in fields(result) if f.name not in ("model", "tokenizer")}
            out["checkpoint_dir"] = str(result.checkpoint_dir)
            out["spec"] = result.spec.to_meta() if result.spec is not None else None
            (work / RESULT).write_text(json.dumps(out))
    finally:
        dist.destroy_process_group()


def _run_metrics(uri: str, run_id: str):
    """Rank 0's metrics into the stage's MLflow run, as the one-process stage logs them."""
    from mlflow.tracking import MlflowClient

    from forgeline.pipeline.tracking import Tracker

    return Tracker(client=MlflowClient(uri, uri), run_id=run_id, tracking_uri=uri).metrics


if __name__ == "__main__":
    _worker(sys.argv[1])
