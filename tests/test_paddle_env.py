"""The Paddle CPU workaround (training/paddle_env.py) and the canary that tells us when to drop it."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from training import paddle_env


def test_paddle_still_bundles_the_old_mkl_that_needs_the_amd_workaround():
    """Fails when the paddle wheel stops shipping libmklml_intel.so: then re-measure and drop MKL_DEBUG_CPU_TYPE."""
    spec = importlib.util.find_spec("paddle")
    assert spec and spec.origin
    libs = Path(spec.origin).parent / "libs"
    assert (libs / paddle_env.BUNDLED_MKL).is_file()


def test_configure_fills_in_threads_but_respects_the_user(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(paddle_env, "cpu_vendor", lambda: "AuthenticAMD")
    monkeypatch.delenv("MKL_DEBUG_CPU_TYPE", raising=False)
    applied = paddle_env.configure()
    assert applied["OMP_NUM_THREADS"] == str(paddle_env.usable_cores()) and applied["MKL_DEBUG_CPU_TYPE"] == "5"

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("MKL_DEBUG_CPU_TYPE", "0")
    assert paddle_env.configure() == {}
    assert paddle_env.configure(threads=3) == {"OMP_NUM_THREADS": "3"}


def test_no_mkl_override_on_intel(monkeypatch):
    monkeypatch.delenv("MKL_DEBUG_CPU_TYPE", raising=False)
    monkeypatch.setattr(paddle_env, "cpu_vendor", lambda: "GenuineIntel")
    assert "MKL_DEBUG_CPU_TYPE" not in paddle_env.configure()
