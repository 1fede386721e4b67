"""The classification engine: texts -> predictions, with no HTTP in it.

    admission (queue room for these texts, counting texts still being prepared; else 429 before any work)
      -> raw character cap (reject, or cut when truncate=true) -> normalize_text (training's exact function)
      -> the cap again on the normalised text (NFKC expands some characters up to 18x: U+FDFA) -> empty? reject
      -> result cache (key: normalised text + model sha256) -> misses tokenised ([CLS] ... [SEP], max_seq_len)
      -> Batcher.submit (deadline, disconnect) -> logits -> softmax, top-k, low-confidence flag -> cache

Requests with more than OFF_LOOP_CHARS characters are normalised and tokenised on one "prepare" thread, so no
request holds the event loop for more than about a millisecond (measured: 64 texts of 2 000 U+FDFA took 0.6 s to
normalise); the few characters of a typical bot message stay on the loop, where a thread hop would cost more.

Start-up (`Engine.load`, on a thread while the server already answers /healthz and /readyz "loading"): verify the
manifest (against the pin if one is set) and every file's sha256, load tokenizer and backends from the verified
bytes, warm up, start the batcher. Any failure leaves the engine not ready: the full reason goes to the log, the
unauthenticated /readyz says only what kind of failure it was.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np

from ernie_cls.artifact import Artifact
from ernie_cls.calibration import softmax_row
from ernie_cls.errors import UserInputError
from ernie_cls.explain import occlusion_attributions, occlusion_inputs
from ernie_cls.runtime import WARMUP_SHAPES, Backend, LoadedModel
from ernie_cls.tokenization import ErnieTokenizerFast, normalize_text
from service.batching import Batcher
from service.config import Settings
from service.errors import DeadlineExceededError, NotReadyError

log = logging.getLogger(__name__)

UNHEALTHY_AFTER_FAILED_BATCHES = 3
EXPLAIN_CHUNK_ROWS = 4  # /explain's rows per batch (background: a classify request waits for one running at most)
OFF_LOOP_CHARS = 256  # a request with more characters is prepared on the prepare thread (see the docstring)
PREPARE_CHUNK_CHARS = 4096  # characters per job on the prepare thread (4 096 U+FDFA: ~20 ms to normalise)
LIVENESS_AFTER_STUCK_TIMEOUTS = 4  # /healthz fails once every instance has been stuck this many inference timeouts


@dataclass
class Result:
    label: str
    score: float
    top_k: list[tuple[str, float]]
    truncated: bool
    low_confidence: bool


Cached = tuple[np.ndarray, bool]  # (logits row, the tokenizer cut the text at max_seq_len)


def _chunks(texts: list[str]) -> list[tuple[int, int]]:
    """(first, last) index ranges of consecutive texts holding about PREPARE_CHUNK_CHARS characters each."""
    ranges, first, chars = [], 0, 0
    for i, text in enumerate(texts):
        if chars and chars + len(text) > PREPARE_CHUNK_CHARS:
            ranges.append((first, i))
            first, chars = i, 0
        chars += len(text)
    if first < len(texts):
        ranges.append((first, len(texts)))
    return ranges


@dataclass
class _Lookup:
    found: list[Cached | None]  # per text: its cached (logits, overflowed), or None
    misses: list[int]  # indices of the texts to run


class LRUCache:
    def __init__(self, size: int) -> None:
        self.size = size
        self._data: OrderedDict[str, Cached] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def get(self, key: str) -> Cached | None:
        if self.size == 0:
            return None
        value = self._data.get(key)
        if value is None:
            self.misses += 1
            return None
        self._data.move_to_end(key)
        self.hits += 1
        return value

    def put(self, key: str, value: Cached) -> None:
        if self.size == 0:
            return
        self._data[key] = value
        self._data.move_to_end(key)
        while len(self._data) > self.size:
            self._data.popitem(last=False)

    def __len__(self) -> int:
        return len(self._data)


class Engine:
    """Two optional parts, in order: `model` (load(), on a thread: verified artifact, tokenizer, instances) and
    `batcher` (start(), on the event loop). Everything else the engine knows of the model derives from `model`."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.model: LoadedModel | None = None
        self.batcher: Batcher | None = None
        self.cache = LRUCache(settings.cache_size)
        # read for every text: copied from `model` once loaded rather than derived per access
        self.labels: list[str] = []
        self._temperature = 1.0
        self._model_key = ""
        self.ready = False
        self.not_ready_reason = "loading"  # public (unauthenticated /readyz): never a path or an exception's text
        self.load_failed = False  # /healthz turns 503 so an orchestrator restarts the process
        self.load_error = ""  # the full reason (paths, exception text): for the log and the admin API only
        self.in_flight = 0  # classify() calls on this engine not finished (a retired version waits for them)
        self.draining = False
        self.draining_since: float | None = None
        self._preparing = 0  # texts admitted and being prepared on the prepare thread, not yet in the batcher
        self._prepare_pool: ThreadPoolExecutor | None = None  # made by start(), shut down by stop()
        self._probe: asyncio.Task | None = None
        self.on_batch: Callable[[int, int, int, float], None] | None = None

    # ------------------------------------------------------------------ start-up
    def load(self) -> None:
        """Blocking: verify, load, warm up. Sets `ready` or `not_ready_reason`; never raises."""
        started = time.perf_counter()
        s = self.settings
        try:
            model = LoadedModel.open(s.artifact, s.format, s.threads, s.workers, s.artifact_sha256, WARMUP_SHAPES)
        except Exception as err:  # any failure: stay up, not ready; the details to the log only
            self.not_ready_reason = f"the model failed to load ({type(err).__name__}); the service log says why"
            self.load_failed, self.load_error = True, f"{type(err).__name__}: {err}"
            log.error("model not loaded, service stays not-ready: %s", err)
            return
        self.model = model
        self.labels, self._model_key, self._temperature = model.labels, model.model_sha256, model.temperature
        log.info(
            "model %s (%s, %s) ready in %.2f s: %d worker(s) x %d thread(s)",
            model.artifact.spec.name,
            model.format,
            model.backends[0].precision,
            time.perf_counter() - started,
            self.settings.workers,
            self.settings.threads,
        )

    @property
    def artifact(self) -> Artifact | None:
        return self.model.artifact if self.model is not None else None

    @property
    def tokenizer(self) -> ErnieTokenizerFast | None:
        return self.model.tokenizer if self.model is not None else None

    @property
    def backends(self) -> list[Backend]:
        return self.model.backends if self.model is not None else []

    @property
    def backend(self) -> Backend | None:
        """The first instance (all alike): its runtime and precision describe the model."""
        return self.model.backends[0] if self.model is not None else None

    @property
    def format(self) -> str:
        return self.model.format if self.model is not None else ""

    def start(self) -> None:
        """In the event loop: start the batcher. Ready only if load() succeeded."""
        if self.model is None:
            return
        s = self.settings
        self.batcher = Batcher(
            [partial(self._infer, backend) for backend in self.backends],
            self.model.tokenizer.pad_id,
            s.max_batch_size,
            s.max_batch_tokens,
            s.max_wait_ms / 1000,
            s.queue_capacity,
            on_batch=self.on_batch,
            max_padding_ratio=s.max_padding_ratio,
            policy=s.batch_policy,
            inference_timeout_s=s.inference_timeout_s,
            max_queue_s=s.max_queue_ms / 1000,
        )
        self.batcher.start()
        self._prepare_pool = ThreadPoolExecutor(1, thread_name_prefix="prepare")
        self._probe = asyncio.get_running_loop().create_task(self._probe_while_faulty(), name="fault-probe")
        self.ready, self.not_ready_reason = True, ""

    async def stop(self, timeout_s: float = 5.0) -> None:
        """Stop; batches still running get up to timeout_s (what is left of the drain timeout). Final: the engine
        is not ready afterwards, and texts sent to it fail at once (ShuttingDownError)."""
        self.ready, self.not_ready_reason = False, "stopped"
        if self._probe is not None:
            self._probe.cancel()
            # awaited and dropped: a cancelled task keeps its exception, whose traceback holds this engine's frame
            # (a cycle only the full collector frees: retired versions' memory would pile up across reloads)
            with contextlib.suppress(asyncio.CancelledError):
                await self._probe
            self._probe = None
        if self.batcher is not None:
            await self.batcher.stop(timeout_s)
        if self._prepare_pool is not None:
            self._prepare_pool.shutdown(wait=False, cancel_futures=True)
            self._prepare_pool = None

    def release(self) -> None:
        """After stop(): drop the model, its runtime sessions and the cache, so a retired version's memory is
        freed even while something still holds the engine object."""
        self.model, self.batcher = None, None
        self.cache = LRUCache(0)

    def start_draining(self) -> None:
        if not self.draining:
            self.draining, self.draining_since = True, time.monotonic()

    def drain_time_left(self, timeout: float) -> float:
        """What is left of the drain timeout since draining began (the HTTP server already waited part of it)."""
        if self.draining_since is None:
            return timeout
        return max(0.0, timeout - (time.monotonic() - self.draining_since))

    @staticmethod
    def _infer(backend: Backend, input_ids: np.ndarray, token_type_ids: np.ndarray) -> np.ndarray:
        return backend.infer(input_ids, token_type_ids)

    @property
    def faulty(self) -> bool:
        """Several batches in a row failed or timed out (not ready until one succeeds: the probe keeps trying), or
        every instance is stuck in a call past the inference timeout (ready again when one returns)."""
        b = self.batcher
        return b is not None and (b.consecutive_faults >= UNHEALTHY_AFTER_FAILED_BATCHES or b.all_stuck)

    @property
    def alive(self) -> bool:
        """Liveness: false once the model failed to load, or every instance has been stuck far past the inference
        timeout (a hung runtime does not come back by itself: a restart does)."""
        if self.load_failed:
            return False
        limit = (LIVENESS_AFTER_STUCK_TIMEOUTS - 1) * self.settings.inference_timeout_s
        return self.batcher is None or self.batcher.all_stuck_for_s() <= limit

    @property
    def can_serve(self) -> bool:
        """Loaded. Requests still run while `faulty` (so a recovered backend is noticed) and while draining (a
        request that reached us was accepted: it is answered; readiness tells balancers to stop sending)."""
        return self.ready and self.batcher is not None

    @property
    def is_ready(self) -> bool:
        return self.can_serve and not self.draining and not self.faulty

    async def _probe_while_faulty(self) -> None:
        """While faulty, send one tiny text through the batcher every second: its success makes the engine ready."""
        assert self.tokenizer is not None and self.batcher is not None
        probe = [self.tokenizer.cls_id, self.tokenizer.unk_id, self.tokenizer.sep_id]
        while True:
            await asyncio.sleep(1.0)
            if self.faulty and not self.draining:
                with contextlib.suppress(Exception):
                    await self.batcher.submit([probe], time.monotonic() + self.settings.inference_timeout_s + 1)

    # ------------------------------------------------------------------ requests
    def prepare(self, texts: list[str], truncate: bool, first: int = 0, name: str = "") -> tuple[list[str], list[bool]]:
        """Guards on raw texts -> (normalised texts, cut flags). Raises UserInputError naming the index (texts[0]
        is the request's text number `first`; `name` replaces "texts[i]" in messages about a single field).

        The cap holds before normalisation (it bounds the work) and after it (NFKC can expand a text 18x)."""
        cap = self.settings.max_chars_per_text
        normalized, cut = [], []
        for i, text in enumerate(texts, first):
            field = name or f"texts[{i}]"
            was_cut = len(text) > cap
            if was_cut and not truncate:
                raise UserInputError(
                    f"{field} has {len(text)} characters; the limit is {cap}.",
                    "Shorten it, split it, or send truncate=true to classify its first characters.",
                )
            norm = normalize_text(text[:cap] if was_cut else text)
            if len(norm) > cap:
                if not truncate:
                    raise UserInputError(
                        f"{field} has {len(norm)} characters after Unicode normalisation (NFKC expands some "
                        f"characters, e.g. U+FDFA to 18); the limit is {cap}.",
                        "Shorten it, or send truncate=true to classify its first characters.",
                    )
                norm, was_cut = norm[:cap].rstrip(), True
            if not norm:
                raise UserInputError(
                    f"{field} is empty after normalisation (only whitespace, control or invisible characters).",
                    "Send text with visible characters, or drop this item.",
                )
            normalized.append(norm)
            cut.append(was_cut)
        return normalized, cut

    async def classify(
        self,
        texts: list[str],
        top_k: int,
        truncate: bool,
        deadline: float,
        timings: dict[str, float] | None = None,
    ) -> list[Result]:
        with self.serving():
            return await self._classify(texts, top_k, truncate, deadline, timings)

    async def _classify(
        self, texts: list[str], top_k: int, truncate: bool, deadline: float, timings: dict[str, float] | None
    ) -> list[Result]:
        assert self.tokenizer is not None and self.batcher is not None
        tokenizer = self.tokenizer
        if sum(map(len, texts)) <= OFF_LOOP_CHARS:  # cheap: admitted by submit() below, cache hits need no room
            normalized, cut = self.prepare(texts, truncate)
            hits = self._lookup(normalized)
            encoded = tokenizer.encode_with_overflow([normalized[i] for i in hits.misses], normalized=True)
        else:  # admitted before any work, then prepared on the prepare thread in chunks, within the deadline
            self.batcher.admit(len(texts), reserved=self._preparing)
            self._preparing += len(texts)
            try:
                normalized, cut = await self._prepare_off_loop(texts, truncate, deadline)
                hits = self._lookup(normalized)
                encode = partial(tokenizer.encode_with_overflow, normalized=True)
                encoded = await self._in_chunks(encode, [normalized[i] for i in hits.misses], deadline)
            finally:
                self._preparing -= len(texts)
        found, misses = hits.found, hits.misses
        if misses:
            rows = await self.batcher.submit([ids for ids, _ in encoded], deadline, timings, reserved=self._preparing)
            for i, (_, overflowed), row in zip(misses, encoded, rows, strict=True):
                found[i] = (row, overflowed)
                self.cache.put(self._key(normalized[i]), (row, overflowed))
        results = []
        for i, hit in enumerate(found):
            assert hit is not None
            row, overflowed = hit
            results.append(self._result(row, cut[i] or overflowed, top_k))
        return results

    @contextlib.contextmanager
    def serving(self) -> Iterator[None]:
        """Count a request against this engine from the moment it was chosen until its reply is sent, so that a
        version is retired only once nobody is using it (not only once nothing is queued)."""
        self.in_flight += 1
        try:
            yield
        finally:
            self.in_flight -= 1

    async def explain(self, text: str, deadline: float) -> dict[str, Any]:
        """Occlusion attributions (ernie_cls/explain.py) for one text, through the batcher like any request: the
        text as the model reads it, its label and score, and each piece's character span and attribution.

        The rows (one per piece, up to max_seq_len - 1) go in as background texts (classify requests are batched
        first, and only on a free instance), EXPLAIN_CHUNK_ROWS at a time, so a classify request waits at most for
        one chunk already running."""
        assert self.tokenizer is not None and self.batcher is not None
        with self.serving():
            (normalized,), (cut,) = self.prepare([text], truncate=True, name="text")
            ids, overflowed = self.tokenizer.encode_with_overflow([normalized], normalized=True)[0]
            inputs = occlusion_inputs(ids, self.tokenizer.unk_id)
            rows: list[np.ndarray] = []
            for first in range(0, len(inputs), EXPLAIN_CHUNK_ROWS):
                chunk = inputs[first : first + EXPLAIN_CHUNK_ROWS]
                rows += await self.batcher.submit(chunk, deadline, background=True)
        label, scores = occlusion_attributions(np.stack(rows))
        shown, pieces = self.tokenizer.pieces_with_offsets(normalized, normalized=True)
        result = self._result(rows[0], cut or overflowed, len(self.labels))
        return {
            "text": shown,
            "label": self.labels[label],
            "score": dict(result.top_k)[self.labels[label]],
            "top_k": [{"label": name, "score": score} for name, score in result.top_k],
            "low_confidence": result.low_confidence,
            "truncated": result.truncated,
            "pieces": [
                {"piece": piece, "start": start, "end": end, "attribution": round(float(score), 6)}
                for (piece, start, end), score in zip(pieces, scores, strict=True)
            ],
        }

    def refuse_if_full(self) -> None:
        """Raise QueueFullError / ModelStuckError when not even one more text fits: the HTTP layer asks before it
        reads a body, so a flood is refused at the cost of its headers (counted as one rejected text each)."""
        if self.batcher is not None:
            self.batcher.admit(1, reserved=self._preparing)

    async def _prepare_off_loop(
        self, texts: list[str], truncate: bool, deadline: float
    ) -> tuple[list[str], list[bool]]:
        normalized: list[str] = []
        cut: list[bool] = []
        for first, last in _chunks(texts):
            norm, was_cut = await self._off_loop(deadline, self.prepare, texts[first:last], truncate, first)
            normalized += norm
            cut += was_cut
        return normalized, cut

    async def _in_chunks(self, fn: Callable[[list[str]], list[Any]], items: list[str], deadline: float) -> list[Any]:
        out: list[Any] = []
        for first, last in _chunks(items):
            out += await self._off_loop(deadline, fn, items[first:last])
        return out

    async def _off_loop(self, deadline: float, fn: Callable, *args: object) -> Any:
        """fn(*args) on the prepare thread, one chunk of a request at a time: concurrent requests' chunks take
        turns, so a small request waits for one chunk of each large one, not for all of them. Past the deadline
        nothing more is started and the caller gets 504."""
        if self._prepare_pool is None:
            raise NotReadyError("stopping")
        loop = asyncio.get_running_loop()
        left = deadline - time.monotonic()
        try:
            if left <= 0:
                raise TimeoutError
            async with asyncio.timeout_at(loop.time() + left):
                return await loop.run_in_executor(self._prepare_pool, fn, *args)
        except TimeoutError:
            raise DeadlineExceededError() from None

    def _lookup(self, normalized: list[str]) -> _Lookup:
        found: list[Cached | None] = [self.cache.get(self._key(t)) for t in normalized]
        return _Lookup(found, [i for i, hit in enumerate(found) if hit is None])

    def _key(self, normalized: str) -> str:
        return f"{self._model_key}:{normalized}"

    def _result(self, row: np.ndarray, truncated: bool, top_k: int) -> Result:
        probs = softmax_row(row.tolist(), self._temperature)
        order = sorted(range(len(probs)), key=probs.__getitem__, reverse=True)[:top_k]
        best = order[0]
        score = probs[best]
        return Result(
            label=self.labels[best],
            score=score,
            top_k=[(self.labels[j], probs[j]) for j in order],
            truncated=truncated,
            low_confidence=score < self.settings.low_confidence_threshold,
        )

    async def wait_idle(self, timeout: float) -> bool:
        """Wait until no request is in flight and no text queued (drain, retiring a version); True if idle in time."""
        end = time.monotonic() + timeout
        while self.in_flight or (self.batcher is not None and self.batcher.busy):
            if time.monotonic() > end:
                return False
            await asyncio.sleep(0.01)
        return True
