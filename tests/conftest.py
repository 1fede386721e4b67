"""Shared fixtures: small labelled files cut from the shipped corpus, and a tiny trained checkpoint."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import pytest

from training import paddle_env

paddle_env.configure()  # Paddle's CPU environment, before any test imports paddle

ROOT = Path(__file__).resolve().parents[1]
# The reliability suite (tests/reliability) runs with `make reliability`, not in `make test`.
collect_ignore = [] if os.environ.get("ERNIE_CLS_RELIABILITY") else ["reliability"]
WAIMAI = ROOT / "data" / "waimai_10k.csv"


def waimai_rows(per_class: int, offset: int = 0) -> list[dict[str, str]]:
    """`per_class` reviews of each label, deterministic (the file's order)."""
    with WAIMAI.open(encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    out: list[dict[str, str]] = []
    for label in ("0", "1"):
        out += [r for r in rows if r["label"] == label][offset : offset + per_class]
    return out


def write_csv(path: Path, rows: list[dict[str, str]], delimiter: str = ",") -> Path:
    with path.open("w", encoding="utf-8", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]), delimiter=delimiter)
        writer.writeheader()
        writer.writerows(rows)
    return path


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def small_csv(tmp_path_factory) -> Path:
    return write_csv(tmp_path_factory.mktemp("data") / "small.csv", waimai_rows(60))


def tiny_train_config(output: Path, data: Path | None, **overrides):
    from training.config import TrainConfig

    values = dict(
        output=str(output),
        data=str(data) if data else None,
        base_model="scratch:pico",
        max_seq_len=32,
        batch_size=16,
        epochs=2,
        learning_rate=2e-3,
        vocab_size=800,
        progress=False,
        time_budget=0,  # epochs as given, no masked-LM, no averaging: tests/test_budget.py covers the budget
    )
    values.update(overrides)
    return TrainConfig(**values)


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, small_csv) -> Path:
    """A pico model trained for a few seconds; tests only read it."""
    from training.finetune import train

    out = tmp_path_factory.mktemp("run")
    train(tiny_train_config(out, small_csv, label_names={"0": "negative", "1": "positive"}))
    return out


@pytest.fixture(scope="session")
def qat_run(trained_run, tmp_path_factory):
    """(QAT run directory, metrics) for the tiny trained model; a few steps only."""
    from training.qat import QATConfig, run_qat

    out = tmp_path_factory.mktemp("qat")
    metrics = run_qat(QATConfig(checkpoint=str(trained_run / "best"), output=str(out), max_steps=6, progress=False))
    return out, metrics


@pytest.fixture(scope="session")
def int8_artifact(trained_run, qat_run, tmp_path_factory) -> Path:
    """A complete artifact (FP32 + INT8 + Triton) exported from the tiny model."""
    from release.export import ExportConfig, export

    out = tmp_path_factory.mktemp("exported") / "tiny-int8"
    export(ExportConfig(checkpoint=str(trained_run / "best"), qat=str(qat_run[0] / "best"), output=str(out)))
    return out


def corrupt_onnx_exports(monkeypatch) -> None:
    """Make release.export's ONNX step add 5.0 to one element of its largest GEMM weight (the Paddle model stays
    right), so that the Paddle-vs-ONNX parity check has something to catch. A GEMM weight, not the largest table:
    with an n-gram branch that is the branch's, whose row 0 ([PAD]'s) is never read."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    import release.export as ex

    real_export_onnx = ex.export_onnx

    def corrupting_export_onnx(prefix, onnx_path):
        real_export_onnx(prefix, onnx_path)
        model = onnx.load(str(onnx_path))
        matmul_weights = {n.input[1] for n in model.graph.node if n.op_type == "MatMul"}
        init = max((t for t in model.graph.initializer if t.name in matmul_weights), key=lambda t: np.prod(t.dims))
        arr = numpy_helper.to_array(init).copy()
        arr.flat[0] += 5.0
        init.CopyFrom(numpy_helper.from_array(arr, init.name))
        onnx.save(model, str(onnx_path))

    monkeypatch.setattr(ex, "export_onnx", corrupting_export_onnx)
