"""Dynamic batcher invariants with a fake backend (no model): every text gets exactly its own row, in order."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service.batching import Batcher
from service.errors import DeadlineExceededError, InferenceError, QueueFullError


class FakeBackend:
    """Logits row = [sum of token ids, length]: each text's answer is recognisable. Records every batch."""

    def __init__(self, delay: float = 0.0, fail_when=None) -> None:
        self.delay = delay
        self.fail_when = fail_when
        self.batches: list[np.ndarray] = []
        self.lock = threading.Lock()

    def __call__(self, input_ids: np.ndarray, token_type_ids: np.ndarray) -> np.ndarray:
        with self.lock:
            self.batches.append(input_ids.copy())
        if self.delay:
            time.sleep(self.delay)
        if self.fail_when is not None and self.fail_when(input_ids):
            raise RuntimeError("backend exploded")
        real = input_ids != 0
        return np.stack([(input_ids * real).sum(1), real.sum(1)], axis=1).astype(np.float32)


def expected(ids: list[int]) -> list[float]:
    return [float(sum(ids)), float(len(ids))]


def far() -> float:
    return time.monotonic() + 60


async def _with_batcher(backend, coro_fn, **kwargs):
    batcher = Batcher(backend, pad_id=0, **kwargs)
    batcher.start()
    try:
        return await coro_fn(batcher)
    finally:
        await batcher.stop()


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.lists(st.lists(st.integers(1, 50), min_size=1, max_size=40), min_size=1, max_size=6), min_size=1, max_size=25
    )
)
def test_every_text_gets_its_own_row_in_order_and_batches_respect_limits(requests):
    backend = FakeBackend()

    async def run(batcher):
        return await asyncio.gather(*(batcher.submit(r, far()) for r in requests))

    results = asyncio.run(
        _with_batcher(backend, run, max_batch_size=8, max_batch_tokens=120, max_wait_s=0.002, queue_capacity=10_000)
    )
    for request, rows in zip(requests, results, strict=True):
        assert [r.tolist() for r in rows] == [expected(ids) for ids in request]
    for batch in backend.batches:
        assert batch.shape[0] <= 8
        assert batch.shape[0] == 1 or batch.size <= 120  # a single over-budget text still runs, alone
    assert sum(b.shape[0] for b in backend.batches) == sum(map(len, requests))


def test_concurrent_requests_are_batched():
    backend = FakeBackend(delay=0.01)

    async def run(batcher):
        await asyncio.gather(*(batcher.submit([[1, 5, 2]], far()) for _ in range(12)))
        return batcher.stats

    stats = asyncio.run(_with_batcher(backend, run, max_batch_size=4, max_wait_s=0.05))
    assert stats.texts == 12 and stats.batches == 3 and stats.batch_sizes == [4, 4, 4]


def test_length_aware_grouping_pads_less_than_fifo():
    backend = FakeBackend()
    lengths = [3, 60, 4, 58, 5, 61, 3, 59] * 4

    async def run(batcher):
        await asyncio.gather(*(batcher.submit([[1] * n], far()) for n in lengths))
        return batcher.stats

    stats = asyncio.run(_with_batcher(backend, run, max_batch_size=4, max_wait_s=0.05))
    fifo_padded = sum(max(lengths[i : i + 4]) * 4 for i in range(0, len(lengths), 4))
    assert stats.padded_tokens / stats.real_tokens < 1.2 < fifo_padded / sum(lengths)


def test_full_queue_rejects_with_retry_after_counting_texts_not_requests():
    backend = FakeBackend(delay=0.05)

    async def run(batcher):
        first = asyncio.ensure_future(batcher.submit([[1, 2]] * 6, far()))
        await asyncio.sleep(0)
        with pytest.raises(QueueFullError) as err:
            await batcher.submit([[1, 2]] * 5, far())  # one list request may not bypass admission
        assert err.value.retry_after_s >= 1 and err.value.http_status == 429
        await first
        return batcher.stats

    stats = asyncio.run(_with_batcher(backend, run, queue_capacity=10, max_wait_s=0.001))
    assert stats.rejected_texts == 5


def test_texts_in_a_formed_batch_no_worker_has_started_still_count_as_queued():
    """Batches are formed one per worker ahead of the workers; until a worker takes one, its texts are queued."""
    release = threading.Event()

    def blocked(input_ids, token_type_ids):
        release.wait(5)
        return np.zeros((input_ids.shape[0], 2), dtype=np.float32)

    async def run(batcher):
        running = asyncio.ensure_future(batcher.submit([[1, 2]] * 2, far()))  # taken by the one worker
        await asyncio.sleep(0.05)
        formed = asyncio.ensure_future(batcher.submit([[3, 4]] * 2, far()))  # formed, waiting for the worker
        await asyncio.sleep(0.05)
        pending = asyncio.ensure_future(batcher.submit([[5, 6]] * 2, far()))  # not yet in a batch
        await asyncio.sleep(0.05)
        queued = batcher.queued_texts
        with pytest.raises(QueueFullError):
            await batcher.submit([[7, 8]], far())
        release.set()
        await asyncio.gather(running, formed, pending)
        return queued, batcher.stats

    queued, stats = asyncio.run(_with_batcher(blocked, run, max_batch_size=2, queue_capacity=4, max_wait_s=0.001))
    assert queued == 4 and stats.rejected_texts == 1 and stats.texts == 6


def test_expired_texts_are_not_run():
    backend = FakeBackend()

    async def run(batcher):
        with pytest.raises(DeadlineExceededError):
            await batcher.submit([[7, 7]], time.monotonic() - 1)
        return batcher.stats

    stats = asyncio.run(_with_batcher(backend, run))
    assert stats.dropped_deadline == 1 and not backend.batches


@pytest.mark.parametrize("texts", [1, 3])  # a single text is awaited bare, several through gather
def test_deadline_is_answered_on_time_while_the_model_is_busy(texts):
    """A queued request gets its 504 at its deadline even while a long batch occupies the model."""
    backend = FakeBackend(delay=0.5)

    async def run(batcher):
        busy = asyncio.ensure_future(batcher.submit([[1, 2]], far()))
        await asyncio.sleep(0.05)  # the first batch is now running for 0.5 s
        start = time.monotonic()
        with pytest.raises(DeadlineExceededError):
            await batcher.submit([[5, 5]] * texts, time.monotonic() + 0.1)
        waited = time.monotonic() - start
        await busy
        return waited, batcher.stats

    waited, stats = asyncio.run(_with_batcher(backend, run, max_wait_s=0.001))
    assert waited < 0.3 and stats.dropped_deadline == texts
    assert all(5 not in b for b in backend.batches)  # never run


@pytest.mark.parametrize("texts", [1, 3])
def test_texts_of_clients_that_left_are_dropped_before_inference(texts):
    backend = FakeBackend()

    async def run(batcher):
        task = asyncio.ensure_future(batcher.submit([[9, 9, 9]] * texts, far()))
        await asyncio.sleep(0)
        task.cancel()  # the HTTP layer cancels the request's task when the client disconnects
        await asyncio.sleep(0.05)
        await batcher.submit([[1, 1]], far())
        return batcher.stats

    stats = asyncio.run(_with_batcher(backend, run, max_wait_s=0.01))
    assert stats.dropped_disconnected == texts
    assert all(9 not in b for b in backend.batches)


def test_a_failing_batch_fails_only_its_own_texts():
    backend = FakeBackend(fail_when=lambda ids: (ids == 13).any())

    async def run(batcher):
        bad = asyncio.ensure_future(batcher.submit([[13, 13]], far()))
        await asyncio.sleep(0.05)
        good = await batcher.submit([[1, 2, 3]], far())
        with pytest.raises(InferenceError):
            await bad
        return good, batcher.stats

    good, stats = asyncio.run(_with_batcher(backend, run, max_wait_s=0.001))
    assert good[0].tolist() == [6.0, 3.0] and stats.failed_batches == 1


def test_backend_returning_wrong_row_count_is_an_inference_error():
    async def run(batcher):
        with pytest.raises(InferenceError):
            await batcher.submit([[1], [2]], far())

    asyncio.run(_with_batcher(lambda ids, tt: np.zeros((1, 2), np.float32), run, max_wait_s=0.001))


def _lengths_mix(n: int, seed: int = 0) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [[7] * int(k) for k in rng.choice([5, 6, 8, 12, 20, 40, 90], size=n)]


@pytest.mark.parametrize("policy", ["length", "fifo"])
def test_length_aware_batches_bound_padding_and_fifo_does_not(policy):
    backend = FakeBackend(delay=0.005)
    texts = _lengths_mix(300)

    async def run(batcher):
        rows = await asyncio.gather(*(batcher.submit([t], far()) for t in texts))
        assert [r[0].tolist() for r in rows] == [expected(t) for t in texts]
        return batcher.stats

    stats = asyncio.run(
        _with_batcher(backend, run, max_batch_size=32, max_wait_s=0.01, max_padding_ratio=1.2, policy=policy)
    )
    ratio = stats.padded_tokens / stats.real_tokens
    if policy == "length":
        assert ratio <= 1.2
        for batch in backend.batches:  # the bound holds for every batch, not just on average
            assert batch.size <= 1.2 * (batch != 0).sum() + 1e-9
    else:
        assert ratio > 1.5  # arrival order pads short texts to the long ones: what length-awareness saves


def test_several_workers_run_batches_at_once_on_their_own_instance():
    active, peak = [0], [0]
    lock = threading.Lock()
    seen: set[int] = set()

    def make(k: int):
        def infer(ids: np.ndarray, types: np.ndarray) -> np.ndarray:
            with lock:
                active[0] += 1
                peak[0] = max(peak[0], active[0])
                seen.add(k)
            time.sleep(0.02)
            with lock:
                active[0] -= 1
            return FakeBackend()(ids, types)

        return infer

    texts = [[k % 50 + 1] * 5 for k in range(64)]

    async def run(batcher):
        rows = await asyncio.gather(*(batcher.submit([t], far()) for t in texts))
        assert [r[0].tolist() for r in rows] == [expected(t) for t in texts]

    asyncio.run(_with_batcher([make(0), make(1)], run, max_batch_size=4, max_wait_s=0.001))
    assert peak[0] == 2 and seen == {0, 1}


async def _occupy_the_worker(batcher) -> list:
    """Two single-text batches: one running on the one worker, one formed ahead of it."""
    blockers = []
    for k in (1, 2):
        blockers.append(asyncio.ensure_future(batcher.submit([[9, k]], far())))
        await asyncio.sleep(0.01)
    return blockers


def test_background_texts_wait_for_the_others_but_not_for_ever():
    import service.batching.batcher as batcher_module

    backend = FakeBackend(delay=0.05)

    async def run(batcher):
        blockers = await _occupy_the_worker(batcher)
        blockers.append(asyncio.ensure_future(batcher.submit([[7] * 3 for _ in range(4)], far(), background=True)))
        await asyncio.sleep(0.005)
        blockers.append(asyncio.ensure_future(batcher.submit([[1, 2], [3, 4]], far())))
        _, _, behind, foreground = await asyncio.gather(*blockers)
        return None, foreground, behind

    _, fg, bg = asyncio.run(_with_batcher([backend], run, max_batch_size=2, max_wait_s=0.001))
    assert [row.tolist() for row in fg] == [expected([1, 2]), expected([3, 4])]
    assert [row.tolist() for row in bg] == [expected([7, 7, 7])] * 4
    # the worker took the later foreground texts before the earlier background ones
    order = [int(b[0][0]) for b in backend.batches]
    assert order.index(1) < order.index(7)
    assert batcher_module.BACKGROUND_AGING_S > 0

    # aged: a background text that has waited long enough is batched like any other
    old = batcher_module.BACKGROUND_AGING_S
    batcher_module.BACKGROUND_AGING_S = 0.0
    try:
        backend2 = FakeBackend(delay=0.05)

        async def run2(batcher):
            blockers = await _occupy_the_worker(batcher)
            queued_behind = asyncio.ensure_future(batcher.submit([[7, 7, 7]], far(), background=True))
            await asyncio.sleep(0.005)
            foreground = asyncio.ensure_future(batcher.submit([[1, 2, 3]], far()))
            await asyncio.gather(*blockers)
            return None, await queued_behind, await foreground

        asyncio.run(_with_batcher([backend2], run2, max_batch_size=1, max_wait_s=0.001))
        order2 = [int(b[0][0]) for b in backend2.batches]
        assert order2.index(7) < order2.index(1)  # arrival order again
    finally:
        batcher_module.BACKGROUND_AGING_S = old
