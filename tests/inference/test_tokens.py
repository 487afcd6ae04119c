"""Token classification's torch-free half: words, windows over long texts, pieces back to words, and spans
with exact character offsets (accents, emoji, runs of spaces) from the tokenizer a bundle ships."""

from __future__ import annotations

import numpy as np
import pytest

from forgeline.inference.tasks import spec_for
from forgeline.inference.tokens import (IGNORE, Tagged, TokenEncoder, owner_window, predict_tagged, tag_names, to_words,
                                        word_spans, word_tags)

TYPES = ("LOC", "PER")
SPEC = spec_for("token_classification", TYPES)


@pytest.fixture(scope="module")
def encoder():
    from forgeline.training.classifier import base_model_dir

    return TokenEncoder.from_file(base_model_dir("minilm") / "tokenizer.json", max_length=16, stride=4)


def oracle(spans_by_text: dict[str, list[tuple[int, int, str]]], encoder: TokenEncoder):
    """A logits function that knows the gold tags: each piece's word tag, scored from the piece ids the
    encoder produced (so windows and merging are what is tested, not a model)."""
    plan = {}
    for text, spans in spans_by_text.items():
        words = word_spans(text)
        tags = word_tags(words, spans, TYPES)
        ids, word_of = encoder.pieces(text, words)
        plan[tuple(ids)] = [tags[w] if w >= 0 else 0 for w in word_of]

    def logits(input_ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        out = np.zeros((*input_ids.shape, len(tag_names(TYPES))), dtype=np.float32)
        lead, tail = len(encoder.prefix), len(encoder.suffix)
        for r in range(len(input_ids)):
            row = input_ids[r, : int(mask[r].sum())].tolist()[lead : -tail or None]
            for ids, tags in plan.items():  # find this window inside a text
                for s in range(len(ids) - len(row) + 1):
                    if list(ids[s : s + len(row)]) == row:
                        for k, t in enumerate(tags[s : s + len(row)]):
                            out[r, lead + k, t] = 8.0
                        break
                else:
                    continue
                break
        return out

    return logits


def test_words_tags_and_windows(encoder):
    assert word_spans("Ana-María  met Zoë 😀!") == [(0, 3), (3, 4), (4, 9), (11, 14), (15, 18), (19, 20), (20, 21)]
    assert tag_names(TYPES) == ("O", "B-LOC", "I-LOC", "B-PER", "I-PER")
    words = word_spans("new york is big")
    assert word_tags(words, [(0, 8, "LOC")], TYPES) == [1, 2, 0, 0]
    assert encoder.window == 14 and encoder.windows(10) == [(0, 10)]
    assert encoder.windows(30) == [(0, 14), (10, 24), (20, 30)]
    assert owner_window(30, encoder.windows(30)).tolist()[10:14] == [0, 0, 1, 1]  # the half-way point of the overlap


def test_pieces_to_words_first_average_max():
    piece = np.array([[0.1, 0.9, 0.0, 0.0, 0.0], [0.9, 0.1, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.3, 0.7]], dtype=np.float32)
    word_of = np.array([0, 0, 1])
    assert to_words(piece, word_of, 3, 5, "first")[0].argmax() == 1
    assert np.allclose(to_words(piece, word_of, 3, 5, "average")[0], [0.5, 0.5, 0, 0, 0])
    assert to_words(piece, word_of, 3, 5, "max")[0].argmax() == 1 and to_words(piece, word_of, 3, 5, "max")[0, 1] == 0.9
    assert to_words(piece, word_of, 3, 5, "first")[2].tolist() == [1, 0, 0, 0, 0]  # a word with no piece reads O
    with pytest.raises(ValueError, match="aggregation"):
        to_words(piece, word_of, 3, 5, "mean")


TEXTS = {
    "Café  Zoë 😀 met   Ana-María in São Paulo.": None,
    "ÉLODIE went to 北京 and then to Zürich": None,
    ("the crowd in " + "very " * 40 + "old Lisboa cheered for João Gomes while the band played on and on") : None,
}


def gold(text: str) -> list[tuple[int, int, str]]:
    out = []
    for name, kind in (("Zoë", "PER"), ("Ana-María", "PER"), ("São Paulo", "LOC"), ("ÉLODIE", "PER"), ("北京", "LOC"),
                       ("Zürich", "LOC"), ("Lisboa", "LOC"), ("João Gomes", "PER")):
        at = text.find(name)
        if at >= 0:
            out.append((at, at + len(name), kind))
    return sorted(out)


def test_spans_have_exact_offsets_across_windows(encoder):
    texts = list(TEXTS)
    spans = {t: gold(t) for t in texts}
    assert len(encoder.pieces(texts[2], word_spans(texts[2]))[0]) > 3 * encoder.window  # scored in several windows
    tagged = predict_tagged(encoder, texts, oracle(spans, encoder), tags=5, batch_size=2)
    for t, out in zip(texts, tagged):
        found = out.entities(TYPES)
        assert [(e["start"], e["end"], e["label"]) for e in found] == spans[t]
        assert all(t[e["start"] : e["end"]] == e["text"] for e in found) and all(e["score"] > 0.99 for e in found)
    assert SPEC.decisions(tagged)[0] == tuple((a, b, k) for a, b, k in spans[texts[0]])
    frame = SPEC.frame(tagged)
    assert list(frame.columns) == ["entities"] and frame["entities"][1][1]["text"] == "北京"
    assert SPEC.answers(tagged[:1])[0]["entities"][0] == {"label": "PER", "start": 6, "end": 9, "text": "Zoë",
                                                           "score": pytest.approx(1.0, abs=0.01)}
    logged, confidence = SPEC.logged(tagged[:1])
    assert logged == ["PER:6-9|PER:18-27|LOC:31-40"] and confidence[0] > 0.99
    assert SPEC.agree(tagged, tagged).all() and SPEC.agreement(tagged, tagged) == 1.0
    flipped = [Tagged(t.text, t.words, np.roll(t.probs, 1, axis=1)) for t in tagged]  # every word's tag changes
    assert SPEC.agreement(tagged, flipped) == 0.0 and not SPEC.agree(tagged, flipped).any()


def test_decoding_follows_the_predicted_tags():
    text = "a b c d"
    probs = np.eye(5, dtype=np.float32)[[2, 2, 0, 4]]  # I-LOC I-LOC O I-PER: an I- after O starts an entity
    t = Tagged(text, word_spans(text), probs)
    assert [(e["label"], e["text"]) for e in t.entities(TYPES)] == [("LOC", "a b"), ("PER", "d")]
    probs = np.eye(5, dtype=np.float32)[[1, 3, 4, 1]]  # B-LOC B-PER I-PER B-LOC: a B- ends the open entity
    t = Tagged(text, word_spans(text), probs)
    assert [(e["label"], e["text"]) for e in t.entities(TYPES)] == [("LOC", "a"), ("PER", "b c"), ("LOC", "d")]
    assert Tagged("", [], np.zeros((0, 5), dtype=np.float32)).entities(TYPES) == []


def test_training_labels_sit_on_first_pieces(encoder):
    from forgeline.tasks.token_classification import TokenClassification

    class Tok:  # the training side takes a transformers tokenizer; its backend is the same tokenizers object
        backend_tokenizer = encoder._tok

    text = "Zoë flew to Tegucigalpa"
    spans = ((0, 3, "PER"), (12, 23, "LOC"))
    task = TokenClassification()
    ids, labels = task.encode_train(Tok(), [text], [spans], SPEC, 16)
    assert len(ids) == 1 and len(ids[0]) == len(labels[0])
    named = [tag_names(TYPES)[x] if x != IGNORE else "-" for x in labels[0]]
    pieces = encoder._tok.encode(text, add_special_tokens=False).tokens
    assert pieces[0] == "zoe" and len(pieces) > 4  # accents stripped by the uncased vocabulary; the city in pieces
    assert named[0] == "-" and named[-1] == "-"  # [CLS], [SEP]
    assert named[1:-1] == ["B-PER", "O", "O", "B-LOC"] + ["-"] * (len(pieces) - 4)
    _, all_labels = TokenClassification(label_all_tokens=True).encode_train(Tok(), [text], [spans], SPEC, 16)
    assert [tag_names(TYPES)[x] for x in all_labels[0][1:-1]] == ["B-PER", "O", "O", "B-LOC"] + ["I-LOC"] * (len(pieces) - 4)
    long_ids, _ = task.encode_train(Tok(), [text * 8], [()], SPEC, 16)
    assert len(long_ids) > 2 and all(len(x) <= 16 for x in long_ids)  # windows, not a cut
