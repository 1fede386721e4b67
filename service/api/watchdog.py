"""Deadlines for awaits that nearly always finish at once (reading a request body uvicorn has already buffered), at
the cost of a dict entry instead of a timer per await.

asyncio.timeout() creates, schedules and cancels a timer handle each time, on the event loop that serves every
request (docs/benchmarks.md section 5 has the side-by-side measurement of the hardened hot path). Here one sweeper
task looks every `period_s` for tasks still inside a watched await past their deadline and cancels them; `run`
turns that cancellation into TimeoutError. A deadline is kept to within `period_s`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

T = TypeVar("T")


class Watchdog:
    def __init__(self, period_s: float = 0.25) -> None:
        self.period_s = period_s
        self._inside: dict[asyncio.Task, float] = {}  # task -> loop-time deadline of the await it is in
        self._expired: set[asyncio.Task] = set()
        self._sweeper: asyncio.Task | None = None

    async def run(self, awaitable: Awaitable[T], timeout_s: float) -> T:
        """await `awaitable`; TimeoutError if it is still pending about `timeout_s` from now."""
        task = asyncio.current_task()
        assert task is not None
        loop = task.get_loop()
        self._inside[task] = loop.time() + timeout_s
        if self._sweeper is None or self._sweeper.done() or self._sweeper.get_loop() is not loop:
            self._sweeper = loop.create_task(self._sweep(loop), name="deadline-watchdog")
        try:
            return await awaitable
        except asyncio.CancelledError:
            if task not in self._expired:
                raise
            self._expired.discard(task)
            task.uncancel()
            raise TimeoutError from None
        finally:
            del self._inside[task]

    async def _sweep(self, loop: asyncio.AbstractEventLoop) -> None:
        while self._inside:  # ends when nothing is watched; the next run() starts a new one
            await asyncio.sleep(self.period_s)
            now = loop.time()
            for task, deadline in list(self._inside.items()):
                if deadline <= now and task not in self._expired:
                    self._expired.add(task)
                    task.cancel()
