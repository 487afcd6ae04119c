"""Bounded load generator for a forgeline server on this machine (loopback only).

A fixed number of requests from a fixed number of concurrent keep-alive clients: it always stops by
itself. ``processes`` > 1 splits the clients over that many processes, for rates one Python process
cannot send (a multi-worker GPU server).

The client is a minimal HTTP/1.1 one on asyncio streams rather than httpx or aiohttp, because the
generator shares the machine with the server and its own cost lowers what it measures: against one
server on the 2-core CPU at concurrency 8 it drove 1,181-1,549 requests/s where aiohttp drove 762-1,311
and httpx about 300-455 (interleaved runs). It speaks exactly what the load needs: POST with
Content-Length, responses with Content-Length, keep-alive, reconnecting when the server closes.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import time
from urllib.parse import urlparse

SAMPLE_TEXTS = [
    "I'd never trust a self-driving car to take my kid to school.",
    "Driverless cars are the future, can't wait to ride in one!",
    "Google is testing autonomous vehicles in California this week.",
    "self-driving cars just seem lazy and a waste of money",
    "Autonomous trucks could make highways safer, according to a new study.",
]
LOOPBACK = {"127.0.0.1", "localhost", "::1", "[::1]"}


def run_load(url: str, concurrency: int, requests: int, texts_per_request: int = 1, timeout_s: float = 30.0,
             processes: int = 1) -> dict:
    from forgeline.errors import ConfigError

    parsed = urlparse(url)
    host = parsed.hostname or ""
    if host not in LOOPBACK and not host.startswith("127."):
        raise ConfigError(f"load tests only target this machine's loopback; got host {host!r} "
                          "(use --url http://127.0.0.1:PORT)")
    if parsed.scheme != "http":
        raise ConfigError(f"load tests speak plain HTTP on loopback; got {parsed.scheme or 'no'} scheme in {url!r}")
    bad = {k: v for k, v in (("--concurrency", concurrency), ("--requests", requests),
                             ("--texts-per-request", texts_per_request), ("--processes", processes)) if v < 1}
    if bad:
        raise ConfigError(", ".join(f"{k} {v}" for k, v in bad.items()) + ": each must be at least 1")
    if processes > concurrency:
        raise ConfigError(f"--processes {processes} is more than --concurrency {concurrency}: each process needs a client")
    target = (host, parsed.port or 80, (parsed.path or "").rstrip("/"), _takes_pairs(url))
    shares = [(concurrency // processes + (i < concurrency % processes), requests // processes + (i < requests % processes))
              for i in range(processes)]
    start = time.perf_counter()
    if processes == 1:
        parts = [_part(target, *shares[0], texts_per_request, timeout_s)]
    else:  # plain child processes: a multiprocessing Pool started from a busy process (pytest's) hung once
        import subprocess
        import sys

        children = [subprocess.Popen([sys.executable, "-m", "forgeline.bench.loadtest",
                                      json.dumps([target, c, n, texts_per_request, timeout_s])],
                                     stdout=subprocess.PIPE, text=True) for c, n in shares]
        parts = []
        for child in children:
            out, _ = child.communicate()
            if child.returncode != 0:
                raise RuntimeError(f"a load generator process exited with code {child.returncode}")
            part = json.loads(out)
            part["statuses"] = {int(k): v for k, v in part["statuses"].items()}
            parts.append(part)
    wall = time.perf_counter() - start
    lat = sorted(x for p in parts for x in p["latencies"])
    statuses: dict[int, int] = {}
    versions: dict[str, int] = {}
    for p in parts:
        for k, v in p["statuses"].items():
            statuses[k] = statuses.get(k, 0) + v
        for k, v in p["versions"].items():
            versions[k] = versions.get(k, 0) + v
    # the slowest process's own span: excludes spawning the processes
    span = max((p["wall_s"] for p in parts), default=wall) or wall

    def pct(q: float) -> float:
        return lat[min(len(lat) - 1, int(round(q * (len(lat) - 1))))] * 1000 if lat else float("nan")

    return {
        "requests": requests, "concurrency": concurrency, "texts_per_request": texts_per_request,
        "processes": processes,
        "wall_s": round(span, 3), "requests_per_s": round(len(lat) / span, 1) if span else 0.0,
        "texts_per_s": round(len(lat) * texts_per_request / span, 1) if span else 0.0,
        "p50_ms": round(pct(0.50), 2), "p90_ms": round(pct(0.90), 2), "p99_ms": round(pct(0.99), 2),
        "mean_ms": round(statistics.fmean(lat) * 1000, 2) if lat else float("nan"),
        "statuses": statuses, "versions": versions, "errors": sum(p["errors"] for p in parts),
    }


def _takes_pairs(url: str) -> bool:
    """Whether the served model takes text pairs (``/v1/model``'s request shape); a server that does not
    say (starting, an older version) gets single texts."""
    import urllib.request

    token = (os.environ.get("FORGELINE_SERVE_TOKEN") or "").strip()
    request = urllib.request.Request(url.rstrip("/") + "/v1/model", headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return "pairs" in (json.loads(resp.read()).get("schema") or {}).get("request", {})
    except (OSError, ValueError, AttributeError):
        return False


def _part(target: tuple[str, int, str, bool], concurrency: int, requests: int, per_request: int, timeout_s: float) -> dict:
    return asyncio.run(_run(target, concurrency, requests, per_request, timeout_s))


def _request(host: str, port: int, path: str, texts: list[str], token: str | None, pairs: bool = False) -> bytes:
    """A predict request: ``{"texts": ...}``, or for a pair model ``{"pairs": ...}`` (each text with the next)."""
    body = json.dumps({"pairs": [[t, texts[(i + 1) % len(texts)]] for i, t in enumerate(texts)]} if pairs
                      else {"texts": texts}).encode()
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    return (f"POST {path}/v1/predict HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
            f"{auth}Content-Length: {len(body)}\r\n\r\n").encode() + body


async def _exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes) -> tuple[int, bytes, bool]:
    """One request on an open connection: (status, body, whether the server keeps the connection)."""
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
    if "content-length" not in headers:
        raise ConnectionError(f"response without Content-Length ({headers.get('transfer-encoding', 'no length')})")
    body = await reader.readexactly(int(headers["content-length"]))
    return status, body, headers.get("connection", "").lower() != "close"


async def _run(target: tuple[str, int, str, bool], concurrency: int, requests: int, per_request: int, timeout_s: float) -> dict:
    host, port, path, pairs = target
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    versions: dict[str, int] = {}
    errors = 0
    counter = iter(range(requests))
    token = (os.environ.get("FORGELINE_SERVE_TOKEN") or "").strip() or None  # the server's, when it requires one
    payloads = [_request(host, port, path, [SAMPLE_TEXTS[(i + k) % len(SAMPLE_TEXTS)] for k in range(per_request)], token, pairs)
                for i in range(len(SAMPLE_TEXTS))]

    async def worker() -> None:
        nonlocal errors
        conn = None
        for i in counter:
            t0 = time.perf_counter()
            try:
                async with asyncio.timeout(timeout_s):
                    if conn is None:
                        conn = await asyncio.open_connection(host, port)
                    status, body, keep = await _exchange(*conn, payloads[i % len(payloads)])
            except (OSError, ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError,
                    ValueError, IndexError):
                errors += 1
                keep = False
            else:
                latencies.append(time.perf_counter() - t0)
                statuses[status] = statuses.get(status, 0) + 1
                if status == 200:
                    v = str(json.loads(body).get("version"))
                    versions[v] = versions.get(v, 0) + 1
                else:
                    errors += 1
            if not keep and conn is not None:
                conn[1].close()
                conn = None
        if conn is not None:
            conn[1].close()

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return {"latencies": latencies, "statuses": statuses, "versions": versions, "errors": errors,
            "wall_s": time.perf_counter() - start}


if __name__ == "__main__":  # one share of a multi-process load (run_load's processes > 1)
    import sys

    target, concurrency, requests, per_request, timeout_s = json.loads(sys.argv[1])
    print(json.dumps(_part(tuple(target), concurrency, requests, per_request, timeout_s)))
