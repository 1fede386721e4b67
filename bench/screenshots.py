"""Screenshots of the playground for the README (`make screenshots`): the real service with the bundled model,
headless Debian Chromium driven by Playwright, Chinese and English UI, one explanation open.

    python -m bench.screenshots --output docs/img
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

TEXTS = ["送餐很快，味道不错，下次还点", "等了两个小时，饭都凉了，差评", "还行吧，就是有点咸"]


def _serve(artifact: str, port: int) -> subprocess.Popen:
    env = {**os.environ, "ERNIE_CLS_ARTIFACT": artifact, "ERNIE_CLS_PORT": str(port), "ERNIE_CLS_LOG_REQUESTS": "false"}
    proc = subprocess.Popen([sys.executable, "-m", "service"], env=env, stderr=subprocess.DEVNULL)
    for _ in range(300):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as reply:
                if reply.status == 200:
                    return proc
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("the service did not become ready within 30 s")


def main(argv: list[str] | None = None) -> None:
    from playwright.sync_api import sync_playwright

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--artifact", default="exported/waimai-sentiment")
    parser.add_argument("--output", default="docs/img")
    parser.add_argument("--port", type=int, default=8767)
    args = parser.parse_args(argv)
    browser_path = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser_path is None:
        raise SystemExit("Chromium is not installed: run `make browser`.")
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    proc = _serve(args.artifact, args.port)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=browser_path, args=["--no-sandbox", "--disable-gpu"])
            for lang in ("zh", "en"):
                page = browser.new_page(viewport={"width": 1000, "height": 820}, device_scale_factor=1)
                page.goto(f"http://127.0.0.1:{args.port}/?lang={lang}")
                page.wait_for_function("document.querySelectorAll('#model option').length > 0")
                page.fill("#texts", "\n".join(TEXTS))
                page.click("#classify")
                page.wait_for_selector(f".result:nth-child({len(TEXTS)})")
                page.click(".result:nth-child(2) .why")
                page.wait_for_selector(".explained span.piece")
                path = out / f"playground-{lang}.png"
                page.screenshot(path=str(path), full_page=True)
                print(path)
            browser.close()
    finally:
        proc.terminate()
        proc.wait(30)


if __name__ == "__main__":
    main()
