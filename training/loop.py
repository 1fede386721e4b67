"""The training loop shared by fine-tuning and QAT, and what it needs: seed, device, LR schedule, dev evaluation.

length-bucketed batches of texts or of tokens (equal share per rank) -> AdamW, warmup + linear decay, global-norm
clipping, optional AMP -> evaluate on dev every `eval_every` steps (weight-averaged weights when averaging) ->
`save_best` on each new best dev macro-F1 (rank 0), early stop after `patience` evaluations without improvement,
all ranks alike
"""

from __future__ import annotations

import contextlib
import logging
import os
import platform
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ernie_cls.errors import ConfigError
from ernie_cls.runtime import logits_in_batches
from ernie_cls.tokenization import ErnieTokenizerFast
from training.batching import Encoded, training_batches
from training.config import TrainConfig
from training.data import (
    LabelMap,
)
from training.distributed import agree, rank_and_world, rank_share
from training.metrics import classification_metrics
from training.robust import RobustTraining
from training.weight_average import WeightAverage

log = logging.getLogger(__name__)


def set_seed(seed: int) -> None:
    import paddle

    random.seed(seed)
    np.random.seed(seed)
    paddle.seed(seed)


def select_device(requested: str) -> str:
    import paddle

    has_gpu = paddle.is_compiled_with_cuda() and paddle.device.cuda.device_count() > 0
    if requested == "gpu" and not has_gpu:
        raise ConfigError(
            "--device gpu asked for, but this paddle has no usable GPU.",
            "Install paddlepaddle-gpu (see README, GPU section) or use --device cpu.",
        )
    device = "gpu" if requested == "gpu" or (requested == "auto" and has_gpu) else "cpu"
    paddle.set_device(device)
    return device


def warmup_then_linear_decay(learning_rate: float, total_steps: int, warmup_steps: int):
    """Paddle LR schedule: linear warmup to `learning_rate`, then linear decay to 0 at `total_steps`."""
    import paddle

    warmup = max(1, warmup_steps)
    return paddle.optimizer.lr.LambdaDecay(
        learning_rate,
        lambda step: min((step + 1) / warmup, max(0.0, (total_steps - step) / max(1, total_steps - warmup))),
    )


def predict_logits(model, tokenizer: ErnieTokenizerFast, ids: list[list[int]], batch_size: int = 64) -> np.ndarray:
    """Logits of a Paddle model (dygraph) for pre-tokenised sequences, in input order."""
    import paddle

    model.eval()

    def infer(input_ids: np.ndarray, token_type_ids: np.ndarray) -> np.ndarray:
        return model(paddle.to_tensor(input_ids), token_type_ids=paddle.to_tensor(token_type_ids)).numpy()

    with paddle.no_grad():
        return logits_in_batches(infer, tokenizer, ids, batch_size)


def evaluate_encoded(model, tokenizer, data: Encoded, label_map: LabelMap) -> dict:
    return evaluate_logits(predict_logits(model, tokenizer, data.ids), data, label_map)


def evaluate_logits(logits: np.ndarray, data: Encoded, label_map: LabelMap) -> dict:
    names = [label_map.display(i) for i in range(len(label_map))]
    return classification_metrics(data.labels.tolist(), logits.argmax(-1).tolist(), names)


def environment() -> dict:
    import paddle

    return {
        "python": platform.python_version(),
        "paddle": paddle.__version__,
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
    }


@dataclass
class FitResult:
    history: list[dict]
    best_step: int
    steps: int
    seen: int
    train_seconds: float


@dataclass
class _Progress:
    """What the loop knows between steps: counters, the best dev score so far, and when to stop."""

    total_steps: int
    eval_every: int
    patience: int
    step: int = 0
    seen: int = 0
    train_seconds: float = 0.0
    best_f1: float = -1.0
    best_step: int = 0
    evals_since_best: int = 0
    stop: bool = False
    history: list[dict] = field(default_factory=list)

    def result(self) -> FitResult:
        return FitResult(self.history, self.best_step, self.step, self.seen, self.train_seconds)


def _optimizer(model, cfg: TrainConfig, schedule, clip):
    """AdamW without weight decay on biases and norms, with global-norm gradient clipping (`clip`)."""
    import paddle

    no_decay = {p.name for n, p in model.named_parameters() if "bias" in n or "norm" in n}
    return paddle.optimizer.AdamW(
        learning_rate=schedule,
        parameters=[p for p in model.parameters() if not p.stop_gradient],
        weight_decay=cfg.weight_decay,
        apply_decay_param_fun=lambda name: name not in no_decay,
        grad_clip=clip,
    )


def fit(
    model,
    tokenizer: ErnieTokenizerFast,
    label_map: LabelMap,
    train_data: Encoded,
    dev_data: Encoded,
    cfg: TrainConfig,
    learning_rate: float,
    save_best: Callable[[dict], None],
    use_amp: bool = False,
    desc: str = "epoch",
    stop_at: float | None = None,
) -> FitResult:
    """The training loop shared by fine-tuning and QAT.

    Length-bucketed batches, AdamW with linear warmup then linear decay to 0, global-norm clipping, dev
    evaluation every `cfg.eval_every` steps (default: per epoch), `save_best(dev_metrics)` on each new best dev
    macro-F1, early stop after `cfg.patience` evaluations without improvement, and a last evaluation then a stop
    once `stop_at` (time.perf_counter()) has passed: the time budget's backstop.
    """
    import paddle
    from tqdm import tqdm

    rank, world = rank_and_world()
    epochs, patience, ema_decay = cfg.stages()
    lengths = [len(x) for x in train_data.ids]
    # The batch count does not depend on the shuffle; each rank runs the same share of it (training/distributed.py).
    first = training_batches(lengths, cfg.batch_size, cfg.batch_tokens, random.Random(0))
    steps_per_epoch = len(rank_share(first, 0, world))
    total_steps = min(steps_per_epoch * epochs, cfg.max_steps or steps_per_epoch * epochs)
    schedule = warmup_then_linear_decay(learning_rate, total_steps, int(cfg.warmup_ratio * total_steps))
    texts_per_batch = len(lengths) / len(first) if cfg.batch_tokens else 0.0  # > 0: weigh texts, not batches
    clip = paddle.nn.ClipGradByGlobalNorm(cfg.max_grad_norm)
    optimizer = _optimizer(model, cfg, schedule, clip)
    step_parts = _Step(
        model=paddle.DataParallel(model) if world > 1 else model,
        optimizer=optimizer,
        schedule=schedule,
        scaler=paddle.amp.GradScaler() if use_amp else None,
        robust=RobustTraining(cfg, model, tokenizer, train_data, random.Random(cfg.seed + 1), use_amp, texts_per_batch),
        average=WeightAverage(model, ema_decay) if ema_decay > 0 else None,
        use_amp=use_amp,
        clip=clip,
        max_grad_norm=cfg.max_grad_norm,
    )
    progress = _Progress(total_steps, cfg.eval_every or steps_per_epoch, patience)
    rng = random.Random(cfg.seed)
    for epoch in range(epochs):
        batches = rank_share(training_batches(lengths, cfg.batch_size, cfg.batch_tokens, rng), rank, world)
        desc_epoch = f"{desc} {epoch + 1}/{epochs}"
        bar = tqdm(batches, desc=desc_epoch, disable=not cfg.progress or rank != 0, mininterval=1.0, dynamic_ncols=True)
        step_parts.model.train()
        for batch in bar:
            loss_value = step_parts.run(tokenizer, train_data, batch, progress)
            bar.set_postfix(
                loss=f"{loss_value:.4f}", samples_s=f"{progress.seen / progress.train_seconds:.1f}", refresh=False
            )  # redrawn at tqdm's mininterval, not on every step (non-TTY logs)
            overrun = stop_at is not None and time.perf_counter() > stop_at
            if progress.step % progress.eval_every == 0 or progress.step == total_steps or overrun:
                dev_metrics, improved = step_parts.evaluate(
                    model, tokenizer, dev_data, label_map, progress, save_best, rank
                )
                _record(progress, cfg, epoch, loss_value, dev_metrics, improved)
            if overrun:
                log.warning(
                    "the time budget is spent: stopping at step %d (the best checkpoint is kept)", progress.step
                )
                progress.stop = True
            if progress.step >= total_steps or progress.stop:
                break
        bar.close()
        if progress.stop or progress.step >= total_steps:
            break
    return progress.result()


@dataclass
class _Step:
    """One optimisation step and one evaluation, with the pieces `fit` built (DataParallel, AMP, averaging)."""

    model: Any
    optimizer: Any
    schedule: Any
    scaler: Any
    robust: Any
    average: Any
    use_amp: bool
    clip: Any  # the optimizer's ClipGradByGlobalNorm
    max_grad_norm: float

    def run(self, tokenizer: ErnieTokenizerFast, data: Encoded, batch: list[int], progress: _Progress) -> float:
        import paddle

        t0 = time.perf_counter()
        input_ids, token_type_ids = tokenizer.pad(self.robust.batch_ids(batch))
        ids_t, types_t = paddle.to_tensor(input_ids), paddle.to_tensor(token_type_ids)
        labels = paddle.to_tensor(data.labels[batch])
        with paddle.amp.auto_cast(enable=self.use_amp):
            logits = self.model(ids_t, token_type_ids=types_t)
            loss = self.robust.loss(self.model, logits, labels, batch, ids_t, types_t)
            weight = self.robust.text_weight(len(batch))
            weighted = loss * weight if weight != 1.0 else loss
        self.clip.clip_norm = self.max_grad_norm * weight  # clipping judges the gradient before the text weight
        if self.scaler is not None:
            self.scaler.scale(weighted).backward()
            self.scaler.minimize(self.optimizer, weighted)
        else:
            weighted.backward()
            self.robust.adversarial_step(self.model, labels, ids_t, types_t)
            self.optimizer.step()
        self.optimizer.clear_grad()
        self.schedule.step()
        if self.average is not None:
            self.average.update()
        loss_value = float(loss)  # syncs, so the step time below is real
        progress.train_seconds += time.perf_counter() - t0
        progress.step += 1
        progress.seen += len(batch)
        return loss_value

    def evaluate(self, model, tokenizer, dev_data: Encoded, label_map: LabelMap, progress: _Progress, save_best, rank):
        # With weight averaging, the averaged weights are what is evaluated and saved.
        with self.average.swapped_in() if self.average is not None else contextlib.nullcontext():
            dev_metrics = evaluate_encoded(model, tokenizer, dev_data, label_map)
            improved = agree(dev_metrics["macro_f1"] > progress.best_f1)  # rank 0's verdict: ranks stop together
            if improved and rank == 0:
                save_best(dev_metrics)
        self.model.train()
        return dev_metrics, improved


def _record(
    progress: _Progress, cfg: TrainConfig, epoch: int, loss_value: float, dev_metrics: dict, improved: bool
) -> None:
    record = {
        "epoch": epoch + 1,
        "step": progress.step,
        "loss": loss_value,
        "dev_accuracy": dev_metrics["accuracy"],
        "dev_macro_f1": dev_metrics["macro_f1"],
        "train_seconds": round(progress.train_seconds, 1),
    }
    progress.history.append(record)
    log.info("eval %s", record)
    if improved:
        progress.best_f1, progress.best_step, progress.evals_since_best = dev_metrics["macro_f1"], progress.step, 0
    else:
        progress.evals_since_best += 1
    if progress.evals_since_best >= progress.patience:
        log.info("early stop: dev macro-F1 has not improved for %d evaluations", progress.patience)
        progress.stop = True
