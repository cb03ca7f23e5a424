"""Micro-batching on one worker thread: queries that arrive while a batch is being computed are taken
together as the next batch. A lone query starts at once (no waiting window), so batching costs
nothing at low load and turns concurrency into larger, cheaper batches at high load. One thread also
keeps the encoder and FAISS from competing for the same cores."""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future

__all__ = ["MicroBatcher"]

log = logging.getLogger(__name__)

_STOP = object()


class MicroBatcher:
    """``submit(item)`` -> a Future of ``process(items)[i]``. ``process`` gets up to ``max_batch``
    items and returns one result per item; a result that is an exception fails only its item."""

    def __init__(self, process: Callable[[list], list], max_batch: int = 32, name: str = "batcher",
                 on_batch: Callable[[int], None] | None = None):
        self._process = process
        self._max = max(1, int(max_batch))
        self._on_batch = on_batch
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def submit(self, item) -> Future:
        future: Future = Future()
        self._queue.put((item, future))
        return future

    def close(self, timeout: float = 10.0) -> None:
        self._queue.put(_STOP)
        self._thread.join(timeout)

    def _loop(self) -> None:
        while True:
            first = self._queue.get()
            if first is _STOP:
                return
            batch = [first]
            stop = False
            while len(batch) < self._max:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is _STOP:
                    stop = True
                    break
                batch.append(item)
            self._run(batch)
            if stop:
                return

    def _run(self, batch: list) -> None:
        futures = [f for _, f in batch]
        if self._on_batch is not None:
            self._on_batch(len(batch))
        try:
            results = self._process([item for item, _ in batch])
        except Exception as e:  # noqa: BLE001 - the batch's callers get the error, the thread lives on
            log.exception("batch of %d failed", len(batch))
            results = [e] * len(batch)
        for future, result in zip(futures, results):
            if isinstance(result, BaseException):
                future.set_exception(result)
            else:
                future.set_result(result)
