"""CPU settings Paddle needs before it is imported: the one place where we work around its defaults.

1. Threads. Paddle sets OMP_NUM_THREADS=1 when it is unset, leaving every other core idle. We default it to the
   cores this process may use.
2. MKL on AMD CPUs. The paddlepaddle 3.3.1 CPU wheel bundles the old `libmklml_intel.so`, which runs a generic
   (non-AVX2) GEMM path on non-Intel CPUs. That MKL still honours MKL_DEBUG_CPU_TYPE=5 (use the AVX2 kernels):
   on this AMD EPYC a [768x312]x[312x1248] matmul went 26.6 -> 9.2 ms and a scratch:nano training step ~2x
   faster (docs/benchmarks.md). tests/test_paddle_env.py fails when the wheel stops bundling that library, which
   is the signal to re-measure and drop this.

Both only fill in variables the user has not set, so an explicit environment always wins.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from ernie_cls.machine import usable_cores

BUNDLED_MKL = "libmklml_intel.so"


def cpuinfo(field: str) -> str:
    """The first value of `field` in /proc/cpuinfo ("" where there is none, e.g. not Linux)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.split(":", 1)[0].strip() == field:
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def cpu_vendor() -> str:
    return cpuinfo("vendor_id")


def configure(threads: int | None = None) -> dict[str, str]:
    """Set the environment for Paddle's CPU kernels; returns what was set. Call before `import paddle`."""
    applied: dict[str, str] = {}
    if threads:
        os.environ["OMP_NUM_THREADS"] = str(threads)
        applied["OMP_NUM_THREADS"] = str(threads)
    elif "OMP_NUM_THREADS" not in os.environ:
        os.environ["OMP_NUM_THREADS"] = applied["OMP_NUM_THREADS"] = str(usable_cores())
    if cpu_vendor() == "AuthenticAMD" and "MKL_DEBUG_CPU_TYPE" not in os.environ:
        os.environ["MKL_DEBUG_CPU_TYPE"] = applied["MKL_DEBUG_CPU_TYPE"] = "5"
    os.environ.setdefault("GLOG_minloglevel", "2")  # Paddle's C++ INFO chatter
    if "paddle" in sys.modules and applied:
        import logging

        logging.getLogger(__name__).warning(
            "paddle was imported before its CPU environment was set (%s); set these variables yourself or "
            "call training.paddle_env.configure() first",
            applied,
        )
    return applied
