"""How the compress stage's side-by-side timing compares with a model served alone, on one run's files.

    python benchmarks/latency_interference.py --workdir WD [--rounds 15] [--out FILE.json]

``WD`` is the workdir of a finished default-preset run (``benchmarks/compression.py`` leaves one per seed):
the teacher's fp32 ONNX from its export cache (quantized to dynamic INT8 here, as the stage does) and the
student INT8 from its compress cache. Three ways of timing batch 32 × 64 tokens, in interleaved rounds in
one process:

- ``side_by_side_spinning``: the three sessions open at once, one call each per round, threads spinning
  between calls (how ``compress.measure_latency`` timed before 2026-12-03);
- ``side_by_side_parked``: the same with the threads parked between calls (how it times now);
- ``alone``: each model in its own block of calls after an untimed one, spinning: what a serving process
  with one session sees.

The ratio teacher INT8 / student INT8 of each way is the speed-up the stage would report. Also the
student INT8 alone at batch 1, spinning against parked (what parking costs a lone serving session).
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

from forgeline.bench.harness import time_fn
from forgeline.export.compress import quantize_int8
from forgeline.inference.runtime import create_session


def one(root: Path, pattern: str) -> Path:
    found = sorted(root.glob(pattern))
    if not found:
        raise SystemExit(f"no {pattern} under {root}: give the workdir of a finished default-preset run")
    return found[0]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workdir", required=True, type=Path)
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--calls", type=int, default=3, help="timed calls per model per round in the 'alone' blocks")
    p.add_argument("--out", type=Path)
    a = p.parse_args()
    cache = a.workdir / "cache"
    teacher = one(cache, "export-*/files/model.onnx")
    student = one(cache, "compress-*/files/model.student.int8.onnx")
    # ids below 1,000 exist in every cut vocabulary; the cost of a call does not depend on which ids
    ids = np.random.default_rng(0).integers(100, 1000, (32, 64)).astype(np.int64)
    feed = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
    with tempfile.TemporaryDirectory() as tmp:
        paths = {"teacher_fp32": teacher, "teacher_int8": quantize_int8(teacher, Path(tmp) / "teacher.int8.onnx"),
                 "student_int8": student}
        sessions = {spin: {n: create_session(q, device="cpu", spin=spin) for n, q in paths.items()}
                    for spin in (True, False)}
        for group in sessions.values():
            for s in group.values():
                s.run(None, feed)
        times: dict[str, dict[str, list[float]]] = {m: {n: [] for n in paths}
                                                    for m in ("side_by_side_spinning", "side_by_side_parked", "alone")}

        def timed(s, rows: dict, warmup: int = 0, calls: int = 1) -> list[float]:
            return time_fn(lambda: s.run(None, rows), lambda: None, warmup, calls)

        for _ in range(a.rounds):
            for spin, mode in ((True, "side_by_side_spinning"), (False, "side_by_side_parked")):
                for n, s in sessions[spin].items():
                    times[mode][n] += timed(s, feed)
            for n, s in sessions[True].items():
                # one untimed call first: whatever ran before has stopped spinning
                times["alone"][n] += timed(s, feed, warmup=1, calls=a.calls)
        one_row = {k: v[:1] for k, v in feed.items()}
        b1: dict[bool, list[float]] = {True: [], False: []}
        for _ in range(a.rounds):
            for spin in (True, False):
                b1[spin] += timed(sessions[spin]["student_int8"], one_row, warmup=1, calls=20)
    p50 = {m: {n: round(float(np.median(v)), 2) for n, v in t.items()} for m, t in times.items()}
    out = {"date": time.strftime("%Y-%m-%d"), "workdir": str(a.workdir), "machine": platform.processor() or platform.machine(),
           "shape": [32, 64], "rounds": a.rounds, "p50_ms": p50,
           "speedup_student_int8_vs_teacher_int8": {m: round(t["teacher_int8"] / t["student_int8"], 3) for m, t in p50.items()},
           "student_int8_alone_b1_p50_ms": {"spinning": round(float(np.median(b1[True])), 3),
                                            "parked": round(float(np.median(b1[False])), 3)}}
    print(json.dumps(out, indent=2))
    if a.out:
        a.out.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
