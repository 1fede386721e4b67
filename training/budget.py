"""`--time-budget`: the stage sizes that fit in N minutes on the machine the run is on, and the choices left "auto".

    training texts -> max_seq_len (their p99 length + [CLS]/[SEP], rounded up to 16, within 32..128 for scratch
      presets, 32..256 for pretrained models) unless given
    probe: forward+backward passes of the classifier on training batches from the shortest to the longest (no
      optimiser step, so the weights do not move) -> seconds per padded token by width -> an average step;
      the same for a throwaway masked-LM model (scratch presets)
      -> scratch presets: masked-LM pretraining gets MLM_SHARE of the budget, fine-tuning the rest, including its
         dev evaluations (forward only: about a third of a training step per batch)
      -> epochs clamped to [1, MAX_*_EPOCHS]; an explicit --epochs / --pretrain-epochs wins for its stage

The recipe it fills in for scratch presets is the one measured best on a dataset it was not tuned on
(docs/benchmarks.md section 10): masked-LM on the training texts, weight averaging (EMA 0.99), two dev evaluations
per epoch, patience 8 evaluations. Pretrained models get only the fine-tuning epochs sized (at most 4).
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from training.batching import Encoded, training_batches
from training.config import TrainConfig

log = logging.getLogger(__name__)

PROBE_STEPS = 6  # timed batches, from the shortest to the longest
WARMUP_STEPS = 2  # untimed first (allocation, kernel selection)
# The optimiser's update and the weight average on top of forward + backward: none needed, measured: the probe's
# passes on fresh batches (1.08 s) already exceeded a training step with its update (1.02 s, second dataset).
UPDATE_OVERHEAD = 1.0
MLM_SHARE = 0.5  # of the budget, for scratch presets (the measured recipe spent 55 % of its time there)
MAX_PRETRAIN_EPOCHS = 8
MAX_SCRATCH_EPOCHS = 6
MAX_PRETRAINED_EPOCHS = 4
RESERVED_SHARE = 0.08  # tokenising, the baseline, the final test evaluation, saving
EVAL_FORWARD_SHARE = 1 / 3  # a dev batch (forward only) against a training step (forward + backward + update)
SEQ_LEN_RANGE = (32, 256)
# The ceiling for scratch presets: on the second dataset (hotel reviews, p99 522 characters) 128 against 256 gave the
# same dev accuracy and +0.006 dev macro-F1 in a 20-minute budget, with 1.46x faster steps (docs/benchmarks.md
# section 10). Not measured for pretrained models, which keep 256. Longer documents: pass --max-seq-len.
SCRATCH_MAX_SEQ_LEN = 128
OVERRUN_ALLOWED = 1.15  # fine-tuning stops (best checkpoint kept) once the run has taken this much of its budget


@dataclass(frozen=True)
class BudgetPlan:
    budget_seconds: float
    seconds_per_step: float
    steps_per_epoch: int
    pretrain_epochs: int
    epochs: int
    eval_every: int
    estimated_seconds: float
    dev_batches: int = 0
    mlm_seconds_per_step: float = 0.0  # measured on its own model (1.0-1.9x a classification step, measured)
    fine_tune_steps: int = 0  # set after masked-LM: the steps that fit in the time left (0: whole epochs)

    def describe(self) -> str:
        return (
            f"time budget {self.budget_seconds / 60:.1f} min at {self.seconds_per_step * 1000:.0f} ms/step "
            f"({self.mlm_seconds_per_step * 1000:.0f} ms masked-LM) "
            f"({self.steps_per_epoch} steps/epoch): masked-LM {self.pretrain_epochs} epoch(s), fine-tuning "
            f"{self.epochs} epoch(s), dev evaluation every {self.eval_every} steps; estimated "
            f"{self.estimated_seconds / 60:.1f} min"
        )


def choose_max_seq_len(lengths: list[int], ceiling: int = SEQ_LEN_RANGE[1]) -> int:
    """p99 of the training texts' lengths (characters ~ pieces for Chinese) + [CLS]/[SEP], rounded up to 16, within
    SEQ_LEN_RANGE[0]..ceiling."""
    if not lengths:
        return SEQ_LEN_RANGE[0]
    p99 = float(np.percentile(lengths, 99)) + 2
    return int(min(max(math.ceil(p99 / 16) * 16, SEQ_LEN_RANGE[0]), ceiling))


def explain_max_seq_len(lengths: list[int], chosen: int) -> str:
    """The log line for an automatic max_seq_len: the p99 it came from and what it cuts."""
    if not lengths:
        return f"max_seq_len {chosen}"
    p99 = float(np.percentile(lengths, 99))
    cut = float(np.mean(np.array(lengths) + 2 > chosen))
    text = f"max_seq_len {chosen} (the training texts' p99 length is {p99:.0f} characters"
    if cut:
        return text + f"; {cut:.1%} of them are cut at {chosen} tokens: pass --max-seq-len N to keep more)"
    return text + ")"


@dataclass(frozen=True)
class ProbeBatches:
    """What a probe times: WARMUP_STEPS untimed batches, then PROBE_STEPS spread from the shortest to the longest
    texts (an epoch's cost is dominated by its long batches, which a median of random batches misses), and every
    batch's padded tokens and texts, so that each batch of the epoch gets the time its shape interpolates to."""

    warmup: list[list[int]]
    timed: list[list[int]]
    batch_tokens: list[int]
    batch_texts: list[int]


def probe_batches(ids: list[list[int]], batch_size: int, max_tokens: int = 0) -> ProbeBatches:
    lengths = [len(x) for x in ids]
    batches = training_batches(lengths, batch_size, max_tokens, random.Random(0))
    by_length = sorted(batches, key=lambda b: max(lengths[i] for i in b))
    picks = sorted({round(q * (len(by_length) - 1)) for q in np.linspace(0, 1, PROBE_STEPS)})
    middle = by_length[len(by_length) // 2]
    tokens = [len(b) * max(lengths[i] for i in b) for b in batches]
    return ProbeBatches([middle] * WARMUP_STEPS, [by_length[k] for k in picks], tokens, [len(b) for b in batches])


def average_step_seconds(probe: ProbeBatches, timings: list[tuple[float, int, int]]) -> float:
    """(seconds, padded tokens, texts) of the timed batches -> the epoch's average step: each batch costs its
    padded tokens at the cost per token interpolated from its width (the cost per token grows with the width:
    attention; docs/benchmarks.md section 10), plus the update. Interpolating on the width, not on the tokens,
    also holds when every batch has about the same tokens (--batch-tokens)."""
    if not timings or not probe.batch_tokens:
        return 0.0
    points = sorted((tokens / texts, seconds / tokens) for seconds, tokens, texts in timings)
    widths, per_token = [p[0] for p in points], [p[1] for p in points]
    tokens = np.array(probe.batch_tokens, dtype=np.float64)
    epoch = float((tokens * np.interp(tokens / np.array(probe.batch_texts), widths, per_token)).sum())
    return epoch / len(probe.batch_tokens) * UPDATE_OVERHEAD


def probe_seconds_per_step(model, tokenizer, data: Encoded, batch_size: int, max_tokens: int = 0) -> float:
    """An average training step's seconds: forward+backward passes timed on batches across the length
    distribution (gradients cleared, not applied: the weights do not move)."""
    import paddle
    from paddle.nn.functional import cross_entropy

    def loss_of(batch: list[int]):
        ids, types = tokenizer.pad([data.ids[i] for i in batch])
        logits = model(paddle.to_tensor(ids), token_type_ids=paddle.to_tensor(types))
        return cross_entropy(logits, paddle.to_tensor(data.labels[batch])), ids.size

    return time_probe(probe_batches(data.ids, batch_size, max_tokens), model, loss_of)


def time_probe(probe: ProbeBatches, model, loss_of: Callable[[list[int]], tuple[Any, int]]) -> float:
    """Times each probe batch's `loss_of(batch) -> (loss or None, padded tokens)` and backward pass (gradients
    cleared, never applied: the weights do not move) -> the epoch's average step (average_step_seconds)."""
    model.train()
    timings = []
    for k, batch in enumerate(probe.warmup + probe.timed):
        t0 = time.perf_counter()
        loss, tokens = loss_of(batch)
        if loss is None:
            continue
        loss.backward()
        float(loss)  # syncs
        model.clear_gradients()
        if k >= len(probe.warmup):
            timings.append((time.perf_counter() - t0, tokens, len(batch)))
    return average_step_seconds(probe, timings)


def plan_budget(
    cfg: TrainConfig,
    scratch: bool,
    steps_per_epoch: int,
    dev_batches: int,
    step_s: float,
    mlm_step_s: float | None = None,
) -> BudgetPlan:
    """The stages' sizes. A stage the user fixed (--epochs, --pretrain-epochs, --max-steps) keeps its size and
    the other gets what is left of the budget (masked-LM at most half, possibly none)."""
    budget = cfg.time_budget * 60
    usable = budget * (1 - RESERVED_SHARE)
    epoch_s = steps_per_epoch * step_s
    mlm_step_s = step_s if mlm_step_s is None else mlm_step_s
    mlm_epoch_s = steps_per_epoch * mlm_step_s
    eval_every = cfg.eval_every or max(1, steps_per_epoch // 2)
    ft_epoch_s = epoch_s * (1 + EVAL_FORWARD_SHARE * dev_batches / eval_every)
    fixed_ft = cfg.epochs is not None or cfg.max_steps > 0
    if cfg.pretrain_epochs is not None:
        pretrain = cfg.pretrain_epochs
    elif not scratch or cfg.max_steps > 0:  # a --max-steps run (a smoke test) gets no masked-LM unless asked
        pretrain = 0
    else:
        room = usable * MLM_SHARE
        if cfg.epochs is not None:  # fine-tuning fixed: masked-LM gets what it leaves, up to half
            room = min(room, usable - cfg.epochs * ft_epoch_s)
        lowest = 0 if fixed_ft else 1
        pretrain = _clamp(math.floor(room / mlm_epoch_s + 0.5), lowest, MAX_PRETRAIN_EPOCHS) if room > 0 else lowest
    if cfg.epochs is not None:
        epochs = cfg.epochs
    else:
        cap = MAX_SCRATCH_EPOCHS if scratch else MAX_PRETRAINED_EPOCHS
        epochs = _clamp(math.floor((usable - pretrain * mlm_epoch_s) / ft_epoch_s), 1, cap)
    estimate = pretrain * mlm_epoch_s + epochs * ft_epoch_s + budget * RESERVED_SHARE
    return BudgetPlan(budget, step_s, steps_per_epoch, pretrain, epochs, eval_every, estimate, dev_batches, mlm_step_s)


def robustness_passes(cfg: TrainConfig) -> int:
    """Forward + backward passes per training step: FGM, R-Drop and noise consistency each add one."""
    return 1 + (cfg.adversarial != "none") + (cfg.rdrop_alpha > 0) + (cfg.noise_consistency > 0)


def mlm_deadline(plan: BudgetPlan, started: float) -> float:
    """When the masked-LM stage must stop (time.perf_counter()): its planned epochs plus a quarter, so a machine
    slower than the probe said cannot eat the fine-tuning's share."""
    return started + plan.pretrain_epochs * plan.steps_per_epoch * plan.mlm_seconds_per_step * 1.25


def replan_fine_tuning(cfg: TrainConfig, plan: BudgetPlan, scratch: bool, seconds_left: float) -> BudgetPlan:
    """After masked-LM: the fine-tuning that fits in the time actually left (unless --epochs was given), in steps,
    so that the learning rate still decays to zero at the end of the budget: `epochs` rounded up, `max_steps` the
    steps that fit (0: no cap). Never less than one epoch."""
    if cfg.epochs is not None or cfg.max_steps:
        return plan
    epoch_s = plan.steps_per_epoch * plan.seconds_per_step
    ft_epoch_s = epoch_s * (1 + EVAL_FORWARD_SHARE * plan.dev_batches / plan.eval_every)
    cap = MAX_SCRATCH_EPOCHS if scratch else MAX_PRETRAINED_EPOCHS
    span = (seconds_left - plan.budget_seconds * RESERVED_SHARE) / ft_epoch_s if ft_epoch_s > 0 else cap
    if span >= cap or span <= 1:
        return replace(plan, epochs=_clamp(math.floor(span), 1, cap), fine_tune_steps=0)
    return replace(plan, epochs=math.ceil(span), fine_tune_steps=math.floor(span * plan.steps_per_epoch))


def apply_plan(cfg: TrainConfig, plan: BudgetPlan, scratch: bool) -> TrainConfig:
    """The run's resolved options (what training_config.json records): the plan's sizes and the recipe's choices
    for whatever was left auto."""
    return replace(with_recipe(cfg, scratch), pretrain_epochs=plan.pretrain_epochs, epochs=plan.epochs,
                   eval_every=plan.eval_every)  # fmt: skip


def with_recipe(cfg: TrainConfig, scratch: bool) -> TrainConfig:
    """The recipe's choices for what was left auto when a budget is on (no masked-LM unless sized or asked)."""
    return replace(
        cfg,
        pretrain_epochs=cfg.pretrain_epochs or 0,
        ema_decay=cfg.ema_decay if cfg.ema_decay is not None else (0.99 if scratch else 0.0),
        patience=cfg.patience if cfg.patience is not None else 8,
    )


def without_budget(cfg: TrainConfig) -> TrainConfig:
    """--time-budget 0: the plain defaults for whatever was left auto (4 epochs, no masked-LM, no averaging)."""
    return replace(
        cfg,
        pretrain_epochs=cfg.pretrain_epochs if cfg.pretrain_epochs is not None else 0,
        epochs=cfg.epochs if cfg.epochs is not None else 4,
        ema_decay=cfg.ema_decay if cfg.ema_decay is not None else 0.0,
        patience=cfg.patience if cfg.patience is not None else 3,
    )


def _clamp(value: int, low: int, high: int) -> int:
    return max(low, min(high, value))
