"""Several models in one service, canary versions, hot reload and rollback (service/registry.py), over httpx's
ASGI transport on the tiny exported artifact and copies of it that differ in their manifest's version."""

from __future__ import annotations

import asyncio
import hashlib
import json
import shutil
import time
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest

from ernie_cls.errors import ConfigError
from service.main import create_app
from service.models_file import read_models_file
from service.registry import CANARY_BUCKETS, ServedModel, canary_bucket
from tests.test_service_api import metric, settings_for

ADMIN = {"Authorization": "Bearer admin-1"}


def versioned(artifact: Path, root: Path, version: str) -> Path:
    """A copy of the artifact whose manifest says `version` (its files and their sha256s unchanged)."""
    copy = root / f"v{version}"
    if not copy.exists():
        shutil.copytree(artifact, copy)
        manifest = json.loads((copy / "manifest.json").read_text(encoding="utf-8"))
        manifest["version"] = version
        (copy / "manifest.json").write_text(json.dumps(manifest, ensure_ascii=False, indent=2), encoding="utf-8")
    return copy


def manifest_sha(artifact: Path) -> str:
    return hashlib.sha256((artifact / "manifest.json").read_bytes()).hexdigest()


def write_models(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


async def lifespan(app, fn):
    async with app.router.lifespan_context(app):
        await app.state.loading
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await fn(client)


def run(app, fn):
    return asyncio.run(lifespan(app, fn))


@pytest.fixture(scope="module")
def versions(int8_artifact, tmp_path_factory):
    root = tmp_path_factory.mktemp("versions")
    return {v: versioned(int8_artifact, root, v) for v in ("1", "2", "3")}


# ------------------------------------------------------------------------------------- the models file
def test_models_file_paths_are_relative_to_it_and_the_first_model_is_the_default(tmp_path, versions):
    models = read_models_file(
        str(
            write_models(
                tmp_path / "models.toml",
                f'[models.sentiment]\nartifact = "{versions["1"]}"\ncanary = "{versions["2"]}"\ncanary_percent = 5\n'
                '[models.intent]\nartifact = "intent-dir"\n',
            )
        )
    )
    assert models.default_name == "sentiment" and list(models.models) == ["sentiment", "intent"]
    assert models.models["intent"].artifact == str((tmp_path / "intent-dir").resolve())
    assert set(models.models["sentiment"].variants()) == {"stable", "canary"}


@pytest.mark.parametrize(
    "text, where",
    [
        ('default = "nope"\n[models.a]\nartifact = "x"\n', "is not one of the models"),
        ('[models."a/b"]\nartifact = "x"\n', "use letters, digits"),
        ('[models.a]\nartifact = "x"\ncanary_percent = 5\n', "`canary` (its artifact) is not"),
        ('[models.a]\nartifact = "x"\ncanary = "y"\ncanary_percent = 101\n', "canary_percent"),
        ('[models.a]\nartifact = "x"\nartefact = "typo"\n', "artefact"),
        ("models = {}\n", "models"),
        ("[models.a\n", "not valid TOML"),
    ],
)
def test_a_bad_models_file_is_refused_with_what_to_fix(tmp_path, text, where):
    with pytest.raises(ConfigError) as err:
        read_models_file(str(write_models(tmp_path / "m.toml", text)))
    assert where in err.value.message and err.value.hint


def test_a_missing_models_file_stops_the_service_at_start_with_the_path(tmp_path, int8_artifact):
    with pytest.raises(ConfigError, match="Cannot read the models file"):
        create_app(settings_for(int8_artifact, models=str(tmp_path / "absent.toml")))


# ------------------------------------------------------------------------------------- the canary split
@pytest.mark.parametrize("percent", [1, 5, 50])
def test_the_canary_share_holds_over_10_000_callers_and_each_caller_is_sticky(percent):
    stable, canary = SimpleNamespace(name="stable", is_ready=True), SimpleNamespace(name="canary", is_ready=True)
    model = ServedModel("sentiment", stable, canary, percent)  # type: ignore[arg-type]
    callers = [f"user-{i}" for i in range(10_000)]
    picks = [model.pick(c)[0] for c in callers]
    share = 100 * picks.count("canary") / len(callers)
    assert abs(share - percent) <= 1.0, share
    again = ServedModel("sentiment", stable, canary, percent)  # type: ignore[arg-type]  # a reload, a restart
    assert [again.pick(c)[0] for c in callers] == picks
    # growing the canary keeps everyone who had it (buckets are fixed; only the threshold moves)
    grown = ServedModel("sentiment", stable, canary, min(100, percent * 2))  # type: ignore[arg-type]
    assert all(grown.pick(c)[0] == "canary" for c, p in zip(callers, picks, strict=True) if p == "canary")


def test_canary_buckets_are_independent_across_models():
    a = [canary_bucket("sentiment", f"u{i}") < CANARY_BUCKETS // 10 for i in range(10_000)]
    b = [canary_bucket("intent", f"u{i}") < CANARY_BUCKETS // 10 for i in range(10_000)]
    both = sum(x and y for x, y in zip(a, b, strict=True))
    assert 60 <= both <= 140  # about 10 % x 10 % of callers, not 10 %: one model's canary users differ


# ------------------------------------------------------------------------------------- several models
def test_two_models_answer_on_their_own_routes_and_the_default_on_v1_classify(tmp_path, versions):
    models = write_models(
        tmp_path / "models.toml",
        f'default = "intent"\n[models.sentiment]\nartifact = "{versions["1"]}"\n'
        f'[models.intent]\nartifact = "{versions["2"]}"\n',
    )
    app = create_app(settings_for(versions["1"], models=str(models)))

    async def fn(client):
        return (
            await client.post("/v1/models/sentiment/classify", json={"text": "好吃"}),
            await client.post("/v1/models/intent/classify", json={"text": "好吃"}),
            await client.post("/v1/classify", json={"text": "好吃"}),
            await client.post("/v1/models/nope/classify", json={"text": "好吃"}),
            await client.get("/v1/models"),
            await client.get("/v1/models/sentiment"),
            await client.get("/metrics"),
        )

    sentiment, intent, default, missing, listing, one, metrics = run(app, fn)
    assert sentiment.json()["model"]["id"] == "sentiment" and sentiment.json()["model"]["version"] == "1"
    assert intent.json()["model"]["id"] == "intent" and intent.json()["model"]["version"] == "2"
    assert default.json()["model"]["id"] == "intent" and default.headers["x-model"] == "intent"
    assert missing.status_code == 404 and "sentiment, intent" in missing.json()["error"]["hint"]
    body = listing.json()
    assert [m["id"] for m in body["models"]] == ["sentiment", "intent"] and body["models"][1]["default"]
    (stable,) = body["models"][0]["versions"]
    assert stable["manifest_sha256"] == manifest_sha(versions["1"]) and stable["share_percent"] == 100
    assert stable["labels"] == ["negative", "positive"] and stable["ready"] and stable["format"] == "onnx-int8"
    assert one.json()["id"] == "sentiment"
    for model in ("sentiment", "intent"):  # per-model series; the unknown name made none
        assert metric(metrics.text, "ernie_cls_texts_total", model=model) == 1
    assert "nope" not in metrics.text
    assert metric(metrics.text, "ernie_cls_requests_total", route="/v1/models/{name}/classify", status="404") == 1


def test_the_canary_answers_its_callers_and_every_reply_and_series_names_the_version(tmp_path, versions):
    models = write_models(
        tmp_path / "models.toml",
        f'[models.sentiment]\nartifact = "{versions["1"]}"\ncanary = "{versions["2"]}"\ncanary_percent = 50\n',
    )
    app = create_app(settings_for(versions["1"], models=str(models), cache_size=0))
    callers = [f"user-{i}" for i in range(40)]

    async def fn(client):
        replies = []
        for caller in callers * 2:
            r = await client.post("/v1/classify", json={"text": "好吃"}, headers={"X-User-Id": caller})
            replies.append(r)
        return replies, await client.get("/metrics")

    replies, metrics = run(app, fn)
    variants = [r.json()["model"]["variant"] for r in replies]
    assert variants[:40] == variants[40:]  # sticky
    assert all(r.headers["x-model-variant"] == v for r, v in zip(replies, variants, strict=True))
    expected = ["canary" if canary_bucket("sentiment", c) < CANARY_BUCKETS // 2 else "stable" for c in callers]
    assert variants[:40] == expected
    for r in replies:
        assert r.json()["model"]["version"] == ("2" if r.json()["model"]["variant"] == "canary" else "1")
    canary_texts = metric(metrics.text, "ernie_cls_texts_total", model="sentiment", variant="canary", version="2")
    assert canary_texts == 2 * expected.count("canary")


# ------------------------------------------------------------------------------------- reload and rollback
def _one_model(path: Path, stable: Path, canary: Path | None = None, percent: float = 0) -> Path:
    text = f'[models.sentiment]\nartifact = "{stable}"\n'
    if canary is not None:
        text += f'canary = "{canary}"\ncanary_percent = {percent}\n'
    return write_models(path, text)


def test_reload_swaps_in_a_new_version_and_rollback_brings_the_warm_old_one_back_at_once(tmp_path, versions):
    models = _one_model(tmp_path / "models.toml", versions["1"])
    app = create_app(settings_for(versions["1"], models=str(models), admin_keys="admin-1"))

    async def fn(client):
        async def version():
            return (await client.post("/v1/classify", json={"text": "好吃"})).json()["model"]["version"]

        seen = [await version()]
        _one_model(models, versions["2"])
        reload = await client.post("/v1/admin/reload", headers=ADMIN)
        seen.append(await version())
        old_engine = app.state.registry.previous.get(None).stable
        started = time.perf_counter()
        rollback = await client.post("/v1/admin/rollback", headers=ADMIN)
        seen.append(await version())
        rollback_s = time.perf_counter() - started
        same_engine = app.state.registry.current.get(None).stable is old_engine
        return seen, reload, rollback, rollback_s, same_engine, await client.get("/v1/models")

    seen, reload, rollback, rollback_s, same_engine, listing = run(app, fn)
    assert reload.status_code == 200 and reload.json()[0]["versions"][0]["version"] == "2"
    assert rollback.status_code == 200 and seen == ["1", "2", "1"]
    assert same_engine and rollback_s < 1.0  # the warm engine, not a reload
    assert listing.json()["generation"] == 1


def test_a_reload_back_to_a_version_still_loaded_reuses_its_warm_engine(tmp_path, versions):
    models = _one_model(tmp_path / "models.toml", versions["1"])
    app = create_app(settings_for(versions["1"], models=str(models), admin_keys="admin-1"))

    async def fn(client):
        first = app.state.registry.current.get(None).stable
        _one_model(models, versions["2"])
        await client.post("/v1/admin/reload", headers=ADMIN)
        _one_model(models, versions["1"])
        started = time.perf_counter()
        back = await client.post("/v1/admin/reload", headers=ADMIN)
        took = time.perf_counter() - started
        return back, took, app.state.registry.current.get(None).stable is first

    back, took, reused = run(app, fn)
    assert back.status_code == 200 and reused and took < 1.0


@pytest.mark.parametrize("breakage", ["missing", "tampered", "pinned", "bad-toml"])
def test_a_broken_new_set_leaves_the_old_one_serving_and_says_why(tmp_path, versions, breakage):
    models = _one_model(tmp_path / "models.toml", versions["1"])
    app = create_app(settings_for(versions["1"], models=str(models), admin_keys="admin-1"))
    broken = tmp_path / "broken"
    if breakage == "missing":
        _one_model(models, tmp_path / "absent")
    elif breakage == "tampered":  # a file that no longer matches the manifest's sha256
        shutil.copytree(versions["2"], broken)
        with (broken / "tokenizer" / "vocab.txt").open("a", encoding="utf-8") as vocab:
            vocab.write("多余\n")
        _one_model(models, versions["1"], broken, 50)
    elif breakage == "pinned":
        models.write_text(
            f'[models.sentiment]\nartifact = "{versions["2"]}"\nartifact_sha256 = "{"0" * 64}"\n', encoding="utf-8"
        )
    else:
        models.write_text("[models.sentiment\n", encoding="utf-8")

    async def fn(client):
        reload = await client.post("/v1/admin/reload", headers=ADMIN)
        after = await client.post("/v1/classify", json={"text": "好吃"})
        return reload, after, await client.get("/readyz"), await client.get("/healthz")

    reload, after, ready, health = run(app, fn)
    assert reload.status_code == 409, reload.text
    error = reload.json()["error"]
    assert error["type"] == "reload" and error["hint"]
    if breakage != "bad-toml":
        assert "sentiment" in error["message"] and "failed to load" in error["message"]
    assert after.status_code == 200 and after.json()["model"]["version"] == "1"
    assert ready.status_code == 200 and health.status_code == 200
    assert app.state.registry.current.generation == 1 and app.state.registry.previous is None


def test_requests_in_flight_finish_on_the_version_that_accepted_them(tmp_path, versions):
    import threading

    models = _one_model(tmp_path / "models.toml", versions["1"])
    app = create_app(settings_for(versions["1"], models=str(models), admin_keys="admin-1", cache_size=0))
    release = threading.Event()

    async def fn(client):
        old = app.state.registry.current.get(None).stable
        for backend in old.backends:  # the old version's model calls wait: a request stays in flight on it
            real = backend.infer
            backend.infer = lambda ids, types, real=real: (release.wait(10), real(ids, types))[1]
        held = asyncio.ensure_future(client.post("/v1/classify", json={"text": "慢"}))
        while old.in_flight == 0:
            await asyncio.sleep(0.01)
        _one_model(models, versions["2"])
        reload = await client.post("/v1/admin/reload", headers=ADMIN)
        fresh = await client.post("/v1/classify", json={"text": "快"})
        release.set()
        return await held, reload, fresh

    held, reload, fresh = run(app, fn)
    assert reload.status_code == 200
    assert held.status_code == 200 and held.json()["model"]["version"] == "1"
    assert fresh.status_code == 200 and fresh.json()["model"]["version"] == "2"


def test_versions_out_of_both_sets_are_retired_after_their_requests(tmp_path, versions):
    models = _one_model(tmp_path / "models.toml", versions["1"])
    app = create_app(settings_for(versions["1"], models=str(models), admin_keys="admin-1"))

    async def fn(client):
        first = app.state.registry.current.get(None).stable
        for version in ("2", "3"):
            _one_model(models, versions[version])
            assert (await client.post("/v1/admin/reload", headers=ADMIN)).status_code == 200
        for _ in range(200):  # retiring runs in the background
            if first.batcher is None:  # stopped and released
                break
            await asyncio.sleep(0.01)
        return first, {id(e) for e in app.state.registry.all_engines()}

    first, loaded = run(app, fn)
    assert id(first) not in loaded and first.batcher is None and first.model is None


def test_the_admin_api_needs_its_own_key_and_is_off_without_one(tmp_path, versions):
    models = _one_model(tmp_path / "models.toml", versions["1"])
    on = create_app(settings_for(versions["1"], models=str(models), admin_keys="admin-1", api_keys="client-1"))
    off = create_app(settings_for(versions["1"], models=str(models)))

    async def with_key(client):
        return [
            await client.post("/v1/admin/reload"),
            await client.post("/v1/admin/reload", headers={"Authorization": "Bearer client-1"}),
            await client.post("/v1/admin/rollback", headers=ADMIN),  # nothing to roll back to yet
            await client.post("/v1/admin/reload", headers=ADMIN),
        ]

    async def without(client):
        return await client.post("/v1/admin/reload", headers=ADMIN)

    no_key, client_key, early_rollback, ok = run(on, with_key)
    assert no_key.status_code == 401 and client_key.status_code == 401
    assert early_rollback.status_code == 409 and "previous" in early_rollback.json()["error"]["message"]
    assert ok.status_code == 200
    disabled = run(off, without)
    assert disabled.status_code == 403 and "ERNIE_CLS_ADMIN_KEYS" in disabled.json()["error"]["hint"]


def test_one_artifact_alone_is_served_under_its_manifest_name(int8_artifact):
    app = create_app(settings_for(int8_artifact))

    async def fn(client):
        return await client.post("/v1/models/tiny-int8/classify", json={"text": "好吃"}), await client.get("/v1/models")

    named, listing = run(app, fn)
    assert named.status_code == 200 and named.json()["model"]["id"] == "tiny-int8"
    assert [m["id"] for m in listing.json()["models"]] == ["tiny-int8"]


def test_reload_and_rollback_are_refused_while_loading_draining_or_reloading(tmp_path, versions):
    import threading

    models = _one_model(tmp_path / "models.toml", versions["1"])
    app = create_app(settings_for(versions["1"], models=str(models), admin_keys="admin-1"))
    registry = app.state.registry
    gate = threading.Event()

    async def fn(client):
        outcomes = {"before start": (await client.post("/v1/admin/reload", headers=ADMIN)).status_code}
        registry.starting = False
        _one_model(models, versions["2"])
        real_load = type(registry.current.get(None).stable).load

        def slow_load(engine):  # the new version takes a while to load
            gate.wait(10)
            real_load(engine)

        type(registry.current.get(None).stable).load = slow_load
        try:
            first = asyncio.ensure_future(client.post("/v1/admin/reload", headers=ADMIN))
            await asyncio.sleep(0.2)
            outcomes["reload during reload"] = (await client.post("/v1/admin/reload", headers=ADMIN)).status_code
            outcomes["rollback during reload"] = (await client.post("/v1/admin/rollback", headers=ADMIN)).status_code
            gate.set()
            outcomes["first reload"] = (await first).status_code
        finally:
            type(registry.current.get(None).stable).load = real_load
        registry.start_draining()
        outcomes["while draining"] = (await client.post("/v1/admin/reload", headers=ADMIN)).status_code
        return outcomes

    async def during_start(client):
        registry.starting = True  # as while the first set loads (the lifespan's load has finished by now)
        return await fn(client)

    outcomes = run(app, during_start)
    assert outcomes == {
        "before start": 409,
        "reload during reload": 409,
        "rollback during reload": 409,
        "first reload": 200,
        "while draining": 409,
    }


# ------------------------------------------------------------------------------------- found by review
def test_a_version_is_retired_only_after_requests_that_chose_it_and_then_frees_its_model(tmp_path, versions):
    models = _one_model(tmp_path / "models.toml", versions["1"])
    app = create_app(settings_for(versions["1"], models=str(models), admin_keys="admin-1"))

    async def fn(client):
        first = app.state.registry.current.get(None).stable
        with first.serving():  # e.g. a request whose body is still arriving
            for version in ("2", "3"):
                _one_model(models, versions[version])
                assert (await client.post("/v1/admin/reload", headers=ADMIN)).status_code == 200
            await asyncio.sleep(0.3)
            still_there = first.model is not None and first.batcher is not None
        for _ in range(300):
            if first.model is None:
                break
            await asyncio.sleep(0.01)
        return still_there, first

    still_there, first = run(app, fn)
    assert still_there  # not stopped under the request
    assert first.model is None and first.batcher is None and not first.ready  # retired, memory released


def test_a_canary_that_fails_to_load_sends_its_callers_to_stable_and_keeps_the_replica_up(tmp_path, versions):
    broken = tmp_path / "broken"
    shutil.copytree(versions["2"], broken)
    (broken / "onnx" / "model.int8.onnx").write_bytes(b"not a model")
    models = _one_model(tmp_path / "models.toml", versions["1"], broken, 50)
    app = create_app(settings_for(versions["1"], models=str(models)))

    async def fn(client):
        replies = [
            await client.post("/v1/classify", json={"text": "好"}, headers={"X-User-Id": f"u{i}"}) for i in range(20)
        ]
        return replies, await client.get("/healthz"), await client.get("/readyz"), await client.get("/v1/models")

    replies, health, ready, listing = run(app, fn)
    assert all(r.status_code == 200 and r.json()["model"]["variant"] == "stable" for r in replies)
    assert health.status_code == 200 and ready.status_code == 200
    canary = listing.json()["models"][0]["versions"][1]
    assert canary["variant"] == "canary" and canary["ready"] is False


def test_a_reload_that_changes_nothing_keeps_the_rollback_target(tmp_path, versions):
    models = _one_model(tmp_path / "models.toml", versions["1"])
    app = create_app(settings_for(versions["1"], models=str(models), admin_keys="admin-1"))

    async def fn(client):
        _one_model(models, versions["2"])
        await client.post("/v1/admin/reload", headers=ADMIN)
        again = await client.post("/v1/admin/reload", headers=ADMIN)  # a second SIGHUP, a double click
        generation = app.state.registry.current.generation
        await client.post("/v1/admin/rollback", headers=ADMIN)
        reply = await client.post("/v1/classify", json={"text": "好"})
        return again, generation, reply.json()["model"]["version"]

    again, generation, version = run(app, fn)
    assert again.status_code == 200 and generation == 2 and version == "1"


def test_a_promoted_canary_is_counted_once_in_the_metrics(tmp_path, versions):
    models = _one_model(tmp_path / "models.toml", versions["1"], versions["2"], 100)
    app = create_app(settings_for(versions["1"], models=str(models), admin_keys="admin-1", cache_size=0))

    async def fn(client):
        for i in range(10):
            await client.post("/v1/classify", json={"text": f"好{i}"})
        _one_model(models, versions["2"])  # promote: v2 becomes stable, the same warm engine
        assert (await client.post("/v1/admin/reload", headers=ADMIN)).status_code == 200
        return (await client.get("/metrics")).text

    text = run(app, fn)
    assert metric(text, "ernie_cls_texts_total", version="2") == 10  # once, not as canary and stable
    assert metric(text, "ernie_cls_texts_total", variant="stable", version="2") == 10


def test_explanations_enter_the_queue_a_few_rows_at_a_time_and_callers_are_read_alike(tmp_path, versions):
    from service.engine import EXPLAIN_CHUNK_ROWS

    models = _one_model(tmp_path / "models.toml", versions["1"], versions["2"], 50)
    app = create_app(settings_for(versions["1"], models=str(models), max_chars_per_text=200))

    async def fn(client):
        sizes = []
        for _, _, engine in app.state.registry.current.engines():
            real = engine.batcher.submit

            async def recording(sequences, *args, real=real, **kwargs):
                sizes.append(len(sequences))
                return await real(sequences, *args, **kwargs)

            engine.batcher.submit = recording
        await client.post("/v1/explain", json={"text": "好" * 25})
        variants = []
        for i in range(20):  # two X-User-Id headers: both routes take the first
            headers = [("X-User-Id", f"u{i}"), ("X-User-Id", f"other{i}")]
            a = await client.post("/v1/classify", json={"text": "好"}, headers=headers)
            b = await client.post("/v1/explain", json={"text": "好"}, headers=headers)
            variants.append((a.json()["model"]["variant"], b.json()["model"]["variant"]))
        return sizes, variants

    sizes, variants = run(app, fn)
    assert sum(sizes[: -(-26 // EXPLAIN_CHUNK_ROWS)]) == 26 and max(sizes) <= EXPLAIN_CHUNK_ROWS  # 25 pieces + the text
    assert all(a == b for a, b in variants) and {a for a, _ in variants} == {"stable", "canary"}


def test_admin_paths_cannot_be_reached_around_the_admin_key(tmp_path, versions):
    models = _one_model(tmp_path / "models.toml", versions["1"])
    app = create_app(settings_for(versions["1"], models=str(models), admin_keys="admin-1", api_keys="client-1"))
    client_key = {"Authorization": "Bearer client-1"}

    async def fn(client):
        paths = ["/v1/admin/reload/", "/v1/admin//reload", "/v1/admin/reload?x=1", "/v1/admin/%72eload"]
        return [(await client.post(p, headers=client_key)).status_code for p in paths]

    assert run(app, fn) == [401, 401, 401, 401]  # a client's key never opens the admin API, whatever the spelling


def test_explain_text_that_grows_under_normalisation_stays_bounded(int8_artifact):
    app = create_app(settings_for(int8_artifact, max_chars_per_text=2000))
    text = "\ufdfa" * 256  # NFKC: 18 characters each; within the 256-character limit as sent

    async def fn(client):
        return await client.post("/v1/explain", json={"text": text})

    reply = run(app, fn)
    body = reply.json()
    assert reply.status_code == 200 and body["truncated"] is True
    assert 0 < len(body["pieces"]) <= 32 - 2  # the tiny model's max_seq_len bounds the model rows
