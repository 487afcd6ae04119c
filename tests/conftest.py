"""Shared fixtures, built once per pytest session: small real datasets, a 1-layer MiniLM fine-tuned on
them (tests whose intent is what MiniLM learns), a tiny randomly initialised BERT (tests whose intent
does not depend on the weights: plumbing, faults, caching, registry, disk), one Prefect API, MLflow
stores."""

from __future__ import annotations

import functools
import os
import random
from pathlib import Path

import pandas as pd
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # one BLAS/OpenMP thread per pytest-xdist worker (and the processes it starts): two workers of
    # two threads each on the 2-core machine oversubscribe it
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("MKL_NUM_THREADS", "1")

from forgeline.config.loader import load_config  # noqa: E402
from forgeline.config.schema import PipelineConfig  # noqa: E402
from forgeline.tasks import get_task  # noqa: E402

SINGLE_LABEL = get_task("single_label")
"""The task of the tests' labelled texts, for the functions that take one."""


try:  # the fuzz suite (marker `fuzz`): the same examples on every run, bounded in number and time
    from hypothesis import HealthCheck, settings

    settings.register_profile(
        "forgeline", max_examples=int(os.environ.get("FORGELINE_FUZZ_EXAMPLES", "100")), deadline=None,
        derandomize=True, database=None, print_blob=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
    settings.load_profile("forgeline")
except ImportError:  # the `test` extra not installed: only the fuzz tests need it
    pass


def pytest_collection_modifyitems(config, items):
    """Whole-flow and fault tests first, in their files' order, so that they start early and
    pytest-xdist's work stealing balances the short ones around them (with ``--dist loadscope``,
    ``test_faults.py`` ran 11 min on one worker at the end; docs/benchmarks.md, "Test suite")."""
    items.sort(key=lambda item: 0 if item.get_closest_marker("e2e") or item.get_closest_marker("faults") else 1)


def _torch_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _ort_cuda() -> bool:
    import onnxruntime

    return "CUDAExecutionProvider" in onnxruntime.get_available_providers()


def run_if(*, torch_cuda: bool = False, ort_cuda: bool = False):
    """GPU tests are ordinary tests marked ``gpu`` that skip, saying why, where the CUDA they need is
    missing (as litgpt's ``RunIf``). ``pytest -m gpu`` runs only them on a GPU machine."""
    missing = [what for need, have, what in ((torch_cuda, _torch_cuda, "PyTorch CUDA"),
                                             (ort_cuda, _ort_cuda, "onnxruntime's CUDAExecutionProvider"))
               if need and not have()]

    def mark(fn):
        fn = pytest.mark.gpu(fn)
        return pytest.mark.skipif(bool(missing), reason=f"needs {' and '.join(missing)}")(fn)

    return mark


POS = ["love", "great", "wonderful", "excellent", "happy", "fantastic", "amazing", "brilliant"]
NEG = ["hate", "awful", "terrible", "horrible", "sad", "dreadful", "disgusting", "miserable"]
THINGS = ["this car", "the ride", "my commute", "the new model", "autonomous driving", "the app",
          "the service", "the trip", "this update", "the future"]


def sentiment_rows(n_per_class: int = 100, seed: int = 0) -> pd.DataFrame:
    """Unique, clearly separable two-class sentences (learnable by a 1-layer model in a few epochs)."""
    rng = random.Random(seed)
    rows, seen = [], set()
    for label, words in (("positive", POS), ("negative", NEG)):
        while sum(1 for r in rows if r["label"] == label) < n_per_class:
            text = f"{rng.choice(THINGS)} is {rng.choice(words)} and {rng.choice(words)} #{rng.randint(0, 9999)}"
            if text not in seen:
                seen.add(text)
                rows.append({"text": text, "label": label})
    rng.shuffle(rows)
    return pd.DataFrame(rows)


@functools.cache
def _empty_store() -> Path:
    """An empty MLflow SQLite store, created and migrated by MLflow once per session (in the tests'
    working directory, as a test's own would be)."""
    import atexit
    import shutil
    import tempfile

    from mlflow.tracking import MlflowClient

    folder = Path(tempfile.mkdtemp(prefix="forgeline-empty-store-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    MlflowClient(f"sqlite:///{folder / 'mlflow.db'}").search_experiments()
    return folder / "mlflow.db"


def sqlite_store(db: Path) -> str:
    """The URI of a SQLite MLflow store at ``db``, a copy of the session's empty store when none is
    there yet: creating and migrating a new store costs 2.7 s on the 2-core machine, copying it
    milliseconds. Tests of how a new store is created (tests/pipeline/test_store.py) make their own."""
    import shutil

    if not db.exists():
        db.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(_empty_store(), db)
    return f"sqlite:///{db}"


# Two epochs do not always lift a model off chance level; tests about caching, drift, faults and
# plumbing turn the gate's floor above chance off (its own tests are tests/registry/test_gate.py)
QUICK = ("train.epochs=2", "registry.min_gain_over_chance=null")


def small_overrides(tmp: Path, data_path: Path, *extra: str) -> list[str]:
    """``tiny`` preset overrides for the separable two-class CSV at ``data_path``; without a
    ``tracking.tracking_uri`` in ``extra``, the workdir's own store starts as a copy of the session's
    empty one."""
    if not any(o.startswith("tracking.tracking_uri=") for o in extra):
        sqlite_store(tmp / "state" / "mlflow.db")
    return [
        "data.source=file", f"data.path={data_path}", "data.encoding=utf-8", "data.label_column=label",
        "data.labels=[negative, positive]", "data.sample_rows=null", "data.min_rows_per_class=5",
        "data.max_invalid_fraction=0.2", "split.val_fraction=0.2", "split.test_fraction=0.25",
        "train.epochs=5", "train.learning_rate=5.0e-4", "train.patience=2", "train.batch_size=16",
        "compress.max_accuracy_drop=0.2", f"tracking.workdir={tmp / 'state'}", "tracking.tracking_uri=null",
        # the tests' 1-layer models are not meant to beat TF-IDF on this separable set: the gate's rule has its own
        "registry.beat_classical=false",
        *extra,
    ]


def flow_overrides(tmp: Path, data_path: Path, *extra: str) -> list[str]:
    """As small_overrides, tracking into ``tmp/mlflow.db`` and registering model ``e2e``."""
    return small_overrides(tmp, data_path, f"tracking.tracking_uri={sqlite_store(tmp / 'mlflow.db')}",
                           "registry.model_name=e2e", *extra)


def small_config(tmp: Path, data_path: Path, *extra: str) -> PipelineConfig:
    return load_config("tiny", small_overrides(tmp, data_path, *extra))


@pytest.fixture(scope="session")
def session_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("session")


@pytest.fixture(scope="session")
def prefect_api():
    """One real (temporary) Prefect API for the whole session: tests that need *a* server share it
    (starting one costs seconds per module). Tests of the embedded temporary server, signals and
    crashes start their own in subprocesses."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


TINY_BERT = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 128}


@pytest.fixture(scope="session")
def tiny_bert(session_dir) -> Path:
    """A randomly initialised 2-layer BERT (hidden 64) with MiniLM's vocabulary and tokenizer, as a
    local model folder for ``model.base``: an 8 MB checkpoint where the 1-layer MiniLM's is 47 MB, and
    about 6x faster to train (2.5 s against 15 s on the separable set, 2-core CPU)."""
    import shutil

    import torch
    from transformers import BertConfig, BertModel

    from forgeline.training.classifier import base_model_dir

    minilm = base_model_dir("minilm")
    out = session_dir / "tiny-bert"
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=30522, max_position_embeddings=512, **TINY_BERT)).save_pretrained(out)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        shutil.copy(minilm / name, out / name)
    return out


@pytest.fixture(scope="session")
def tiny(tiny_bert) -> tuple[str, ...]:
    """Overrides that train the tiny BERT instead of MiniLM; from random weights it needs a larger step
    (3e-3: validation macro-F1 1.0 on the separable set by epoch 2, where 5e-4 stays at chance)."""
    return (f"model.base={tiny_bert}", "model.num_layers=null", "train.learning_rate=3.0e-3")


@pytest.fixture(scope="session")
def sentiment_csv(session_dir) -> Path:
    path = session_dir / "sentiment.csv"
    sentiment_rows().to_csv(path, index=False)
    return path


@pytest.fixture(scope="session")
def trained(session_dir, sentiment_csv):
    """(cfg, splits, TrainResult) for a 1-layer MiniLM fine-tuned on the separable dataset."""
    from forgeline.data.load import load_and_validate
    from forgeline.data.split import split_dataset
    from forgeline.tasks import get_task
    from forgeline.training.loop import train_model

    cfg = small_config(session_dir, sentiment_csv)
    data = load_and_validate(cfg.data, session_dir / "data", cfg.seed, task=SINGLE_LABEL)
    splits = split_dataset(data.valid, cfg.split, cfg.seed, get_task(cfg.task))
    result = train_model(splits, data.labels, cfg, session_dir / "train")
    return cfg, splits, result


@pytest.fixture(scope="session")
def exported(session_dir, trained):
    from forgeline.export.onnx import export_onnx

    cfg, splits, result = trained
    path = export_onnx(result.model, result.tokenizer, result.labels, session_dir / "onnx" / "model.onnx",
                       cfg.export, cfg.model.max_length, splits.test["text"].tolist()[:2])
    return path


@pytest.fixture
def mlflow_uri(tmp_path) -> str:
    return sqlite_store(tmp_path / "mlflow.db")


def make_bundle(folder: Path, trained, exported):
    """ONNX + tokenizer files of the session model, laid out as the register stage bundles them."""
    import shutil

    _, _, result = trained
    d = folder / "bundle"
    d.mkdir()
    shutil.copy(exported, d / "model.onnx")
    shutil.copy(result.checkpoint_dir / "tokenizer.json", d / "tokenizer.json")
    return {"fp32": d / "model.onnx", "tokenizer": d / "tokenizer.json"}, result.labels


@pytest.fixture
def bundle(tmp_path, trained, exported):
    return make_bundle(tmp_path, trained, exported)


def register_version(client, bundle, labels, f1, parity_ok=True, name="m", eval_rows=None, **registry):
    """Register the bundle as a new version of ``name`` through the real gate; returns (Registration, run_id).
    ``eval_rows``: (texts, labels) both the new version and the champion are scored on; ``registry``:
    further RegistryConfig fields."""
    from forgeline.config.schema import RegistryConfig
    from forgeline.registry.register import EvalRows, register_and_gate

    exp = client.get_experiment_by_name("t") or client.get_experiment(client.create_experiment("t"))
    run = client.create_run(exp.experiment_id)
    files, _ = bundle
    meta = {"labels": labels, "max_length": 32, "variants": ["fp32"]}
    reg = register_and_gate(client, run.info.run_id, RegistryConfig(model_name=name, f1_tolerance=0.01, **registry), files,
                            meta,
                            {"test_macro_f1": f1, "test_accuracy": f1}, {"data_fingerprint": "abc", "config_hash": "h"},
                            parity_ok, ["great ride", "awful trip"],
                            eval_rows=EvalRows(*eval_rows) if isinstance(eval_rows, tuple) else eval_rows)
    client.set_terminated(run.info.run_id)
    return reg, run.info.run_id
