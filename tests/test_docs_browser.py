"""/docs renders in a real browser with no internet: headless Debian Chromium against the real service process.

The machine's network is closed, so a Swagger UI that fetched its assets from a CDN would render nothing; the
flags also switch off Chromium's own background traffic. `make test` installs Chromium (`make browser`).
"""

from __future__ import annotations

import shutil
import subprocess

import pytest

from tests.test_service_process import start_service

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",  # runs as root in CI containers
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1280,1000",
    "--virtual-time-budget=10000",  # let Swagger UI's JavaScript fetch openapi.json and render
]


def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.fail("Chromium is not installed: run `make browser` (Debian package chromium).")
    return path


@pytest.fixture(scope="module")
def docs_url(int8_artifact):
    proc, base, _ = start_service(int8_artifact)
    yield f"{base}/docs"
    proc.kill()
    proc.wait()


def run_chromium(tmp_path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_docs_render_offline_with_every_operation(docs_url, tmp_path):
    done = run_chromium(tmp_path, "--dump-dom", docs_url)
    dom = done.stdout
    assert "swagger-ui" in dom, done.stderr[-2000:]
    # Rendered operations exist only after the UI's script ran and loaded /openapi.json from this service.
    for path in ("/v1/classify", "/v1/models", "/healthz", "/readyz"):
        assert f'data-path="{path}"' in dom, f"{path} not rendered"
    assert "cdn.jsdelivr.net" not in dom and "unpkg.com" not in dom


def test_docs_screenshot_shows_the_rendered_page(docs_url, tmp_path):
    from PIL import Image

    shot = tmp_path / "docs.png"
    done = run_chromium(tmp_path, f"--screenshot={shot}", docs_url)
    assert shot.is_file(), done.stderr[-2000:]
    image = Image.open(shot).convert("RGB")
    assert image.size == (1280, 1000)
    # A blank or error page has a handful of colours; rendered Swagger UI (coloured method badges, text) has many.
    colours = image.getcolors(maxcolors=1_000_000) or []
    assert len(colours) > 200
    # POST badges are Swagger's green (#49cc90): present only when operations rendered.
    assert any(abs(r - 0x49) < 12 and abs(g - 0xCC) < 12 and abs(b - 0x90) < 12 for _, (r, g, b) in colours)
