"""The models being served, their versions, and how a set of them is replaced while requests keep flowing.

    models file (service/models_file.py) -> ModelSet: name -> ServedModel(stable Engine, canary Engine, share)
    request -> ServedModel.pick(caller) -> one Engine answers the whole request (the version that accepted it)

Reload (SIGHUP, POST /v1/admin/reload): the models file is read again; every (model, variant) whose artifact is
unchanged (same directory, same manifest sha256, same format and sizes) keeps its warm engine; the others are
loaded, verified (every file's sha256 and the pin) and warmed on a thread while the current set serves. Only when
all of them are ready is the new set swapped in, in one assignment on the event loop. A set that fails leaves the
current one serving and the error says which model failed and why.

The set that was replaced stays loaded and warm as `previous`, so rollback (POST /v1/admin/rollback, or a reload
to a models file naming the old artifacts) is a swap that takes no loading. Engines that belong to neither the new
current nor the new previous set are retired: they finish their in-flight requests, then stop.

CPU: every engine has its own instances (ERNIE_CLS_WORKERS x ERNIE_CLS_THREADS, or the model's `workers` /
`threads` keys), so one model alone can use every core; when several are busy at once the operating system shares
the cores among their threads (measured in docs/benchmarks.md: each of two busy models keeps about half of its
one-model throughput).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ernie_cls.errors import ErnieClsError
from service.config import Settings
from service.engine import Engine
from service.errors import NoSuchModelError, ReloadError
from service.models_file import ModelsFile, Variant, models_from_settings

log = logging.getLogger(__name__)

CANARY_BUCKETS = 10_000  # the split's resolution: 0.01 %


def canary_bucket(model: str, caller: str) -> int:
    """A caller's fixed bucket in [0, CANARY_BUCKETS) for this model: the same in every process and restart
    (blake2b, not Python's salted hash), and independent across models."""
    digest = hashlib.blake2b(f"{model}\0{caller}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % CANARY_BUCKETS


@dataclass(frozen=True)
class ServedModel:
    name: str
    stable: Engine
    canary: Engine | None = None
    canary_percent: float = 0.0

    def pick(self, caller: str) -> tuple[Variant, Engine]:
        """The version answering this caller: the canary for a sticky `canary_percent` % of callers while it is
        ready, else stable."""
        canary = self.canary
        chosen = canary is not None and canary_bucket(self.name, caller) < self.canary_percent * CANARY_BUCKETS / 100
        if chosen and canary is not None and canary.is_ready:  # a failed or faulty canary's callers go to stable
            return "canary", canary
        return "stable", self.stable

    def variants(self) -> Iterator[tuple[Variant, Engine]]:
        yield "stable", self.stable
        if self.canary is not None:
            yield "canary", self.canary


@dataclass(frozen=True)
class ModelSet:
    models: dict[str, ServedModel]
    default: str
    generation: int
    loaded_at: float = field(default_factory=time.time)

    def engines(self) -> Iterator[tuple[str, Variant, Engine]]:
        for name, model in self.models.items():
            for variant, engine in model.variants():
                yield name, variant, engine

    def get(self, name: str | None) -> ServedModel:
        model = self.models.get(self.default if name is None else name)
        if model is None:
            raise NoSuchModelError(name or "", list(self.models))
        return model


@dataclass(frozen=True)
class _Identity:
    """What makes two engines interchangeable: the same verified bytes served the same way."""

    directory: str
    manifest_sha256: str
    format: str | None
    workers: int
    threads: int


class Registry:
    """The current set (answers requests), the previous one (warm, for rollback), and reload / rollback."""

    def __init__(self, settings: Settings, on_batch: Callable[[int, int, int, float], None] | None = None) -> None:
        self.settings = settings
        self.on_batch = on_batch
        self.current = self._build(models_from_settings(settings), {}, generation=1)[0]
        self.previous: ModelSet | None = None
        self.draining = False
        self.draining_since: float | None = None
        self.starting = True  # the first set is loading: nothing to reload from or roll back to yet
        self._lock = asyncio.Lock()
        self._retiring: set[asyncio.Task[None]] = set()

    # ------------------------------------------------------------------ what the routes ask
    @property
    def default_engine(self) -> Engine:
        return self.current.get(None).stable

    def all_engines(self) -> list[Engine]:
        """Current and previous sets' engines, each once."""
        sets = [self.current] + ([self.previous] if self.previous is not None else [])
        return list({id(e): e for s in sets for _, _, e in s.engines()}.values())

    @property
    def is_ready(self) -> bool:
        """Every model's stable version is ready (a canary's trouble sends its callers to stable instead: GET
        /v1/models shows it, and it must not take the replica out of its balancer)."""
        return not self.draining and all(m.stable.is_ready for m in self.current.models.values())

    @property
    def alive(self) -> bool:
        """Liveness, from the stable versions too: a broken canary must not make the orchestrator restart a
        replica whose stable models serve."""
        return all(m.stable.alive for m in self.current.models.values())

    def start_draining(self) -> None:
        if not self.draining:
            self.draining, self.draining_since = True, time.monotonic()
        for engine in self.all_engines():
            engine.start_draining()

    def drain_time_left(self, timeout: float) -> float:
        """What is left of the drain timeout since draining began (the HTTP server already waited part of it)."""
        if self.draining_since is None:
            return timeout
        return max(0.0, timeout - (time.monotonic() - self.draining_since))

    # ------------------------------------------------------------------ start-up and shutdown
    async def start(self) -> None:
        """Load the first set (engines made by __init__), one engine at a time; a failure leaves that engine not
        ready (and /healthz failing), as with one model."""
        try:
            for name, variant, engine in self.current.engines():
                await asyncio.to_thread(engine.load)
                if engine.model is not None:
                    _start(engine, name, variant)
        finally:
            self.starting = False

    async def stop(self, timeout_s: float) -> None:
        end = time.monotonic() + timeout_s
        engines = self.all_engines()
        await asyncio.gather(*(e.wait_idle(max(0.0, end - time.monotonic())) for e in engines))
        await asyncio.gather(*(e.stop(max(0.5, end - time.monotonic())) for e in engines))
        for task in list(self._retiring):
            task.cancel()

    # ------------------------------------------------------------------ reload and rollback
    async def reload(self) -> ModelSet:
        """Read the models file again, load what changed, swap. Raises ReloadError; the current set keeps serving."""
        self._refuse_while_busy()
        async with self._lock:
            try:
                wanted = models_from_settings(self.settings)
            except ErnieClsError as err:
                raise ReloadError(f"The models file cannot be used: {err.message}", err.hint) from None
            warm = {_identity(e): e for e in self.all_engines() if e.is_ready and e.model is not None}
            candidate, fresh = self._build(wanted, warm, self.current.generation + 1)
            if not fresh and _same_set(candidate, self.current):  # a repeated SIGHUP must not lose the previous set
                log.info("reload: the models file describes the set already serving; nothing to do")
                return self.current
            try:
                await self._load_fresh(candidate, fresh)
            except BaseException:
                for engine in fresh:
                    await engine.stop(0.5)
                raise
            self._swap(candidate)
            return candidate

    async def rollback(self) -> ModelSet:
        """Swap back to the previous set (warm: no loading)."""
        self._refuse_while_busy()
        async with self._lock:
            if self.previous is None:
                raise ReloadError("There is no previous set to roll back to.", "Roll back after a reload.")
            self.current, self.previous = self.previous, self.current
            log.warning("rolled back to generation %d (%s)", self.current.generation, _describe(self.current))
            return self.current

    def _refuse_while_busy(self) -> None:
        if self.starting:
            raise ReloadError("The first set of models is still loading.", "Retry once GET /readyz answers 200.")
        if self.draining:
            raise ReloadError("The service is shutting down.", "Reload the replica that replaces this one.")
        if self._lock.locked():
            raise ReloadError("A reload is already in progress.", "Wait for it to finish, then check GET /v1/models.")

    def _build(
        self, wanted: ModelsFile, warm: dict[_Identity, Engine], generation: int
    ) -> tuple[ModelSet, list[Engine]]:
        """The set `wanted` describes: warm engines reused, new (unloaded) ones made. Returns (set, new engines)."""
        models, fresh = {}, []
        for name, entry in wanted.models.items():
            engines: dict[Variant, Engine] = {}
            for variant, (directory, pin) in entry.variants().items():
                settings = self.settings.model_copy(
                    update={
                        "artifact": directory,
                        "artifact_sha256": pin,
                        "format": entry.format,
                        "workers": entry.workers or self.settings.workers,
                        "threads": entry.threads or self.settings.threads,
                    }
                )
                identity = _wanted_identity(settings)  # the manifest read once: for the pin and for reuse
                pinned = settings.artifact_sha256
                usable = pinned is None or pinned.strip().lower() == identity.manifest_sha256
                engine = warm.get(identity) if usable else None
                if engine is None:
                    engine = Engine(settings)
                    engine.on_batch = self.on_batch
                    fresh.append(engine)
                engines[variant] = engine
            models[name] = ServedModel(name, engines["stable"], engines.get("canary"), entry.canary_percent)
        return ModelSet(models, wanted.default_name, generation), fresh

    async def _load_fresh(self, candidate: ModelSet, fresh: list[Engine]) -> None:
        new = {id(e) for e in fresh}
        for name, variant, engine in candidate.engines():
            if id(engine) not in new or engine.model is not None:
                continue
            await asyncio.to_thread(engine.load)
            if engine.model is None:
                raise ReloadError(
                    f"Model {name!r} ({variant}, {engine.settings.artifact}) failed to load: {engine.load_error}.",
                    "Fix the artifact or the models file, then reload again; the current models keep serving.",
                )
            _start(engine, name, variant)

    def _swap(self, new: ModelSet) -> None:
        keep = {id(e) for _, _, e in new.engines()} | {id(e) for _, _, e in self.current.engines()}
        retired = [e for e in self.all_engines() if id(e) not in keep]
        self.previous, self.current = self.current, new
        log.warning("serving generation %d: %s", new.generation, _describe(new))
        for engine in retired:
            task = asyncio.get_running_loop().create_task(self._retire(engine), name="retire-engine")
            self._retiring.add(task)
            task.add_done_callback(self._retiring.discard)

    async def _retire(self, engine: Engine) -> None:
        """A version no longer in the current or previous set: let its requests finish, then stop it."""
        engine.start_draining()
        await engine.wait_idle(self.settings.drain_timeout_s)
        await engine.stop(1.0)
        engine.release()


def _same_set(a: ModelSet, b: ModelSet) -> bool:
    """The same models, each with the same engines and canary share, and the same default."""

    def shape(models: ModelSet) -> list[tuple]:
        return [(n, id(m.stable), id(m.canary), m.canary_percent) for n, m in models.models.items()]

    return a.default == b.default and shape(a) == shape(b)


def _start(engine: Engine, name: str, variant: str) -> None:
    try:
        engine.start()
    except Exception as err:  # not "loading" for ever: failed, and /healthz says so
        engine.load_failed, engine.not_ready_reason = True, f"the model failed to start ({type(err).__name__})"
        engine.load_error = f"{type(err).__name__}: {err}"
        log.exception("model %s (%s) loaded but its batcher did not start", name, variant)


def _identity(engine: Engine) -> _Identity:
    assert engine.model is not None
    s = engine.settings
    return _Identity(
        os.path.realpath(s.artifact), engine.model.artifact.manifest_sha256, s.format, s.workers, s.threads
    )


def _wanted_identity(settings: Settings) -> _Identity:
    """What an engine for these settings would be, from the manifest's bytes as they are now."""
    try:
        digest = hashlib.sha256((Path(settings.artifact) / "manifest.json").read_bytes()).hexdigest()
    except OSError:
        digest = ""  # no warm engine matches: a fresh load reports the problem
    return _Identity(os.path.realpath(settings.artifact), digest, settings.format, settings.workers, settings.threads)


def _describe(models: ModelSet) -> str:
    parts = []
    for name, variant, engine in models.engines():
        spec = engine.artifact.spec if engine.artifact is not None else None
        parts.append(f"{name}/{variant}={spec.name + ' ' + spec.version if spec else '?'}")
    return ", ".join(parts)
