"""Options of `ernie-cls bench model|service|soak|robustness` (each field is a flag: ernie_cls/options.py);
light to import."""

from __future__ import annotations

from dataclasses import dataclass

from ernie_cls.options import opt
from training.noise import NOISE_CHOICES


@dataclass
class BenchConfig:
    """`ernie-cls bench model`: every field is a flag (ernie_cls/options.py)."""

    artifact: str = opt(help="exported/<name>", positional=True)
    batch_sizes: list[int] = opt([1, 8, 32, 64])
    seq_lens: list[int] = opt([16, 32, 64, 128, 256])
    formats: list[str] | None = opt(None, "default: all runtime formats in the artifact")
    threads: int = opt(0, "inference threads (default: all cores)")
    min_seconds: float = opt(1.0, "timed seconds per format and shape")
    output: str = opt("reports/bench-model.json")


@dataclass
class ServiceBenchConfig:
    """`ernie-cls bench service` (and `bench soak`): every field is a flag (ernie_cls/options.py)."""

    artifact: str = opt("exported/waimai-sentiment", positional=True)
    data: str = opt("data/waimai_10k.csv", "texts to send (CSV/TSV/JSONL)")
    text_col: str | None = opt("review")
    texts: int = opt(2000, "how many texts (sampled with --seed)")
    workers: int = opt(0, "model instances (default: one per core)")
    threads: int = opt(1, "threads per model instance")
    duration: float = opt(15.0, "measured seconds per load run")
    concurrency: list[int] = opt([1, 8, 32, 64])
    batch_sizes: list[int] = opt([1, 4, 8, 16, 32, 64], "raw-model batch sizes")
    raw_seconds: float = opt(4.0, "timed seconds per raw (no HTTP) run")
    pairs: int = opt(3, "back-to-back raw-ceiling / c64 pairs for the c64 target")
    own_core_pairs: int = opt(
        3,
        "the same pairs with one model instance pinned to a core of its own, the HTTP side and the load "
        "generator on the others (Linux, 2+ cores; 0: skip)",
    )
    texts_per_request: int = opt(1, "texts in each request body")
    port: int = opt(8765)
    seed: int = opt(0)
    output: str = opt("reports/bench-service.json")


@dataclass
class RobustnessConfig:
    """`ernie-cls bench robustness`: every field is a flag (ernie_cls/options.py)."""

    artifacts: dict[str, str] = opt(help="name -> artifact directory (the command line's name=dir list)", cli=False)
    data: str = opt("data/waimai_10k.csv")
    text_col: str | None = opt("review")
    label_col: str | None = opt("label")
    kinds: list[str] = opt(list(NOISE_CHOICES), "noise kinds (default: all + mixed)")
    rates: list[float] = opt([0.05, 0.1, 0.2])
    formats: list[str] = opt(["onnx-fp32", "onnx-int8"])
    seed: int = opt(0)
    draws: int = opt(1, "independent noise draws per condition, accuracy averaged")
    output: str = opt("reports/bench-robustness.json")
