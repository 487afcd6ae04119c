"""A TF-IDF + linear-model baseline on the same split as a forgeline run of a task preset, scored with the
task's own metrics, beside that run's test metrics: `python benchmarks/task_baselines.py PRESET [RUN_ID] [OUT.json]`.
For token classification the baselines are a dictionary tagger of the training split
(``forgeline.bench.gazetteer``) and the run's own CRF baseline on word features (``tasks.classical.fit_crf``),
its regularisation chosen on validation.

The split, quarantine and subsample are the pipeline's (``load_and_validate`` + ``split_dataset`` with the
preset's seed), so both models see the same test rows. The linear model's regularisation is chosen on the
validation split and reported on the test split. With RUN_ID (a finished ``forgeline run --config PRESET``)
its ``test_*`` metrics are read from MLflow ($MLFLOW_TRACKING_URI or the workdir's store) and recorded
beside the baseline's.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.multiclass import OneVsRestClassifier

    from forgeline.config.loader import load_config
    from forgeline.data.load import load_and_validate
    from forgeline.data.split import split_dataset
    from forgeline.tasks import get_task

    preset = sys.argv[1]
    run_id = sys.argv[2] if len(sys.argv) > 2 and sys.argv[2] != "-" else None
    out_path = sys.argv[3] if len(sys.argv) > 3 else None
    cfg = load_config(preset)
    task = get_task(cfg.task)
    with tempfile.TemporaryDirectory() as tmp:
        data = load_and_validate(cfg.data, Path(tmp), cfg.seed, split=cfg.split, task=task)
    splits = split_dataset(data.valid, cfg.split, cfg.seed, task, data.labels)
    if task.type == "token_classification":
        result = token_baselines(splits, data.labels)
        result.update(preset=preset, task=task.type, primary_metric=task.primary.name, rows=splits.sizes(),
                      command=f"python benchmarks/task_baselines.py {preset} {run_id or '-'} OUT.json",
                      date=time.strftime("%Y-%m-%d"))
        finish(result, cfg, run_id, out_path)
        return
    spec = task.output_spec(data.labels, splits.train["label"], "text_pair" in splits.train.columns)

    def texts(frame):
        return (frame["text"] + " [SEP] " + frame["text_pair"]).tolist() if "text_pair" in frame.columns else frame["text"].tolist()

    vec = TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True)
    x_train, x_val, x_test = vec.fit_transform(texts(splits.train)), vec.transform(texts(splits.val)), vec.transform(texts(splits.test))
    y_train, y_val, y_test = (task.y(f["label"], spec) for f in (splits.train, splits.val, splits.test))

    def fit(strength: float):
        if task.type == "regression":
            return Ridge(alpha=strength).fit(x_train, y_train)
        model = LogisticRegression(C=strength, max_iter=2000)
        return (OneVsRestClassifier(model) if task.type == "multi_label" else model).fit(x_train, y_train)

    def outputs(model, x):
        if task.type == "regression":
            return model.predict(x)[:, None]
        return model.predict_proba(x)

    grid = [0.1, 0.3, 1.0, 3.0, 10.0, 30.0]
    scored = []
    for strength in grid:
        model = fit(strength)
        val_spec = task.tune(spec, y_val, outputs(model, x_val))
        scored.append((task.metrics(y_val, outputs(model, x_val), val_spec)[task.primary.name], strength, model, val_spec))
    best = scored[task.primary.best([s[0] for s in scored])]
    _, strength, model, val_spec = best
    baseline = task.metrics(y_test, outputs(model, x_test), val_spec)
    trivial = task.baseline(y_test, spec)
    result = {"what": f"TF-IDF (1-2 grams) + {'ridge' if task.type == 'regression' else 'logistic regression'} on the "
                      f"split of preset {preset!r}, regularisation chosen on validation, reported on test",
              "preset": preset, "task": task.type, "primary_metric": task.primary.name,
              "rows": splits.sizes(), "chosen_strength": strength, "tfidf_linear_test": baseline,
              "trivial_baseline_test": {task.primary.name: trivial[0], "what": trivial[1]},
              "command": f"python benchmarks/task_baselines.py {preset} {run_id or '-'} OUT.json",
              "date": time.strftime("%Y-%m-%d")}
    finish(result, cfg, run_id, out_path)


def finish(result: dict, cfg, run_id: str | None, out_path: str | None) -> None:
    if run_id:
        from mlflow.tracking import MlflowClient

        from forgeline.settings import resolve_tracking_uri

        uri = resolve_tracking_uri(cfg.tracking)
        metrics = MlflowClient(uri, uri).get_run(run_id).data.metrics
        result["forgeline_run"] = run_id
        result["forgeline_test"] = {k.removeprefix("test_"): v for k, v in metrics.items() if k.startswith("test_")}
    print(json.dumps(result, indent=2))
    if out_path:
        Path(out_path).write_text(json.dumps(result, indent=2) + "\n")


def token_baselines(splits, types: list[str]) -> dict:
    """Strict entity micro-F1 on the test split of a dictionary tagger and a CRF, both from the training
    split's words as the deployed model splits them (``inference.tokens.word_spans``)."""
    from forgeline.bench.gazetteer import Gazetteer, micro_f1

    gazetteer = Gazetteer(splits.train["text"], splits.train["label"])
    truth = list(splits.test["label"])
    result = {"what": "strict entity micro-F1 on the test split: a dictionary tagger (every span string of the "
                      "training split tagged with its most frequent type) and a CRF on word features",
              "dictionary_test_micro_f1": micro_f1(truth, [gazetteer.tag(t) for t in splits.test["text"]])}
    from forgeline.tasks import get_task
    from forgeline.tasks.classical import TextRows

    task = get_task("token_classification")
    spec = task.output_spec(list(types), splits.train["label"], False)
    fit = task.fit_classical(spec, TextRows.of(splits.train), TextRows.of(splits.val))  # the run's own baseline
    test = TextRows.of(splits.test)
    result.update(crf_test_micro_f1=task.metrics(task.y(test.targets, spec), fit.predict(test), spec)["micro_f1"],
                  crf_chosen={"model": fit.name, "val_micro_f1": fit.val_metrics.get("micro_f1")})
    return result


if __name__ == "__main__":
    main()
