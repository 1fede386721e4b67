"""`ernie-cls train` options (TrainConfig), checked before any work starts; fine-tuning and QAT read them."""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass

from ernie_cls.errors import ConfigError
from ernie_cls.options import opt

ROBUSTNESS = "robustness (all off by default; costs in docs/robustness.md; `qat` inherits them)"
DISTILLATION = "distillation"


def _label_names(value: str) -> dict[str, str]:
    pairs = [p.split("=", 1) for p in value.split(",") if p.strip()]
    if any(len(p) != 2 or not p[0].strip() or not p[1].strip() for p in pairs):
        raise argparse.ArgumentTypeError("use raw=name pairs, e.g. 0=negative,1=positive")
    return {k.strip(): v.strip() for k, v in pairs}


@dataclass
class TrainConfig:
    """`ernie-cls train`: every field is a flag (ernie_cls/options.py), with this default and help."""

    output: str = opt(help="run directory; the best checkpoint goes to <output>/best")
    data: str | None = opt(None, "one labelled file, split into train/dev/test (stratified, --seed)")
    train_file: str | None = opt(None, "your own training split (then --dev-file is required)")
    dev_file: str | None = opt(None)
    test_file: str | None = opt(None)
    text_col: str | None = opt(None, "column holding the text (default: text/review/sentence/content/...)")
    label_col: str | None = opt(None, "column holding the label (default: label/class/category/...)")
    label_names: dict[str, str] = opt(
        {}, "display names for raw labels, e.g. 0=negative,1=positive", parse=_label_names
    )
    base_model: str = opt(
        "scratch:nano",
        "PaddleNLP name (ernie-3.0-mini-zh, needs internet), a checkpoint directory, "
        "or scratch:pico|nano|micro|mini (random init, corpus vocabulary)",
    )
    max_seq_len: int | None = opt(
        None, "default: the training texts' p99 length + 2, rounded up to 16, within 32..128 (scratch) or 32..256"
    )
    batch_size: int = opt(32)
    batch_tokens: int = opt(
        0, "batches of at most this many padded tokens instead of --batch-size texts, e.g. 2048 (0: off)"
    )
    epochs: int | None = opt(None, "default: as many as --time-budget allows (at most 6 from scratch, 4 pretrained)")
    time_budget: float = opt(
        20.0,
        "minutes for masked-LM pretraining + fine-tuning, sized from the speed measured on this machine in a few "
        "probe steps; an explicit --epochs / --pretrain-epochs wins for its stage (0: off, 4 epochs, no masked-LM)",
    )
    learning_rate: float | None = opt(None, "default 3e-4 from scratch, 5e-5 from pretrained weights")
    warmup_ratio: float = opt(0.1)
    weight_decay: float = opt(0.01)
    max_grad_norm: float = opt(1.0, "global gradient-norm clipping")
    dropout: float = opt(0.1, "hidden dropout")
    attention_dropout: float = opt(0.0)
    vocab_size: int = opt(8000, "max corpus vocabulary size for scratch presets")
    pretrain_epochs: int | None = opt(
        None,
        "masked-LM epochs on the training texts before fine-tuning (scratch presets; default: half of "
        "--time-budget; 0: off)",
    )
    pretrain_homophones: float = opt(
        0.0,
        "share of the masked-LM stage's [MASK] replacements that put a homophone of the character instead "
        "(MacBERT-style correction; robustness to pinyin-IME errors; default 0: off)",
    )
    test_size: float = opt(0.2)
    dev_size: float = opt(0.1)
    seed: int = opt(42)
    eval_every: int = opt(0, "steps between dev evaluations (0: each epoch)")
    patience: int | None = opt(None, "evaluations without improvement before stopping (default 8; 3 without a budget)")
    max_steps: int = opt(0, "stop after this many steps (0: no limit)")
    overwrite: bool = opt(False, "allow an existing, non-empty --output")
    device: str = opt("auto", choices=("auto", "cpu", "gpu"))
    amp: bool | None = opt(None, "mixed precision (GPU default)")
    progress: bool = opt(True, "progress bar")
    ema_decay: float | None = opt(
        None, "evaluate/save a moving average of the weights, e.g. 0.99 (0: off; default 0.99 from scratch, else off)"
    )
    baseline: bool = opt(
        True,
        "also fit a character n-gram TF-IDF + logistic regression on the same split (seconds), report both and warn "
        "when the model does not beat it",
    )
    ngrams: bool = opt(
        True,
        "fit a linear model on hashed token 1-3-grams (seconds) and average it into the model's graph at the weight "
        "that scores best on dev within a privacy bound, kept only if its dev gain holds in 95 %% of bootstrap "
        "resamples (training/ngrams.py; weight 1 = left out)",
    )
    class_weights: str = opt(
        "none",
        "balanced: weight each example's loss by n / (K x its class's count), for imbalanced classes",
        choices=("none", "balanced"),
    )
    label_smoothing: float = opt(0.0, "e.g. 0.1", group=ROBUSTNESS)
    adversarial: str = opt("none", "FGM on the word embeddings", choices=("none", "fgm"), group=ROBUSTNESS)
    adv_epsilon: float = opt(1.0, "FGM perturbation norm", group=ROBUSTNESS)
    noise_augment: float = opt(0.0, "share of training texts seen noisy, e.g. 0.3", group=ROBUSTNESS)
    noise_rate: float = opt(0.1, "per-character rate of that noise", group=ROBUSTNESS)
    rdrop_alpha: float = opt(0.0, "R-Drop consistency weight, e.g. 1.0", group=ROBUSTNESS)
    noise_consistency: float = opt(
        0.0,
        "weight of the KL between predictions on each text and on a noisy copy (--noise-rate), e.g. 1.0",
        group=ROBUSTNESS,
    )
    teacher: str | None = opt(
        None,
        "checkpoint whose soft labels the student also learns, or `tfidf`: the char n-gram baseline's, out of fold",
        group=DISTILLATION,
    )
    distill_alpha: float = opt(0.5, "weight of the soft-label loss", group=DISTILLATION)
    distill_temperature: float = opt(2.0, group=DISTILLATION)

    def stages(self) -> tuple[int, int, float]:
        """(epochs, patience, ema_decay) once training/budget.py has resolved what was left auto."""
        if self.epochs is None or self.patience is None or self.ema_decay is None:
            raise ConfigError(
                "epochs, patience or ema_decay is still 'auto'.", "Resolve them first (training/budget.py)."
            )
        return self.epochs, self.patience, self.ema_decay

    def validate(self) -> None:
        if self.data is None and self.train_file is None:
            raise ConfigError("No training data given.", "Pass --data <file> or --train-file/--dev-file/--test-file.")
        if self.data is not None and self.train_file is not None:
            raise ConfigError("--data and --train-file are exclusive.", "Give one labelled file or your own splits.")
        if self.train_file is not None and self.dev_file is None:
            raise ConfigError("--train-file needs --dev-file for early stopping.", "Add --dev-file <file>.")
        if not 0 < self.test_size < 1 or not 0 < self.dev_size < 1 or self.test_size + self.dev_size >= 1:
            raise ConfigError("--test-size and --dev-size must be in (0, 1) and sum below 1.", "E.g. 0.2 and 0.1.")
        for name in ("batch_size", "epochs", "patience"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 1.", "Use a positive value.")
        if not math.isfinite(self.time_budget) or self.time_budget < 0:
            raise ConfigError("--time-budget must be >= 0 minutes.", "E.g. 20, or 0 to size stages by epochs only.")
        if self.pretrain_epochs is not None and self.pretrain_epochs < 0:
            raise ConfigError("--pretrain-epochs must be >= 0.", "E.g. 4, or 0 for no masked-LM stage.")
        if self.max_seq_len is not None and self.max_seq_len < 8:
            raise ConfigError("--max-seq-len must be >= 8.", "128 suits short customer messages.")
        check_batch_tokens(self.batch_tokens, self.max_seq_len)
        if self.class_weights not in ("none", "balanced"):
            raise ConfigError(f"--class-weights {self.class_weights!r} is not known.", "Use none or balanced.")
        if self.adversarial not in ("none", "fgm"):
            raise ConfigError(f"--adversarial {self.adversarial!r} is not known.", "Use none or fgm.")
        for name in ("label_smoothing", "noise_augment", "noise_rate"):
            if not 0 <= getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be in [0, 1).", "E.g. 0.1.")
        for name in ("pretrain_homophones", "distill_alpha"):
            if not 0 <= getattr(self, name) <= 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be in [0, 1].", "E.g. 0.5.")
        mlm_off = self.pretrain_epochs == 0 or (self.pretrain_epochs is None and self.time_budget == 0)
        if self.pretrain_homophones and mlm_off:
            raise ConfigError(
                "--pretrain-homophones changes the masked-LM stage, which is off.",
                "Add --pretrain-epochs N, or keep a --time-budget (it sizes the masked-LM stage).",
            )
        if self.ema_decay is not None and not 0 <= self.ema_decay < 1:
            raise ConfigError("--ema-decay must be in [0, 1).", "E.g. 0.99 (about the last 100 steps), or 0 for off.")
        if min(self.rdrop_alpha, self.noise_consistency) < 0 or self.adv_epsilon <= 0 or self.distill_temperature <= 0:
            raise ConfigError(
                "--rdrop-alpha and --noise-consistency must be >= 0, --adv-epsilon and --distill-temperature > 0.",
                "E.g. 1.0.",
            )
        if self.rdrop_alpha > 0 and self.noise_consistency > 0:
            raise ConfigError(
                "--rdrop-alpha and --noise-consistency each add a second forward pass; they do not combine.",
                "Choose one (--noise-consistency is R-Drop whose second pass sees a noisy copy).",
            )


def check_batch_tokens(batch_tokens: int, max_seq_len: int | None, source: str = "--max-seq-len") -> None:
    """--batch-tokens is off (0) or holds at least one text of `max_seq_len` tokens (`source`: where that came from)."""
    if batch_tokens < 0:
        raise ConfigError(
            f"--batch-tokens {batch_tokens} is negative.", "Use 0 (batches of --batch-size texts) or e.g. 2048."
        )
    if max_seq_len is not None and 0 < batch_tokens < max_seq_len:
        raise ConfigError(
            f"--batch-tokens {batch_tokens} cannot hold one text of {source} {max_seq_len} tokens.",
            f"Use at least {max_seq_len} (e.g. 2048), 0 (batches of --batch-size texts), or texts cut shorter with "
            f"--max-seq-len {max(batch_tokens, 8)} (train).",
        )


@dataclass
class QATConfig:
    """`ernie-cls qat`: every field is a flag (ernie_cls/options.py)."""

    checkpoint: str = opt(help="the FP32 checkpoint (runs/<x>/best)")
    output: str = opt(help="run directory; the QAT checkpoint goes to <output>/best")
    epochs: int = opt(1)
    learning_rate: float = opt(5e-5)
    batch_size: int = opt(32)
    batch_tokens: int = opt(0, "batches of at most this many padded tokens instead of --batch-size texts (0: off)")
    eval_every: int = opt(0, "steps between dev evaluations (0: each epoch)")
    patience: int = opt(2)
    moving_rate: float = opt(0.9, "activation scale moving average")
    ema_decay: float = opt(0.0, "evaluate/save a moving average of the weights, e.g. 0.99 (0: off)")
    distill_alpha: float = opt(
        1.0, "weight of matching the FP32 model's own predictions (self-distillation) against the labels' (0: off)"
    )
    distill_temperature: float = opt(1.0, "temperature of that matching")
    max_steps: int = opt(0)
    seed: int = opt(42)
    data: str | None = opt(None, "labelled file (default: the FP32 model's training data and split)")
    overwrite: bool = opt(False)
    progress: bool = opt(True, "progress bar")
