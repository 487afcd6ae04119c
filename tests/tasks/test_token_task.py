"""The token-classification task's declaration: entity metrics equal to seqeval's strict IOB2 mode, the
gate's sentence bootstrap, the exported [batch, sequence, tags] graph in parity with PyTorch (and on CUDA
graphs where there is a GPU), and drift read from the spans the model served."""

from __future__ import annotations

import numpy as np
import pytest

from forgeline.inference.tasks import spec_for
from forgeline.inference.tokens import Tagged, tag_names, word_spans
from forgeline.tasks import get_task

TYPES = ("LOC", "MISC", "PER")
SPEC = spec_for("token_classification", TYPES)
TAGS = tag_names(TYPES)


def tagged(words: list[str], tags: list[str]) -> Tagged:
    text = " ".join(words)
    probs = np.full((len(words), len(TAGS)), 0.01, dtype=np.float32)
    for k, t in enumerate(tags):
        probs[k, TAGS.index(t)] = 0.95
    return Tagged(text, word_spans(text), probs)


def spans(words: list[str], tags: list[str]) -> tuple:
    from forgeline.data.spans import entities

    starts = np.cumsum([0] + [len(w) + 1 for w in words])
    return tuple(sorted((int(starts[a]), int(starts[b - 1] + len(words[b - 1])), kind) for kind, a, b in entities(tags)))


CASE = [  # (words, truth, predicted): boundary errors, type errors, a missed and an invented entity, an I- start
    ("Zoë flew to São Paulo with Ana".split(), ["B-PER", "O", "O", "B-LOC", "I-LOC", "O", "B-PER"],
     ["B-PER", "O", "O", "B-LOC", "O", "O", "B-PER"]),
    ("the Nobel prize went to Marie Curie".split(), ["O", "B-MISC", "I-MISC", "O", "O", "B-PER", "I-PER"],
     ["O", "B-MISC", "I-MISC", "O", "O", "B-LOC", "I-LOC"]),
    ("nothing to see here".split(), ["O", "O", "O", "O"], ["O", "O", "B-LOC", "O"]),
    ("Paris and Lyon".split(), ["B-LOC", "O", "B-LOC"], ["B-LOC", "O", "B-LOC"]),
    ("Ada Lovelace wrote".split(), ["B-PER", "I-PER", "O"], ["O", "O", "O"]),
]


def test_entity_metrics_match_seqeval_strict_iob2():
    from seqeval.metrics import f1_score, precision_score, recall_score
    from seqeval.scheme import IOB2

    task = get_task("token_classification")
    y = task.y([spans(w, t) for w, t, _ in CASE], SPEC)
    outputs = np.array([tagged(w, p) for w, _, p in CASE], dtype=object)
    got = task.metrics(y, outputs, SPEC)
    truth, pred = [t for _, t, _ in CASE], [p for _, _, p in CASE]
    kw = {"mode": "strict", "scheme": IOB2}
    assert got["micro_f1"] == pytest.approx(f1_score(truth, pred, **kw))
    assert got["macro_f1"] == pytest.approx(f1_score(truth, pred, average="macro", **kw))
    assert got["precision"] == pytest.approx(precision_score(truth, pred, **kw))
    assert got["recall"] == pytest.approx(recall_score(truth, pred, **kw))
    assert 0 < got["micro_f1"] < got["token_accuracy"] < 1
    # the gate's bootstrap resamples sentences: unit weights give the metric, weights are counts of sentences
    ones = np.ones((1, len(CASE)))
    assert task.resampled(y, outputs, SPEC, ones)[0] == pytest.approx(got["micro_f1"])
    twice_first = np.array([[2, 0, 0, 0, 0]])
    assert task.resampled(y, outputs, SPEC, twice_first)[0] == pytest.approx(f1_score([truth[0]] * 2, [pred[0]] * 2, **kw))
    assert task.baseline(y, SPEC) == (0.0, "tagging nothing")
    assert [name for name, *_ in task.group_slices(y, SPEC)] == ["type=LOC", "type=MISC", "type=PER"]


def test_strata_and_labels():
    task = get_task("token_classification")
    import pandas as pd

    targets = pd.Series([((0, 3, "PER"),), ((0, 3, "LOC"), (5, 7, "PER")), (), ((0, 1, "PER"),), ()])
    assert task.labels_from(targets, None) == ["LOC", "PER"]
    assert task.rows_per_class(targets, ["LOC", "PER"]) == {"LOC": 1, "PER": 3}
    assert task.strata(targets, ["LOC", "PER"], 2).tolist() == ["PER", "PER", "-", "PER", "-"]  # LOC too rare alone
    assert task.parse_target('[[0, 3, "PER"]]', None) == ((0, 3, "PER"),)
    assert task.parse_target([{"start": 4, "end": 6, "label": "X"}, [0, 2, "Y"]], None) == ((0, 2, "Y"), (4, 6, "X"))
    assert task.parse_target("[[0, 3]]", None).reason == "bad_spans"


def test_drift_reads_the_types_and_spans_the_model_served():
    from forgeline.config.schema import DriftConfig
    from forgeline.data.drift import compare

    import pandas as pd

    task = get_task("token_classification")
    train = pd.Series([((0, 3, "PER"),)] * 50 + [((0, 3, "LOC"),)] * 50)
    reference = {"rows": 100, **task.target_profile(train, ["LOC", "PER"])}
    same = task.served_profile(["PER:0-3"] * 50 + ["LOC:4-8"] * 50, reference)
    assert same == {"label_rates": {"LOC": 0.5, "PER": 0.5}, "spans_per_text": 1.0}
    moved = task.served_profile(["PER:0-3|PER:5-9|ORG:10-12"] * 90 + [""] * 10 + [None] * 5, reference)
    assert moved["label_rates"] == {"LOC": 0.0, "ORG": 0.9, "PER": 0.9} and moved["spans_per_text"] == pytest.approx(2.7)
    emb = np.zeros((4, 8), dtype=np.float32)
    lengths = [20] * 100
    quiet = compare(reference | {"lengths": lengths}, emb, {"rows": 100, "lengths": lengths, **same}, emb, DriftConfig())
    loud = compare(reference | {"lengths": lengths}, emb, {"rows": 100, "lengths": lengths, **moved}, emb, DriftConfig())
    assert not quiet.retrain and loud.retrain and "ORG" in loud.new_labels
    assert any("entity spans per text: 1.00 in training, 2.70 now" in n for n in loud.notes)


@pytest.fixture(scope="module")
def token_model(tiny_bert, tmp_path_factory):
    """A random tiny BERT token classifier exported to ONNX: logits [batch, sequence, tags]."""
    import torch
    from transformers import AutoTokenizer

    from forgeline.config.schema import ExportConfig, ModelConfig
    from forgeline.export.onnx import export_onnx
    from forgeline.training.classifier import build_classifier

    tok = AutoTokenizer.from_pretrained(tiny_bert, local_files_only=True)
    model = build_classifier(ModelConfig(base=str(tiny_bert), max_length=32), SPEC).eval()
    with torch.no_grad():
        model.classifier.weight *= 30.0  # spread the logits: random init answers near-uniform
    out = tmp_path_factory.mktemp("token")
    path = export_onnx(model, tok, list(SPEC.labels), out / "model.onnx", ExportConfig(), 32)
    tok.save_pretrained(out / "tok")
    return model, tok, path, out / "tok" / "tokenizer.json"


LONG = "the crowd in old Lisboa cheered for João while " + "the band played on and on " * 12


def test_token_export_keeps_the_sequence_axis_and_parity(token_model):
    import onnx

    from forgeline.config.schema import ExportConfig
    from forgeline.export.onnx import check_parity
    from forgeline.inference.runtime import create_session, predict_tagged_onnx
    from forgeline.inference.tokens import TokenEncoder
    from forgeline.training.classifier import load_checkpoint
    from forgeline.training.loop import predict_proba

    model, tok, path, tok_file = token_model
    dims = onnx.load(str(path)).graph.output[0].type.tensor_type.shape.dim
    assert [d.dim_param for d in dims[:2]] == ["batch", "sequence"] and dims[2].dim_value == len(TAGS)
    texts = ["Zoë  flew to São Paulo 😀", "hi", LONG]
    report = check_parity(model, tok, path, texts, 32, ExportConfig())
    assert report.ok and report.argmax_agreement == 1.0
    onnx_out = predict_tagged_onnx(create_session(path, "cpu"), TokenEncoder.from_file(tok_file, 32, SPEC.stride), texts, SPEC)
    torch_out = predict_proba(model, tok, texts, 32, device="cpu")
    assert [len(t.words) for t in onnx_out] == [len(word_spans(t)) for t in texts]  # the long text is whole
    assert np.abs(SPEC.comparable(onnx_out) - SPEC.comparable(torch_out)).max() < 1e-3
    model.save_pretrained(path.parent / "ckpt")
    assert type(load_checkpoint(path.parent / "ckpt")).__name__ == "BertForTokenClassification"


@pytest.mark.gpu
def test_token_model_runs_as_cuda_graphs_like_the_cpu_session(token_model):
    from tests.conftest import _ort_cuda

    if not _ort_cuda():
        pytest.skip("needs onnxruntime's CUDAExecutionProvider")
    from forgeline.inference.runtime import CudaGraphRunner, create_session, graph_logits, predict_tagged_onnx
    from forgeline.inference.tokens import TokenEncoder

    _, _, path, tok_file = token_model
    texts = ["Zoë  flew to São Paulo 😀", "hi", LONG]
    encoder = TokenEncoder.from_file(tok_file, 32, SPEC.stride)
    cpu = predict_tagged_onnx(create_session(path, "cpu"), encoder, texts, SPEC)
    runner = CudaGraphRunner(path, SPEC.width, per_token=True)
    gpu = predict_tagged_onnx(runner.session, encoder, texts, SPEC, 8, graph_logits(runner, 8, 32))
    assert np.abs(SPEC.comparable(gpu) - SPEC.comparable(cpu)).max() < 1e-3
    assert SPEC.decisions(gpu) == SPEC.decisions(cpu) and len(runner.shapes) >= 1


def test_the_gazetteer_baseline_tags_every_seen_name_and_nothing_else():
    from forgeline.bench.gazetteer import Gazetteer, micro_f1

    train = ["Zoë flew to New York", "New York is big", "we met Zoë"]
    tagger = Gazetteer(train, [((0, 3, "PER"), (12, 20, "LOC")), ((0, 8, "LOC"),), ((7, 10, "PER"),)])
    assert tagger.tag("zoë loves new york and Paris") == ((0, 3, "PER"), (10, 18, "LOC"))  # case-folded, longest match
    assert tagger.tag("a new idea") == ()
    assert micro_f1([((0, 3, "PER"),), ()], [((0, 3, "PER"),), ((0, 1, "LOC"),)]) == pytest.approx(2 / 3)
