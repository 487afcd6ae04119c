"""Data drift of a new dataset (or of served traffic) against the champion's training data.

Each training run logs a profile of its training split (``drift/profile.json`` +
``drift/embeddings.npy``): label distribution, a sample of text lengths, and base-MiniLM sentence
embeddings of a sample of texts. A drift check compares new data with the champion's profile with
one two-sample test per measure, each deciding on a p-value *and* an effect size:

- labels: chi-square test of homogeneity on the label counts; effect: total variation distance;
- lengths: two-sample Kolmogorov–Smirnov test of text lengths (characters); effect: the KS statistic;
- embeddings: kernel two-sample test (unbiased MMD² with a Gaussian kernel, median-heuristic
  bandwidth, permutation p-value); effect: MMD² or the cosine distance of the mean embeddings. MMD
  sees shifts that keep the mean (a mix of topics that averages out), which the mean alone cannot.

Why tests and not fixed thresholds: with the old rule (mean-embedding cosine distance > 0.03) three
random 80% subsets of a champion's own 8-class training file all said "retrain" (0.030–0.040), because
two samples of a few hundred texts differ by that much by chance. A measure fires only when its
p-value is below ``drift.p_value / 3`` (Bonferroni over the three tests, so unchanged data raises a
false alarm at most ``drift.p_value`` of the time) and its effect is above its threshold (so a huge
sample does not retrain on a negligible shift). Labels new to the champion always fire.
Unlabelled data (served traffic) skips the label test and says so.
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
                  seed: int, task) -> tuple[dict[str, Any], np.ndarray]:
    """``traffic_profile`` of the texts plus the targets' distribution, as the task profiles it
    (``label_distribution``; per-label ``label_rates``; a ``target_sample`` of a regression target)."""
    profile, emb = traffic_profile(df["text"].tolist(), cfg, model_cfg, seed)
    profile |= task.target_profile(df["label"], labels)
    return profile, emb


@dataclass
class DriftReport:
    retrain: bool
    reasons: list[str]
    label_tv: float | None = None
    label_p: float | None = None
    length_ks: float | None = None
    length_p: float | None = None
    embedding_cosine: float | None = None
    embedding_mmd2: float | None = None
    embedding_p: float | None = None
    target_ks: float | None = None
    """Regression: KS statistic of the target values."""
    target_p: float | None = None
    label_rate_diff: float | None = None
    """Multi-label: the largest change of one label's rate."""
    label_rate_p: float | None = None
    rows: int | None = None
    """Rows of the current data (texts for traffic)."""
    champion_version: str | None = None
    new_labels: list[str] = field(default_factory=list)
    """Labels of the current data that the champion's training data never had: it cannot predict them."""
    notes: list[str] = field(default_factory=list)
    """What was not checked, and why (e.g. labels of unlabelled traffic)."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def metrics(self) -> dict[str, float]:
        keys = ("label_tv", "label_p", "length_ks", "length_p", "embedding_cosine", "embedding_mmd2", "embedding_p",
                "target_ks", "target_p", "label_rate_diff", "label_rate_p")
        return {k: float(getattr(self, k)) for k in keys if getattr(self, k) is not None}


def mmd_permutation_test(x: np.ndarray, y: np.ndarray, permutations: int, seed: int) -> tuple[float, float]:
    """Unbiased MMD² between samples ``x`` and ``y`` (Gaussian kernel, bandwidth = median pairwise
    distance of the pooled sample) and its permutation p-value ``(1 + #{perm >= observed}) / (1 + P)``.

    Hand-written rather than taken from alibi-detect/torchdrift: those pull TensorFlow or a torch
    training stack into the drift check for ~20 lines of numpy; all permutations are one matrix
    product on the pooled kernel (256 + 256 texts, 1000 permutations: 53 ms median on 2 cores,
    benchmarks/results/cpu-2core-drift-mmd-2026-11-23.json)."""
    z = np.concatenate([x, y]).astype(np.float64)
    n, m = len(x), len(y)
    sq = np.maximum((z * z).sum(1)[:, None] + (z * z).sum(1)[None, :] - 2 * z @ z.T, 0.0)
    med = np.median(sq[np.triu_indices(len(z), 1)])
    kern = np.exp(-sq / max(med, 1e-12))
    np.fill_diagonal(kern, 0.0)  # unbiased: no i == j terms
    rng = np.random.default_rng(seed)
    idx = np.stack([np.arange(n + m)] + [rng.permutation(n + m) for _ in range(permutations)], axis=1)
    a = (idx < n).astype(np.float64)  # column k: which pooled rows are "x" under permutation k (k=0: observed)
    b = 1.0 - a
    ka, kb = kern @ a, kern @ b
    stat = ((a * ka).sum(0) / (n * (n - 1)) + (b * kb).sum(0) / (m * (m - 1)) - 2 * (a * kb).sum(0) / (n * m))
    return float(stat[0]), float((1 + (stat[1:] >= stat[0]).sum()) / (1 + permutations))


def compare(reference: dict[str, Any], ref_emb: np.ndarray, current: dict[str, Any], cur_emb: np.ndarray,
            cfg: DriftConfig, seed: int = 0) -> DriftReport:
    """Each measure fires when its p-value < ``cfg.p_value / 3`` and its effect is above threshold."""
    from scipy.stats import chi2_contingency, ks_2samp

    alpha = cfg.p_value / 3
    reasons: list[str] = []
    notes: list[str] = []
    report = DriftReport(retrain=False, reasons=reasons, notes=notes, rows=current.get("rows"))
    cur_dist = current.get("label_distribution")
    if "target_sample" in reference or "label_rates" in reference:
        _target_drift(reference, current, cfg, alpha, report)
    elif cur_dist is None:
        notes.append("label check skipped: the current data has no labels (served traffic); length and "
                     "embedding checks still apply")
    else:
        labels = sorted(set(reference["label_distribution"]) | set(cur_dist))
        report.label_tv = 0.5 * sum(abs(reference["label_distribution"].get(k, 0.0) - cur_dist.get(k, 0.0))
                                    for k in labels)
        counts = np.array([[reference["label_distribution"].get(k, 0.0) * reference["rows"] for k in labels],
                           [cur_dist.get(k, 0.0) * current["rows"] for k in labels]])
        counts = np.rint(counts[:, counts.sum(0) > 0])
        report.label_p = float(chi2_contingency(counts).pvalue) if counts.shape[1] > 1 else 1.0
        seen = {k for k, v in reference["label_distribution"].items() if v > 0}
        report.new_labels = sorted(k for k, v in cur_dist.items() if v > 0 and k not in seen)
        if report.new_labels:
            new = report.new_labels
            shown = ", ".join(map(repr, new[:10])) + (f" and {len(new) - 10} more" if len(new) > 10 else "")
            reasons.append(f"labels new to the model: {shown} (not in the champion's training data, so it never "
                           "predicts them)")
        if report.label_p < alpha and report.label_tv > cfg.label_tv_threshold:
            reasons.append(f"label distribution moved: total variation {report.label_tv:.3f} > "
                           f"{cfg.label_tv_threshold} (chi-square p={report.label_p:.2g} < {alpha:.2g})")
    ks = ks_2samp(reference["lengths"], current["lengths"])
    report.length_ks, report.length_p = float(ks.statistic), float(ks.pvalue)
    if report.length_p < alpha and report.length_ks > cfg.length_ks_threshold:
        reasons.append(f"text lengths moved: KS statistic {report.length_ks:.3f} > {cfg.length_ks_threshold} "
                       f"(p={report.length_p:.2g} < {alpha:.2g})")
    a, b = ref_emb.mean(0), cur_emb.mean(0)
    report.embedding_cosine = float(1.0 - a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-12))
    report.embedding_mmd2, report.embedding_p = mmd_permutation_test(ref_emb, cur_emb, cfg.permutations, seed)
    if report.embedding_p < alpha and (report.embedding_mmd2 > cfg.embedding_mmd2_threshold
                                       or report.embedding_cosine > cfg.embedding_cosine_threshold):
        reasons.append(f"content moved: embedding MMD² {report.embedding_mmd2:.4f} (threshold "
                       f"{cfg.embedding_mmd2_threshold}), mean cosine distance {report.embedding_cosine:.4f} "
                       f"(threshold {cfg.embedding_cosine_threshold}), permutation p={report.embedding_p:.2g} < {alpha:.2g}")
    report.retrain = bool(reasons)
    if not reasons:
        reasons.append("no drift: no test both significant and above its effect threshold")
    return report


def _target_drift(reference: dict[str, Any], current: dict[str, Any], cfg: DriftConfig, alpha: float,
                  report: DriftReport) -> None:
    """Multi-label: each label's rate (two-proportion chi-square per label, Bonferroni over labels; effect:
    the largest change of a rate against ``label_tv_threshold``). Regression: the target's distribution
    (KS; effect against ``target_ks_threshold``)."""
    from scipy.stats import chi2_contingency, ks_2samp

    if "target_sample" in reference:
        if not current.get("target_sample"):
            report.notes.append("target check skipped: the current data has no targets (served traffic)")
            return
        ks = ks_2samp(reference["target_sample"], current["target_sample"])
        report.target_ks, report.target_p = float(ks.statistic), float(ks.pvalue)
        if report.target_p < alpha and report.target_ks > cfg.target_ks_threshold:
            report.reasons.append(f"target distribution moved: KS statistic {report.target_ks:.3f} > "
                                  f"{cfg.target_ks_threshold} (p={report.target_p:.2g} < {alpha:.2g}); mean "
                                  f"{reference.get('target_mean', float('nan')):.4g} → {current.get('target_mean', float('nan')):.4g}")
        return
    rates = current.get("label_rates")
    if rates is None:
        report.notes.append("label check skipped: the current data has no labels (served traffic)")
        return
    ref = reference["label_rates"]
    labels = sorted(set(ref) | set(rates))
    diffs, ps = [], []
    for lab in labels:
        a, b = ref.get(lab, 0.0), rates.get(lab, 0.0)
        diffs.append(abs(a - b))
        table = np.rint([[a * reference["rows"], (1 - a) * reference["rows"]], [b * current["rows"], (1 - b) * current["rows"]]])
        ps.append(float(chi2_contingency(table).pvalue) if (table.sum(0) > 0).all() else 1.0)
    if "spans_per_text" in reference and "spans_per_text" in current:  # token classification, said beside the rates
        report.notes.append(f"entity spans per text: {reference['spans_per_text']:.2f} in training, "
                            f"{current['spans_per_text']:.2f} now")
    worst = int(np.argmax(diffs))
    report.label_rate_diff, report.label_rate_p = float(diffs[worst]), min(1.0, float(min(ps)) * len(labels))
    report.new_labels = sorted(k for k, v in rates.items() if v > 0 and ref.get(k, 0) == 0)
    if report.new_labels:
        report.reasons.append(f"labels new to the model: {', '.join(map(repr, report.new_labels[:10]))}")
    if report.label_rate_p < alpha and report.label_rate_diff > cfg.label_tv_threshold:
        report.reasons.append(f"label rates moved: {labels[worst]!r} by {report.label_rate_diff:.3f} > "
                              f"{cfg.label_tv_threshold} (chi-square p={report.label_rate_p:.2g} < {alpha:.2g}, Bonferroni)")


def traffic_profile(texts: list[str], cfg: DriftConfig, model_cfg: ModelConfig, seed: int) -> tuple[dict[str, Any], np.ndarray]:
    """Profile of unlabelled texts (the served-traffic log): lengths and embeddings, no labels."""
    df = pd.DataFrame({"text": texts})
    sample = _sample(df, cfg.sample_size, seed)
    lengths = _sample(df, 5000, seed)["text"].str.len().astype(int).tolist()
    profile = {"rows": int(len(df)), "lengths": lengths, "embedding_sample": int(len(sample))}
    return profile, embed(sample["text"].tolist(), model_cfg).astype(np.float32)


def save_profile(profile: dict[str, Any], emb: np.ndarray, out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    p, e = out_dir / "profile.json", out_dir / "embeddings.npy"
    p.write_text(json.dumps(profile))
    np.save(e, emb.astype(np.float16))
    return [p, e]


class DamagedProfile(Exception):
    """The champion's stored profile cannot be used; ``str()`` says why."""

    def __init__(self, version: str, why: str) -> None:
        super().__init__(f"the training-data profile of champion v{version} is damaged ({why})")
        self.version = version


def checked_profile(version: str, profile_path: str, embeddings_path: str) -> tuple[dict[str, Any], np.ndarray]:
    """Read a stored profile and its embeddings, checked for the shape :func:`compare` relies on: a
    damaged file raises :class:`DamagedProfile` instead of a ``KeyError`` or ``JSONDecodeError`` deep in
    the drift check."""
    try:
        profile = json.loads(Path(profile_path).read_bytes())
        emb = np.load(embeddings_path, allow_pickle=False)
    except Exception as e:  # noqa: BLE001 - any unreadable file is a damaged profile
        raise DamagedProfile(version, f"unreadable: {type(e).__name__}") from None
    if not isinstance(profile, dict):
        raise DamagedProfile(version, "profile.json is not a JSON object")
    rows, lengths = profile.get("rows"), profile.get("lengths")
    if not (isinstance(rows, int) and rows > 0):
        raise DamagedProfile(version, "no positive 'rows'")
    if not (isinstance(lengths, list) and lengths and all(isinstance(n, int) and n >= 0 for n in lengths)):
        raise DamagedProfile(version, "'lengths' is not a list of text lengths")
    targets = profile.get("target_sample")
    for key in ("label_distribution", "label_rates"):
        value = profile.get(key)
        if (value is not None or (key == "label_distribution" and targets is None and "label_rates" not in profile)) and not (
                isinstance(value, dict) and all(isinstance(k, str) and isinstance(v, (int, float)) and 0 <= v <= 1
                                                for k, v in value.items())):
            raise DamagedProfile(version, f"'{key}' is not a mapping of labels to fractions")
    if targets is not None and not (isinstance(targets, list) and targets and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v) for v in targets)):
        raise DamagedProfile(version, "'target_sample' is not a list of finite numbers")
    if emb.ndim != 2 or emb.shape[0] < 2 or not np.issubdtype(emb.dtype, np.floating) or not np.isfinite(emb).all():
        raise DamagedProfile(version, f"embeddings.npy holds a {emb.dtype} array of shape {emb.shape}, not finite "
                                      "embedding rows")
    return profile, emb.astype(np.float32)


def load_champion_profile(client, model_name: str, dst: Path) -> tuple[str, dict[str, Any], np.ndarray] | None:
    """(version, profile, embeddings) of the champion; None when there is no champion or it has no
    profile; :class:`DamagedProfile` when the stored one cannot be used."""
    from mlflow.exceptions import MlflowException

    try:
        mv = client.get_model_version_by_alias(model_name, CHAMPION)
        p = client.download_artifacts(mv.run_id, PROFILE, str(dst))
        e = client.download_artifacts(mv.run_id, EMBEDDINGS, str(dst))
    except (MlflowException, OSError):
        return None
    return (str(mv.version), *checked_profile(str(mv.version), p, e))
