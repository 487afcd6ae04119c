"""Knowledge distillation: the fine-tuned model (teacher) trains a smaller student on the training
split with soft targets plus the hard labels (Hinton et al. 2015):

    loss = alpha * T² * KL(softmax(teacher / T) || softmax(student / T)) + (1 - alpha) * CE(student, y)

for single-label classification; each task declares its own (``Task.distill_loss``: per-label binary
soft targets for multi-label, MSE to the teacher's score for regression).

With ``compress.distill_hidden_weight`` > 0 each student layer is also pulled towards the output of
the teacher layer it was cut from (MSE, as TinyBERT's intermediate-layer loss). The teacher's logits and,
within ``HIDDEN_CACHE_BYTES``, its layer outputs come from one pass before the first epoch (it is frozen
and runs without dropout). Batching, dynamic
padding, the optimizer and its schedule are the training stage's; the best epoch by the task's primary
validation metric is kept.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from forgeline.config.schema import CompressConfig, TrainConfig
from forgeline.training import Model
from forgeline.training.loop import (_optimizer, autocast_for, batch_targets, collate, encode, linear_warmup,
                                     make_batches, predict_proba, set_seed)


@dataclass
class DistillResult:
    model: Model
    best_epoch: int
    best_val_macro_f1: float
    history: list[dict[str, float]] = field(default_factory=list)


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, y: torch.Tensor,
                      temperature: float, alpha: float, task) -> torch.Tensor:
    return task.distill_loss(student_logits, teacher_logits, y, temperature, alpha)


def hidden_loss(student_states: Sequence[torch.Tensor], teacher_states: Sequence[torch.Tensor],
                layer_map: Sequence[int], mask: torch.Tensor) -> torch.Tensor:
    """Mean over the student's layers of the MSE between its output and the output of the teacher layer
    it was cut from, over real (unpadded) tokens. ``*_states[0]`` is the embedding output."""
    weight = mask.unsqueeze(-1).float()
    total = weight.sum() * student_states[1].shape[-1]
    losses = [(((s.float() - teacher_states[t + 1].float()) ** 2) * weight).sum() / total
              for s, t in zip(student_states[1:], layer_map)]
    return torch.stack(losses).mean()


HIDDEN_CACHE_BYTES = 2 * 1024**3
"""Above this the teacher's layer outputs are recomputed each step instead of kept from one pass."""


@dataclass
class TeacherOutputs:
    logits: torch.Tensor | list[torch.Tensor]
    """Per example: (examples, outputs), or per token a list of (pieces, outputs) tensors."""
    states: list[torch.Tensor] | None = None
    """Per example, the kept teacher layers' outputs over its real tokens: (layers, tokens, hidden), CPU."""


@torch.inference_mode()
def teacher_outputs(teacher: Model, ids: list[list[int]], pad_id: int, device: str,
                    batch_size: int = 64, sep_id: int | None = None, layers: Sequence[int] = ()) -> TeacherOutputs:
    """The frozen teacher's logits for every example and, for ``layers``, its layer outputs, from one
    forward pass (it runs without dropout, so one pass gives what a forward per distillation step gave).
    One pass for both: two passes over the default preset's 8,100 distillation texts cost about 35 s
    more on the 2-core CPU than this one."""
    from forgeline.training.classifier import output_spec_of

    teacher.eval()
    per_token = output_spec_of(teacher).tokens
    logits: torch.Tensor | list = [None] * len(ids) if per_token else torch.zeros(len(ids), teacher.config.num_labels)
    states: list[torch.Tensor] | None = [None] * len(ids) if len(layers) else None
    order = np.argsort([len(x) for x in ids], kind="stable")
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        with autocast_for(device):
            out = teacher(**collate(pad_id, [ids[i] for i in idx], device, sep_id=sep_id),
                          output_hidden_states=states is not None)
        batch_logits = out.logits.float().cpu()
        if per_token:
            for r, i in enumerate(idx):
                logits[i] = batch_logits[r, : len(ids[i])]
        else:
            logits[torch.from_numpy(idx)] = batch_logits
        if states is not None:
            picked = torch.stack([out.hidden_states[t + 1].float() for t in layers], dim=1).cpu()  # (batch, layers, width, hidden)
            for r, i in enumerate(idx):
                states[i] = picked[r, :, : len(ids[i])].clone()
    return TeacherOutputs(logits, states)


def states_to_keep(teacher: Model, ids: list[list[int]], layer_map: Sequence[int] | None,
                   cfg: CompressConfig) -> Sequence[int]:
    """The teacher layers whose outputs are kept from one pass over ``ids``: ``layer_map`` when the
    layer-output loss is on and they fit in ``HIDDEN_CACHE_BYTES``, else none."""
    if not layer_map or cfg.distill_hidden_weight <= 0:
        return ()
    fits = sum(len(x) for x in ids) * len(layer_map) * teacher.config.hidden_size * 4 <= HIDDEN_CACHE_BYTES
    return layer_map if fits else ()


def _state_batch(states: list[torch.Tensor], idx: np.ndarray, width: int) -> tuple[torch.Tensor, ...]:
    """The kept teacher layer outputs of a batch, zero-padded to ``width`` (padding is masked in the loss),
    as ``hidden_loss`` takes them: index t + 1 holds teacher layer t."""
    first = states[idx[0]]
    batch = torch.zeros(len(idx), first.shape[0], width, first.shape[-1])
    for r, i in enumerate(idx):
        batch[r, :, : states[i].shape[1]] = states[i]
    return batch.unbind(dim=1)


def _soft_batch(soft: torch.Tensor | list[torch.Tensor], idx: np.ndarray, width: int) -> torch.Tensor:
    if isinstance(soft, torch.Tensor):
        return soft[idx]
    out = torch.zeros(len(idx), width, soft[idx[0]].shape[-1])
    for r, i in enumerate(idx):
        out[r, : len(soft[i])] = soft[i]
    return out


def distill(student: Model, teacher: Model, tokenizer, ids: list[list[int]],
            train_y: np.ndarray, val_texts: Sequence[str], val_y: np.ndarray, cfg: CompressConfig,
            tcfg: TrainConfig, max_length: int, device: str, seed: int,
            log: Callable[[dict[str, float], int], None] | None = None,
            *, task, layer_map: Sequence[int] | None = None, val_pairs: Sequence[str] | None = None,
            teacher_out: TeacherOutputs | None = None) -> DistillResult:
    """Train ``student`` (changed in place and returned as the best epoch's weights) on the teacher's
    soft targets for the training texts' token ``ids`` for ``cfg.distill_epochs`` epochs. With ``layer_map`` (student layer i was teacher
    layer ``layer_map[i]``) and ``cfg.distill_hidden_weight`` > 0, each student layer's output is also
    pulled towards its teacher layer's (MSE over real tokens): kept from one teacher pass within
    ``HIDDEN_CACHE_BYTES``, else a teacher forward per step. ``teacher_out``: the caller's
    ``teacher_outputs`` of these ``ids`` (and ``layer_map``), already computed."""
    from forgeline.training.classifier import output_spec_of, sep_id_of

    set_seed(seed)
    log = log or (lambda metrics, step: None)
    student.to(device)
    teacher.to(device)
    pad, sep, spec = tokenizer.pad_token_id, sep_id_of(teacher), output_spec_of(teacher)
    lengths = [len(x) for x in ids]
    hidden = bool(layer_map) and cfg.distill_hidden_weight > 0
    keep = states_to_keep(teacher, ids, layer_map, cfg)
    if teacher_out is None or (keep and teacher_out.states is None):
        teacher_out = teacher_outputs(teacher, ids, pad, device, tcfg.eval_batch_size, sep, keep)
    soft, kept = teacher_out.logits, teacher_out.states if keep else None
    targets = batch_targets(train_y)
    optimizer = _optimizer(student, tcfg.model_copy(update={"learning_rate": cfg.distill_learning_rate}))
    total = math.ceil(len(ids) / tcfg.batch_size) * cfg.distill_epochs
    scheduler = linear_warmup(optimizer, total, int(0.1 * total))
    teacher.eval()
    kept_map = list(range(len(layer_map or ())))  # hidden_loss reads teacher layer t at index t + 1: the kept ones, renumbered
    rng = np.random.default_rng(seed)
    best_f1, best_epoch, best_state, history = -1.0, 0, None, []
    for epoch in range(1, cfg.distill_epochs + 1):
        student.train()
        losses = []
        for idx in make_batches(lengths, tcfg.batch_size, rng, tcfg.length_grouping):
            batch = collate(pad, [ids[i] for i in idx], device, sep_id=sep)
            with autocast_for(device):
                out = student(**batch, output_hidden_states=hidden)
            width = batch["input_ids"].shape[1]
            loss = task.distill_loss(out.logits.float(), _soft_batch(soft, idx, width).to(device),
                                     targets(idx, width).to(device), cfg.temperature, cfg.alpha)
            if kept is not None:
                target = [torch.empty(0), *(t.to(device) for t in _state_batch(kept, idx, width))]  # [0]: not read
                loss = loss + cfg.distill_hidden_weight * hidden_loss(out.hidden_states, target, kept_map,
                                                                      batch["attention_mask"])
            elif hidden:
                with torch.no_grad(), autocast_for(device):
                    target = teacher(**batch, output_hidden_states=True).hidden_states
                loss = loss + cfg.distill_hidden_weight * hidden_loss(out.hidden_states, target, layer_map or (),
                                                                      batch["attention_mask"])
            loss.backward()
            torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            losses.append(float(loss.detach()))
        outputs = predict_proba(student, tokenizer, val_texts, max_length, tcfg.eval_batch_size, device, val_pairs)
        f1 = float(task.metrics(val_y, outputs, spec)[task.primary.name])
        name = task.primary.name
        record = {"epoch": float(epoch), "distill_loss": float(np.mean(losses)), f"val_{name}": f1}
        history.append(record)
        log({"distill.loss": record["distill_loss"], f"distill.val_{name}": f1}, epoch)
        if best_state is None or task.primary.worse_by(f1, best_f1) < 0:
            best_f1, best_epoch, best_state = f1, epoch, copy.deepcopy(student.state_dict())
    student.load_state_dict(best_state)
    return DistillResult(student.eval(), best_epoch, best_f1, history)


@dataclass
class Student:
    model: Model
    info: dict[str, float]
    """Shape (layers, heads and FFN neurons per layer, vocabulary), parameters, distillation epochs."""
    history: list[dict[str, float]]


def make_student(teacher: Model, tokenizer, train_texts: Sequence[str], train_y: np.ndarray,
                 val_texts: Sequence[str], val_y: np.ndarray, cfg: CompressConfig, tcfg: TrainConfig,
                 max_length: int, device: str, seed: int,
                 log: Callable[[dict[str, float], int], None] | None = None, *, task,
                 train_pairs: Sequence[str] | None = None, val_pairs: Sequence[str] | None = None,
                 transfer: Sequence[str] = (), transfer_pairs: Sequence[str] | None = None,
                 vocab_texts: Sequence[str] = (), vocab_pairs: Sequence[str] | None = None) -> Student:
    """Structured pruning of ``teacher`` by importance on training batches, then distillation.
    ``train_y``: targets as the task's loss takes them; ``val_y``: as its metrics take them.
    ``transfer``: unlabelled texts distilled on too, the teacher's prediction as their hard label
    (``compress.distill_transfer_rows``; single-label). ``vocab_texts``: unlabelled texts whose tokens the
    cut vocabulary keeps too (``compress.vocab_rows``).
    Raises ``PruningError`` for a target the model cannot take."""
    from forgeline.training import prune
    from forgeline.training.classifier import output_spec_of, sep_id_of

    sep = sep_id_of(teacher)
    per_piece = task.encode_train(tokenizer, list(train_texts), train_y, output_spec_of(teacher), max_length)
    if per_piece is None:
        ids = encode(tokenizer, train_texts, max_length, train_pairs if sep is not None else None)
    else:  # token classification: windows with a label per piece
        ids, train_y = per_piece
    targets = batch_targets(train_y)
    rng = np.random.default_rng(seed)
    picked = make_batches([len(x) for x in ids], tcfg.batch_size, rng, True)[: cfg.importance_batches]
    teacher = teacher.to(device)
    batches = []
    for b in picked:
        batch = collate(tokenizer.pad_token_id, [ids[i] for i in b], device, sep_id=sep)
        batches.append((batch, targets(b, batch["input_ids"].shape[1]).to(device)))
    scores = prune.importance(teacher, batches, task.loss)
    plan = prune.plan(scores, cfg.student_layers, cfg.prune_heads, cfg.prune_ffn)
    student = prune.apply(teacher, plan)
    teacher_out = None
    if len(transfer):  # after the importance batches, which need the training split's labels
        extra = encode(tokenizer, list(transfer), max_length, transfer_pairs if sep is not None else None)
        # one teacher pass gives the soft targets, the kept layer outputs and the transfer texts' hard labels
        teacher_out = teacher_outputs(teacher, ids + extra, tokenizer.pad_token_id, device, tcfg.eval_batch_size, sep,
                                      states_to_keep(teacher, ids + extra, plan.layers, cfg))
        assert isinstance(teacher_out.logits, torch.Tensor)  # one row per text: transfer rows are single-label
        pseudo = teacher_out.logits[len(ids):].argmax(-1)
        ids, train_y = ids + extra, np.concatenate([np.asarray(train_y), pseudo.numpy().astype(np.asarray(train_y).dtype)])
    info: dict[str, float] = {k: float(v) for k, v in plan.describe().items()}
    if cfg.prune_vocab and tokenizer.unk_token_id is not None:
        # the texts it learns from and the source's unlabelled ones, never the validation texts: they score
        # the student on unseen words as the test rows and served traffic do
        more = encode(tokenizer, list(vocab_texts), max_length, vocab_pairs if sep is not None else None) if len(vocab_texts) else []
        keep = prune.used_tokens(ids + more, tokenizer.all_special_ids)
        student = prune.VocabRemap(student, keep, tokenizer.unk_token_id)
    info["transfer_rows"] = float(len(transfer))
    info["vocabulary"] = float(student.config.vocab_size)
    info["parameters"] = float(prune.parameter_count(student))
    info["teacher_parameters"] = float(prune.parameter_count(teacher))
    result = distill(student, teacher, tokenizer, ids, train_y, val_texts, val_y, cfg, tcfg, max_length,
                     device, seed, log, layer_map=plan.layers, task=task, val_pairs=val_pairs, teacher_out=teacher_out)
    info["distill_best_epoch"] = float(result.best_epoch)
    info["distill_val_macro_f1"] = result.best_val_macro_f1
    return Student(result.model, info, result.history)
