"""Bounded load generator for a forgeline server on this machine (loopback only).

A fixed number of requests from a fixed number of concurrent clients: it always stops by itself."""

from __future__ import annotations

import asyncio
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


def run_load(url: str, concurrency: int, requests: int, texts_per_request: int = 1, timeout_s: float = 30.0) -> dict:
    from forgeline.errors import ConfigError

    host = urlparse(url).hostname or ""
    if host not in LOOPBACK and not host.startswith("127."):
        raise ConfigError(f"load tests only target this machine's loopback; got host {host!r} "
                          "(use --url http://127.0.0.1:PORT)")
    bad = {k: v for k, v in (("--concurrency", concurrency), ("--requests", requests),
                             ("--texts-per-request", texts_per_request)) if v < 1}
    if bad:
        raise ConfigError(", ".join(f"{k} {v}" for k, v in bad.items()) + ": each must be at least 1")
    return asyncio.run(_run(url.rstrip("/"), concurrency, requests, texts_per_request, timeout_s))


async def _run(url: str, concurrency: int, requests: int, per_request: int, timeout_s: float) -> dict:
    import httpx

    latencies: list[float] = []
    statuses: dict[int, int] = {}
    versions: dict[str, int] = {}
    errors = 0
    counter = iter(range(requests))
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    token = os.environ.get("FORGELINE_SERVE_TOKEN")  # the server's token, when it requires one
    headers = {"Authorization": f"Bearer {token.strip()}"} if token else None
    async with httpx.AsyncClient(timeout=timeout_s, limits=limits, headers=headers) as client:
        async def worker(wid: int) -> None:
            nonlocal errors
            for i in counter:
                texts = [SAMPLE_TEXTS[(i + k) % len(SAMPLE_TEXTS)] for k in range(per_request)]
                t0 = time.perf_counter()
                try:
                    resp = await client.post(f"{url}/v1/predict", json={"texts": texts})
                except httpx.HTTPError:
                    errors += 1
                    continue
                latencies.append(time.perf_counter() - t0)
                statuses[resp.status_code] = statuses.get(resp.status_code, 0) + 1
                if resp.status_code == 200:
                    v = str(resp.json().get("version"))
                    versions[v] = versions.get(v, 0) + 1
                else:
                    errors += 1

        start = time.perf_counter()
        await asyncio.gather(*(worker(w) for w in range(concurrency)))
        wall = time.perf_counter() - start
    lat = sorted(latencies)

    def pct(p: float) -> float:
        return lat[min(len(lat) - 1, int(round(p * (len(lat) - 1))))] * 1000 if lat else float("nan")

    return {
        "requests": requests, "concurrency": concurrency, "texts_per_request": per_request,
        "wall_s": round(wall, 3), "requests_per_s": round(len(lat) / wall, 1) if wall else 0.0,
        "texts_per_s": round(len(lat) * per_request / wall, 1) if wall else 0.0,
        "p50_ms": round(pct(0.50), 2), "p90_ms": round(pct(0.90), 2), "p99_ms": round(pct(0.99), 2),
        "mean_ms": round(statistics.fmean(lat) * 1000, 2) if lat else float("nan"),
        "statuses": statuses, "versions": versions, "errors": errors,
    }
