"""``forgeline`` command line: run the training flow, open the MLflow UI."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from config.errors import ForgelineError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="forgeline", description="Train, compress, export and register text classifiers.")
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the training flow (validate → train → evaluate → compress → export → register)")
    run.add_argument("--config", "-c", default=None, help="preset name (default, tiny) or path to a YAML file")
    run.add_argument("--set", "-s", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="override one config value, e.g. --set train.epochs=1 (repeatable)")
    ui = sub.add_parser("ui", help="open the MLflow UI on the embedded store")
    ui.add_argument("--config", "-c", default=None)
    ui.add_argument("--set", "-s", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    ui.add_argument("--host", default="127.0.0.1")
    ui.add_argument("--port", type=int, default=5000)
    show = sub.add_parser("config", help="print the resolved config")
    show.add_argument("--config", "-c", default=None)
    show.add_argument("--set", "-s", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    return p


def cmd_run(args: argparse.Namespace) -> int:
    from config.loader import load_config

    cfg = load_config(args.config, args.overrides)  # fail fast, before any server starts
    from flows.training import training_flow

    result = training_flow(config=args.config, overrides=args.overrides)
    print(result["summary"])
    print(f"\nmodels:/{result['model_name']}@{'champion' if result['promoted'] else 'challenger'} "
          f"= version {result['version']} ({result['reason']})")
    print(f"MLflow store: {cfg.tracking.tracking_uri or os.environ.get('MLFLOW_TRACKING_URI') or Path(cfg.tracking.workdir).resolve() / 'mlflow.db'}"
          "  (browse: forgeline ui)")
    return 0


def cmd_ui(args: argparse.Namespace) -> int:
    from config.loader import load_config
    from tasks.tracking import resolve_tracking_uri

    cfg = load_config(args.config, args.overrides)
    uri = resolve_tracking_uri(cfg.tracking)
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", args.host, "--port", str(args.port)]
    if uri.startswith("sqlite:"):
        cmd += ["--default-artifact-root", (Path(cfg.tracking.workdir).resolve() / "mlartifacts").as_uri()]
    print("starting:", " ".join(cmd))
    return subprocess.call(cmd)


def cmd_config(args: argparse.Namespace) -> int:
    import yaml

    from config.loader import load_config

    cfg = load_config(args.config, args.overrides)
    print(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    print(f"# config hash: {cfg.config_hash()}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return {"run": cmd_run, "ui": cmd_ui, "config": cmd_config}[args.command](args)
    except ForgelineError as e:
        print(f"forgeline: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
