"""In-domain masked-LM pretraining for scratch models: ERNIE's own first stage, on the training split's texts.

    scratch:<size> config + corpus vocabulary -> ErnieForMaskedLM (random init)
    -> `epochs` of MLM on the *training* texts only (labels unused; dev/test texts never seen)
       15 % of the non-special tokens chosen; of those 80 % -> [MASK], 10 % -> a random token, 10 % unchanged;
       with `homophone_share` h, that share of the 80 % gets a homophone of the character instead of [MASK] when it
       has one (MacBERT's "MLM as correction": the encoder learns to read 在 for 再 from context, the pinyin-IME
       error that costs the classifier most under noise)
       logits computed only at the chosen positions (masked_positions) to keep the vocabulary projection cheap
    -> encoder weights copied into the classifier before fine-tuning

Without pretrained weights (no hub access), a randomly initialised encoder must learn Chinese character
statistics from the labels alone; a few minutes of MLM on the same texts gives the classifier a better start
(measured in docs/benchmarks.md).
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass

import numpy as np

from ernie_cls.tokenization import ErnieTokenizerFast
from training.batching import batches_per_epoch, training_batches
from training.budget import probe_batches, time_probe
from training.loop import warmup_then_linear_decay

log = logging.getLogger(__name__)


@dataclass
class PretrainConfig:
    epochs: int = 3
    batch_size: int = 32
    batch_tokens: int = 0  # > 0: batches of at most this many padded tokens instead of batch_size texts
    learning_rate: float = 5e-4
    mask_prob: float = 0.15
    homophone_share: float = 0.0
    warmup_ratio: float = 0.05
    seed: int = 42
    progress: bool = True
    stop_at: float | None = None  # time.perf_counter() past which no more steps start (the time budget's share)


def mask_batch(
    ids: list[list[int]],
    tokenizer: ErnieTokenizerFast,
    rng: np.random.Generator,
    mask_prob: float,
    homophones: dict[int, list[int]] | None = None,
    homophone_share: float = 0.0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """-> (input_ids, token_type_ids, flat masked positions, their original ids). At least one masked per text.

    `homophones` (token id -> ids of its homophones) with `homophone_share` > 0: that share of the tokens that
    would become [MASK] become one of their homophones instead, when they have any."""
    input_ids, token_type_ids = tokenizer.pad(ids)
    width = input_ids.shape[1]
    special = {tokenizer.pad_id, tokenizer.cls_id, tokenizer.sep_id}
    mask_id = tokenizer.vocab["[MASK]"]
    positions, labels = [], []
    for row, seq in enumerate(ids):
        candidates = [j for j, t in enumerate(seq) if t not in special]
        if not candidates:
            continue
        n = max(1, round(len(candidates) * mask_prob))
        for j in rng.choice(candidates, size=n, replace=False):
            original = int(input_ids[row, j])
            labels.append(original)
            positions.append(row * width + j)
            roll = rng.random()
            if roll < 0.8 * homophone_share and homophones and original in homophones:
                options = homophones[original]
                input_ids[row, j] = options[rng.integers(len(options))]
            elif roll < 0.8:
                input_ids[row, j] = mask_id
            elif roll < 0.9:
                input_ids[row, j] = rng.integers(len(special) + 2, tokenizer.vocab_size)
    return input_ids, token_type_ids, np.array(positions, dtype=np.int64), np.array(labels, dtype=np.int64)


def _mlm_loss(
    model,
    batch: list[list[int]],
    tokenizer: ErnieTokenizerFast,
    rng: np.random.Generator,
    mask_prob: float,
    homophones: dict[int, list[int]] | None = None,
    homophone_share: float = 0.0,
):
    """One masked-LM forward pass (pretraining's step and the budget's probe): (padded tokens, loss; None when
    nothing could be masked)."""
    import paddle

    input_ids, token_type_ids, positions, labels = mask_batch(
        batch, tokenizer, rng, mask_prob, homophones, homophone_share
    )
    if len(positions) == 0:
        return input_ids.size, None
    out = model(
        paddle.to_tensor(input_ids),
        token_type_ids=paddle.to_tensor(token_type_ids),
        masked_positions=paddle.to_tensor(positions),
        labels=paddle.to_tensor(labels),
        return_dict=True,
    )
    return input_ids.size, out.loss


def probe_seconds_per_step(
    config, tokenizer: ErnieTokenizerFast, ids: list[list[int]], batch_size: int, max_tokens: int = 0
) -> float:
    """An average masked-LM step's seconds (masking, forward, backward), timed like training/budget.py's probe on
    a throwaway model (pretrain_mlm re-seeds, so the probe changes nothing it does): a masked-LM step cost 1.0x to
    1.9x a classification step in the runs measured, too uncertain to derive from the classifier's probe."""
    from paddlenlp.transformers import ErnieForMaskedLM

    model = ErnieForMaskedLM(config)
    rng = np.random.default_rng(0)

    def loss_of(batch: list[int]):
        tokens, loss = _mlm_loss(model, [ids[i] for i in batch], tokenizer, rng, 0.15)
        return loss, tokens

    return time_probe(probe_batches(ids, batch_size, max_tokens), model, loss_of)


def pretrain_mlm(
    config,
    tokenizer: ErnieTokenizerFast,
    ids: list[list[int]],
    cfg: PretrainConfig,
    homophones: dict[int, list[int]] | None = None,
) -> dict:
    """MLM-pretrain a fresh ERNIE of `config` on pre-tokenised texts; returns the encoder's state dict."""
    import paddle
    from paddlenlp.transformers import ErnieForMaskedLM
    from tqdm import tqdm

    paddle.seed(cfg.seed)
    model = ErnieForMaskedLM(config)
    model.train()
    lengths = [len(x) for x in ids]
    steps_per_epoch = batches_per_epoch(lengths, cfg.batch_size, cfg.batch_tokens)
    total = steps_per_epoch * cfg.epochs
    schedule = warmup_then_linear_decay(cfg.learning_rate, total, int(cfg.warmup_ratio * total))
    optimizer = paddle.optimizer.AdamW(
        learning_rate=schedule,
        parameters=model.parameters(),
        weight_decay=0.01,
        grad_clip=paddle.nn.ClipGradByGlobalNorm(1.0),
    )
    rng = np.random.default_rng(cfg.seed)
    order_rng = random.Random(cfg.seed)
    t0, seen, loss_value = time.perf_counter(), 0, float("nan")
    for epoch in range(cfg.epochs):
        bar = tqdm(
            training_batches(lengths, cfg.batch_size, cfg.batch_tokens, order_rng),
            desc=f"mlm {epoch + 1}/{cfg.epochs}",
            disable=not cfg.progress,
            mininterval=1.0,
            dynamic_ncols=True,
        )
        for batch in bar:
            if cfg.stop_at is not None and time.perf_counter() > cfg.stop_at:
                break
            _, loss = _mlm_loss(
                model, [ids[i] for i in batch], tokenizer, rng, cfg.mask_prob, homophones, cfg.homophone_share
            )
            if loss is None:
                continue
            loss.backward()
            optimizer.step()
            optimizer.clear_grad()
            schedule.step()
            loss_value = float(loss)
            seen += len(batch)
            bar.set_postfix(
                loss=f"{loss_value:.3f}", samples_s=f"{seen / (time.perf_counter() - t0):.1f}", refresh=False
            )
        bar.close()
        log.info("mlm epoch %d: loss %.3f", epoch + 1, loss_value)
        if cfg.stop_at is not None and time.perf_counter() > cfg.stop_at:
            log.warning("masked-LM stopped in epoch %d: its share of the time budget is spent", epoch + 1)
            break
    seconds = time.perf_counter() - t0
    state = {k: v for k, v in model.state_dict().items() if k.startswith("ernie.")}
    return {"state": state, "seconds": round(seconds, 1), "final_loss": loss_value, "samples": seen}
