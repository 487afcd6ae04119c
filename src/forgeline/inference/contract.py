"""The ONNX model's interface, declared once (as Optimum's ``OnnxConfig`` does for its exports).

The exporter writes graphs with these tensor names and dynamic axes, the runtime feeds and binds
them, and the bundle a registered model carries uses these file names. Keeping them here, in the
package every registered model ships, means the exporter (which needs torch) and the runtime (which
must not) cannot drift apart.
"""

from __future__ import annotations

import os

INPUT_IDS = "input_ids"
ATTENTION_MASK = "attention_mask"
TOKEN_TYPE_IDS = "token_type_ids"
"""Fed as zeros when a graph declares it; forgeline's own exports compute it inside the graph: zeros
for single texts, and for text pairs (``[CLS] a [SEP] b [SEP]``) 1 from the token after the first
``[SEP]`` on (``segment_ids``), so pair models keep the same two inputs and their CUDA graphs."""
LOGITS = "logits"
TEXT = "text"
"""The input of a classical (TF-IDF + linear) graph: strings, (rows, 1), or (rows, 2) for text pairs."""
SEP_ID_KEY = "sep_token_id"
"""ONNX metadata of a pair model: the separator id its graph computes segment ids from."""

INPUTS = (INPUT_IDS, ATTENTION_MASK)
OUTPUTS = (LOGITS,)
DYNAMIC_AXES = {INPUT_IDS: {0: "batch", 1: "sequence"}, ATTENTION_MASK: {0: "batch", 1: "sequence"},
                LOGITS: {0: "batch"}}
TOKEN_DYNAMIC_AXES = DYNAMIC_AXES | {LOGITS: {0: "batch", 1: "sequence"}}
"""Token classification: logits (batch, sequence, tags)."""
MAX_EXPORT_BATCH = 4096
"""Upper bound the dynamo exporter is told for the batch axis."""

from dataclasses import dataclass  # noqa: E402 - the registry below is the file's second half


@dataclass(frozen=True)
class VariantSpec:
    """One ONNX variant a run can make and a bundle can carry (as Optimum's ``QuantizationConfig`` is one
    quantization): everything else (bundle file names, the devices it is measured and served on, its
    parity tolerance, which converter makes it, ``forgeline serve --set variant=``) derives from these."""

    name: str
    source: str
    """``teacher``: the fine-tuned model; ``student``: the structurally pruned, distilled one;
    ``classical``: the run's TF-IDF + linear baseline (``model.family: auto``), text in, logits out."""
    precision: str
    """``fp32``, ``fp16``, ``int8`` (dynamic), ``int8_static`` (QDQ, calibrated): its parity tolerance
    and, below fp32, the converter that makes it from its source's fp32 file; ``tfidf``: the classical
    graph's, against scikit-learn."""
    file: str
    runs_on: tuple[str, ...]
    """Devices it is meant for (INT8 kernels are CPU kernels; fp16 pays off on CUDA only)."""
    magnitude_pruned: bool = False
    """The teacher with its smallest weights zeroed (unstructured: same file size and speed as fp32)."""


CLASSICAL = "classical"
"""The variant (and ``source``) of a classical bundle: no tokenizer, strings into the graph."""
VARIANTS = (
    VariantSpec("fp32", "teacher", "fp32", "model.onnx", ("cpu", "cuda")),
    VariantSpec("fp16", "teacher", "fp16", "model.fp16.onnx", ("cuda",)),
    VariantSpec("int8", "teacher", "int8", "model.int8.onnx", ("cpu",)),
    VariantSpec("int8_static", "teacher", "int8_static", "model.int8-static.onnx", ("cpu",)),
    VariantSpec("pruned", "teacher", "fp32", "model.pruned.onnx", ("cpu", "cuda"), magnitude_pruned=True),
    VariantSpec("student", "student", "fp32", "model.student.onnx", ("cpu", "cuda")),
    VariantSpec("student_int8", "student", "int8", "model.student.int8.onnx", ("cpu",)),
    VariantSpec("student_int8_static", "student", "int8_static", "model.student.int8-static.onnx", ("cpu",)),
    VariantSpec("student_fp16", "student", "fp16", "model.student.fp16.onnx", ("cuda",)),
    VariantSpec(CLASSICAL, CLASSICAL, "tfidf", "model.classical.onnx", ("cpu", "cuda")),
)
"""Every variant, declared once."""
VARIANT = {v.name: v for v in VARIANTS}
VARIANT_FILES = {v.name: v.file for v in VARIANTS}
"""Bundle file name of each ONNX variant."""
RUNS_ON = {v.name: v.runs_on for v in VARIANTS}
FALLBACK = {"cuda": ("fp16", "fp32", "pruned", "int8"), "cpu": ("int8", "fp32", "pruned", "fp16")}
"""Per device, the order a bundle registered before per-device defaults existed is served in."""
PARITY_TOLERANCE = {"fp32": (1e-3, 1.0), "fp16": (2e-2, 0.99), "int8": (0.05, 0.95), "int8_static": (0.05, 0.95),
                    "tfidf": (0.01, 0.98)}
"""Per precision: (max mean |Δprob| over the test rows, min argmax agreement) of a variant against the
PyTorch model it was made from (a classical graph: against scikit-learn; ONNX Runtime's TF-IDF op
counts a few n-grams differently, moving probabilities by ~1e-3 on the demo texts). fp32's first number
is ``export.parity_atol`` (a max, not a mean) at run time. A student variant that misses its tolerance is not registered."""
DEFAULT_VARIANT_KEY = "default_variant"
"""Key in the bundle metadata: {device: variant} chosen at registration from the measured table."""
TOKENIZER_FILE = "tokenizer.json"
META_FILE = "forgeline_meta.json"
"""Labels, max_length, variants, config hash and data fingerprint of a registered bundle."""


CHECKSUMS_KEY = "sha256"
"""Key in the bundle metadata: {artifact name: sha256 of its file}, recorded at registration."""


class ArtifactIntegrityError(ValueError):
    """A bundle file differs from what was registered (corrupted, truncated or replaced in the store)."""


def file_sha256(path: str | os.PathLike[str]) -> str:
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_artifacts(artifacts: dict[str, str], meta: dict, names: list[str]) -> None:
    """Check the files of ``names`` against the checksums recorded at registration, before ONNX
    Runtime parses them, so a damaged file is named, not an ONNX Runtime parse error. Bundles registered
    before checksums existed are not checked."""
    recorded = meta.get(CHECKSUMS_KEY) or {}
    for name in names:
        expected = recorded.get(name)
        if expected is None:
            continue
        path = artifacts[name]
        actual = file_sha256(path)
        if actual != expected:
            raise ArtifactIntegrityError(
                f"{path.rsplit('/', 1)[-1]} ({name}) does not match the checksum recorded at registration "
                f"(sha256 {actual[:12]}… != {expected[:12]}…): the artifact store copy is corrupted or was "
                "replaced. Re-register the model (run the pipeline again) or serve another version")


def read_bundle_meta(path: str) -> dict:
    """The bundle's ``forgeline_meta.json``, checked for the shape every reader relies on: a damaged or
    replaced file is an ``ArtifactIntegrityError`` naming it, never a ``KeyError`` or ``JSONDecodeError``
    at load time (it holds the checksums, so it cannot be checked against them)."""
    import json

    name = str(path).rsplit("/", 1)[-1]

    def bad(why: str) -> ArtifactIntegrityError:
        return ArtifactIntegrityError(f"{name} of this model version {why}: the bundle is damaged or was replaced. "
                                      "Re-register the model (run the pipeline again) or serve another version")

    try:
        with open(path, "rb") as f:
            meta = json.loads(f.read(1 << 22))  # a real one is a few KB
    except (OSError, ValueError) as e:
        raise bad(f"cannot be read as JSON ({type(e).__name__})") from None
    if not isinstance(meta, dict):
        raise bad(f"is a JSON {type(meta).__name__}, not an object")
    labels, max_length = meta.get("labels"), meta.get("max_length")
    if not (isinstance(labels, list) and len(labels) >= 1 and all(isinstance(x, str) for x in labels)):
        raise bad("has no list of string 'labels'")
    if not (isinstance(max_length, int) and not isinstance(max_length, bool) and 1 <= max_length <= 1 << 16):
        raise bad("has no integer 'max_length' in [1, 65536]")
    from forgeline.inference.tasks import OutputSpec

    try:
        OutputSpec.from_meta(meta)  # the task: its labels, thresholds or target scale
    except (ValueError, TypeError) as e:
        raise bad(f"has a task description that cannot be used ({e})") from None
    for key in (DEFAULT_VARIANT_KEY, CHECKSUMS_KEY):
        value = meta.get(key)
        if value is not None and not (isinstance(value, dict) and all(
                isinstance(k, str) and isinstance(v, str) for k, v in value.items())):
            raise bad(f"has a '{key}' that is not a mapping of names to strings")
    return meta
