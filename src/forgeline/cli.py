"""``forgeline`` command line: run the training flow, open the MLflow UI."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from forgeline.errors import ForgelineError
from forgeline.settings import apply_offline_env


def _verbose_option(default: object) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--verbose", "-v", action="store_true", default=default,
                   help="print progress logs to stderr and full tracebacks on errors")
    return p


def _add_set(p: argparse.ArgumentParser, example: str = "train.epochs=1") -> None:
    p.add_argument("--set", "-s", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help=f"override one setting, e.g. --set {example} (repeatable)")


def _config_options() -> argparse.ArgumentParser:
    """--config/--set, shared by every command that reads a pipeline config."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--config", "-c", default=None, help="preset name (default, tiny) or path to a YAML file")
    _add_set(p)
    return p


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="forgeline", description="Train, compress, export and register text classifiers.",
                                parents=[_verbose_option(False)])
    # SUPPRESS: a subcommand's own --verbose default must not undo `forgeline --verbose run`
    sub = p.add_subparsers(dest="command", required=True, parser_class=_subparser(_verbose_option(argparse.SUPPRESS)))
    config = [_config_options()]
    run = sub.add_parser("run", parents=config,
                         help="run the training flow (validate → train → evaluate → export → compress → register)")
    _data_options(run)
    tune = sub.add_parser("tune", parents=config,
                          help="hyperparameter search (Optuna): trials as child runs, the best one through the gate")
    tune.add_argument("--trials", type=int, default=None, help="trials in the study in all (tune.trials)")
    tune.add_argument("--timeout-s", type=float, default=None, help="start no trial after this many seconds (tune.timeout_s)")
    tune.add_argument("--study", default=None, help="the study's name in its storage (tune.study); reusing one resumes it")
    tune.add_argument("--workers", type=int, default=1, help="processes sharing the study here (default 1)")
    _data_options(tune)  # the file `run --data` took, read the same way (the same model name)
    ui = sub.add_parser("ui", parents=config, help="open the MLflow UI on the embedded store")
    ui.add_argument("--host", default="127.0.0.1")
    ui.add_argument("--port", type=int, default=5000)
    # one worker: ready in 8.7 s where MLflow's default 4 took 18.4 s on the 2-core machine, and
    # enough for the people browsing one workdir's runs
    ui.add_argument("--workers", type=int, default=1, help="MLflow UI worker processes (default 1)")
    serve = sub.add_parser("serve", help="serve a registered model over HTTP (micro-batching, hot swap)")
    serve.add_argument("--model", "-m", required=True, help="NAME@alias (e.g. forgeline-sentiment@champion) or NAME/VERSION")
    serve.add_argument("--tracking-uri", default=None, help="MLflow tracking/registry URI (default: $MLFLOW_TRACKING_URI, "
                       "else the embedded store in .forgeline)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8080)
    serve.add_argument("--workers", type=int, default=None, metavar="N",
                       help="serving processes sharing the port, one model session each (default 1)")
    serve.add_argument("--shadow", default=None, metavar="ALIAS",
                       help="also run every batch on this alias of the model (e.g. challenger), off the request path")
    serve.add_argument("--log-sample", type=float, default=None, metavar="FRACTION",
                       help="write this fraction of served texts to the traffic log (Parquet, <workdir>/traffic)")
    _add_set(serve, "max_batch_size=32 or tracking.workdir=DIR")
    score = sub.add_parser("score", help="score files with a registered model: Parquet parts, resumable, one MLflow run")
    score.add_argument("--model", "-m", required=True, help="NAME@alias or NAME/VERSION")
    score.add_argument("--input", "-i", required=True, help="a CSV/TSV/JSONL/Parquet file (optionally compressed), "
                       "a folder of them, a glob or an fsspec URL")
    score.add_argument("--output", "-o", required=True, help="folder for the Parquet parts, rejected rows and manifest")
    score.add_argument("--tracking-uri", default=None, help="MLflow tracking/registry URI (default as for serve)")
    score.add_argument("--engine", choices=("local", "spark"), default=None, help="local (default) or spark")
    score.add_argument("--restart", action="store_true", help="delete an earlier job's parts in --output and score anew "
                       "(needed for another model version or changed input)")
    _add_set(score, "text_column=body or key_column=id")
    bench = sub.add_parser("bench", help="side-by-side inference/training benchmark of a registered version")
    bench.add_argument("--model", "-m", required=True, help="NAME@alias or NAME/VERSION")
    bench.add_argument("--tracking-uri", default=None)
    bench.add_argument("--json", dest="json_out", default=None)
    bench.add_argument("--quick", action="store_true", help="tiny shapes and few iterations (smoke test)")
    bench.add_argument("--no-train", dest="train", action="store_false", help="inference engines only, no training runs")
    bench.add_argument("--data", default=None, help="texts for the real-length inputs (CSV/JSONL/Parquet); "
                       "default: the default preset's corpus")
    bench.add_argument("--text-column", default="text", help="column of --data holding the texts (default: text)")
    bench.add_argument("--train-steps", type=int, default=None, help="timed optimizer steps per training case")
    drift = sub.add_parser("drift", parents=config, help="compare the configured data (or served traffic) with the "
                           "champion's training data")
    drift.add_argument("--traffic", default=None, metavar="PATH",
                       help="a traffic log (`forgeline serve --log-sample`) as the current data instead of data.*")
    dep = sub.add_parser("deploy", parents=config, help="deploy the training flow to the Prefect server at $PREFECT_API_URL")
    dep.add_argument("--name", default="scheduled-training")
    dep.add_argument("--pool", default="forgeline", help="process work pool (created if missing)")
    dep.add_argument("--cron", default="0 3 * * *", help="cron schedule; 'none' for trigger-only")
    dep.add_argument("--timezone", default="UTC")
    dep.add_argument("--gpu-slots", type=int, default=1, help="trainings allowed at once on this GPU pool")
    load = sub.add_parser("loadtest", help="bounded load test of a running server on this machine")
    load.add_argument("--url", default="http://127.0.0.1:8080")
    load.add_argument("--concurrency", type=int, default=8)
    load.add_argument("--requests", type=int, default=2000)
    load.add_argument("--texts-per-request", type=int, default=1)
    load.add_argument("--processes", type=int, default=1,
                      help="client processes the concurrency is split over (for servers faster than one can drive)")
    load.add_argument("--json", dest="json_out", default=None, help="write the result as JSON to this file")
    sub.add_parser("config", parents=config, help="print the resolved config")
    doctor = sub.add_parser("doctor", parents=config, help="repair what killed runs left in the store: runs stuck "
                            "RUNNING (marked KILLED), model versions whose registration did not finish (deleted)")
    doctor.add_argument("--relocate", action="store_true", help="a copied or moved workdir: point its MLflow store's "
                        "artifact locations at this workdir's mlartifacts/ instead of the old one's")
    gc = sub.add_parser("gc", parents=config, help="free disk: the stage cache down to tracking.cache_max_gb, failed "
                        "runs' scratch beyond tracking.keep_failed_runs, and with --keep-versions old model versions")
    gc.add_argument("--cache-max-gb", type=float, default=None, help="bound for this pass (default: the config's)")
    gc.add_argument("--keep-versions", type=int, default=None, metavar="N",
                    help="also delete each model's versions that no alias points at, beyond its newest N, "
                         "with their artifacts")
    return p


def _data_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", default=None, metavar="FILE", help="your own file (CSV/TSV/JSONL/Parquet/xlsx) on "
                        "the generic preset: columns and task inferred and printed")
    parser.add_argument("--text-column", default=None, help="with --data: the column holding the texts")
    parser.add_argument("--label-column", default=None, help="with --data: the target column (labels, label lists or numbers)")
    parser.add_argument("--text-pair-column", default=None, help="with --data: a second text per row (text pairs; "
                        "inferred from names such as text_pair, sentence2, text_b, question/context)")
    parser.add_argument("--no-pairs", dest="pairs", action="store_false",
                        help="with --data: one text per row even where a column is named as a second text")


def _subparser(common: argparse.ArgumentParser) -> type[argparse.ArgumentParser]:
    class Sub(argparse.ArgumentParser):
        def __init__(self, *a, parents=(), **kw):
            super().__init__(*a, parents=[*parents, common], **kw)

    return Sub


def _console(verbose: bool) -> None:
    """Prefect logs a failing task's and flow's exception with its traceback, and forgeline reports it
    again: records carrying a traceback are dropped from the console (the run's error.log has it;
    --verbose prints it once). Without --verbose stderr holds forgeline's one error message and nothing
    else: progress logs (Prefect's and MLflow's console handlers, Python warnings) go to stdout. Call
    after importing prefect, which installs its handlers then."""
    import logging

    from forgeline.settings import PROGRESS_ENV

    os.environ[PROGRESS_ENV] = "stderr" if verbose else "stdout"  # training's progress bars follow the logs
    if not verbose:
        logging.captureWarnings(True)

    def no_traceback(record: logging.LogRecord) -> bool:
        return not record.exc_info

    for name in ("", "uvicorn", "fastapi", "mlflow"):
        for handler in logging.getLogger(name).handlers:
            stream = getattr(handler, "stream", None)
            # MLflow's handler writes through a stream object that forwards to sys.stderr
            if not isinstance(handler, logging.StreamHandler) or not (
                    stream is sys.stderr or type(stream).__name__ == "MlflowLoggingStream"):
                continue
            handler.addFilter(no_traceback)
            if not verbose:
                handler.setStream(sys.stdout)
                if hasattr(handler, "console"):  # Prefect's rich console writes to its own file object
                    handler.console.file = sys.stdout


def data_overrides(args: argparse.Namespace) -> list[str]:
    """``--data FILE``: the generic preset (unless --config names another) and the columns and task of
    the file, inferred where not given and said on stderr with how to override each."""
    from forgeline.config.loader import load_config
    from forgeline.config.schema import DataConfig
    from forgeline.data.infer import Inferred, file_task, infer
    from forgeline.data.load import dataset_path, read_table
    from forgeline.errors import ConfigError

    if args.data is None:
        if any(v is not None for v in (args.text_column, args.label_column, args.text_pair_column)):
            raise ConfigError("--text-column, --label-column and --text-pair-column go with --data FILE")
        return []
    args.config = args.config or "generic"
    base = load_config(args.config, [*args.overrides, "data.source=file", f"data.path={json.dumps(args.data)}"]).data
    probe = DataConfig(**(base.model_dump() | {"path": args.data, "text_column": args.text_column or "text",
                                                "label_column": args.label_column or "label"}))
    pair = args.text_pair_column
    shape = file_task(dataset_path(probe), probe)
    if shape is not None:  # its own shape: no columns to infer
        found = Inferred("text", "label", shape[0], [f"task {shape[0]}: {shape[1]}"], own_shape=True)
    else:
        raw = read_table(dataset_path(probe), probe, check_columns=False)
        if pair is not None and pair not in raw.columns:
            raise ConfigError(f"--text-pair-column {pair!r} is not a column of {args.data}; the columns are {list(map(str, raw.columns))[:20]}")
        said_pair = any(o.startswith("data.text_pair_column=") for o in args.overrides)  # theirs, as given
        found = infer(raw, Path(args.data), args.text_column, args.label_column, pair,
                      getattr(args, "pairs", True) and not said_pair)
    sets = found.overrides(args.data)
    told = [o.split("=", 1)[0] for o in args.overrides]
    if "registry.model_name" not in told:  # one registered model per file name, not one shared name
        stem = "".join(c if c.isalnum() or c in "-_." else "-" for c in Path(args.data).name.split(".")[0])[:200]
        sets.append(f"registry.model_name={json.dumps('forgeline-' + (stem or 'model'))}")
    if "task.type" in told:  # the user's word wins over the inference
        sets = [s for s in sets if not s.startswith("task.type=")]
        found.why = [w for w in found.why if not w.startswith("task ")]
    how = ("--set task.type=..." if found.own_shape else
           "--text-column, --text-pair-column, --label-column, --set task.type=...")
    print("forgeline: " + "; ".join(found.why) + f". Override with {how}", file=sys.stderr)
    return sets


def cmd_run(args: argparse.Namespace) -> int:
    from forgeline.config.loader import load_config

    args.overrides = data_overrides(args) + args.overrides
    cfg = load_config(args.config, args.overrides)  # fail fast, before any server starts
    from forgeline.data.load import preflight
    from forgeline.settings import ensure_workdir, require_reachable, resolve_tracking_uri

    from forgeline.training.classifier import check_base

    from forgeline.tasks import get_task

    preflight(cfg.data, get_task(cfg.task))
    check_base(cfg.model)
    ensure_workdir(cfg.tracking)
    require_reachable(resolve_tracking_uri(cfg.tracking))
    from forgeline.pipeline.embedded import start_temporary_server
    from forgeline.pipeline.flows import training_flow

    _console(args.verbose)
    start_temporary_server()  # own session: Ctrl-C stops the flow, which can still report it

    result = training_flow(config=args.config, overrides=args.overrides)
    print(result["summary"])
    aliases = ", ".join(f"@{a}" for a in result["aliases"]) or "no alias"
    print(f"\nmodels:/{result['model_name']}/{result['version']} ({aliases}): {result['reason']}")
    if result["cached_stages"]:
        print(f"reused from cache: {', '.join(result['cached_stages'])}")
    print(f"MLflow store: {cfg.tracking.tracking_uri or os.environ.get('MLFLOW_TRACKING_URI') or Path(cfg.tracking.workdir).resolve() / 'mlflow.db'}"
          "  (browse: forgeline ui)")
    return 0


def cmd_tune(args: argparse.Namespace) -> int:
    from forgeline.config.loader import load_config
    from forgeline.data.load import preflight
    from forgeline.errors import ConfigError
    from forgeline.settings import ensure_workdir, require_reachable, resolve_tracking_uri
    from forgeline.tasks import get_task
    from forgeline.training.classifier import check_base

    if args.workers < 1:
        raise ConfigError(f"--workers {args.workers}: at least 1")
    flags = {"tune.trials": args.trials, "tune.timeout_s": args.timeout_s, "tune.study": args.study}
    args.overrides = data_overrides(args) + args.overrides + [f"{k}={json.dumps(v)}" for k, v in flags.items()
                                                              if v is not None]
    cfg = load_config(args.config, args.overrides)  # a bad space or key: exit 2 before anything starts
    preflight(cfg.data, get_task(cfg.task))
    check_base(cfg.model)
    workdir = ensure_workdir(cfg.tracking)
    require_reachable(resolve_tracking_uri(cfg.tracking))
    from forgeline.pipeline.tuning import open_study, storage_url, study_name

    # the storage, and a study name reused for another space, are checked before any server starts
    open_study(cfg, storage_url(cfg, workdir), study_name(cfg), get_task(cfg.task).primary.higher_is_better,
               repair=False)  # repaired inside the flow, where the trials' MLflow runs are marked too
    from forgeline.pipeline.embedded import start_temporary_server
    from forgeline.pipeline.tuning import tuning_flow

    _console(args.verbose)
    start_temporary_server()
    result = tuning_flow(config=args.config, overrides=args.overrides, workers=args.workers)
    best = result["best"]
    print(f"study {result['study']} ({result['storage']}): {result['trials']} trials {result['states']}; best trial "
          f"{best['number']} val {best['value']:.4f} with {best['params']}")
    pipeline = result["pipeline"]
    print(pipeline["summary"])
    aliases = ", ".join(f"@{a}" for a in pipeline["aliases"]) or "no alias"
    print(f"\nmodels:/{pipeline['model_name']}/{pipeline['version']} ({aliases}): {pipeline['reason']}")
    print(f"the study's run: {result['parent_run_id']} (trials as its child runs; browse: forgeline ui)")
    return 0


def cmd_ui(args: argparse.Namespace) -> int:
    from forgeline.config.loader import load_config
    from forgeline.errors import ConfigError
    from forgeline.settings import require_reachable, resolve_tracking_uri, sqlite_file

    cfg = load_config(args.config, args.overrides)
    uri = resolve_tracking_uri(cfg.tracking)
    require_reachable(uri)
    db = sqlite_file(uri)
    if db is not None and not Path(db).exists():  # mlflow ui would create an empty store and show nothing
        raise ConfigError(f"no MLflow store at {db}: nothing has been tracked there. Run `forgeline run` first, or point "
                          "at the store with --set tracking.workdir=DIR ($FORGELINE_WORKDIR) or $MLFLOW_TRACKING_URI")
    if args.workers < 1:
        raise ConfigError(f"--workers must be 1 or more, got {args.workers}")
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", args.host, "--port", str(args.port),
           "--workers", str(args.workers)]
    if uri.startswith("sqlite:"):
        cmd += ["--default-artifact-root", (Path(cfg.tracking.workdir).resolve() / "mlartifacts").as_uri()]
    print("starting:", " ".join(cmd))
    from forgeline.pipeline.embedded import run_process_group

    return run_process_group(cmd)


def cmd_serve(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from forgeline.errors import ConfigError
    from forgeline.config.loader import apply_override
    from forgeline.config.schema import ServeConfig

    values: dict = {"model": args.model, "tracking_uri": args.tracking_uri, "host": args.host, "port": args.port}
    given = (("shadow", args.shadow), ("log_sample", args.log_sample), ("workers", args.workers))
    values |= {k: v for k, v in given if v is not None}
    for item in args.overrides:  # serving options, and tracking.* as `forgeline run` takes them
        apply_override(values, item)
    try:
        cfg = ServeConfig(**values)
    except ValidationError as e:
        raise ConfigError("forgeline serve: " + "; ".join(
            f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors())) from None
    from forgeline.registry.client import parse_model_ref
    from forgeline.serving.workers import serve
    from forgeline.serving.watcher import RegistrySource

    try:
        name, _, _ = parse_model_ref(cfg.model)
        if cfg.shadow:
            parse_model_ref(f"{name}@{cfg.shadow}")
    except ValueError as e:
        raise ConfigError(str(e)) from None
    source = RegistrySource(cfg)
    version, _ = source.current_version()  # fail here, with the store's contents, not in server start-up
    bundled = source.client.get_model_version(source.name, version).tags.get("variants")
    if cfg.variant != "auto" and bundled and cfg.variant not in bundled.split(","):
        raise ConfigError(f"--set variant={cfg.variant}: {source.name} v{version} does not bundle it; it bundles "
                          f"{bundled.split(',')}. Pick one of those, or register with compress.bundle=all (the "
                          "teacher and every variant on a device's Pareto front)")
    if cfg.device == "cuda":
        from forgeline.inference.runtime import cuda_available

        if not cuda_available():
            raise ConfigError("--set device=cuda: onnxruntime has no CUDAExecutionProvider here; install "
                              "onnxruntime-gpu (see docker/) or use device=cpu / auto")
    return serve(cfg)


def cmd_score(args: argparse.Namespace) -> int:
    from forgeline.scoring.flow import score_config

    values: dict = {"model": args.model, "input": args.input, "output": args.output, "tracking_uri": args.tracking_uri}
    values |= {"engine": args.engine} if args.engine else {}
    values |= {"restart": True} if args.restart else {}
    cfg = score_config(values, args.overrides)  # bad keys: exit 2 before anything starts
    from forgeline.scoring.inputs import list_inputs

    list_inputs(cfg.input, cfg.format)
    if cfg.engine == "spark":
        import importlib.util

        if importlib.util.find_spec("pyspark") is None:
            from forgeline.errors import ConfigError

            raise ConfigError("--engine spark needs pyspark (pip install 'forgeline[spark]') and a Java runtime")
    from forgeline.pipeline.embedded import start_temporary_server
    from forgeline.scoring.flow import scoring_flow

    _console(args.verbose)
    start_temporary_server()
    sets = [o for o in args.overrides] + [f"{k}={json.dumps(v)}" for k, v in values.items()
                                          if k not in ("model", "input", "output") and v is not None]
    s = scoring_flow(model=cfg.model, input=cfg.input, output=cfg.output, overrides=sets)
    print(f"scored {s['scored']:,} of {s['rows']:,} rows with {s['model']} v{s['version']} ({s['variant']}) into "
          f"{s['output']}: {s['rejected']:,} rejected {s['reasons'] or ''}, {s['parts']} parts "
          f"({s['parts_skipped']} done earlier), {s['rows_per_s']:,.0f} rows/s; MLflow run {s['run_id']}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    import json

    from forgeline.config.schema import TrackingConfig
    from forgeline.bench.harness import run_bench, table
    from forgeline.settings import resolve_tracking_uri

    uri = args.tracking_uri or resolve_tracking_uri(TrackingConfig())
    result = run_bench(args.model, uri, quick=args.quick, data_path=args.data, train_steps=args.train_steps, train=args.train,
                       text_column=args.text_column)
    print(table(result["inference"]))
    for row in result["training"]:
        print("training:", json.dumps(row))
    for target, check in result["targets"].items():
        print(f"target {target}: {check['value']} -> {'met' if check['met'] else 'not measurable here' if check['met'] is None else 'NOT met'}")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(result, indent=2))
    return 0


def cmd_drift(args: argparse.Namespace) -> int:
    import json

    from forgeline.config.loader import load_config
    from forgeline.pipeline.flows import check_drift

    _console(args.verbose)
    overrides = args.overrides + ([f"drift.traffic={args.traffic}"] if args.traffic else [])
    report = check_drift(load_config(args.config, overrides))
    print(json.dumps(report, indent=2))
    return 0


def cmd_deploy(args: argparse.Namespace) -> int:
    from forgeline.pipeline.deploy import deploy

    cron = None if args.cron.lower() == "none" else args.cron
    result = deploy(args.config, args.overrides, args.name, args.pool, cron, args.timezone, args.gpu_slots)
    print(f"deployed {result.name} (id {result.deployment_id}) on pool {result.pool!r}, schedule: {result.cron or 'none'}")
    print(f"start a worker:   prefect worker start --pool {result.pool}")
    print(f"trigger a run:    prefect deployment run '{result.name}'")
    return 0


def cmd_loadtest(args: argparse.Namespace) -> int:
    import json

    from forgeline.bench.loadtest import run_load

    result = run_load(args.url, args.concurrency, args.requests, args.texts_per_request, processes=args.processes)
    print(json.dumps(result, indent=2))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(result, indent=2))
    return 0 if result["errors"] == 0 else 1


def cmd_doctor(args: argparse.Namespace) -> int:
    from forgeline.config.loader import load_config
    from forgeline.pipeline.disk import mark_failed_runs
    from forgeline.pipeline.doctor import doctor
    from forgeline.errors import ConfigError
    from forgeline.pipeline.tracking import open_client
    from forgeline.settings import require_reachable, resolve_tracking_uri, sqlite_file

    cfg = load_config(args.config, args.overrides)
    uri = resolve_tracking_uri(cfg.tracking)
    require_reachable(uri)
    db = sqlite_file(uri)
    if db is not None and not Path(db).exists():
        raise ConfigError(f"no MLflow store at {db}: nothing to repair. Point at the store with --set "
                          "tracking.workdir=DIR ($FORGELINE_WORKDIR) or $MLFLOW_TRACKING_URI")
    if args.relocate:
        from forgeline.pipeline.doctor import relocate

        if db is None:
            raise ConfigError(f"--relocate rewrites an embedded SQLite store; {uri} is not one (a server keeps its own "
                              "artifact locations)")
        for line in relocate(Path(db), Path(cfg.tracking.workdir)) or ["artifact locations: already inside this workdir"]:
            print(line)
    else:
        from forgeline.pipeline.tracking import check_not_copied

        check_not_copied(cfg.tracking, uri)  # doctor deletes files: never another workdir's
    client = open_client(uri)
    report = doctor(client, Path(cfg.tracking.workdir))
    mark_failed_runs(Path(cfg.tracking.workdir) / "runs", report.stale_runs, cfg.tracking.keep_failed_runs)
    from forgeline.pipeline.tuning import fail_stale_studies

    for line in report.lines() + fail_stale_studies(cfg, Path(cfg.tracking.workdir), client):
        print(line)
    return 0


def cmd_gc(args: argparse.Namespace) -> int:
    from forgeline.config.loader import load_config
    from forgeline.errors import ConfigError
    from forgeline.pipeline.disk import collect_garbage
    from forgeline.pipeline.tracking import open_client
    from forgeline.settings import require_reachable, resolve_tracking_uri, sqlite_file

    cfg = load_config(args.config, args.overrides)
    for flag, value in (("--cache-max-gb", args.cache_max_gb), ("--keep-versions", args.keep_versions)):
        if value is not None and value < 0:
            raise ConfigError(f"{flag} must be 0 or more, got {value}")
    workdir = Path(cfg.tracking.workdir)
    if not workdir.is_dir():
        raise ConfigError(f"no workdir at {workdir}: nothing to collect. Point at it with --set tracking.workdir=DIR "
                          "($FORGELINE_WORKDIR)")
    client = None
    uri = resolve_tracking_uri(cfg.tracking)
    db = sqlite_file(uri)
    if args.keep_versions is not None or db is None or Path(db).exists():  # no store yet: only the cache
        require_reachable(uri)
        client = open_client(uri)
    if client is not None:
        from forgeline.pipeline.tracking import check_not_copied

        check_not_copied(cfg.tracking, uri)  # gc deletes files: never another workdir's
    report = collect_garbage(workdir, client, keep_versions=args.keep_versions, keep_failed_runs=cfg.tracking.keep_failed_runs,
                             cache_max_gb=cfg.tracking.cache_max_gb if args.cache_max_gb is None else args.cache_max_gb)
    for line in report.lines():
        print(line)
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    import yaml

    from forgeline.config.loader import load_config

    cfg = load_config(args.config, args.overrides)
    print(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    print(f"# config hash: {cfg.config_hash()}")
    return 0


COMMANDS = {"run": cmd_run, "tune": cmd_tune, "ui": cmd_ui, "config": cmd_config, "doctor": cmd_doctor, "gc": cmd_gc, "serve": cmd_serve, "loadtest": cmd_loadtest,
            "deploy": cmd_deploy, "drift": cmd_drift, "bench": cmd_bench, "score": cmd_score}


MESSAGE_LINES, MESSAGE_BYTES = 4, 1800
"""What an error message may take on stderr without --verbose: with its pointer to the traceback,
at most 5 lines and 2 KB."""


def bounded(message: str) -> str:
    """The message cut to ``MESSAGE_LINES`` lines and ``MESSAGE_BYTES`` bytes, saying what was cut."""
    lines = message.splitlines() or [""]
    cut = "\n".join(lines[:MESSAGE_LINES])
    if len(cut.encode()) > MESSAGE_BYTES:
        cut = cut.encode()[:MESSAGE_BYTES].decode(errors="ignore")
    if cut != message:
        cut += f" … ({len(message):,} characters in all; --verbose shows everything)"
    return cut


def report_error(e: BaseException, verbose: bool) -> int:
    """One message on stderr: what went wrong and what to do (exit 2) for errors the user can fix,
    the exception and where its traceback is (exit 1) for bugs. The traceback itself is printed only
    with --verbose; otherwise it is in the run's error.log (and the MLflow run) or a temporary file."""
    import tempfile
    import traceback

    user = isinstance(e, ForgelineError)
    log = getattr(e, "forgeline_log", None)
    if verbose:
        traceback.print_exception(e, file=sys.stderr)
    elif not user and log is None:
        fd, log = tempfile.mkstemp(prefix="forgeline-error-", suffix=".log")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write("".join(traceback.format_exception(e)))
    if user:
        print(f"forgeline: error: {bounded(str(e))}", file=sys.stderr)
    else:
        first = str(e).splitlines()[0] if str(e) else ""
        print(f"forgeline: internal error: {type(e).__name__}: {bounded(first)}", file=sys.stderr)
    if log and not verbose:
        print(f"forgeline: full traceback in {log} (or run with --verbose)", file=sys.stderr)
    return 2 if user else 1


def as_user_error(e: Exception) -> Exception:
    """A full disk met outside a run's stages (marking stale runs, `doctor`, `gc`) is the user's to fix,
    like one inside: DiskFullError, exit 2."""
    from forgeline.errors import DiskFullError, ForgelineError, disk_full

    full = None if isinstance(e, ForgelineError) else disk_full(e)
    if full is None:
        return e
    error = DiskFullError(f"the disk is full ({full}). Free space (`forgeline gc` trims the stage cache and failed "
                          "runs; `--keep-versions N` also deletes old unaliased model versions) or point "
                          "tracking.workdir at a bigger disk, then run again")
    error.__cause__ = e
    return error


def main(argv: list[str] | None = None) -> int:
    apply_offline_env()
    args = _parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except KeyboardInterrupt:
        print("forgeline: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - every failure ends as one message and an exit code
        return report_error(as_user_error(e), args.verbose)


if __name__ == "__main__":
    sys.exit(main())
