"""Structured pruning really removes heads, neurons, layers and vocabulary, and the pruned model
computes exactly what the masked teacher computes."""

import numpy as np
import pytest
import torch

from forgeline.training import prune as pr


def tiny_bert(layers: int = 3, heads: int = 4, hidden: int = 32, ffn: int = 64, vocab: int = 500, seed: int = 0):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                     intermediate_size=ffn, max_position_embeddings=64, num_labels=3)
    cfg._attn_implementation = "eager"
    return BertForSequenceClassification(cfg).eval()


def batches(n: int = 3, vocab: int = 500, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = torch.randint(5, vocab, (4, 12), generator=g)
        mask = torch.ones_like(ids)
        mask[0, 8:] = 0  # one padded row
        out.append(({"input_ids": ids, "attention_mask": mask}, torch.randint(0, 3, (4,), generator=g)))
    return out


def test_importance_scores_every_head_and_neuron_without_changing_weights():
    model = tiny_bert()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    scores = pr.importance(model, batches())
    assert scores.heads.shape == (3, 4) and scores.neurons.shape == (3, 64)
    assert (scores.heads > 0).all() and (scores.neurons >= 0).all() and scores.neurons.sum() > 0
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert all(p.grad is None for p in model.parameters())


def test_heads_neurons_and_layers_are_really_removed():
    model = tiny_bert()
    plan = pr.plan(pr.importance(model, batches()), layers=2, heads_fraction=0.5, ffn_fraction=0.5)
    assert plan.layers == [1, 2], "the last layer of each of 2 blocks of 1.5 layers"
    assert plan.describe() == {"layers": 2, "heads_per_layer": 2, "ffn_per_layer": 32}
    small = pr.apply(model, plan)
    assert len(small.bert.encoder.layer) == 2 and small.config.num_hidden_layers == 2
    layer = small.bert.encoder.layer[0]
    assert tuple(layer.attention.self.query.weight.shape) == (16, 32)  # 2 heads × 8 of 32
    assert tuple(layer.attention.output.dense.weight.shape) == (32, 16)
    assert tuple(layer.intermediate.dense.weight.shape) == (32, 32)
    assert tuple(layer.output.dense.weight.shape) == (32, 32)
    assert pr.parameter_count(small) < pr.parameter_count(model)
    assert len(model.bert.encoder.layer) == 3, "the teacher is untouched"


@pytest.mark.parametrize("layers", [None, 2])
def test_pruned_model_matches_the_masked_teacher(layers):
    model = tiny_bert()
    plan = pr.plan(pr.importance(model, batches()), layers=layers, heads_fraction=0.5, ffn_fraction=0.25)
    small = pr.apply(model, plan)
    with torch.no_grad():
        for inputs, _ in batches(seed=7):
            with pr.masked(model, plan):
                reference = model(**inputs).logits
            got = small(**inputs).logits
            full = model(**inputs).logits
            torch.testing.assert_close(got, reference, rtol=1e-5, atol=1e-5)
            assert not torch.allclose(full, reference, atol=1e-4), "the mask must have changed the output"


def test_the_least_important_heads_go():
    model = tiny_bert(layers=1)
    scores = pr.Importance(heads=np.array([[0.1, 5.0, 0.2, 3.0]]), neurons=np.arange(64, dtype=float)[None, :])
    plan = pr.plan(scores, layers=None, heads_fraction=0.5, ffn_fraction=0.5)
    assert plan.heads[0] == [1, 3] and plan.neurons[0] == list(range(32, 64))
    assert pr.apply(model, plan).bert.encoder.layer[0].attention.self.num_attention_heads == 2


def test_a_target_removing_every_head_of_a_layer_is_refused_with_a_clear_message():
    scores = pr.Importance(heads=np.ones((2, 12)), neurons=np.ones((2, 8)))
    with pytest.raises(pr.PruningError, match=r"compress.prune_heads=0.97 would remove every attention head"):
        pr.plan(scores, layers=None, heads_fraction=0.97, ffn_fraction=0.0)


def test_a_model_that_is_not_a_bert_encoder_is_refused():
    with pytest.raises(pr.PruningError, match="BERT-style encoders"):
        pr.encoder_layers(torch.nn.Linear(2, 2))


def test_vocabulary_cut_keeps_the_outputs_of_kept_tokens_and_maps_others_to_unk():
    model = tiny_bert(layers=1)
    unk = 3
    keep = list(range(0, 5)) + list(range(100, 200))
    import copy

    small = pr.VocabRemap(copy.deepcopy(model), keep, unk)
    assert small.config.vocab_size == 105 and small.model.get_input_embeddings().weight.shape[0] == 105
    inside = torch.randint(100, 200, (2, 10))
    unseen = inside.clone()
    unseen[:, 4] = 400
    with torch.no_grad():
        torch.testing.assert_close(small(input_ids=inside).logits, model(input_ids=inside).logits)
        as_unk = unseen.clone()
        as_unk[:, 4] = unk
        torch.testing.assert_close(small(input_ids=unseen).logits, model(input_ids=as_unk).logits)


def test_pruned_student_exports_with_smaller_initializers_and_fused_attention(tmp_path, trained):
    import onnx

    from forgeline.export.onnx import check_parity, export_onnx, fused_operators
    from forgeline.training.loop import collate, encode

    cfg, splits, result = trained
    texts = splits.train["text"].tolist()[:32]
    ids = encode(result.tokenizer, texts, cfg.model.max_length)
    y = torch.zeros(len(ids), dtype=torch.long)
    scores = pr.importance(result.model, [(collate(result.tokenizer.pad_token_id, ids, "cpu"), y)])
    small = pr.apply(result.model, pr.plan(scores, None, 0.5, 0.5))
    small = pr.VocabRemap(small, pr.used_tokens(ids, result.tokenizer.all_special_ids), result.tokenizer.unk_token_id)
    teacher_onnx = export_onnx(result.model, result.tokenizer, result.labels, tmp_path / "t.onnx", cfg.export,
                               cfg.model.max_length)
    student_onnx = export_onnx(small, result.tokenizer, result.labels, tmp_path / "s.onnx", cfg.export,
                               cfg.model.max_length)

    def weights(path):
        return {tuple(t.dims) for t in onnx.load(str(path)).graph.initializer if len(t.dims) == 2}

    def elements(path):
        return sum(int(np.prod(t.dims)) for t in onnx.load(str(path)).graph.initializer)

    assert (384, 1152) in weights(teacher_onnx) and (384, 576) in weights(student_onnx)  # fused QKV: 12 -> 6 heads
    assert (384, 1536) in weights(teacher_onnx) and (384, 768) in weights(student_onnx)  # FFN: 1536 -> 768
    assert elements(student_onnx) < elements(teacher_onnx) / 3  # the vocabulary is most of it
    assert fused_operators(student_onnx)["Attention"] == 1
    report = check_parity(small, result.tokenizer, student_onnx, splits.test["text"].tolist(), cfg.model.max_length,
                          cfg.export)
    assert report.ok and report.argmax_agreement == 1.0


@pytest.mark.parametrize(("n", "keep", "layers"), [(6, 3, [1, 3, 5]), (6, 2, [2, 5]), (6, 1, [5]), (6, 6, list(range(6))),
                                                  (6, 9, list(range(6))), (12, 4, [2, 5, 8, 11]), (6, 4, [1, 2, 4, 5])])
def test_a_student_keeps_the_last_layer_of_each_equal_block_of_the_teachers(n, keep, layers):
    assert pr.kept_layers(n, keep) == layers
