"""Token-tagged input (CoNLL, token JSON Lines, character spans), tag schemes and entity-level scores,
on the exact file shapes users have; the scores checked against seqeval's strict IOB2 mode."""

from __future__ import annotations

import json
import random

import pytest

from forgeline.data.spans import (detect_scheme, entities, entity_scores, read_conll, read_jsonl_sentences,
                                  to_iob2)
from forgeline.errors import DataLoadError

CONLL = "\ufeff-DOCSTART- O\r\n\r\nJohn\tNNP\tB-PER\r\nSmith\tNNP\tI-PER\r\nflew\tVBD\tO\r\nto\tTO\tO\r\nParis\tNNP\tB-LOC\r\n\r\nHi O\r\n"


def test_conll_with_a_bom_windows_line_ends_docstart_and_a_chosen_tag_column():
    first, second = read_conll(CONLL)
    assert first.tokens == ["John", "Smith", "flew", "to", "Paris"] and first.tags == ["B-PER", "I-PER", "O", "O", "B-LOC"]
    assert first.line == 3 and second.tokens == ["Hi"]
    pos = read_conll(CONLL, tag_column=1)[0]
    assert pos.tags[:2] == ["NNP", "NNP"]  # tags in another column than the configured one: read as configured


def test_a_conll_line_without_a_tag_is_named():
    with pytest.raises(DataLoadError, match=r"data.conll:3: one field \('Smith'\)"):
        read_conll("John B-PER\n\nSmith\n", where="data.conll")


def test_schemes_are_detected_converted_and_repaired():
    def sentences(*tag_lists):
        return read_jsonl_sentences("\n".join(json.dumps({"tokens": ["x"] * len(t), "tags": t}) for t in tag_lists))

    iob2 = sentences(["B-PER", "I-PER", "O", "B-LOC"])
    iob1 = sentences(["I-PER", "I-PER", "O", "I-LOC", "B-LOC"])
    bioes = sentences(["B-PER", "E-PER", "O", "S-LOC"])
    assert [detect_scheme(s) for s in (iob2, iob1, bioes)] == ["IOB2", "IOB1", "BIOES"]
    assert to_iob2(iob1[0].tags, "IOB1") == (["B-PER", "I-PER", "O", "B-LOC", "B-LOC"], 0)
    assert to_iob2(bioes[0].tags, "BIOES") == (["B-PER", "I-PER", "O", "B-LOC"], 0)
    assert to_iob2(["O", "I-PER", "I-PER", "B-LOC"], "IOB2") == (["O", "B-PER", "I-PER", "B-LOC"], 1)
    with pytest.raises(DataLoadError, match="mix BIOES .*line 2.*without E-.*line 1"):
        detect_scheme(sentences(["B-PER", "O"], ["S-LOC", "O"]))


def test_character_spans_on_accents_emoji_and_multiple_spaces():
    text = "Café  Zoë 😀 met   Ana-María in São Paulo."
    start = text.index("São")
    rows = [{"text": text, "entities": [{"start": 0, "end": 4, "label": "ORG"},
                                        {"start": start, "end": start + len("São Paulo"), "label": "LOC"}]},
            {"text": "Paris is big", "entities": [{"start": 1, "end": 5, "label": "LOC"}]},
            {"text": "New York", "entities": [{"start": 0, "end": 8, "label": "LOC"}, {"start": 4, "end": 8, "label": "LOC"}]},
            {"text": "short", "entities": [{"start": 0, "end": 50, "label": "X"}]}]
    first, cut, overlap, outside = read_jsonl_sentences("\n".join(json.dumps(r, ensure_ascii=False) for r in rows))
    spans = [(kind, first.offsets[a][0], first.offsets[b - 1][1]) for kind, a, b in entities(first.tags)]
    assert [(k, text[a:b]) for k, a, b in spans] == [("ORG", "Café"), ("LOC", "São Paulo")]
    assert first.problems == []
    assert cut.problems == ["span_cuts_word"] and overlap.problems == ["span_overlap"]
    assert outside.problems == ["span_out_of_bounds"]


def test_entity_scores_match_seqeval_strict_iob2():
    seqeval = pytest.importorskip("seqeval.metrics")
    from seqeval.scheme import IOB2

    rng = random.Random(0)

    def random_tags(n):
        out, prev = [], "O"
        for _ in range(n):
            kind = rng.choice(["PER", "LOC", "ORG"])
            choice = rng.random()
            if choice < 0.5:
                tag = "O"
            elif choice < 0.75 or prev == "O":
                tag = f"B-{kind}"
            else:
                tag = f"I-{prev.split('-')[1]}"
            out.append(tag)
            prev = tag
        return out

    truth = [random_tags(rng.randint(1, 30)) for _ in range(300)]
    pred = [[t if rng.random() < 0.8 else rng.choice(["O", "B-PER", "B-LOC"]) for t in row] for row in truth]
    pred = [to_iob2(p, "IOB2")[0] for p in pred]  # valid IOB2 on both sides
    ours = entity_scores(truth, pred)
    kw = {"mode": "strict", "scheme": IOB2}
    assert ours["precision"] == pytest.approx(seqeval.precision_score(truth, pred, **kw))
    assert ours["recall"] == pytest.approx(seqeval.recall_score(truth, pred, **kw))
    assert ours["f1"] == pytest.approx(seqeval.f1_score(truth, pred, **kw))
    assert ours["macro_f1"] == pytest.approx(seqeval.f1_score(truth, pred, average="macro", **kw))
    # a fixed case, by hand: 2 true entities, 2 predicted, 1 right (the other has a wrong boundary)
    fixed = entity_scores([["B-PER", "I-PER", "O", "B-LOC"]], [["B-PER", "I-PER", "O", "B-LOC"]])
    assert fixed["f1"] == 1.0
    half = entity_scores([["B-PER", "I-PER", "O", "B-LOC"]], [["B-PER", "O", "O", "B-LOC"]])
    assert (half["precision"], half["recall"], half["f1"]) == (0.5, 0.5, 0.5)
    assert half["token_accuracy"] == 0.75
