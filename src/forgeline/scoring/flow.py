"""``forgeline score`` and the ``forgeline-scoring`` Prefect flow: a registered model over files, one
MLflow run per job (experiment ``<tracking.experiment>-scoring``), a sample of the predictions in the
traffic log, the prediction distribution against the same variant's on the validation split."""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any

from prefect import flow

from forgeline.config.schema import ScoreConfig
from forgeline.errors import ConfigError
from forgeline.scoring.inputs import list_inputs
from forgeline.scoring.job import (FileResult, Job, Output, ScoreSummary, begin, done_starts, merged_counts,
                                   prediction_drift, reference_counts, score_file, load_bundle, SUCCESS)

def columns_for(cfg: ScoreConfig, spec) -> tuple[list[str], str | None]:
    """(input columns read, the pair column) for this model's request shape."""
    pair = None
    if spec.pairs:
        pair = cfg.text_pair_column or "text_pair"
    elif cfg.text_pair_column:
        raise ConfigError(f"text_pair_column={cfg.text_pair_column!r}, but this model scores single texts: drop it")
    cols = [cfg.text_column, *([pair] if pair else []), *([cfg.key_column] if cfg.key_column else [])]
    if len(set(cols)) != len(cols):
        raise ConfigError(f"text_column, text_pair_column and key_column must be different columns; got {cols}")
    return cols, pair


def _output_outside_input(cfg: ScoreConfig) -> None:
    """An output folder inside the input folder would be read as input by the next run (its parts are Parquet)."""
    import fsspec

    (_, out), (_, inp) = fsspec.core.url_to_fs(cfg.output), fsspec.core.url_to_fs(cfg.input.split("*")[0])
    out, inp = out.rstrip("/") + "/", inp.rstrip("/") + "/"
    if out.startswith(inp) or inp.startswith(out):
        raise ConfigError(f"output {cfg.output} and input {cfg.input} overlap: the next run would read the scores as "
                          "input; write the output somewhere outside the input folder")


def score(cfg: ScoreConfig) -> ScoreSummary:
    """Run the scoring job ``cfg`` describes (see ``forgeline.scoring.job``) and return its summary."""
    import mlflow
    from mlflow.entities import RunStatus

    from forgeline.pipeline.tracking import ensure_experiment, open_client
    from forgeline.registry.client import download_verified, open_registry, parse_model_ref, resolve_version
    from forgeline.settings import quiet_libraries, resolve_tracking_uri

    quiet_libraries()
    try:
        name, alias, version = parse_model_ref(cfg.model)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    files = list_inputs(cfg.input, cfg.format)  # a missing or unreadable input fails before the model loads
    _output_outside_input(cfg)
    uri = cfg.tracking_uri or resolve_tracking_uri(cfg.tracking)
    client = open_registry(uri)
    mlflow.set_tracking_uri(uri)  # the bundle's download goes through mlflow.artifacts
    mlflow.set_registry_uri(uri)
    mv = resolve_version(client, uri, name, alias, version)
    began = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="forgeline-score-") as tmp:
        local = download_verified(client, name, str(mv.version), Path(tmp) / "model")
        impl = load_bundle(local, cfg.device, cfg.variant, cfg.batch_size)
        columns, pair = columns_for(cfg, impl.spec)
        job = Job(output=cfg.output, columns=columns, pair_column=pair, key_column=cfg.key_column,
                  part_rows=cfg.part_rows, max_text_chars=cfg.max_text_chars, model=name, version=str(mv.version),
                  variant=impl.variant, log_sample=cfg.log_sample)
        header = {"model": name, "version": str(mv.version), "variant": impl.variant,
                  "inputs": [f.identity() for f in files], "columns": columns, "part_rows": cfg.part_rows,
                  "max_text_chars": cfg.max_text_chars, "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        out = Output(cfg.output)
        earlier = begin(out, header, cfg.restart)
        tracking = open_client(uri)
        from forgeline.pipeline.doctor import Heartbeat, mark_stale_runs, owner_tags

        mark_stale_runs(tracking)  # an earlier job (or training run) killed outright: KILLED, not RUNNING for good
        exp = ensure_experiment(tracking, cfg.tracking.model_copy(update={"experiment": cfg.tracking.experiment + "-scoring"}), uri)
        run = tracking.create_run(exp, run_name=f"score-{name}-v{mv.version}-{time.strftime('%Y%m%d-%H%M%S')}",
                                  tags={"forgeline.score.model": name, "forgeline.score.version": str(mv.version),
                                        "forgeline.score.model_run_id": mv.run_id or "",
                                        "forgeline.score.variant": impl.variant, **owner_tags()})
        run_id = run.info.run_id
        beating = Heartbeat(tracking, run_id).__enter__()
        try:
            for key, value in {"model": f"models:/{name}/{mv.version}", "reference": cfg.model, "input": cfg.input,
                               "output": cfg.output, "engine": cfg.engine, "variant": impl.variant,
                               "device": impl.device, "part_rows": cfg.part_rows, "files": len(files),
                               "resumed_parts": len(earlier)}.items():
                tracking.log_param(run_id, key, value)
            scoring = time.perf_counter()
            if cfg.engine == "spark":
                from forgeline.scoring.spark import score_on_spark

                results = score_on_spark(cfg, job, files, earlier, local)
            else:
                results = [score_file(impl, job, i, f, done_starts(earlier, i)) for i, f in enumerate(files)]
            scored_s = time.perf_counter() - scoring
            summary = _summarize(cfg, job, impl, out, results, time.perf_counter() - began, scored_s, len(files),
                                 reference_counts(tracking, mv.run_id, impl.variant, Path(tmp) / "ref"))
            summary.run_id = run_id
            _traffic(cfg, job, results)
            _log_summary(tracking, run_id, summary)
            out.write_atomic(SUCCESS, b"")
            beating.stop()
            tracking.set_terminated(run_id, RunStatus.to_string(RunStatus.FINISHED))
        except BaseException as e:  # Ctrl-C and SIGTERM: KILLED, as the training flow marks them
            from forgeline.pipeline.flows import interruption

            beating.stop()
            status = RunStatus.KILLED if interruption(e) is not None else RunStatus.FAILED
            tracking.set_terminated(run_id, RunStatus.to_string(status))
            raise
    return summary


def _summarize(cfg: ScoreConfig, job: Job, impl, out: Output, results: list[FileResult], seconds: float,
               scored_s: float, files: int,
               reference: dict[str, float] | None) -> ScoreSummary:
    """The job's totals from every part's record (this job's and earlier ones'), its rate from this job's."""
    records = list(out.records().values())  # every finished part, this job's and earlier ones'
    counts = merged_counts(records)
    reasons: dict[str, int] = {}
    for r in records:
        for k, v in (r.get("reasons") or {}).items():
            reasons[k] = reasons.get(k, 0) + int(v)
    scored_now = sum(r["rows"] for res in results for r in res.records)
    return ScoreSummary(model=job.model, version=job.version, variant=job.variant, device=impl.device, output=cfg.output,
                        files=files, parts=len(records), parts_skipped=sum(res.skipped for res in results),
                        rows=sum(int(r["rows"]) for r in records), scored=sum(int(r["scored"]) for r in records),
                        rejected=sum(int(r["rejected"]) for r in records), reasons=reasons, seconds=round(seconds, 3),
                        rows_per_s=scored_now / scored_s if scored_s > 0 else 0.0,
                        distribution=impl.spec.distribution(counts),
                        drift=prediction_drift(impl.spec, counts, reference))


def _traffic(cfg: ScoreConfig, job: Job, results: list[FileResult]) -> None:
    """The sampled predictions into the traffic log ``forgeline serve`` writes, for ``forgeline drift --traffic``."""
    samples = [s for r in results for s in r.samples]
    if not samples:
        return
    from forgeline.serving.traffic import TrafficLog

    folder = Path(cfg.log_dir or Path(cfg.tracking.workdir) / "traffic")
    traffic = TrafficLog(folder, sample=1.0, rotate_s=3600.0, max_rows=50_000, max_files=1000)
    for i in range(0, len(samples), 10_000):
        chunk = samples[i : i + 10_000]
        traffic.record(job.model, job.version, [s[0] for s in chunk], [s[1] for s in chunk], [s[2] for s in chunk],
                       block=True)
    traffic.close()


def _log_summary(client, run_id: str, s: ScoreSummary) -> None:
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    values = {"rows": s.rows, "rows_scored": s.scored, "rows_rejected": s.rejected, "parts": s.parts,
              "parts_skipped": s.parts_skipped, "duration_s": s.seconds, "rows_per_s": s.rows_per_s}
    values |= {f"rejected.{k}": v for k, v in s.reasons.items()}
    values |= {f"prediction.{k}": v for k, v in s.distribution.items()}
    values |= {f"drift.{k}": float(v) for k, v in s.drift.items() if isinstance(v, (int, float))}
    client.log_batch(run_id, metrics=[Metric(_metric_name(k), float(v), now, 0) for k, v in values.items()])
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "scoring.json"
        path.write_text(json.dumps(s.__dict__, indent=1, default=str))
        client.log_artifact(run_id, str(path))
        md = Path(tmp) / "scoring.md"
        md.write_text(s.markdown())
        client.log_artifact(run_id, str(md))


def _metric_name(key: str) -> str:
    """MLflow's metric names allow letters, digits and ``_-. /``; labels may hold anything."""
    import re

    return re.sub(r"[^A-Za-z0-9_\-. /]", "_", key)[:250]


@flow(name="forgeline-scoring", log_prints=True, persist_result=False)
def scoring_flow(model: str, input: str, output: str, overrides: list[str] | None = None) -> dict[str, Any]:
    """Deployable like the training flow (e.g. nightly): ``overrides`` are ``ScoreConfig`` keys as ``--set`` takes them."""
    from prefect.artifacts import create_markdown_artifact

    cfg = score_config({"model": model, "input": input, "output": output}, overrides or [])
    summary = score(cfg)
    create_markdown_artifact(key="scoring-summary", markdown=summary.markdown(), description="forgeline score")
    return summary.__dict__


def score_config(values: dict[str, Any], overrides: list[str]) -> ScoreConfig:
    from pydantic import ValidationError

    from forgeline.config.loader import apply_override

    values = dict(values)
    for item in overrides:
        apply_override(values, item)
    try:
        return ScoreConfig(**values)
    except ValidationError as e:
        raise ConfigError("forgeline score: " + "; ".join(
            f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors())) from None
