"""The default preset's student of one run's cached teacher, made again under other compress settings.

    python benchmarks/student_probe.py --workdir WD --seed 44 --name NAME [--set compress.KEY=VALUE ...] [--out FILE.jsonl]

``WD`` is the workdir of a finished `forgeline run --set seed=N` (``benchmarks/compression.py`` leaves one
per seed): its stage cache holds the teacher's checkpoint. The run's sample, splits, held-out validation
rows, transfer and vocabulary texts are made again from the config and seed as the compress stage makes
them; the student is pruned and distilled with the settings given, then scored in PyTorch (fp32) on the
choice's validation rows (the split's and ``compress.validation_rows``) and the test split beside the
teacher. One line of JSON per call (appended to ``--out``). A few minutes a student on the 2-core CPU,
against a whole run's seven: what the student settings of the default preset were chosen with
(``results/compression-cpu-seed44-student-probes-2026-12-03.json``).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch
from transformers import AutoTokenizer

from forgeline.config.loader import load_config
from forgeline.data.load import load_and_validate
from forgeline.data.split import split_dataset
from forgeline.pipeline.stages import _unsampled
from forgeline.tasks import get_task
from forgeline.training.classifier import load_checkpoint, output_spec_of
from forgeline.training.distill import make_student
from forgeline.training.loop import predict_proba


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workdir", required=True, type=Path)
    p.add_argument("--seed", required=True, type=int)
    p.add_argument("--name", required=True)
    p.add_argument("--set", dest="overrides", action="append", default=[])
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    cfg = load_config("default", [f"seed={args.seed}", *args.overrides])
    task = get_task(cfg.task)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        data = load_and_validate(cfg.data, Path(tmp), cfg.seed, split=cfg.split, task=task)
    splits = split_dataset(data.valid, cfg.split, cfg.seed, task, data.labels)
    checkpoint = next((args.workdir / "cache").glob("train-*/files/checkpoint"), None)
    if checkpoint is None:
        raise SystemExit(f"no cached teacher under {args.workdir / 'cache'}: run `forgeline run --set seed={args.seed}` there first")
    teacher = load_checkpoint(checkpoint).eval()
    tokenizer = AutoTokenizer.from_pretrained(checkpoint, local_files_only=True)
    spec = output_spec_of(teacher)
    held_out, transfer, vocab = _unsampled(cfg, splits)
    val = pd.concat([splits.val, held_out])

    def score(model, frame) -> float:
        proba = predict_proba(model, tokenizer, frame["text"].tolist(), cfg.model.max_length, cfg.train.eval_batch_size, "cpu")
        return float(task.metrics(task.y(frame["label"], spec), proba, spec)[task.primary.name])

    teacher_val, teacher_test = score(teacher, val), score(teacher, splits.test)
    made = time.perf_counter()
    student = make_student(teacher, tokenizer, splits.train["text"].tolist(), task.train_y(splits.train["label"], spec),
                           val["text"].tolist(), task.y(val["label"], spec), cfg.compress, cfg.train,
                           cfg.model.max_length, "cpu", cfg.seed, task=task, transfer=transfer["text"].tolist(),
                           vocab_texts=vocab["text"].tolist())
    seconds = time.perf_counter() - made
    student_val, student_test = score(student.model, val), score(student.model, splits.test)
    row = {"name": args.name, "seed": args.seed, "overrides": args.overrides, "torch_threads": torch.get_num_threads(),
           "val_rows": len(val), "teacher_val": teacher_val, "teacher_test": teacher_test,
           "student_val": student_val, "student_test": student_test,
           "val_drop_pt": round(100 * (teacher_val - student_val), 2),
           "test_drop_pt": round(100 * (teacher_test - student_test), 2),
           "student": student.info, "history": student.history, "student_seconds": round(seconds, 1),
           "total_seconds": round(time.perf_counter() - start, 1)}
    print(json.dumps(row))
    if args.out:
        with args.out.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
