"""Dynamic micro-batching: requests are queued and grouped into batches of at most ``max_batch``
texts; one inference thread runs the batches. A batch is what queued while the previous one ran
(optionally waiting ``max_wait_ms`` for more)."""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from forgeline.serving.metrics import Metrics

if TYPE_CHECKING:
    from forgeline.serving.watcher import LoadedModel

log = logging.getLogger("forgeline.serve")


async def cancel_task(task: asyncio.Task | None) -> None:
    if task is None:
        return
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass


# --- micro-batching ----------------------------------------------------------------------------------
@dataclass
class _Pending:
    texts: list[str]
    future: asyncio.Future
    enqueued: float


def chars_of(item: str | tuple[str, str]) -> int:
    """Characters of one input: a text, or a (text, text_pair) pair."""
    return len(item) if isinstance(item, str) else len(item[0]) + len(item[1])


def score(impl, items: list) -> np.ndarray:
    """The model's outputs for texts, or for (text, text_pair) pairs."""
    if items and not isinstance(items[0], str):
        return impl.predict_proba([a for a, _ in items], [b for _, b in items])
    return impl.predict_proba(items)


def chunks(texts: list, max_texts: int, max_chars: int) -> list[list]:
    """``texts`` (or pairs) in order, cut into runs of at most ``max_texts`` items and ``max_chars``
    characters (a single longer item is a run of its own)."""
    out: list[list] = [[]]
    chars = 0
    for t in texts:
        n = chars_of(t)
        if out[-1] and (len(out[-1]) >= max_texts or chars + n > max_chars):
            out.append([])
            chars = 0
        out[-1].append(t)
        chars += n
    return out


class MicroBatcher:
    """``max_chars`` bounds a batch's work as ``max_batch`` bounds its texts: one request of 256 texts of
    4,000 characters (1 MB) held the inference thread 1.6 s on the 2-core CPU while every other request
    waited. A larger request is run as several batches, one after another, so requests arriving
    meanwhile go between them."""

    def __init__(self, max_batch: int, max_wait_ms: float, metrics: Metrics, max_chars: int = 32_768) -> None:
        self.max_batch = max_batch
        self.max_chars = max_chars
        self.max_wait = max_wait_ms / 1000.0
        self.metrics = metrics
        self.queue: asyncio.Queue[_Pending] = asyncio.Queue()
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="infer")
        self.model: LoadedModel | None = None
        self._task: asyncio.Task | None = None
        self._stopping = False
        self.in_flight = 0

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="micro-batcher")

    async def submit(self, texts: list[str]) -> tuple[np.ndarray, LoadedModel]:
        """Probabilities of ``texts`` and the model version that computed all of them."""
        self.in_flight += 1
        self.metrics.in_flight.set(self.in_flight)
        try:
            parts = chunks(texts, self.max_batch, self.max_chars)
            for _attempt in range(3):
                results = []
                for part in parts:  # one after another: requests queued meanwhile run between them
                    fut = asyncio.get_running_loop().create_future()
                    await self.queue.put(_Pending(part, fut, time.perf_counter()))
                    results.append(await fut)
                if len({model.version for _, model in results}) == 1:
                    break  # else a hot swap came between two parts: once more, on the new version
            return (results[0][0] if len(results) == 1 else np.concatenate([p for p, _ in results])), results[-1][1]
        finally:
            self.in_flight -= 1
            self.metrics.in_flight.set(self.in_flight)

    async def _collect(self) -> list[_Pending]:
        """Everything queued now, up to ``max_batch`` texts; with ``max_wait`` > 0 it then waits up to that
        long for more while other requests are outstanding.

        ``max_wait`` 0 (the default) runs at once: requests that arrive while a batch runs form the next
        one, so batches grow with load without anyone waiting. A fixed wait cost every batch its full
        length when fewer clients than ``max_batch`` were sending (8 closed-loop clients never filled 64):
        on the 2-core CPU at concurrency 8 (student INT8, same server otherwise) 0 ms answered 1,116
        requests/s and 5 ms 789, p99 13.6 vs 20.6 ms."""
        first = await self.queue.get()
        batch, count, chars = [first], len(first.texts), sum(map(chars_of, first.texts))

        def room() -> bool:
            return count < self.max_batch and chars < self.max_chars

        while room() and not self.queue.empty():
            item = self.queue.get_nowait()
            batch.append(item)
            count += len(item.texts)
            chars += sum(map(chars_of, item.texts))
        deadline = time.perf_counter() + self.max_wait
        while room() and self.in_flight > len(batch):
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                break
            try:
                item = await asyncio.wait_for(self.queue.get(), remaining)
            except asyncio.TimeoutError:
                break
            batch.append(item)
            count += len(item.texts)
            chars += sum(map(chars_of, item.texts))
        return batch

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if self._stopping and self.queue.empty():
                return
            try:
                batch = await self._collect()
            except asyncio.CancelledError:
                return
            model = self.model  # one read: this whole batch runs on one model version
            texts = [t for p in batch for t in p.texts]
            try:
                if model is None:
                    raise RuntimeError("no model loaded")
                proba = await loop.run_in_executor(self.executor, score, model.impl, texts)
            except Exception as e:  # noqa: BLE001 - fail these requests, keep serving
                log.exception("inference failed")
                for p in batch:
                    if not p.future.done():
                        p.future.set_exception(e)
                continue
            self.metrics.batch_size.observe(len(texts))
            start = 0
            for p in batch:
                if not p.future.done():
                    p.future.set_result((proba[start : start + len(p.texts)], model))
                start += len(p.texts)

    async def drain(self, timeout: float = 30.0) -> None:
        """Answer everything queued, then stop the batching loop."""
        self._stopping = True
        deadline = time.monotonic() + timeout
        while (not self.queue.empty() or self.in_flight) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        await cancel_task(self._task)
        self.executor.shutdown(wait=True)
