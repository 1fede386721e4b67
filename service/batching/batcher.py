"""Dynamic batching: concurrent requests' texts -> length-aware batches -> one model call -> each text its row.

    submit(texts' token ids, deadline) -- admission: queue counted in texts, full -> QueueFullError (429)
        -> pending texts (one asyncio task owns them)
        -> batch = the oldest pending text + the pending texts closest to it in token length,
                   limited by max_batch_size, a padded-token budget (batch size x longest sequence) and a
                   padding ratio (padded / real tokens of the batch; CPU time grows with padded tokens, while
                   batching gains little on CPU, so a smaller batch beats one padded to its longest text)
           texts past their deadline are dropped here, before inference; a caller that gives up (client
           disconnected: its task is cancelled) has its texts withdrawn from the queue
        -> infer(padded ids) in a worker thread (the event loop keeps accepting requests); with several workers
           (one model instance each) the next batch forms and runs while the previous one is still running
        -> row i of the logits resolves text i's future; an exception fails only that batch's texts

Anchoring every batch on the oldest text bounds how long any text can be passed over: it waits at most for the
texts queued before it, never for later arrivals of a better-fitting length. policy="fifo" (arrival order, no
padding bound) exists to measure what length-aware batching saves.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from ernie_cls.errors import ErnieClsError

log = logging.getLogger(__name__)

InferFn = Callable[[np.ndarray, np.ndarray], np.ndarray]


class QueueFullError(ErnieClsError):
    http_status = 429

    def __init__(self, retry_after_s: float) -> None:
        self.retry_after_s = retry_after_s
        super().__init__(
            "The service is at capacity.", f"Retry after {retry_after_s:.0f} s, or send fewer texts per second."
        )


class DeadlineExceededError(ErnieClsError):
    http_status = 504

    def __init__(self) -> None:
        super().__init__(
            "The request's deadline passed before it could be processed; the work was not done.",
            "Retry later, or allow more time with the X-Request-Timeout-Ms header.",
        )


class ClientGoneError(ErnieClsError):
    http_status = 499


class InferenceTimeoutError(ErnieClsError):
    http_status = 504

    def __init__(self, timeout_s: float) -> None:
        super().__init__(
            f"Inference took longer than {timeout_s:.0f} s and was abandoned for this batch.",
            "Retry; if it persists, the model is overloaded or stuck: check the service logs and /readyz.",
        )


class InferenceError(ErnieClsError):
    http_status = 500

    def __init__(self) -> None:
        super().__init__("Inference failed for this batch.", "Retry; if it persists, check the service logs.")


@dataclass(eq=False)
class _Text:
    ids: list[int]
    future: asyncio.Future
    enqueued: float
    deadline: float
    queue_s: float = 0.0
    inference_s: float = 0.0


@dataclass
class BatchStats:
    """Counters the service exports as metrics; plain ints so the batcher needs no metrics library."""

    batches: int = 0
    texts: int = 0
    real_tokens: int = 0
    padded_tokens: int = 0
    dropped_deadline: int = 0
    dropped_disconnected: int = 0
    failed_batches: int = 0
    timed_out_batches: int = 0
    rejected_texts: int = 0
    batch_sizes: list[int] = field(default_factory=list)  # the most recent RECENT batches only
    RECENT = 1000


class Batcher:
    def __init__(
        self,
        infer: InferFn | Sequence[InferFn],
        pad_id: int,
        max_batch_size: int = 32,
        max_batch_tokens: int = 8192,
        max_wait_s: float = 0.005,
        queue_capacity: int = 1024,
        on_batch: Callable[[int, int, int, float], None] | None = None,
        max_padding_ratio: float = 1.2,
        policy: str = "length",
        inference_timeout_s: float = 30.0,
    ) -> None:
        if max_batch_size < 1 or max_batch_tokens < 1 or queue_capacity < 1:
            raise ValueError("max_batch_size, max_batch_tokens and queue_capacity must be >= 1")
        if max_padding_ratio < 1 or policy not in ("length", "fifo"):
            raise ValueError("max_padding_ratio must be >= 1 and policy 'length' or 'fifo'")
        self.max_padding_ratio = max_padding_ratio
        self.inference_timeout_s = inference_timeout_s
        self.policy = policy
        # One infer function per worker (a model instance each); a batch runs on whichever instance is free.
        self._idle: list[InferFn] = list(infer) if isinstance(infer, Sequence) else [infer]
        if not self._idle:
            raise ValueError("at least one infer function is needed")
        self.workers = len(self._idle)
        self._executor = ThreadPoolExecutor(self.workers, thread_name_prefix="infer")
        self._slots = asyncio.Semaphore(self.workers)
        self._running: set[asyncio.Task] = set()
        self._pad_id = pad_id
        self.max_batch_size = max_batch_size
        self.max_batch_tokens = max_batch_tokens
        self.max_wait_s = max_wait_s
        self.queue_capacity = queue_capacity
        self._on_batch = on_batch
        self._pending: list[_Text] = []
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._inflight = 0  # texts being inferred now
        self._avg_batch_s = 0.05
        self.stats = BatchStats()
        self.consecutive_faults = 0  # failed or timed-out batches since the last good one

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop(), name="batcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._running:  # a model call cannot be interrupted: let the batches in flight finish
            await asyncio.gather(*self._running, return_exceptions=True)
        self._executor.shutdown(wait=False)
        for text in self._pending:
            if not text.future.done():
                text.future.set_exception(InferenceError())
        self._pending.clear()

    @property
    def queued_texts(self) -> int:
        return len(self._pending)

    @property
    def busy(self) -> bool:
        return bool(self._pending) or self._inflight > 0

    # ------------------------------------------------------------------ admission
    async def submit(
        self,
        sequences: Sequence[list[int]],
        deadline: float,
        timings: dict[str, float] | None = None,
    ) -> list[np.ndarray]:
        """Logits rows for `sequences` (token ids incl. [CLS]/[SEP]), in order. Raises the errors above.

        `timings`, if given, receives the longest queue wait and model-call time among these texts (seconds).
        """
        if len(self._pending) + len(sequences) > self.queue_capacity:
            self.stats.rejected_texts += len(sequences)
            raise QueueFullError(self.retry_after_s())
        loop = asyncio.get_running_loop()
        now = time.monotonic()
        texts = [_Text(list(ids), loop.create_future(), now, deadline) for ids in sequences]
        self._pending.extend(texts)
        self._wakeup.set()
        try:
            rows = list(
                await asyncio.wait_for(
                    asyncio.gather(*(t.future for t in texts)), timeout=max(0.0, deadline - time.monotonic())
                )
            )
        except TimeoutError:
            # Answer 504 at the deadline, not at the next batch; texts still queued are never run.
            self.stats.dropped_deadline += self._withdraw(texts)
            raise DeadlineExceededError() from None
        except BaseException:
            # The caller gave up (client gone: its task was cancelled) or a text failed: withdraw the rest.
            self.stats.dropped_disconnected += self._withdraw(texts)
            for t in texts:
                if not t.future.done():
                    t.future.cancel()
            raise
        if timings is not None:
            timings["queue_s"] = max(t.queue_s for t in texts)
            timings["inference_s"] = max(t.inference_s for t in texts)
        return rows

    def _withdraw(self, texts: list[_Text]) -> int:
        """Remove these texts from the queue if still there; returns how many were removed."""
        ids = set(map(id, texts))
        before = len(self._pending)
        self._pending = [t for t in self._pending if id(t) not in ids]
        return before - len(self._pending)

    def retry_after_s(self) -> float:
        batches_ahead = len(self._pending) / self.max_batch_size + 1
        return max(1.0, round(batches_ahead * self._avg_batch_s / self.workers))

    # ------------------------------------------------------------------ batching
    def _take_batch(self) -> list[_Text]:
        """The oldest text plus the pending texts nearest to it in length, within the size, token and padding
        budgets (policy "length"), or the oldest texts in arrival order within the size and token budgets ("fifo")."""
        anchor = self._pending[0]
        fifo = self.policy == "fifo"
        rest = self._pending[1:] if fifo else sorted(self._pending[1:], key=lambda t: abs(len(t.ids) - len(anchor.ids)))
        batch = [anchor]
        longest = real = len(anchor.ids)
        for text in rest:
            if len(batch) >= self.max_batch_size:
                break
            width = max(longest, len(text.ids))
            padded = width * (len(batch) + 1)
            if padded > self.max_batch_tokens:
                if fifo:
                    break
                continue
            if not fifo and padded > self.max_padding_ratio * (real + len(text.ids)):
                continue
            batch.append(text)
            longest, real = width, real + len(text.ids)
        chosen = set(map(id, batch))
        self._pending = [t for t in self._pending if id(t) not in chosen]
        return batch

    def _drop_dead(self) -> None:
        now = time.monotonic()
        alive = []
        for t in self._pending:
            if t.future.done():  # cancelled by its caller (already counted when withdrawn)
                continue
            if now > t.deadline:
                self.stats.dropped_deadline += 1
                t.future.set_exception(DeadlineExceededError())
            else:
                alive.append(t)
        self._pending = alive

    async def _loop(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._pending:
                # A free worker first: while all are busy the queue grows, so the next batch is fuller.
                await self._slots.acquire()
                if not await self._gather_batch():
                    self._slots.release()
                    break
                batch = self._take_batch()
                task = asyncio.get_running_loop().create_task(self._run_batch(batch, self._idle.pop()))
                self._running.add(task)
                task.add_done_callback(self._running.discard)

    async def _gather_batch(self) -> bool:
        """Wait up to max_wait_s for more texts unless a full batch waits; False if nothing is left to run."""
        while self._pending:
            # Give concurrent requests up to max_wait_s to join, unless a full batch is already waiting.
            oldest_age = time.monotonic() - self._pending[0].enqueued
            if len(self._pending) < self.max_batch_size and oldest_age < self.max_wait_s:
                try:
                    await asyncio.wait_for(self._wakeup.wait(), self.max_wait_s - oldest_age)
                    self._wakeup.clear()
                    continue
                except TimeoutError:
                    pass
            self._drop_dead()
            return bool(self._pending)
        return False

    @staticmethod
    def _fail(batch: list[_Text], error: Exception) -> None:
        for t in batch:
            if not t.future.done():
                t.future.set_exception(error)

    async def _run_batch(self, batch: list[_Text], infer: InferFn) -> None:
        width = max(len(t.ids) for t in batch)
        input_ids = np.full((len(batch), width), self._pad_id, dtype=np.int64)
        for row, t in enumerate(batch):
            input_ids[row, : len(t.ids)] = t.ids
        started = time.monotonic()
        self._inflight += len(batch)
        call = asyncio.get_running_loop().run_in_executor(self._executor, infer, input_ids, np.zeros_like(input_ids))

        def instance_free(_: object) -> None:  # only when the call really returned: a hung call keeps its instance
            self._inflight -= len(batch)
            self._idle.append(infer)
            self._slots.release()

        call.add_done_callback(instance_free)
        try:
            logits = await asyncio.wait_for(asyncio.shield(call), self.inference_timeout_s)
            if logits.shape[0] != len(batch):
                raise RuntimeError(f"backend returned {logits.shape[0]} rows for a batch of {len(batch)}")
        except TimeoutError:
            self.consecutive_faults += 1
            log.error("inference of a batch of %d texts exceeded %.1f s", len(batch), self.inference_timeout_s)
            self.stats.timed_out_batches += 1
            self._fail(batch, InferenceTimeoutError(self.inference_timeout_s))
            return
        except Exception:
            self.consecutive_faults += 1
            log.exception("inference failed for a batch of %d texts", len(batch))
            self.stats.failed_batches += 1
            self._fail(batch, InferenceError())
            return
        self.consecutive_faults = 0
        elapsed = time.monotonic() - started
        self._avg_batch_s = 0.8 * self._avg_batch_s + 0.2 * elapsed
        real = sum(len(t.ids) for t in batch)
        self.stats.batches += 1
        self.stats.texts += len(batch)
        self.stats.real_tokens += real
        self.stats.padded_tokens += width * len(batch)
        self.stats.batch_sizes.append(len(batch))
        del self.stats.batch_sizes[: -self.stats.RECENT]
        if self._on_batch is not None:
            self._on_batch(len(batch), real, width * len(batch), elapsed)
        for row, t in enumerate(batch):
            t.queue_s, t.inference_s = started - t.enqueued, elapsed
            if not t.future.done():
                t.future.set_result(logits[row])
