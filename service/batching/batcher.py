"""Dynamic batching: concurrent requests' texts -> length-aware batches -> one model call -> each text its row.

    submit(texts' token ids, deadline) -- admission: queue counted in texts, full -> QueueFullError (429)
        -> pending texts (one asyncio task owns them)
        -> batch = the oldest pending text + the pending texts closest to it in token length,
                   limited by max_batch_size, a padded-token budget (batch size x longest sequence) and a
                   padding ratio (padded / real tokens of the batch; CPU time grows with padded tokens, while
                   batching gains little on CPU, so a smaller batch beats one padded to its longest text)
           texts past their deadline are dropped here, before inference; a caller that gives up (client
           disconnected: its task is cancelled) has its texts withdrawn from the queue
        -> a thread-safe queue of formed batches, kept one batch per worker ahead of the workers
        -> worker threads (one model instance each) pad and infer; a worker that finishes takes the next formed
           batch at once, without waiting for the event loop, which may be busy answering the last batch's
           requests (measured: with dispatch through the event loop, workers sat idle 30 % of the time at c64)
        -> row i of the logits resolves text i's future (back on the event loop); an exception fails only that
           batch's texts

Anchoring every batch on the oldest text bounds how long any text can be passed over: it waits at most for the
texts queued before it, never for later arrivals of a better-fitting length. policy="fifo" (arrival order, no
padding bound) exists to measure what length-aware batching saves.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from service.errors import (
    DeadlineExceededError,
    InferenceError,
    InferenceTimeoutError,
    ModelStuckError,
    QueueFullError,
    ShuttingDownError,
)

log = logging.getLogger(__name__)

InferFn = Callable[[np.ndarray, np.ndarray], np.ndarray]
BACKGROUND_AGING_S = 2.0  # a background text (an explanation's rows) waiting this long competes like any other


@dataclass(eq=False)
class _Text:
    ids: list[int]
    future: asyncio.Future
    enqueued: float
    deadline: float
    queue_s: float = 0.0
    inference_s: float = 0.0
    # Under the batcher's claim lock: a worker claims a text (started) unless its caller gave up first (withdrawn).
    started: bool = False
    withdrawn: bool = False
    background: bool = False  # runs when no other text waits, or once it has waited BACKGROUND_AGING_S


@dataclass
class _Report:
    """What a worker reports back for one formed batch."""

    outcome: np.ndarray | Exception | None  # the logits, or what the model call raised; None: nothing left to run
    texts: list[_Text]  # the texts it ran (callers that left and expired texts skipped)
    expired: int  # texts skipped because their deadline passed while the batch waited
    width: int
    started: float
    elapsed: float


@dataclass(eq=False)
class _Job:
    """A formed batch on its way to a worker thread."""

    texts: list[_Text]
    done: asyncio.Future  # resolved on the event loop with the worker's _Report
    claimed: bool = False  # a worker has taken it (set under the claim lock); until then its texts count as queued
    started_at: float | None = None  # monotonic time the worker's model call began (None: not started)


class _Worker(threading.Thread):
    """Owns one model instance; runs formed batches from the shared queue until it gets None."""

    def __init__(
        self, index: int, infer: InferFn, jobs: queue.SimpleQueue, pad_id: int, claim_lock: threading.Lock
    ) -> None:
        super().__init__(name=f"infer_{index}", daemon=True)  # daemon: a hung model call cannot block exit
        self.infer, self.jobs, self.pad_id, self.claim_lock = infer, jobs, pad_id, claim_lock

    def run(self) -> None:
        while (job := self.jobs.get()) is not None:
            report = self._run(job)
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting any more
                job.done.get_loop().call_soon_threadsafe(_resolve, job.done, report)

    def _run(self, job: _Job) -> _Report:
        # Texts whose callers left while the batch waited here are not run (they are counted on the loop), nor
        # texts whose deadline passed meanwhile (counted from the report; their callers get 504 at the deadline).
        now = time.monotonic()
        with self.claim_lock:
            job.claimed = True
            job.started_at = now
            texts = [t for t in job.texts if not t.withdrawn and t.deadline > now]
            expired = [t for t in job.texts if not t.withdrawn and t.deadline <= now]
            for t in texts:
                t.started = True
            for t in expired:
                t.withdrawn = True
        started = time.monotonic()
        outcome: np.ndarray | Exception | None = None
        width = max((len(t.ids) for t in texts), default=0)
        if texts:
            try:
                input_ids = np.full((len(texts), width), self.pad_id, dtype=np.int64)
                for row, t in enumerate(texts):
                    input_ids[row, : len(t.ids)] = t.ids
                outcome = self.infer(input_ids, np.zeros_like(input_ids))
            except Exception as err:  # reported on the event loop, which fails only this batch
                outcome = err
        return _Report(outcome, texts, len(expired), width, started, time.monotonic() - started)


def _resolve(future: asyncio.Future, report: _Report) -> None:
    if not future.done():
        future.set_result(report)


@dataclass
class BatchStats:
    """Counters the service exports as metrics; plain ints so the batcher needs no metrics library."""

    batches: int = 0
    texts: int = 0
    real_tokens: int = 0
    padded_tokens: int = 0
    dropped_deadline: int = 0
    dropped_disconnected: int = 0
    dropped_request_failed: int = 0  # a sibling text of the same request failed: the rest were withdrawn
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
        max_padding_ratio: float = 1.05,
        policy: str = "length",
        inference_timeout_s: float = 30.0,
        max_queue_s: float = 0.0,
    ) -> None:
        if max_batch_size < 1 or max_batch_tokens < 1 or queue_capacity < 1:
            raise ValueError("max_batch_size, max_batch_tokens and queue_capacity must be >= 1")
        if max_padding_ratio < 1 or policy not in ("length", "fifo"):
            raise ValueError("max_padding_ratio must be >= 1 and policy 'length' or 'fifo'")
        self.max_padding_ratio = max_padding_ratio
        self.inference_timeout_s = inference_timeout_s
        self.max_queue_s = max_queue_s  # 0: no time bound, the text count alone
        self._avg_text_s = 0.002  # model time per text, moving average over recent batches
        self.policy = policy
        # One infer function per worker thread (a model instance each); a batch runs on whichever worker is free.
        infers = list(infer) if isinstance(infer, Sequence) else [infer]
        if not infers:
            raise ValueError("at least one infer function is needed")
        self.workers = len(infers)
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._claim_lock = threading.Lock()
        self._threads = [_Worker(i, fn, self._jobs, pad_id, self._claim_lock) for i, fn in enumerate(infers)]
        self._in_flight: set[_Job] = set()  # formed batches whose worker has not reported back yet
        # Batches formed and not yet finished: one running plus one waiting per worker.
        self._slots = asyncio.Semaphore(2 * self.workers)
        self._running: set[asyncio.Task] = set()
        self.max_batch_size = max_batch_size
        self.max_batch_tokens = max_batch_tokens
        self.max_wait_s = max_wait_s
        self.queue_capacity = queue_capacity
        self._on_batch = on_batch
        self._pending: list[_Text] = []
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._avg_batch_s = 0.05
        self.stats = BatchStats()
        self.consecutive_faults = 0  # failed or timed-out batches since the last good one
        self.stopped = False  # stop() is final: later texts fail at once instead of waiting for their deadline

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        if self._task is None:
            for thread in self._threads:
                thread.start()
            self._task = asyncio.get_running_loop().create_task(self._loop(), name="batcher")

    async def stop(self, timeout_s: float = 5.0) -> None:
        """Stop forming batches; let batches in flight finish for up to timeout_s (a model call cannot be
        interrupted), then fail whatever is left: a stuck instance must not keep the process from exiting."""
        self.stopped = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._running:
            _, late = await asyncio.wait(self._running, timeout=timeout_s)
            for task in late:
                task.cancel()
            if late:
                await asyncio.wait(late)
        with self._claim_lock:  # a worker that comes back later skips what nobody waits for any more
            for job in self._in_flight:
                for t in job.texts:
                    t.withdrawn = t.withdrawn or not t.started
        for _ in self._threads:
            self._jobs.put(None)
        for text in self._pending:
            if not text.future.done():
                text.future.set_exception(ShuttingDownError())
        self._pending.clear()

    @property
    def queued_texts(self) -> int:
        """Texts waiting: not yet in a batch, or in a formed batch no worker has started."""
        # Texts of callers that left while their batch waited still count until a worker skips them: conservative,
        # and cheap on the hot path (admission asks this for every request).
        return len(self._pending) + sum(len(job.texts) for job in self._in_flight if not job.claimed)

    @property
    def in_flight_texts(self) -> int:
        """Texts in formed batches a worker has not reported back on (waiting for a worker, or being run)."""
        return sum(len(job.texts) for job in self._in_flight)

    @property
    def busy(self) -> bool:
        return bool(self._pending) or bool(self._in_flight)

    # ------------------------------------------------------------------ admission
    async def submit(
        self,
        sequences: Sequence[list[int]],
        deadline: float,
        timings: dict[str, float] | None = None,
        reserved: int = 0,
        background: bool = False,
    ) -> list[np.ndarray]:
        """Logits rows for `sequences` (token ids incl. [CLS]/[SEP]), in order. Raises the errors above.

        `timings`, if given, receives the longest queue wait and model-call time among these texts (seconds).
        `background` texts (e.g. an explanation's many rows) run only when no other text waits, or after waiting
        BACKGROUND_AGING_S: they cannot slow classify requests down, and cannot starve for ever either.
        """
        self.admit(len(sequences), reserved)
        loop = asyncio.get_running_loop()
        now = time.monotonic()
        texts = [_Text(list(ids), loop.create_future(), now, deadline, background=background) for ids in sequences]
        self._pending.extend(texts)
        self._wakeup.set()
        try:
            # asyncio.timeout_at and a bare await for a single text: the cheapest waits asyncio has (wait_for and
            # gather each add a future and callbacks per request).
            async with asyncio.timeout_at(loop.time() + max(0.0, deadline - now)):
                if len(texts) == 1:
                    rows = [await texts[0].future]
                else:
                    rows = list(await asyncio.gather(*(t.future for t in texts)))
        except TimeoutError:
            # Answer 504 at the deadline, not at the next batch; texts still queued are never run.
            self.stats.dropped_deadline += self._withdraw(texts)
            raise DeadlineExceededError() from None
        except BaseException as err:
            # The caller gave up (client gone: its task was cancelled) or one of its texts failed: withdraw the rest.
            withdrawn = self._withdraw(texts)
            if isinstance(err, asyncio.CancelledError):
                self.stats.dropped_disconnected += withdrawn
            else:
                self.stats.dropped_request_failed += withdrawn
            for t in texts:
                if not t.future.done():
                    t.future.cancel()
            raise
        if timings is not None:
            timings["queue_s"] = max(t.queue_s for t in texts)
            timings["inference_s"] = max(t.inference_s for t in texts)
        return rows

    def admit(self, n: int, reserved: int = 0) -> None:
        """Raise unless `n` more texts fit (`reserved`: texts admitted elsewhere and not yet submitted)."""
        if self.stopped:
            raise ShuttingDownError()
        if self.all_stuck:
            self.stats.rejected_texts += n
            raise ModelStuckError(self.inference_timeout_s)
        ahead = self.queued_texts + reserved + n
        if ahead > self.queue_capacity or (self.max_queue_s and self.expected_wait_s(ahead) > self.max_queue_s):
            self.stats.rejected_texts += n
            raise QueueFullError(self.retry_after_s())

    def expected_wait_s(self, texts: int) -> float:
        """How long `texts` queued texts take to run, from the recent model time per text."""
        return texts * self._avg_text_s / self.workers

    @property
    def stuck_workers(self) -> int:
        """Instances inside a model call that has run past the inference timeout (a hung runtime)."""
        limit = time.monotonic() - self.inference_timeout_s
        return sum(1 for job in self._in_flight if job.started_at is not None and job.started_at < limit)

    @property
    def all_stuck(self) -> bool:
        return len(self._in_flight) >= self.workers and self.stuck_workers >= self.workers

    def all_stuck_for_s(self) -> float:
        """How long every instance has been stuck (0 if one is not): the youngest stuck call's time past the
        inference timeout."""
        if not self.all_stuck:
            return 0.0
        youngest = max(j.started_at for j in self._in_flight if j.started_at is not None)
        return time.monotonic() - youngest - self.inference_timeout_s

    def _withdraw(self, texts: list[_Text]) -> int:
        """Take these texts back if no worker has started them (queued, or in a formed batch that has not started:
        the worker skips them); returns how many were taken back."""
        with self._claim_lock:
            taken = [t for t in texts if not t.started and not t.withdrawn]
            for t in taken:
                t.withdrawn = True
        ids = set(map(id, taken))
        self._pending = [t for t in self._pending if id(t) not in ids]
        return len(taken)

    def retry_after_s(self) -> float:
        batches_ahead = self.queued_texts / self.max_batch_size + 1
        return max(1.0, round(batches_ahead * self._avg_batch_s / self.workers))

    # ------------------------------------------------------------------ batching
    def _take_batch(self) -> list[_Text]:
        """The oldest text plus the pending texts nearest to it in length, within the size, token and padding
        budgets (policy "length"), or the oldest texts in arrival order within the size and token budgets ("fifo")."""
        pending = self._foreground()
        anchor = pending[0]
        fifo = self.policy == "fifo"
        rest = pending[1:] if fifo else sorted(pending[1:], key=lambda t: abs(len(t.ids) - len(anchor.ids)))
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

    def _only_background(self) -> bool:
        aged = time.monotonic() - BACKGROUND_AGING_S
        return all(t.background and t.enqueued >= aged for t in self._pending)

    def _foreground(self) -> list[_Text]:
        """The texts a batch is formed from: all but background texts younger than BACKGROUND_AGING_S, or, when
        nothing else waits, the background texts."""
        aged = time.monotonic() - BACKGROUND_AGING_S
        foreground = [t for t in self._pending if not t.background or t.enqueued < aged]
        return foreground or self._pending

    def _drop_dead(self) -> None:
        now = time.monotonic()
        alive = []
        for t in self._pending:
            if t.future.done():  # cancelled by its caller (already counted when withdrawn)
                continue
            if now > t.deadline:
                t.withdrawn = True  # never started: no worker has seen it
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
                if self._only_background() and len(self._in_flight) >= self.workers:
                    # Background texts go to a free worker only: a batch of them formed ahead would be run before
                    # a classify request that arrives meanwhile. A finished job or a new text wakes this loop.
                    self._slots.release()
                    await self._wakeup.wait()
                    self._wakeup.clear()
                    continue
                batch = self._take_batch()
                # In flight at once, not when the task first runs: texts that are neither pending nor in a job
                # would be invisible to admission for a loop turn (8 texts over capacity in the overload test).
                job = _Job(batch, asyncio.get_running_loop().create_future())
                self._in_flight.add(job)
                task = asyncio.get_running_loop().create_task(self._run_batch(job))
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

    async def _wait_for_worker(self, job: _Job) -> _Report:
        """The worker's report; TimeoutError once its model call has run inference_timeout_s. The clock starts
        when a worker takes the batch: time waiting for a busy instance is the texts' deadline's business."""
        while True:
            started = job.started_at
            wait = 0.0
            if started is not None:
                wait = started + self.inference_timeout_s - time.monotonic()
                if wait <= 0:
                    raise TimeoutError
            elif all(t.withdrawn for t in job.texts):  # nobody waits for this batch: the worker will skip it
                return _Report(None, [], 0, 0, time.monotonic(), 0.0)
            done, _ = await asyncio.wait({job.done}, timeout=0.1 if started is None else wait)
            if done:
                report: _Report = job.done.result()
                return report

    @staticmethod
    def _fail(batch: list[_Text], error: Exception) -> None:
        for t in batch:
            if not t.future.done():
                t.future.set_exception(error)

    async def _run_batch(self, job: _Job) -> None:
        batch = job.texts

        def worker_done(_: object) -> None:  # only when the call really returned: a hung call keeps its slot
            self._in_flight.discard(job)
            self._slots.release()
            self._wakeup.set()  # background texts wait for a free worker

        job.done.add_done_callback(worker_done)
        self._jobs.put(job)
        try:
            report = await self._wait_for_worker(job)
            self.stats.dropped_deadline += report.expired
            outcome, texts = report.outcome, report.texts
            if isinstance(outcome, Exception):
                raise outcome
            if texts and (not isinstance(outcome, np.ndarray) or outcome.shape[0] != len(texts)):
                rows = getattr(outcome, "shape", ("?",))[0]
                raise RuntimeError(f"backend returned {rows} rows for a batch of {len(texts)}")
        except asyncio.CancelledError:  # stop() gave up on this batch
            self._fail(batch, ShuttingDownError())
            raise
        except TimeoutError:
            self.consecutive_faults += 1
            log.error("inference of a batch of %d texts exceeded %.1f s", len(batch), self.inference_timeout_s)
            self.stats.timed_out_batches += 1
            self._fail(batch, InferenceTimeoutError(self.inference_timeout_s))
            return
        except Exception as err:
            self.consecutive_faults += 1
            log.error("inference failed for a batch of %d texts", len(batch), exc_info=err)
            self.stats.failed_batches += 1
            self._fail(batch, InferenceError())
            return
        if not texts:  # every caller left before the batch started
            return
        self.consecutive_faults = 0
        width, started, elapsed = report.width, report.started, report.elapsed
        self._avg_batch_s = 0.8 * self._avg_batch_s + 0.2 * elapsed
        self._avg_text_s = 0.9 * self._avg_text_s + 0.1 * elapsed / len(texts)
        real = sum(len(t.ids) for t in texts)
        self.stats.batches += 1
        self.stats.texts += len(texts)
        self.stats.real_tokens += real
        self.stats.padded_tokens += width * len(texts)
        self.stats.batch_sizes.append(len(texts))
        del self.stats.batch_sizes[: -self.stats.RECENT]
        if self._on_batch is not None:
            self._on_batch(len(texts), real, width * len(texts), elapsed)
        assert isinstance(outcome, np.ndarray)  # checked above
        for row, t in enumerate(texts):
            t.queue_s, t.inference_s = started - t.enqueued, elapsed
            if not t.future.done():
                t.future.set_result(outcome[row])
