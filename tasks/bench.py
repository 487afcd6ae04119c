"""Side-by-side inference and training benchmark of one registered model version (issue 3 harness).

Same inputs for every engine: token ids at a fixed sequence length (and real corpus lengths). Engines:
PyTorch eager fp32, PyTorch fp16 (CUDA), ONNX Runtime fp32, ONNX Runtime fp16 (CUDA EP, IOBinding),
ONNX Runtime INT8 (CPU). Latency p50/p99 at batch 1, throughput at larger batches; training
samples/s, tokens/s and MFU on CUDA.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

H100_BF16_DENSE_TFLOPS = 989.0


@dataclass
class BenchInputs:
    input_ids: np.ndarray
    mask: np.ndarray


def make_inputs(batch: int, seq: int, vocab: int = 30522, seed: int = 0) -> BenchInputs:
    rng = np.random.default_rng(seed)
    ids = rng.integers(1000, vocab - 1, size=(batch, seq), dtype=np.int64)
    ids[:, 0], ids[:, -1] = 101, 102
    return BenchInputs(ids, np.ones_like(ids))


def time_fn(fn: Callable[[], Any], sync: Callable[[], None], warmup: int, iters: int) -> list[float]:
    for _ in range(warmup):
        fn()
    sync()
    out = []
    for _ in range(iters):
        t = time.perf_counter()
        fn()
        sync()
        out.append((time.perf_counter() - t) * 1000)
    return out


def summarize(times_ms: list[float], batch: int) -> dict[str, float]:
    s = sorted(times_ms)
    p50 = statistics.median(s)
    return {"batch": batch, "p50_ms": round(p50, 3), "p99_ms": round(s[min(len(s) - 1, int(0.99 * len(s)))], 3),
            "samples_per_s": round(batch / (p50 / 1000), 1)}


def torch_engine(model, device: str, half: bool):
    import torch

    m = model.to(device).eval()
    if half:
        m = m.half()

    def run(x: BenchInputs):
        ids = torch.from_numpy(x.input_ids).to(device)
        mask = torch.from_numpy(x.mask).to(device)

        def call():
            with torch.inference_mode():
                return m(input_ids=ids, attention_mask=mask).logits

        return call

    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    return run, sync


def ort_engine(path: Path, device: str, io_binding: bool, threads: int | None = None):
    from models.onnx_runtime import create_session, run_logits

    session = create_session(path, device=device, threads=threads)

    def run(x: BenchInputs):
        return lambda: run_logits(session, x.input_ids, x.mask, io_binding=io_binding)

    return run, (lambda: None)


def bench_engines(engines: dict[str, tuple], shapes: list[tuple[int, int]], warmup: int = 5,
                  iters: int = 30) -> list[dict[str, Any]]:
    rows = []
    for name, (run, sync) in engines.items():
        for batch, seq in shapes:
            x = make_inputs(batch, seq)
            try:
                times = time_fn(run(x), sync, warmup, iters if batch <= 64 else max(10, iters // 3))
                rows.append({"engine": name, "seq": seq} | summarize(times, batch))
            except Exception as e:  # noqa: BLE001 - one engine failing must not hide the others
                rows.append({"engine": name, "seq": seq, "batch": batch, "error": f"{type(e).__name__}: {e}"[:300]})
    return rows


def bench_training(model_cfg, labels: list[str], batch: int, seq: int, steps: int, device: str) -> dict[str, Any]:
    """Optimizer steps on fixed-shape batches (bf16 autocast on CUDA): samples/s, tokens/s, MFU."""
    import torch

    from models.classifier import build_classifier
    from tasks.train import autocast_for

    model = build_classifier(model_cfg, labels).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, **({"fused": True} if device == "cuda" else {}))
    x = make_inputs(batch, seq)
    ids = torch.from_numpy(x.input_ids).to(device)
    mask = torch.from_numpy(x.mask).to(device)
    y = torch.zeros(batch, dtype=torch.long, device=device)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def step():
        with autocast_for(device):
            logits = model(input_ids=ids, attention_mask=mask).logits
        loss = torch.nn.functional.cross_entropy(logits.float(), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    times = time_fn(step, sync, warmup=3, iters=steps)
    p50 = statistics.median(times) / 1000
    params = sum(p.numel() for p in model.parameters())
    tokens = batch * seq
    result = {"batch": batch, "seq": seq, "device": device, "step_p50_ms": round(p50 * 1000, 2),
              "samples_per_s": round(batch / p50, 1), "tokens_per_s": round(tokens / p50, 1), "params": params}
    if device == "cuda":
        flops = 6 * params * tokens  # dense approximation; attention score FLOPs excluded
        result["mfu_vs_989_tflops"] = round(flops / p50 / (H100_BF16_DENSE_TFLOPS * 1e12), 4)
    return result


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| engine | batch | seq | p50 ms | p99 ms | samples/s |", "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['engine']} | {r['batch']} | {r['seq']} | error: {r['error'][:60]} | | |")
        else:
            lines.append(f"| {r['engine']} | {r['batch']} | {r['seq']} | {r['p50_ms']} | {r['p99_ms']} | {r['samples_per_s']} |")
    return "\n".join(lines)


def run_bench(model_ref: str, tracking_uri: str, quick: bool = False) -> dict[str, Any]:
    """Benchmark one registered version (``NAME@alias`` or ``NAME/VERSION``) and log the result to it."""
    import json
    import tempfile

    import mlflow
    import torch
    from mlflow.tracking import MlflowClient

    from models.classifier import load_checkpoint, quiet_transformers
    from models.serving import parse_model_ref

    quiet_transformers()
    name, alias, version = parse_model_ref(model_ref)
    client = MlflowClient(tracking_uri, tracking_uri)
    mv = client.get_model_version_by_alias(name, alias) if alias else client.get_model_version(name, version)
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    cuda = torch.cuda.is_available()
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(mlflow.artifacts.download_artifacts(f"models:/{name}/{mv.version}", dst_path=f"{tmp}/model"))
        ckpt = Path(client.download_artifacts(mv.run_id, "checkpoint", f"{tmp}/ckpt"))
        files = {p.name: p for p in model_dir.rglob("*.onnx")}
        base = load_checkpoint(ckpt).float().eval()
        labels = [base.config.id2label[i] for i in range(base.config.num_labels)]
        engines: dict[str, tuple] = {"torch_eager_fp32" + ("_cuda" if cuda else "_cpu"): torch_engine(base, "cuda" if cuda else "cpu", False)}
        if cuda:
            import copy

            engines["torch_fp16_cuda"] = torch_engine(copy.deepcopy(base), "cuda", True)
            engines["ort_fp32_cuda"] = ort_engine(files["model.onnx"], "cuda", io_binding=True)
            if "model.fp16.onnx" in files:
                engines["ort_fp16_cuda_iobinding"] = ort_engine(files["model.fp16.onnx"], "cuda", io_binding=True)
        else:
            engines["ort_fp32_cpu"] = ort_engine(files["model.onnx"], "cpu", io_binding=False)
        if "model.int8.onnx" in files:
            engines["ort_int8_cpu"] = ort_engine(files["model.int8.onnx"], "cpu", io_binding=False)
        gpu_shapes = [(1, 128), (64, 128), (256, 128)]
        cpu_shapes = [(1, 128), (32, 64)] if not quick else [(1, 16), (4, 16)]
        rows = []
        for ename, eng in engines.items():
            on_gpu = ename.endswith("cuda") or "cuda_" in ename
            rows += bench_engines({ename: eng}, gpu_shapes if on_gpu else cpu_shapes,
                                  warmup=2 if quick else 10, iters=3 if quick else (100 if on_gpu else 10))
        from config.schema import ModelConfig

        train = bench_training(ModelConfig(), labels, 256 if cuda else (4 if quick else 32), 128 if cuda else (16 if quick else 64),
                               2 if quick else (20 if cuda else 3), "cuda" if cuda else "cpu")
    result = {"model": name, "version": str(mv.version), "device": torch.cuda.get_device_name() if cuda else "cpu",
              "torch": torch.__version__, "inference": rows, "training": train}
    client.log_dict(mv.run_id, result, f"bench/bench-{time.strftime('%Y%m%d-%H%M%S')}.json")
    client.set_model_version_tag(name, str(mv.version), "bench.last", json.dumps(
        {r["engine"] + f"@b{r['batch']}s{r['seq']}": r.get("p50_ms") for r in rows})[:5000])
    return result
