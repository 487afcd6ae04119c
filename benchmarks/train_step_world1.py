"""One-process training speed before and after the distributed-training change (issue 16: the
single-GPU path must not regress more than 3 %).

    python benchmarks/train_step_world1.py [--base 6d7505b] [--layers 6] [--steps 8] [--rounds 5] [--out FILE]

Loads ``training/loop.py`` as it was at ``--base`` (the commit before DDP) beside the current one,
builds the same MiniLM classifier for each, and times their ``TrainStep`` on the same batches
(batch 32 × 64 tokens of corpus text), interleaved rounds in one process; reports the median ratio
of step times (current / base). Runs on CUDA when present, else CPU.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def load_base(rev: str):
    source = subprocess.run(["git", "show", f"{rev}:src/forgeline/training/loop.py"], cwd=ROOT, check=True,
                            capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp()) / "loop_base.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("forgeline.training.loop_base", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--base", default="6d7505b")
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--out", default=None)
    args = p.parse_args()

    import torch

    from forgeline.config.loader import load_config
    from forgeline.data.load import load_and_validate
    from forgeline.tasks import get_task
    from forgeline.training import loop as current
    from forgeline.training.classifier import build_classifier, load_tokenizer

    base = load_base(args.base)
    cfg = load_config("default", [f"model.num_layers={args.layers}", "model.max_length=64", "data.sample_rows=2000"])
    device = current.resolve_device("auto")
    data = load_and_validate(cfg.data, Path(tempfile.mkdtemp()), cfg.seed, task=get_task(cfg.task))
    tokenizer = load_tokenizer(cfg.model)
    ids = current.encode(tokenizer, data.valid["text"].tolist()[:32 * args.steps], 64)
    batches = [current.collate(tokenizer.pad_token_id, ids[i:i + 32], device) for i in range(0, len(ids), 32)]
    y = torch.zeros(32, dtype=torch.long, device=device)

    steps = {}
    for name, module in (("base", base), ("current", current)):
        torch.manual_seed(0)
        model = build_classifier(cfg.model, data.labels).to(device)
        steps[name] = module.TrainStep(model, cfg.train, device)
        steps[name].train()
    times: dict[str, list[float]] = {"base": [], "current": []}
    for r in range(args.rounds + 1):  # round 0 warms up both
        for name in (("base", "current") if r % 2 else ("current", "base")):
            step = steps[name]
            if device == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            for batch in batches:
                step(batch, y[: len(batch["input_ids"])])
            if device == "cuda":
                torch.cuda.synchronize()
            if r:
                times[name].append((time.perf_counter() - t0) / len(batches))
    ratios = [c / b for c, b in zip(times["current"], times["base"])]
    result = {
        "what": "TrainStep seconds per step, current vs the commit before distributed training, one process",
        "date": time.strftime("%Y-%m-%d"), "device": device, "machine": platform.processor() or platform.machine(),
        "torch_threads": torch.get_num_threads(), "base": args.base, "layers": args.layers, "batch": 32, "seq": 64,
        "rounds": args.rounds, "base_s_per_step": statistics.median(times["base"]),
        "current_s_per_step": statistics.median(times["current"]),
        "ratio_current_over_base_median": statistics.median(ratios), "ratios": ratios,
        "command": "python benchmarks/train_step_world1.py " + " ".join(sys.argv[1:]),
    }
    print(json.dumps(result, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
