"""The classification engine: texts -> predictions, with no HTTP in it.

    raw texts -> character cap (reject, or cut when truncate=true) -> normalize_text (training's exact function)
      -> empty after normalisation? reject naming the index
      -> result cache (key: normalised text + model sha256) -> misses tokenised ([CLS] ... [SEP], max_seq_len)
      -> Batcher.submit (deadline, disconnect) -> logits -> softmax, top-k, low-confidence flag -> cache

Start-up (`Engine.load`): verify every artifact file's sha256, load tokenizer and backend, warm up on
representative shapes, start the batcher. Any failure leaves the engine not ready, with the reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import numpy as np

from ernie_cls.artifact import Artifact, verify_artifact
from ernie_cls.calibration import softmax_row
from ernie_cls.errors import UserInputError
from ernie_cls.tokenization import ErnieTokenizerFast, normalize_text
from service.backends import Backend, load_backend
from service.batching import Batcher
from service.config import Settings

log = logging.getLogger(__name__)

WARMUP_SHAPES = [(1, 16), (1, 64), (8, 32), (32, 32), (32, 128)]
UNHEALTHY_AFTER_FAILED_BATCHES = 3


@dataclass
class Result:
    label: str
    score: float
    top_k: list[tuple[str, float]]
    truncated: bool
    low_confidence: bool


Cached = tuple[np.ndarray, bool]  # (logits row, the tokenizer cut the text at max_seq_len)


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
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.artifact: Artifact | None = None
        self.tokenizer: ErnieTokenizerFast | None = None
        self.backend: Backend | None = None  # the first of `backends` (all alike), for its runtime and precision
        self.backends: list[Backend] = []
        self.batcher: Batcher | None = None
        self.cache = LRUCache(settings.cache_size)
        self.labels: list[str] = []
        self.temperature = 1.0
        self.format = ""
        self.model_key = ""
        self.ready = False
        self.not_ready_reason = "starting"
        self.draining = False
        self._probe: asyncio.Task | None = None
        self.on_batch: Callable[[int, int, int, float], None] | None = None

    # ------------------------------------------------------------------ start-up
    def load(self) -> None:
        """Blocking: verify, load, warm up. Sets `ready` or `not_ready_reason`; never raises."""
        started = time.perf_counter()
        try:
            artifact = verify_artifact(self.settings.artifact)
            fmt = self.settings.format or artifact.manifest.get("default_format", "onnx-fp32")
            tokenizer = ErnieTokenizerFast.load(artifact.root / artifact.manifest["tokenizer"]["path"])
            backends = [load_backend(artifact, fmt, self.settings.threads) for _ in range(self.settings.workers)]
            for backend in backends:
                backend.warmup(WARMUP_SHAPES)
        except Exception as err:  # any failure: stay up, not ready, say why
            self.not_ready_reason = str(err)
            log.error("model not loaded, service stays not-ready: %s", err)
            return
        self.artifact, self.tokenizer, self.format = artifact, tokenizer, fmt
        self.backends, self.backend = backends, backends[0]
        self.labels = artifact.labels
        self.model_key = artifact.manifest["files"][artifact.manifest["formats"][fmt]["path"]]["sha256"]
        # Temperature scaling fitted at export (1.0 for artifacts written before it existed).
        self.temperature = float(artifact.manifest["formats"][fmt].get("temperature", 1.0))
        log.info(
            "model %s (%s, %s) ready in %.2f s: %d worker(s) x %d thread(s)",
            artifact.manifest.get("name"),
            fmt,
            self.backend.precision,
            time.perf_counter() - started,
            self.settings.workers,
            self.settings.threads,
        )

    def start(self) -> None:
        """In the event loop: start the batcher. Ready only if load() succeeded."""
        if self.backend is None or self.tokenizer is None:
            return
        s = self.settings
        self.batcher = Batcher(
            [partial(self._infer, backend) for backend in self.backends],
            self.tokenizer.pad_id,
            s.max_batch_size,
            s.max_batch_tokens,
            s.max_wait_ms / 1000,
            s.queue_capacity,
            on_batch=self.on_batch,
            max_padding_ratio=s.max_padding_ratio,
            policy=s.batch_policy,
            inference_timeout_s=s.inference_timeout_s,
        )
        self.batcher.start()
        self._probe = asyncio.get_running_loop().create_task(self._probe_while_faulty(), name="fault-probe")
        self.ready, self.not_ready_reason = True, ""

    async def stop(self) -> None:
        if self._probe is not None:
            self._probe.cancel()
        if self.batcher is not None:
            await self.batcher.stop()

    @staticmethod
    def _infer(backend: Backend, input_ids: np.ndarray, token_type_ids: np.ndarray) -> np.ndarray:
        return backend.infer(input_ids, token_type_ids)

    @property
    def faulty(self) -> bool:
        """Several batches in a row failed or timed out: not ready until one succeeds (the probe keeps trying)."""
        return self.batcher is not None and self.batcher.consecutive_faults >= UNHEALTHY_AFTER_FAILED_BATCHES

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
    def prepare(self, texts: list[str], truncate: bool) -> tuple[list[str], list[bool]]:
        """Guards on raw texts -> (normalised texts, cut flags). Raises UserInputError naming the index."""
        cap = self.settings.max_chars_per_text
        normalized, cut = [], []
        for i, text in enumerate(texts):
            was_cut = len(text) > cap
            if was_cut and not truncate:
                raise UserInputError(
                    f"texts[{i}] has {len(text)} characters; the limit is {cap}.",
                    "Shorten it, split it, or send truncate=true to classify its first characters.",
                )
            norm = normalize_text(text[:cap] if was_cut else text)
            if not norm:
                raise UserInputError(
                    f"texts[{i}] is empty after normalisation (only whitespace, control or invisible characters).",
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
        assert self.tokenizer is not None and self.batcher is not None
        normalized, cut = self.prepare(texts, truncate)
        found: list[Cached | None] = [self.cache.get(self._key(t)) for t in normalized]
        misses = [i for i, hit in enumerate(found) if hit is None]
        if misses:
            encoded = self.tokenizer.encode_with_overflow([normalized[i] for i in misses], normalized=True)
            rows = await self.batcher.submit([ids for ids, _ in encoded], deadline, timings)
            for i, (_, overflowed), row in zip(misses, encoded, rows, strict=True):
                found[i] = (row, overflowed)
                self.cache.put(self._key(normalized[i]), (row, overflowed))
        results = []
        for i, hit in enumerate(found):
            assert hit is not None
            row, overflowed = hit
            results.append(self._result(row, cut[i] or overflowed, top_k))
        return results

    def _key(self, normalized: str) -> str:
        return f"{self.model_key}:{normalized}"

    def _result(self, row: np.ndarray, truncated: bool, top_k: int) -> Result:
        probs = softmax_row(row.tolist(), self.temperature)
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
        """Wait until no text is queued or in flight (for drain); True if idle within `timeout`."""
        end = time.monotonic() + timeout
        while self.batcher is not None and self.batcher.busy:
            if time.monotonic() > end:
                return False
            await asyncio.sleep(0.01)
        return True
