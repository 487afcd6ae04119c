"""The micro-batcher's bound on a batch's work."""

from __future__ import annotations

import asyncio
import threading
from types import SimpleNamespace

import numpy as np

from forgeline.serving.batcher import MicroBatcher, chunks
from forgeline.serving.metrics import Metrics


def test_chunks_keep_order_and_both_bounds():
    texts = ["a" * n for n in (5, 5, 5, 50, 1, 1, 1, 1)]
    parts = chunks(texts, max_texts=3, max_chars=12)
    assert [t for p in parts for t in p] == texts
    assert [len(p) for p in parts] == [2, 1, 1, 3, 1]  # 5+5 | 5 | 50 alone | 1+1+1 | 1
    assert chunks(["x"], 3, 12) == [["x"]]


def test_a_huge_request_runs_as_bounded_batches_and_small_ones_go_between():
    """A 1 MB request held the inference thread 1.6 s: every request behind it waited that long."""
    calls: list[list[str]] = []
    order: list[str] = []
    started = threading.Event()

    def predict_proba(texts):
        calls.append(list(texts))
        started.set()
        return np.array([[float(len(t)), float(t[:1] == "b")] for t in texts])

    model = SimpleNamespace(version="1", impl=SimpleNamespace(predict_proba=predict_proba))

    async def scenario():
        batcher = MicroBatcher(64, 0.0, Metrics(), max_chars=32_768)
        batcher.model = model
        batcher.start()
        big = [("b" if i % 2 else "c") * (4000 + i) for i in range(256)]  # about 1 MB

        async def ask(name, texts):
            proba, used = await batcher.submit(texts)
            order.append(name)
            return proba, used

        big_task = asyncio.create_task(ask("big", big))
        while not started.is_set():
            await asyncio.sleep(0.001)
        small = await asyncio.gather(*(ask(f"small{i}", ["short text"]) for i in range(3)))
        proba, used = await big_task
        await batcher.drain()
        return big, proba, used, small

    big, proba, used, small = asyncio.run(scenario())
    assert all(len(c) <= 64 and sum(map(len, c)) <= 32_768 for c in calls), [(len(c), sum(map(len, c))) for c in calls]
    assert len(calls) >= 30, "the 1 MB request ran as many small batches"
    assert order[-1] == "big" and {"small0", "small1", "small2"} <= set(order[:-1]), "small requests went between"
    assert used is model and proba.shape == (256, 2)
    assert proba[:, 0].tolist() == [float(len(t)) for t in big], "rows come back in the request's order"
    assert all(p.shape == (1, 2) for p, _ in small)
