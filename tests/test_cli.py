"""The `ernie-cls` console script: train -> evaluate -> predict, and errors printed with a hint, exit code 2."""

from __future__ import annotations

import io
import json

import pytest

from commands.main import main
from tests.conftest import waimai_rows, write_csv


def test_evaluate_and_predict_from_a_trained_checkpoint(trained_run, small_csv, capsys, monkeypatch):
    ckpt = str(trained_run / "best")
    assert main(["evaluate", "--checkpoint", ckpt, "--data", str(small_csv)]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert 0.0 <= metrics["accuracy"] <= 1.0 and metrics["n"] == 120

    monkeypatch.setattr("sys.stdin", io.StringIO("送餐很快，好吃\n\u200b\n太难吃了，再也不点\n"))
    assert main(["predict", "--checkpoint", ckpt, "--top-k", "2"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["index"] for r in rows] == [0, 1, 2]
    assert rows[1]["error"] == "empty after normalisation"
    assert rows[0]["label"] in {"negative", "positive"}
    assert abs(sum(rows[0]["probabilities"].values()) - 1) < 1e-4 and len(rows[2]["top_k"]) == 2


def test_train_command_prints_a_summary(small_csv, tmp_path, capsys):
    code = main(
        [
            "train",
            "--data",
            str(small_csv),
            "--base-model",
            "scratch:pico",
            "--output",
            str(tmp_path / "r"),
            "--epochs",
            "1",
            "--max-seq-len",
            "32",
            "--vocab-size",
            "500",
            "--no-progress",
        ]
    )
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert set(summary) >= {"dev", "test", "samples_per_second", "checkpoint"}


def test_user_errors_exit_2_with_a_hint_and_no_traceback(tmp_path, capsys):
    data = write_csv(tmp_path / "a.csv", waimai_rows(5))
    code = main(["train", "--data", str(data), "--text-col", "comment", "--output", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2
    assert "error:" in err and "hint: Pass --text-col" in err and "Traceback" not in err


def test_predict_refuses_a_missing_checkpoint(tmp_path, capsys):
    assert main(["predict", "--checkpoint", str(tmp_path / "none"), "--input", "-"]) == 2
    assert "does not exist" in capsys.readouterr().err


STAGES = [
    (["train", "--output", "o"], "training.config:TrainConfig", {"output": "o"}),
    (["qat", "--checkpoint", "c", "--output", "o"], "training.qat:QATConfig", {"checkpoint": "c", "output": "o"}),
    (
        ["export", "--checkpoint", "c", "--output", "o"],
        "release.export:ExportConfig",
        {"checkpoint": "c", "output": "o"},
    ),
    (["verify", "a"], "release.verify:VerifyConfig", {"artifact": "a"}),
    (["bench", "model", "a"], "bench.formats:BenchConfig", {"artifact": "a"}),
    (["bench", "service"], "bench.serving:ServiceBenchConfig", {}),
    (["bench", "robustness", "p=a"], "bench.robustness:RobustnessConfig", {"artifacts": {"p": "a"}}),
]


@pytest.mark.parametrize(("argv", "target", "required"), STAGES, ids=[" ".join(s[0][:2]) for s in STAGES])
def test_each_flag_is_its_stage_config_field_with_the_same_default(argv, target, required):
    """Options are declared once: parsing only the required flags gives exactly the config's own defaults."""
    import dataclasses
    import importlib

    from commands.main import build_parser
    from ernie_cls.options import config_from

    module, name = target.split(":")
    config = getattr(importlib.import_module(module), name)
    args = build_parser().parse_args(argv)
    cli_only = {f.name: required[f.name] for f in dataclasses.fields(config) if not f.metadata.get("cli", True)}
    assert config_from(config, args, **cli_only) == config(**required)


def test_flags_reach_their_fields():
    from commands.main import build_parser
    from ernie_cls.options import config_from
    from training.config import TrainConfig

    argv = ["train", "--output", "o", "--label-names", "0=neg,1=pos", "--no-progress", "--amp", "--epochs", "2"]
    cfg = config_from(TrainConfig, build_parser().parse_args(argv))
    assert cfg.label_names == {"0": "neg", "1": "pos"} and cfg.progress is False and cfg.amp is True
    assert cfg.epochs == 2 and cfg.max_grad_norm == 1.0
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--output", "o", "--label-names", "broken"])


def test_soak_offers_only_the_flags_it_reads():
    from bench.config import ServiceBenchConfig
    from commands.main import SOAK_IGNORES, build_parser
    from ernie_cls.options import config_from

    with pytest.raises(SystemExit):
        build_parser().parse_args(["bench", "soak", "--concurrency", "16"])
    args = build_parser().parse_args(["bench", "soak"])
    cfg = config_from(ServiceBenchConfig, args, exclude=SOAK_IGNORES)
    assert (cfg.port, cfg.output, cfg.threads) == (8766, "reports/soak.json", 1) and not hasattr(args, "threads")


def test_the_command_line_loads_no_stage_before_a_command_runs():
    """`--help` and argument parsing import the configs only: Paddle's environment is set before numpy loads, and a
    core install (no psutil, sklearn, onnx) can still print help."""
    import subprocess
    import sys

    code = (
        "import sys, commands.main as m; m.build_parser();"
        "print(sorted(x for x in ('numpy', 'psutil', 'onnx', 'sklearn', 'paddle', 'tokenizers') if x in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_flags_are_never_abbreviated():
    from commands.main import build_parser

    with pytest.raises(SystemExit):  # --base would be --base-model; with --baseline beside it, it must not guess
        build_parser().parse_args(["train", "--output", "o", "--base", "scratch:pico"])
    with pytest.raises(SystemExit):
        build_parser().parse_args(["bench", "soak", "--min", "5"])
