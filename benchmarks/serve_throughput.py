"""Serving throughput before and after, side by side (issue 16, item 4).

    python benchmarks/serve_throughput.py -m forgeline-sentiment@champion --tracking-uri sqlite:///WORKDIR/mlflow.db \
        [--baseline-src DIR] [--workers 2 4] [--rounds 3] [--requests 2000] [--client-processes 1] \
        [--set device=cuda ...] [--out FILE]

Starts every server at once on its own loopback port, all serving the same registered version:
``now`` (this tree, default settings), ``now-wN`` (this tree, ``--workers N``) for each ``--workers``,
and ``before`` when ``--baseline-src`` names the ``src/`` of an older checkout (``git worktree add
/tmp/fl-before 9c8da6d``: the server before this change, with its defaults). Then for each round,
each case (concurrency × texts per request) runs ``forgeline loadtest``'s generator against each
server in turn, so rounds interleave and a noisy neighbour hits every server alike. Reports each
server's median requests/s and p99 per case and the ratio to ``before`` (or to ``now``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
CASES = [(1, 1), (8, 1), (32, 1), (8, 16)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(label: str, src: Path, args: argparse.Namespace, extra: list[str], logs: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    cmd = [sys.executable, "-m", "forgeline.cli", "serve", "-m", args.model, "--port", str(port), *extra]
    if args.tracking_uri:
        cmd += ["--tracking-uri", args.tracking_uri]
    for s in args.sets:
        cmd += ["--set", s]
    env = os.environ | {"PYTHONPATH": str(src), "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}
    proc = subprocess.Popen(cmd, env=env, stdout=(logs / f"{label}.log").open("w"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 300
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{label} exited:\n{(logs / f'{label}.log').read_text()[-3000:]}")
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    proc.kill()
    raise SystemExit(f"{label} not ready in 300 s")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("-m", "--model", required=True)
    p.add_argument("--tracking-uri", default=None)
    p.add_argument("--baseline-src", default=None, help="src/ of an older checkout, served as 'before'")
    p.add_argument("--workers", type=int, nargs="*", default=[])
    p.add_argument("--set", dest="sets", action="append", default=[], help="serving option for every server")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--requests", type=int, default=2000)
    p.add_argument("--client-processes", type=int, default=1)
    p.add_argument("--cases", default=",".join(f"{c}x{t}" for c, t in CASES), help="CONCURRENCYxTEXTS,...")
    p.add_argument("--out", default=None)
    args = p.parse_args()

    sys.path.insert(0, str(ROOT / "src"))
    from forgeline.bench.loadtest import run_load

    cases = [tuple(int(x) for x in c.split("x")) for c in args.cases.split(",")]
    logs = Path(os.environ.get("TMPDIR", "/tmp")) / f"serve-throughput-{os.getpid()}"
    logs.mkdir(parents=True, exist_ok=True)
    plan = ([("before", Path(args.baseline_src).resolve(), [])] if args.baseline_src else []) + [("now", ROOT / "src", [])]
    plan += [(f"now-w{n}", ROOT / "src", ["--workers", str(n)]) for n in args.workers]
    servers: dict[str, tuple[subprocess.Popen, str]] = {}
    try:
        for label, src, extra in plan:
            servers[label] = start(label, src, args, extra, logs)
        info = httpx.get(f"{servers['now'][1]}/v1/model").json()
        samples: dict[str, dict[str, list[dict]]] = {label: {} for label in servers}
        for r in range(args.rounds):
            for c, t in cases:
                key = f"c{c}_t{t}"
                for label, (_, url) in servers.items():
                    processes = min(args.client_processes, c)
                    run_load(url, c, min(args.requests, 200), t, processes=processes)  # warm the connections' path
                    res = run_load(url, c, args.requests, t, processes=processes)
                    samples[label].setdefault(key, []).append(res)
                    print(f"round {r} {key} {label}: {res['requests_per_s']} req/s p99 {res['p99_ms']} ms "
                          f"errors {res['errors']}", flush=True)
    finally:
        for proc, _ in servers.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc, _ in servers.values():
            try:
                proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                proc.kill()
    reference = "before" if "before" in servers else "now"
    table: dict[str, dict] = {}
    for key in samples["now"]:
        row: dict[str, dict] = {}
        for label in servers:
            runs = samples[label][key]
            row[label] = {"requests_per_s": statistics.median(x["requests_per_s"] for x in runs),
                          "texts_per_s": statistics.median(x["texts_per_s"] for x in runs),
                          "p50_ms": statistics.median(x["p50_ms"] for x in runs),
                          "p99_ms": statistics.median(x["p99_ms"] for x in runs),
                          "errors": sum(x["errors"] for x in runs)}
        for label in servers:
            # ratio of medians and the median of per-round ratios (rounds are paired: same minute, same load)
            per_round = [a["requests_per_s"] / b["requests_per_s"]
                         for a, b in zip(samples[label][key], samples[reference][key]) if b["requests_per_s"]]
            row[label]["ratio_to_" + reference] = round(statistics.median(per_round), 3) if per_round else None
        table[key] = row
    result = {"date": time.strftime("%Y-%m-%d"), "host": platform.node(), "cpus": os.cpu_count(),
              "model": info, "settings": args.sets, "rounds": args.rounds, "requests_per_case": args.requests,
              "client_processes": args.client_processes, "baseline_src": args.baseline_src, "cases": table,
              "command": " ".join(sys.argv)}
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
