"""Data drift of a new dataset against the champion's training data.

Each training run logs a profile of its training split (``drift/profile.json`` +
``drift/embeddings.npy``): label distribution, a sample of text lengths, and base-MiniLM sentence
embeddings of a sample of texts. A drift check compares new data with the champion's profile:

- labels: total variation distance between the label distributions;
- lengths: two-sample Kolmogorov–Smirnov statistic of text lengths (characters);
- embeddings: cosine distance between the mean sentence embeddings.

Any measure above its threshold (or no champion, or no profile) means retrain.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from forgeline.config.schema import DriftConfig, ModelConfig
from forgeline.registry.client import CHAMPION

PROFILE = "drift/profile.json"
EMBEDDINGS = "drift/embeddings.npy"


def embed(texts: list[str], model_cfg: ModelConfig, batch_size: int = 64, max_length: int = 64) -> np.ndarray:
    """Mean-pooled, L2-normalized sentence embeddings from the base (not fine-tuned) encoder."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    from forgeline.settings import quiet_libraries
    from forgeline.training.classifier import base_model_dir

    quiet_libraries()
    path = base_model_dir(model_cfg.base)
    tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = AutoModel.from_pretrained(path, local_files_only=True).eval()
    out = []
    with torch.inference_mode():
        for i in range(0, len(texts), batch_size):
            enc = tok(texts[i : i + batch_size], padding=True, truncation=True, max_length=max_length, return_tensors="pt")
            hidden = model(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).float()
            vec = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
            out.append(torch.nn.functional.normalize(vec, dim=-1).numpy())
    return np.concatenate(out) if out else np.zeros((0, 384), dtype=np.float32)


def _sample(df: pd.DataFrame, n: int, seed: int) -> pd.DataFrame:
    return df.sample(n=min(n, len(df)), random_state=seed) if len(df) > n else df


def build_profile(df: pd.DataFrame, labels: list[str], cfg: DriftConfig, model_cfg: ModelConfig,
                  seed: int) -> tuple[dict[str, Any], np.ndarray]:
    counts = df["label"].value_counts()
    sample = _sample(df, cfg.sample_size, seed)
    lengths = _sample(df, 5000, seed)["text"].str.len().astype(int).tolist()
    profile = {
        "rows": int(len(df)),
        "label_distribution": {lab: float(counts.get(lab, 0) / len(df)) for lab in labels},
        "lengths": lengths,
        "embedding_sample": int(len(sample)),
    }
    return profile, embed(sample["text"].tolist(), model_cfg).astype(np.float32)


@dataclass
class DriftReport:
    retrain: bool
    reasons: list[str]
    label_tv: float | None = None
    length_ks: float | None = None
    embedding_cosine: float | None = None
    champion_version: str | None = None
    new_labels: list[str] = field(default_factory=list)
    """Labels of the current data that the champion's training data never had: it cannot predict them."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def compare(reference: dict[str, Any], ref_emb: np.ndarray, current: dict[str, Any], cur_emb: np.ndarray,
            cfg: DriftConfig) -> DriftReport:
    from scipy.stats import ks_2samp

    labels = sorted(set(reference["label_distribution"]) | set(current["label_distribution"]))
    tv = 0.5 * sum(abs(reference["label_distribution"].get(k, 0.0) - current["label_distribution"].get(k, 0.0))
                   for k in labels)
    ks = float(ks_2samp(reference["lengths"], current["lengths"]).statistic)
    a, b = ref_emb.mean(0), cur_emb.mean(0)
    cos = float(1.0 - a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-12))
    reasons = []
    seen = {k for k, v in reference["label_distribution"].items() if v > 0}
    new = sorted(k for k, v in current["label_distribution"].items() if v > 0 and k not in seen)
    if new:
        shown = ", ".join(map(repr, new[:10])) + (f" and {len(new) - 10} more" if len(new) > 10 else "")
        reasons.append(f"labels new to the model: {shown} (not in the champion's training data, so it never "
                       "predicts them)")
    if tv > cfg.label_tv_threshold:
        reasons.append(f"label distribution moved: total variation {tv:.3f} > {cfg.label_tv_threshold}")
    if ks > cfg.length_ks_threshold:
        reasons.append(f"text lengths moved: KS statistic {ks:.3f} > {cfg.length_ks_threshold}")
    if cos > cfg.embedding_cosine_threshold:
        reasons.append(f"content moved: mean-embedding cosine distance {cos:.4f} > {cfg.embedding_cosine_threshold}")
    return DriftReport(retrain=bool(reasons), reasons=reasons or ["no drift above thresholds"], label_tv=tv,
                       length_ks=ks, embedding_cosine=cos, new_labels=new)


def save_profile(profile: dict[str, Any], emb: np.ndarray, out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    p, e = out_dir / "profile.json", out_dir / "embeddings.npy"
    p.write_text(json.dumps(profile))
    np.save(e, emb.astype(np.float16))
    return [p, e]


def load_champion_profile(client, model_name: str, dst: Path) -> tuple[str, dict[str, Any], np.ndarray] | None:
    from mlflow.exceptions import MlflowException

    try:
        mv = client.get_model_version_by_alias(model_name, CHAMPION)
        p = client.download_artifacts(mv.run_id, PROFILE, str(dst))
        e = client.download_artifacts(mv.run_id, EMBEDDINGS, str(dst))
    except (MlflowException, OSError):
        return None
    return str(mv.version), json.loads(Path(p).read_text()), np.load(e).astype(np.float32)
