"""Options of `ernie-cls export` and `verify` (each field is a flag: ernie_cls/options.py); light to import."""

from __future__ import annotations

from dataclasses import dataclass

from ernie_cls.options import opt
from ernie_cls.privacy import MAX_ADVANTAGE


@dataclass
class ExportConfig:
    """`ernie-cls export`: every field is a flag (ernie_cls/options.py)."""

    checkpoint: str = opt(help="the FP32 checkpoint (runs/<x>/best)")
    output: str = opt(help="artifact directory, e.g. exported/waimai-sentiment")
    qat: str | None = opt(None, "QAT checkpoint from `ernie-cls qat` (adds INT8 Paddle/ONNX models + Triton repo)")
    name: str | None = opt(None, "model name in the manifest (default: the output directory's name)")
    version: str = opt("1", "model version in the manifest")
    data: str | None = opt(None, "labelled file for the export checks (default: the training split)")
    text_col: str | None = opt(None, "column holding the text")
    label_col: str | None = opt(None, "column holding the label")
    parity_tolerance: float = opt(1e-4, "max |logit diff| Paddle vs ONNX on dev")
    keep_formats: list[str] | None = opt(
        None, "formats to ship (comma-separated); all are still checked. Default: all", flag="--formats"
    )
    min_int8_agreement: float = opt(0.99, "INT8 vs QAT argmax agreement on dev")
    max_int8_accuracy_drop: float = opt(0.005, "INT8 vs FP32 test accuracy (absolute)")
    overwrite: bool = opt(False)


@dataclass
class VerifyConfig:
    """`ernie-cls verify`: every field is a flag (ernie_cls/options.py)."""

    artifact: str = opt(help="exported/<name>", positional=True)
    data: str | None = opt(None, "labelled file for accuracy/agreement (its own test split if it trained the model)")
    text_col: str | None = opt(None)
    label_col: str | None = opt(None)
    split: str = opt(
        "auto",
        "auto: the artifact's own test split when --data trained it; all: every row",
        choices=("auto", "test", "all"),
    )
    max_examples: int = opt(0, "0: all")
    output: str | None = opt(None, "report directory (default reports/verify-<name>)")
    max_accuracy_drop: float = opt(0.01, "vs the accuracy recorded at export")
    min_accuracy: float = opt(0.0)
    max_fp32_logit_diff: float = opt(1e-4)
    min_int8_agreement: float = opt(0.99)
    max_int8_accuracy_drop: float = opt(0.01)
    max_p99_ms_batch1: float = opt(50.0)
    threads: int = opt(1)
    explain: int = opt(5, "texts to explain with occlusion attributions")
    max_membership_advantage: float = opt(
        MAX_ADVANTAGE,
        "fail when a loss-threshold membership-inference attack tells training rows from held-out ones with a "
        "larger advantage (TPR - FPR; needs --data = the training file)",
    )
    membership_rows: int = opt(1000, "training and held-out rows compared by the membership check (each side)")
