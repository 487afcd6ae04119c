"""Manual GPU check (not CI): the training rows of `forgeline bench` and the training targets, without
a registered model (the inference rows need one; see benchmarks/gpu_bench.sh).

    python3 benchmarks/gpu_train_bench.py $OUT/train_bench.json

Texts: the default preset's corpus, tokenized at 128 tokens as a `model.max_length=128` run does."""

from __future__ import annotations

import json
import os
import sys

sys.path[0] = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src")  # forgeline without installing it

import torch  # noqa: E402

from forgeline.config.loader import load_config  # noqa: E402
from forgeline.training.classifier import load_tokenizer  # noqa: E402
from forgeline.bench.harness import check_targets, load_texts, training_rows  # noqa: E402
from forgeline.training.loop import encode  # noqa: E402


def main(out: str) -> None:
    cfg = load_config("default")
    tok = load_tokenizer(cfg.model)
    ids = encode(tok, load_texts(None, limit=5000), 128)
    cuda = torch.cuda.is_available()
    rows = training_rows(cfg.data.labels, ids, tok.pad_token_id, cuda)
    for r in rows:
        print(json.dumps(r), flush=True)
    targets = {k: v for k, v in check_targets([], rows, 0, None, cuda).items() if k.startswith("train")}
    print(json.dumps(targets, indent=1))
    result = {"device": torch.cuda.get_device_name() if cuda else "cpu", "torch": torch.__version__,
              "training": rows, "targets": targets}
    with open(out, "w") as f:
        json.dump(result, f, indent=1)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "train_bench.json")
