"""Fine-tune the model for its task: dynamic padding, AdamW + linear warmup, early stopping on the
task's primary validation metric (macro-F1 for classification, RMSE for regression).

On CUDA, forward and backward run in bf16 (a bf16 copy of the weights with fp32 master weights for
AdamW, or bf16 autocast: ``train.precision``) with the fused short-sequence attention
(``train.attention``); CPU trains in fp32. The best epoch is saved as safetensors and reloaded
at the end, so what later stages see is the best checkpoint, not the last epoch.
"""

from __future__ import annotations

import copy
import math
import os
import random
import time
from collections.abc import Callable, Sequence
from typing import Any
from contextlib import nullcontext
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from forgeline.config.schema import PipelineConfig, TrainConfig
from forgeline.inference.tasks import OutputSpec, WordOutputs
from forgeline.training.kernels import short_attention
from forgeline.training.classifier import (build_classifier, freeze_token_embeddings, load_checkpoint, load_tokenizer,
                                           output_spec_of, sep_id_of, set_output_spec)
from forgeline.data.split import Splits
from forgeline.settings import failpoint
from forgeline.training import Model

MetricsLogger = Callable[[dict[str, float], int], None]
EPOCH_REPORT: ContextVar[Callable[[int, float], None] | None] = ContextVar("forgeline_epoch_report", default=None)
"""Called with (epoch, the primary validation metric) after each epoch when set: a hyperparameter search
(``pipeline.tuning``) reports to its trial here, and its pruner stops the training by raising. A context
variable, not a parameter: the training stage runs through the stage runner, which knows nothing of trials."""


@dataclass
class TrainResult:
    model: Model
    tokenizer: Any  # a transformers fast tokenizer
    labels: list[str]
    checkpoint_dir: Path
    device: str
    best_epoch: int
    best_val_macro_f1: float
    """The best epoch's validation value of the task's primary metric (macro-F1 unless the task says
    otherwise: ``val_metric``)."""
    steps: int
    history: list[dict[str, float]] = field(default_factory=list)
    stopped_early: bool = False
    train_seconds: float = 0.0
    samples_per_second: float = 0.0
    tokens_per_second: float = 0.0
    """Real (unpadded) tokens per second."""
    step_samples_per_second: float = 0.0
    """Samples per second of the optimizer steps alone (validation excluded)."""
    spec: OutputSpec | None = None
    """How the model's logits are read (task, labels, tuned thresholds, target scale, pairs)."""
    val_metric: str = "macro_f1"


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def resolve_device(choice: str) -> str:
    if choice == "cuda" and not torch.cuda.is_available():
        from forgeline.errors import ConfigError

        raise ConfigError("train.device is 'cuda' but no CUDA device is visible; use 'auto' or 'cpu'")
    if choice == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return choice


def autocast_for(device: str):
    if device == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


def encode(tokenizer, texts: Sequence[str], max_length: int, pairs: Sequence[str] | None = None) -> list[list[int]]:
    """Token ids per text, or per (text, pair): ``[CLS] a [SEP] b [SEP]``, the longer text cut first."""
    if pairs is None:
        return tokenizer(list(texts), truncation=True, max_length=max_length)["input_ids"]
    return tokenizer(list(texts), list(pairs), truncation="longest_first", max_length=max_length)["input_ids"]


def segment_ids(input_ids: torch.Tensor, sep_id: int) -> torch.Tensor:
    """0 up to and including the first separator, 1 after it (BERT's pair segments), computed from the
    ids alone: the exported graph does the same (``export.onnx``), so a pair model keeps two inputs."""
    sep = (input_ids == sep_id).long()
    return ((torch.cumsum(sep, dim=1) - sep) >= 1).long()


def collate(pad_id: int, ids: list[list[int]], device: str, multiple: int = 1,
            sep_id: int | None = None) -> dict[str, torch.Tensor]:
    """Pad to the longest sequence in the batch (dynamic padding), rounded up to ``multiple``; with
    ``sep_id`` (a pair model) add the segment ids."""
    lengths = np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))
    width = int(-(-int(lengths.max()) // multiple) * multiple)
    input_ids = np.full((len(ids), width), pad_id, dtype=np.int64)
    mask = (np.arange(width)[None, :] < lengths[:, None]).astype(np.int64)
    input_ids[mask.astype(bool)] = np.fromiter((t for x in ids for t in x), dtype=np.int64, count=int(lengths.sum()))
    pin = device == "cuda"
    tensors = {"input_ids": torch.from_numpy(input_ids), "attention_mask": torch.from_numpy(mask)}
    if sep_id is not None:
        tensors["token_type_ids"] = segment_ids(tensors["input_ids"], sep_id)
    return {k: (v.pin_memory() if pin else v).to(device, non_blocking=True) for k, v in tensors.items()}


def make_batches(lengths: Sequence[int], batch_size: int, rng: np.random.Generator,
                 group_by_length: bool, group: int = 50) -> list[np.ndarray]:
    """One epoch of batches (index arrays) covering every example once.

    With ``group_by_length`` a random permutation is cut into groups of ``group`` batches, each group
    is sorted by length and cut into batches, and the batch order is shuffled: batches hold texts of
    similar length (little padding) while which texts meet stays random."""
    perm = rng.permutation(len(lengths))
    if not group_by_length:
        return [perm[i : i + batch_size] for i in range(0, len(perm), batch_size)]
    lens = np.asarray(lengths)
    span = batch_size * group
    batches = []
    for start in range(0, len(perm), span):
        chunk = perm[start : start + span]
        chunk = chunk[np.argsort(-lens[chunk], kind="stable")]
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    order = rng.permutation(len(batches))
    return [batches[i] for i in order]


@torch.inference_mode()
def predict_proba(model, tokenizer, texts: Sequence[str], max_length: int, batch_size: int = 64,
                  device: str | None = None, pairs: Sequence[str] | None = None) -> np.ndarray:
    """The task's outputs for ``texts`` (class probabilities; per-label probabilities; scores in the
    target's units: ``OutputSpec.activate``), batching by length to keep padding small."""
    device = device or next(model.parameters()).device.type
    model.eval()
    spec, sep = output_spec_of(model), sep_id_of(model)
    if isinstance(spec, WordOutputs):
        return predict_tagged_torch(model, tokenizer, texts, max_length, spec, batch_size, device)
    ids = encode(tokenizer, texts, max_length, pairs if sep is not None else None)
    order = np.argsort([len(x) for x in ids], kind="stable")
    out = np.zeros((len(ids), model.config.num_labels), dtype=np.float32)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        batch = collate(tokenizer.pad_token_id, [ids[i] for i in idx], device, sep_id=sep)
        with autocast_for(device):
            logits = model(**batch).logits
        out[idx] = spec.activate(logits.float().cpu().numpy())
    return out


@torch.inference_mode()
def predict_tagged_torch(model, tokenizer, texts: Sequence[str], max_length: int, spec: WordOutputs, batch_size: int,
                         device: str) -> np.ndarray:
    """Token classification: ``inference.tokens.predict_tagged`` with this PyTorch model as the logits
    function, so training, evaluation and the deployed ONNX model share windows and word aggregation."""
    from forgeline.inference.tokens import TokenEncoder, predict_tagged

    def logits(input_ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        batch = {"input_ids": torch.from_numpy(input_ids).to(device), "attention_mask": torch.from_numpy(mask).to(device)}
        with autocast_for(device):
            return model(**batch).logits.float().cpu().numpy()

    return predict_tagged(TokenEncoder(tokenizer, max_length, spec.stride), list(texts), logits, spec.width, batch_size,
                          spec.aggregation)


def pad_labels(rows: Sequence[Sequence[int]], width: int) -> torch.Tensor:
    """Per-piece labels right-padded with the ignored label to the batch's width."""
    from forgeline.inference.tokens import IGNORE

    out = np.full((len(rows), width), IGNORE, dtype=np.int64)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return torch.from_numpy(out)


def batch_targets(train_y) -> Callable[[np.ndarray, int], torch.Tensor]:
    """``targets(rows, width)``: the loss's targets of a batch. A list (token classification) holds a
    label list per example, padded to the batch's width; an array one target per example."""
    if isinstance(train_y, list):
        return lambda idx, width: pad_labels([train_y[i] for i in idx], width)
    train_y = np.asarray(train_y)
    y = torch.as_tensor(train_y, dtype=torch.long if train_y.dtype.kind in "iu" else torch.float32)
    return lambda idx, width: y[idx]


class Bf16Master:
    """A bf16 working copy of ``model`` runs forward and backward; ``model`` keeps the fp32 master
    weights that the optimizer updates (and that are saved and evaluated)."""

    def __init__(self, model: Model):
        self.model = model
        self.work = copy.deepcopy(model).to(torch.bfloat16)
        self.pairs = [(p, w) for p, w in zip(model.parameters(), self.work.parameters()) if p.requires_grad]

    def grads_to_master(self) -> None:
        """Move the working copy's gradients into fp32 master gradients (kept between steps)."""
        dst, src = [], []
        for p, w in self.pairs:
            if w.grad is None:
                p.grad = None  # unused this step: the optimizer skips it
                continue
            if p.grad is None:
                p.grad = torch.empty_like(p)
            dst.append(p.grad)
            src.append(w.grad)
            w.grad = None
        if dst:
            torch._foreach_copy_(dst, src)

    @torch.no_grad()
    def master_to_work(self) -> None:
        torch._foreach_copy_([w for _, w in self.pairs], [p for p, _ in self.pairs])


class TrainStep:
    """One optimizer step as the training stage runs it: forward and backward (compiled with CUDA
    graphs when ``train.compile``), grad-norm clip at 1.0, AdamW. ``forgeline bench`` times this."""

    def __init__(self, model: Model, tcfg: TrainConfig, device: str, task):
        self.model, self.device = model, device
        self.task = task
        if tcfg.freeze_embeddings:
            freeze_token_embeddings(model)
        cuda = device == "cuda"
        self.fused_attention = cuda and tcfg.attention == "auto" and short_attention.enable(model)
        self.master = Bf16Master(model) if cuda and tcfg.precision in ("auto", "bf16") else None
        work = self.master.work if self.master else model
        self.world = _world()
        if self.world > 1:  # gradients averaged across ranks in the backward pass
            from torch.nn.parallel import DistributedDataParallel

            work = DistributedDataParallel(work, device_ids=[torch.cuda.current_device()] if cuda else None)
        self.compiled = tcfg.compile and cuda
        # static shapes replayed as CUDA graphs: no per-kernel launch cost, which bounds small-model
        # steps. Widths are padded to multiples of 32, so max_length/32 shapes are compiled.
        self.forward = torch.compile(work, mode="reduce-overhead", dynamic=False) if self.compiled else work
        self.width_multiple = 32 if self.compiled else (8 if cuda else 1)  # tensor-core friendly widths
        self.optimizer = _optimizer(model, tcfg)
        self.trainable = [p for p in model.parameters() if p.requires_grad]

    @property
    def precision(self) -> str:
        return "bf16" if self.master else ("amp" if self.device == "cuda" else "fp32")

    def train(self) -> None:
        self.model.train()
        if self.master:
            self.master.work.train()

    def __call__(self, batch: dict[str, torch.Tensor], y: torch.Tensor, global_size: int | None = None) -> torch.Tensor:
        """``global_size``: examples in the whole step across ranks. Each rank's loss is its sum over
        that count times the world size, so DDP's averaging yields the one-process gradient of the
        same global batch even when the shards differ in size. Returns this rank's share of the
        global mean loss (summed over ranks: the mean)."""
        if self.compiled:
            torch.compiler.cudagraph_mark_step_begin()
        with nullcontext() if self.master else autocast_for(self.device):
            logits = self.forward(**batch).logits
        if self.world > 1:
            share = self.task.loss(logits, y, reduction="sum") / global_size
            loss = share * self.world
        else:
            share = loss = self.task.loss(logits, y)
        loss.backward()
        if self.master:
            self.master.grads_to_master()
        torch.nn.utils.clip_grad_norm_(self.trainable, 1.0)
        self.optimizer.step()
        if self.master:
            self.master.master_to_work()  # master grads are overwritten next step, not zeroed
        else:
            self.optimizer.zero_grad(set_to_none=True)
        return share.detach()


def _world() -> int:
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _rank() -> int:
    import torch.distributed as dist

    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def _sum_over_ranks(value: torch.Tensor) -> torch.Tensor:
    if _world() > 1:
        import torch.distributed as dist

        value = value.clone()
        dist.all_reduce(value)
    return value


def _from_rank0(flag: bool, device: str) -> bool:
    if _world() == 1:
        return flag
    import torch.distributed as dist

    t = torch.tensor([int(flag)], device=device)
    dist.broadcast(t, 0)
    return bool(t.item())


def _optimizer(model: Model, cfg: TrainConfig) -> torch.optim.Optimizer:
    decay: list[torch.nn.Parameter] = []
    no_decay: list[torch.nn.Parameter] = []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or "LayerNorm" in name or name.endswith(".bias") else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.learning_rate, fused=True if next(model.parameters()).is_cuda else None)


def linear_warmup(optimizer: torch.optim.Optimizer, total_steps: int, warmup: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Learning rate rising linearly over ``warmup`` steps, then falling linearly to 0 at ``total_steps``."""

    def lr_lambda(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(1, warmup)
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda)


def train_model(splits: Splits, labels: list[str], cfg: PipelineConfig, out_dir: Path,
                log: MetricsLogger | None = None) -> TrainResult:
    """One process, or one rank of a torch.distributed job (``training.distributed``): every rank sees
    the same batches in the same order and trains on its contiguous share of each; rank 0 validates,
    decides early stopping for all and saves the best checkpoint (other ranks return no model)."""
    from forgeline.tasks import get_task

    tcfg = cfg.train
    set_seed(cfg.seed)
    if tcfg.num_threads:
        torch.set_num_threads(tcfg.num_threads)
    device = resolve_device(tcfg.device)
    task = get_task(cfg.task)
    tokenizer = load_tokenizer(cfg.model)
    pairs = "text_pair" in splits.train.columns
    sep = tokenizer.sep_token_id if pairs else None
    spec = task.output_spec(labels, splits.train["label"], pairs)
    model = build_classifier(cfg.model, spec, sep_id=sep)
    train_target = task.train_y(splits.train["label"], spec)
    task.init_head(model, train_target)
    model = model.to(device)
    train_step = TrainStep(model, tcfg, device, task)
    world, rank = _world(), _rank()

    def pair_of(frame):
        return frame["text_pair"].tolist() if pairs else None

    per_piece = task.encode_train(tokenizer, splits.train["text"].tolist(), splits.train["label"], spec,
                                  cfg.model.max_length)
    if per_piece is None:
        train_ids = encode(tokenizer, splits.train["text"].tolist(), cfg.model.max_length, pair_of(splits.train))
        targets = batch_targets(train_target)
    else:  # token classification: windows of pieces with a label each
        train_ids, piece_labels = per_piece
        targets = batch_targets(piece_labels)
    train_len = [len(x) for x in train_ids]
    val_texts, val_pairs = splits.val["text"].tolist(), pair_of(splits.val)
    val_y = task.y(splits.val["label"], spec)
    val_train_y = None if per_piece is not None else torch.as_tensor(task.train_y(splits.val["label"], spec))
    primary = task.primary

    steps_per_epoch = math.ceil(len(train_ids) / tcfg.batch_size)
    total_steps = steps_per_epoch * tcfg.epochs
    if tcfg.max_steps:
        total_steps = min(total_steps, tcfg.max_steps)
    scheduler = linear_warmup(train_step.optimizer, total_steps, int(tcfg.warmup_ratio * total_steps))
    ckpt = out_dir / "checkpoint"
    rng = np.random.default_rng(cfg.seed)
    log = log or (lambda metrics, step: None)

    best_value, best_epoch, bad_epochs, step, seen, tokens = None, 0, 0, 0, 0, 0
    history: list[dict[str, float]] = []
    stopped_early = False
    t0 = time.perf_counter()
    train_time = 0.0
    for epoch in range(1, tcfg.epochs + 1):
        train_step.train()
        t_epoch = time.perf_counter()
        batches = make_batches(train_len, tcfg.batch_size, rng, tcfg.length_grouping)
        bar = _progress(batches, tcfg.progress_bar, f"epoch {epoch}/{tcfg.epochs}")
        running = torch.zeros((), device=device)
        n_batches = 0
        for idx in bar:
            mine = np.array_split(idx, world)[rank] if world > 1 else idx
            if len(mine) == 0:  # a last batch smaller than the world: skipped by every rank alike
                continue
            batch = collate(tokenizer.pad_token_id, [train_ids[i] for i in mine], device, train_step.width_multiple, sep)
            y = targets(mine, batch["input_ids"].shape[1]).to(device, non_blocking=True)
            loss = train_step(batch, y, len(idx))
            scheduler.step()
            step += 1
            seen += len(idx)
            tokens += sum(train_len[i] for i in idx)
            running += loss  # no host sync per step: the GPU runs ahead of Python
            n_batches += 1
            if step % 10 == 0:
                loss_value = float(_sum_over_ranks(loss))
                if hasattr(bar, "set_postfix"):
                    bar.set_postfix(loss=f"{loss_value:.4f}")
                log({"train_loss": loss_value, "learning_rate": float(scheduler.get_last_lr()[0])}, step)
            if tcfg.max_steps and step >= tcfg.max_steps:
                break
        if device == "cuda":
            torch.cuda.synchronize()
        train_time += time.perf_counter() - t_epoch
        running = _sum_over_ranks(running)
        if rank != 0:  # rank 0 validates and decides; the others follow its decision
            if _from_rank0(False, device) or (tcfg.max_steps and step >= tcfg.max_steps):
                break
            continue
        outputs = predict_proba(model, tokenizer, val_texts, cfg.model.max_length, tcfg.eval_batch_size, device, val_pairs)
        epoch_spec = task.tune(spec, val_y, outputs)  # multi-label thresholds; the spec itself for other tasks
        metrics = task.metrics(val_y, outputs, epoch_spec)
        val_loss = float("nan")  # token classification: its outputs are per word, the loss per piece
        if val_train_y is not None:
            with torch.no_grad():  # the training loss on the validation rows, from the outputs' logits
                val_loss = float(task.loss(task.logits_of(outputs, epoch_spec), val_train_y))
        record = {"epoch": float(epoch), "train_loss_epoch": float(running) / max(1, n_batches), "val_loss": val_loss}
        record |= {f"val_{k}": v for k, v in metrics.items()}
        history.append(record)
        log({k: v for k, v in record.items() if k != "epoch"}, epoch)
        value = metrics[primary.name]
        if (report := EPOCH_REPORT.get()) is not None:
            report(epoch, value)  # may raise to stop here (a pruned trial)
        if best_value is None or primary.worse_by(value, best_value) < 0:
            best_value, best_epoch, bad_epochs = value, epoch, 0
            set_output_spec(model, epoch_spec)
            model.save_pretrained(ckpt, safe_serialization=True)
            tokenizer.save_pretrained(ckpt)
            failpoint("train.checkpoint")
        else:
            bad_epochs += 1
            stopped_early = bad_epochs >= tcfg.patience and epoch < tcfg.epochs
        if _from_rank0(bad_epochs >= tcfg.patience, device) or (tcfg.max_steps and step >= tcfg.max_steps):
            break
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    best = load_checkpoint(ckpt).to(device).eval() if rank == 0 else None
    return TrainResult(
        model=best, tokenizer=tokenizer, labels=labels, checkpoint_dir=ckpt, device=device,
        best_epoch=best_epoch, best_val_macro_f1=float(best_value if best_value is not None else float("nan")),
        steps=step, history=history,
        stopped_early=stopped_early, train_seconds=seconds,
        samples_per_second=seen / seconds if seconds else 0.0,
        tokens_per_second=tokens / seconds if seconds else 0.0,
        step_samples_per_second=seen / train_time if train_time else 0.0,
        spec=output_spec_of(best) if best is not None else None, val_metric=primary.name,
    )


def _progress(items, enabled: bool, desc: str):
    if not enabled:
        return items
    import sys

    from tqdm.auto import tqdm

    from forgeline.settings import PROGRESS_ENV

    # the CLI without --verbose keeps stderr for its one error message: the bars go with the progress logs
    stream = sys.stdout if os.environ.get(PROGRESS_ENV) == "stdout" else sys.stderr
    # in a log file (no terminal) redraw every 30 s instead of every batch
    return tqdm(items, desc=desc, unit="batch", leave=False, file=stream, mininterval=0.1 if stream.isatty() else 30)
