"""The playground at / and the explain endpoint behind it.

The API half runs over httpx's ASGI transport. The browser half drives headless Debian Chromium (Playwright, with
the system's Chromium: no browser download) against the real service process, with every request to another host
refused, and asserts on what the page rendered: bars, scores, warnings, attributions, the CSV it offers.
"""

from __future__ import annotations

import asyncio
import csv
import io
import re
import threading
from pathlib import Path

import numpy as np
import pytest

from ernie_cls.artifact import verify_artifact
from ernie_cls.explain import occlusion_attributions, occlusion_inputs
from ernie_cls.runtime import load_backend, load_tokenizer
from service.main import create_app
from tests.test_models import run, versioned, write_models
from tests.test_service_api import settings_for

PLAYGROUND = Path(__file__).resolve().parents[1] / "service" / "playground"


# ------------------------------------------------------------------------------------- the explain endpoint
def test_explain_gives_the_attributions_verify_computes_with_each_pieces_characters(int8_artifact):
    app = create_app(settings_for(int8_artifact, max_chars_per_text=200))
    text = "送餐很快，味道不错 OK"

    async def fn(client):
        return await client.post("/v1/models/tiny-int8/explain", json={"text": text}), await client.post(
            "/v1/explain", json={"text": text}
        )

    named, default = run(app, fn)
    assert named.status_code == 200, named.text
    body = named.json()
    assert default.json()["pieces"] == body["pieces"] and body["model"]["id"] == "tiny-int8"
    # the same occlusion, computed here on the raw model
    artifact = verify_artifact(str(int8_artifact))
    tokenizer, backend = load_tokenizer(artifact), load_backend(artifact, "onnx-int8", 1)
    ids = tokenizer.encode_ids([text])[0]
    label, scores = occlusion_attributions(backend.infer(*tokenizer.pad(occlusion_inputs(ids, tokenizer.unk_id))))
    assert body["label"] == artifact.spec.labels[label]
    assert np.allclose([p["attribution"] for p in body["pieces"]], scores, atol=1e-4)
    shown = body["text"]
    assert [shown[p["start"] : p["end"]] for p in body["pieces"][:4]] == ["送", "餐", "很", "快"]
    assert shown[body["pieces"][-1]["start"] : body["pieces"][-1]["end"]] == "ok"  # as the model reads it


def test_explain_refuses_long_and_empty_texts_with_a_hint(int8_artifact):
    app = create_app(settings_for(int8_artifact, max_explain_chars=10))

    async def fn(client):
        return (
            await client.post("/v1/explain", json={"text": "好" * 11}),
            await client.post("/v1/explain", json={"text": " \u200b "}),
            await client.post("/v1/models/nope/explain", json={"text": "好"}),
        )

    long, empty, missing = run(app, fn)
    assert long.status_code == 422 and "at most 10" in long.json()["error"]["message"]
    assert "ERNIE_CLS_MAX_EXPLAIN_CHARS" in long.json()["error"]["hint"]
    assert empty.status_code == 422 and "empty" in empty.json()["error"]["message"]
    assert missing.status_code == 404


def test_explanations_beyond_the_concurrency_limit_get_429_while_classify_still_answers(int8_artifact):
    app = create_app(settings_for(int8_artifact, explain_concurrency=1, cache_size=0))
    release = threading.Event()

    async def fn(client):
        engine = app.state.engine
        for backend in engine.backends:
            real = backend.infer
            backend.infer = lambda ids, types, real=real: (
                release.wait(10) if len(ids) > 1 else None,
                real(ids, types),
            )[1]
        first = asyncio.ensure_future(client.post("/v1/explain", json={"text": "慢慢来"}))
        while engine.in_flight == 0:
            await asyncio.sleep(0.01)
        second = await client.post("/v1/explain", json={"text": "快"})
        classify = await client.post("/v1/classify", json={"text": "快"})
        release.set()
        return await first, second, classify

    first, second, classify = run(app, fn)
    assert first.status_code == 200
    assert second.status_code == 429 and second.headers["retry-after"] == "1"
    assert classify.status_code == 200


# ------------------------------------------------------------------------------------- the page's files
def test_the_page_loads_nothing_from_other_hosts(int8_artifact):
    app = create_app(settings_for(int8_artifact))

    async def fn(client):
        return [await client.get(p) for p in ("/", "/playground/playground.js", "/playground/playground.css")]

    replies = run(app, fn)
    assert [r.status_code for r in replies] == [200, 200, 200]
    assert "text/html" in replies[0].headers["content-type"]
    for reply in replies:
        assert not re.search(r"(?:src|href)=[\"']?(?:https?:)?//", reply.text)  # no absolute asset URLs
        assert not re.search(r"fetch\(\s*[\"'`]https?:", reply.text)


# ------------------------------------------------------------------------------------- in Chromium
@pytest.fixture(scope="module")
def playground(int8_artifact, tmp_path_factory):
    """The real service with two models (the second a copy whose manifest says version 2), low confidence flagged
    below 0.99 so the tiny model's warnings show."""
    from tests.test_service_process import start_service

    root = tmp_path_factory.mktemp("playground")
    v1, v2 = versioned(int8_artifact, root, "1"), versioned(int8_artifact, root, "2")
    models = write_models(
        root / "models.toml", f'[models.sentiment]\nartifact = "{v1}"\n[models.intent]\nartifact = "{v2}"\n'
    )
    proc, base, _ = start_service(
        int8_artifact, ERNIE_CLS_MODELS=str(models), ERNIE_CLS_LOW_CONFIDENCE_THRESHOLD="0.99"
    )
    yield base
    proc.kill()
    proc.wait()


@pytest.fixture
def page(playground, tmp_path):
    """A Chromium page (the Debian package's browser, driven by Playwright) that may reach only the service."""
    from playwright.sync_api import sync_playwright

    from tests.test_docs_browser import chromium

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium(), args=["--no-sandbox", "--disable-gpu"])
        context = browser.new_context(locale="zh-CN", viewport={"width": 1100, "height": 900}, accept_downloads=True)
        page = context.new_page()
        elsewhere: list[str] = []

        def only_the_service(route):
            if route.request.url.startswith(playground):
                route.continue_()
            else:
                elsewhere.append(route.request.url)
                route.abort()

        page.route("**/*", only_the_service)
        page.elsewhere = elsewhere
        yield page
        browser.close()


def _classify(page, base: str, texts: list[str], query: str = "") -> None:
    page.goto(f"{base}/{query}")
    page.wait_for_function("document.querySelectorAll('#model option').length == 2")
    page.fill("#texts", "\n".join(texts))
    page.click("#classify")
    page.wait_for_selector(f".result:nth-child({len(texts)})")


def test_the_page_classifies_typed_texts_into_bars_with_warnings_in_chinese(page, playground, tmp_path):
    import httpx

    texts = ["送餐很快，味道不错，下次还点", "等了两个小时，饭都凉了，差评", "一般"]
    _classify(page, playground, texts)
    assert page.inner_text("#classify") == "分类"  # a Chinese browser gets the Chinese UI
    models = page.eval_on_selector_all("#model option", "os => os.map(o => o.value)")
    assert models == ["sentiment", "intent"]
    expected = httpx.post(
        f"{playground}/v1/models/sentiment/classify", json={"texts": texts, "top_k": 2}, timeout=10
    ).json()["predictions"]
    cards = page.query_selector_all(".result")
    assert len(cards) == len(texts)
    for card, text, want in zip(cards, texts, expected, strict=True):
        assert card.query_selector(".text").inner_text() == text
        rows = card.query_selector_all(".bar-row")
        assert [r.get_attribute("data-label") for r in rows] == [x["label"] for x in want["top_k"]]
        for row, x in zip(rows, want["top_k"], strict=True):  # each bar as wide as its score, the number printed
            width = row.eval_on_selector(".bar > div", "d => d.getBoundingClientRect().width")
            track = row.eval_on_selector(".bar", "d => d.getBoundingClientRect().width")
            assert abs(width / track - x["score"]) < 0.01
            assert row.query_selector(".score").inner_text() == f"{100 * x['score']:.1f}%"
        assert (card.query_selector(".warning") is not None) == want["low_confidence"]
    assert any(x["low_confidence"] for x in expected)  # the threshold makes at least one warning show
    page.screenshot(path=str(tmp_path / "classified.png"), full_page=True)
    assert (tmp_path / "classified.png").stat().st_size > 20_000
    assert page.elsewhere == []


def test_why_colours_each_character_by_its_attribution(page, playground):
    import httpx

    text = "等了两个小时，饭都凉了"
    _classify(page, playground, [text], "?lang=en")
    assert page.inner_text("#classify") == "Classify"  # English on request
    page.click(".result .why")
    page.wait_for_selector(".explained span.piece")
    spans = page.query_selector_all(".explained span.piece")
    want = httpx.post(f"{playground}/v1/models/sentiment/explain", json={"text": text}, timeout=10).json()
    assert [s.inner_text() for s in spans] == [want["text"][p["start"] : p["end"]] for p in want["pieces"]]
    got = [float(s.get_attribute("data-attribution")) for s in spans]
    assert np.allclose(got, [p["attribution"] for p in want["pieces"]], atol=1e-6)
    strongest = int(np.argmax(np.abs(got)))
    colour = spans[strongest].evaluate("s => getComputedStyle(s).backgroundColor")
    # the strongest piece at full colour: red when it supports the label, blue when it speaks against it
    assert colour == ("rgb(220, 50, 47)" if got[strongest] >= 0 else "rgb(38, 139, 210)")


def _classify_csv(page, base: str, source: Path) -> list[dict[str, str]]:
    page.goto(base + "/")
    page.wait_for_function("document.querySelectorAll('#model option').length == 2")
    page.set_input_files("#csv", str(source))
    page.wait_for_function("!document.querySelector('#csvRun').disabled")
    assert page.eval_on_selector("#column", "s => s.options[s.selectedIndex].text") == "review"  # guessed
    page.click("#csvRun")
    page.wait_for_selector("#download:not([hidden])")
    with page.expect_download() as download:
        page.click("#download")
    return list(csv.DictReader(io.StringIO(Path(download.value.path()).read_text(encoding="utf-8-sig"))))


def test_a_csv_column_is_classified_and_offered_for_download(page, playground, tmp_path):
    source = tmp_path / "in.csv"
    source.write_text(
        "id,review,note\n"
        "0,好吃,a\n"
        '1,"He said ""ok"", fine",b\n'
        '2,"多行\n文本",c\n'
        "3,,empty\n"  # an empty cell: not sent, its row kept with empty results
        '4,他说"不错"就走了,stray quote\n'  # a quote inside an unquoted field is a character
        "5,=HYPERLINK(x),formula\n"
        "6,短行\n",  # a short row: padded
        encoding="utf-8",
    )
    result = _classify_csv(page, playground, source)
    assert [r["id"] for r in result] == ["0", "1", "2", "3", "4", "5", "6"]
    assert [r["review"] for r in result] == [
        "好吃",
        'He said "ok", fine',
        "多行\n文本",
        "",
        '他说"不错"就走了',
        "'=HYPERLINK(x)",  # a spreadsheet would run it as a formula: written with an apostrophe
        "短行",
    ]
    assert result[6]["note"] == "" and result[3]["label"] == "" and result[3]["score"] == ""
    filled = [r for r in result if r["review"]]
    assert all(r["label"] in {"negative", "positive"} and 0 <= float(r["score"]) <= 1 for r in filled)
    assert page.inner_text("#csvStatus").endswith("6 / 7 行")


def test_a_csv_saved_by_excel_in_gb18030_is_read_as_chinese(page, playground, tmp_path):
    source = tmp_path / "excel.csv"
    source.write_bytes("review,id\n送餐很快，味道不错,1\n太难吃了,2\n".encode("gb18030"))
    result = _classify_csv(page, playground, source)
    assert [r["review"] for r in result] == ["送餐很快，味道不错", "太难吃了"]
