"""Shadow traffic: each champion batch also runs on a second alias (``--shadow challenger``), off the
request path.

The request handler hands the texts and the champion's answers to :meth:`Shadow.submit` (a
non-blocking put on a bounded queue) after it has its response; a thread of its own loads the shadow
model, runs it and compares. A full queue drops the batch (``forgeline_shadow_dropped``); a shadow
model that cannot be loaded or fails is reported (``/v1/shadow``, the log, ``forgeline_shadow_errors``)
and retried each poll, and the champion's responses never wait for or depend on it.

Recorded: Prometheus counters and histograms (texts, agreements, both latencies), the latest
disagreements (``GET /v1/shadow``), and every ``shadow_log_s`` seconds MLflow metrics on the shadow
version's run (``shadow.agreement_rate``, ``shadow.texts``, ``shadow.{champion,challenger}_ms_p50``)
plus ``shadow/disagreements.json``, so the reviewer deciding on the challenger sees them beside its
gate result.
"""

from __future__ import annotations

import collections
import logging
import queue
import threading
import time
from typing import Any

import numpy as np

from forgeline.config.schema import ServeConfig
from forgeline.registry.client import parse_model_ref

log = logging.getLogger("forgeline.serve")


class Shadow:
    def __init__(self, cfg: ServeConfig, metrics, source_factory=None) -> None:
        """``source_factory``: ServeConfig -> a source like serving.watcher.RegistrySource (the default)."""
        name, _, _ = parse_model_ref(cfg.model)
        self.ref = f"{name}@{cfg.shadow}"
        self.cfg, self.metrics = cfg, metrics
        self.source: Any = None  # a RegistrySource, made on the shadow thread
        self._source_factory = source_factory
        self.model: Any = None  # the LoadedModel, hot-swapped
        self.problem: str | None = "not loaded yet"
        self._queue: queue.Queue = queue.Queue(maxsize=cfg.shadow_queue)
        self.disagreements: collections.deque = collections.deque(maxlen=50)
        self._window: dict[str, Any] = self._new_window()
        self._totals = {"texts": 0, "agree": 0}
        self._step = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="shadow", daemon=True)

    @staticmethod
    def _new_window() -> dict[str, Any]:
        return {"texts": 0, "agree": 0, "champion_ms": [], "shadow_ms": [], "since": time.time()}

    def start(self) -> None:
        self._thread.start()

    def close(self, timeout: float = 10.0) -> None:
        """Stop (batches still queued are not compared) and send the last numbers to MLflow (server shutdown)."""
        self._stop.set()
        try:
            self._queue.put_nowait(None)  # wake the thread; if the queue is full it sees _stop within 0.2 s
        except queue.Full:
            pass
        self._thread.join(timeout)
        self._flush_mlflow()

    def submit(self, texts: list[str], labels: list[str], champion_version: str, champion_s: float) -> None:
        try:
            self._queue.put_nowait((texts, labels, champion_version, champion_s))
        except queue.Full:
            self.metrics.shadow_dropped.inc(len(texts))

    def status(self) -> dict[str, Any]:
        total = self._totals["texts"]
        return {"reference": self.ref, "version": self.model.version if self.model else None, "problem": self.problem,
                "texts": total, "agreement_rate": (self._totals["agree"] / total) if total else None,
                "disagreements": list(self.disagreements)}

    # --- the shadow thread -------------------------------------------------------------------------
    def _ensure_model(self) -> None:
        """Load (or hot-swap) the shadow version; on failure say why once and keep trying each poll."""
        from forgeline.serving.watcher import RegistrySource

        try:
            if self.source is None:
                self.source = (self._source_factory or RegistrySource)(self.cfg.model_copy(update={"model": self.ref}))
            version, run_id = self.source.current_version()
            if self.model is None or self.model.version != version:
                self._flush_mlflow()
                self.model = self.source.load(version, run_id)
                self._window, self._totals = self._new_window(), {"texts": 0, "agree": 0}
                log.info("shadow: comparing with %s (v%s)", self.ref, version)
            self.problem = None
        except Exception as e:  # noqa: BLE001 - the shadow is optional: say why, keep serving
            message = f"shadow {self.ref} unavailable, champion unaffected: {str(e).splitlines()[0] if str(e) else type(e).__name__}"
            if message != self.problem:
                log.warning("%s", message)
            self.problem = message
            self.metrics.shadow_errors.inc()

    def _run(self) -> None:
        next_poll = 0.0
        while not self._stop.is_set():
            if time.time() >= next_poll:
                self._ensure_model()
                next_poll = time.time() + self.cfg.poll_interval_s
            try:
                item = self._queue.get(timeout=0.2)
            except queue.Empty:
                item = ()
            if item is None:
                return
            if item and self.model is not None:
                self._compare(*item)
            if time.time() - self._window["since"] >= self.cfg.shadow_log_s:
                self._flush_mlflow()

    def _compare(self, texts: list, decided: list, champion_version: str, champion_s: float) -> None:
        """``decided``: the champion's decisions (``OutputSpec.decisions``: labels, label sets or scores);
        the shadow agrees on a row when its own decision is the same (scores: within
        ``inference.tasks.REGRESSION_AGREE_SCALES`` target standard deviations)."""
        from forgeline.serving.batcher import score

        model = self.model
        start = time.perf_counter()
        try:
            proba = score(model.impl, texts)
        except Exception as e:  # noqa: BLE001
            self.metrics.shadow_errors.inc()
            self.problem = f"shadow v{model.version} failed on a batch: {e}"
            return
        elapsed = time.perf_counter() - start
        spec = model.impl.spec
        shadow_decided = spec.decisions(proba)
        same = [spec.same(a, b) for a, b in zip(decided, shadow_decided)]
        agree = sum(same)
        for text, a, b, row, ok in zip(texts, decided, shadow_decided, proba, same):
            if not ok:
                shown = text if isinstance(text, str) else " [SEP] ".join(text)
                self.disagreements.append({"text": shown[:500], "champion": _jsonable(a), "champion_version": champion_version,
                                           "shadow": _jsonable(b), "shadow_version": model.version,
                                           "shadow_confidence": float(np.max(row))})
        self.metrics.shadow_texts.inc(len(texts))
        self.metrics.shadow_agreements.inc(agree)
        self.metrics.shadow_latency.labels("champion").observe(champion_s)
        self.metrics.shadow_latency.labels("shadow").observe(elapsed)
        w = self._window
        w["texts"] += len(texts)
        w["agree"] += agree
        w["champion_ms"].append(champion_s * 1000)
        w["shadow_ms"].append(elapsed * 1000)
        self._totals["texts"] += len(texts)
        self._totals["agree"] += agree
        self.metrics.shadow_agreement_rate.set(self._totals["agree"] / self._totals["texts"])

    def _flush_mlflow(self) -> None:
        """The window's numbers as MLflow metrics (one step per window) on the shadow version's run."""
        w, model = self._window, self.model
        self._window = self._new_window()
        if model is None or not w["texts"] or not model.run_id or self.source is None:
            return
        self._step += 1
        try:
            client = self.source.client
            metrics = {"shadow.agreement_rate": w["agree"] / w["texts"], "shadow.texts": float(w["texts"]),
                       "shadow.champion_ms_p50": float(np.median(w["champion_ms"])),
                       "shadow.challenger_ms_p50": float(np.median(w["shadow_ms"]))}
            for key, value in metrics.items():
                client.log_metric(model.run_id, key, value, step=self._step)
            client.log_dict(model.run_id, list(self.disagreements), "shadow/disagreements.json")
        except Exception as e:  # noqa: BLE001 - the tracking server may be away; serving goes on
            log.warning("shadow: could not record metrics on run %s: %s", model.run_id, e)


def _jsonable(decision):
    return list(decision) if isinstance(decision, tuple) else decision
