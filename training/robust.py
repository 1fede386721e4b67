"""Robustness and distillation terms of the training loss, kept out of the loop itself (training.finetune.fit).

    batch_ids(batch)      token ids of the batch; with noise_augment, some texts re-encoded from a noisy copy
    loss(logits, ...)     label loss: cross-entropy (label smoothing; with --class-weights balanced, each example
                          weighted by n / (K x its class's count), so small classes count as much as large ones)
                          distillation mixes it: (1 - a) x label loss + a x T^2 x KL(teacher soft labels || student)
                          + R-Drop: a second dropout pass, alpha x symmetric KL between the two
                          + noise consistency: R-Drop whose second pass sees a noisy copy of every text, so the
                            model is taught to answer the same with and without typos (stability training)
                          (the consistency terms are added after the mix: a = 1 does not switch them off)
    adversarial_step()    FGM: after backward, move the word embeddings by epsilon along their gradient's direction,
                          add the label loss there x (1 - a) (its gradient accumulates), restore the embeddings
    text_weight(n)        with --batch-tokens, a batch of n texts weighs n / the epoch's average texts per batch, so
                          every text counts the same however many share its batch (1 with --batch-size batches);
                          noisy copies are cut to the clean batch's width, so the token budget holds

Everything is off by default; with all options off the loss is plain cross-entropy and no extra pass runs.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np

from ernie_cls.calibration import softmax
from ernie_cls.errors import ConfigError
from ernie_cls.tokenization import ErnieTokenizerFast
from training.noise import HomophoneTable, noisy


class RobustTraining:
    def __init__(
        self,
        cfg: Any,
        model: Any,
        tokenizer: ErnieTokenizerFast,
        data: Any,
        rng: random.Random,
        use_amp: bool,
        texts_per_batch: float = 0.0,
    ) -> None:
        self.cfg = cfg
        self.texts_per_batch = texts_per_batch  # > 0 (--batch-tokens): the epoch's average, for text_weight
        self.model = model
        self.tokenizer = tokenizer
        self.data = data
        self.rng = rng
        self.homophones = None
        if cfg.noise_augment > 0 or cfg.noise_consistency > 0:
            if not data.texts:
                raise ValueError("noise augmentation needs the training texts")
            self.homophones = HomophoneTable.from_texts(data.texts)
        if use_amp and cfg.adversarial != "none":  # the loop's own AMP decision (cfg.amp None means "GPU: on")
            raise ConfigError("--adversarial fgm does not combine with --amp yet.", "Drop one of them.")
        self.class_weights = balanced_weights(data.labels) if cfg.class_weights == "balanced" else None

    # ------------------------------------------------------------------------------------------- inputs
    def batch_ids(self, batch: list[int]) -> list[list[int]]:
        ids = [self.data.ids[i] for i in batch]
        if self.cfg.noise_augment <= 0:
            return ids

        width = self._width(batch)
        for row, i in enumerate(batch):
            if self.rng.random() < self.cfg.noise_augment:
                text = noisy(self.data.texts[i], "mixed", self.cfg.noise_rate, self.rng, self.homophones)
                ids[row] = _cut(self.tokenizer.encode_ids([text])[0], width)
        return ids

    def noisy_copy(self, batch: list[int]) -> list[list[int]]:
        """Token ids of a "mixed"-noise copy of every text in the batch (the consistency pass's input)."""

        texts = [noisy(self.data.texts[i], "mixed", self.cfg.noise_rate, self.rng, self.homophones) for i in batch]
        width = self._width(batch)
        return [_cut(ids, width) for ids in self.tokenizer.encode_ids(texts)]

    def _width(self, batch: list[int]) -> int | None:
        """With --batch-tokens, the clean batch's width (the budget was packed for it), else None (no cut)."""
        if not self.cfg.batch_tokens:
            return None
        return max(len(self.data.ids[i]) for i in batch)

    def text_weight(self, texts: int) -> float:
        return texts / self.texts_per_batch if self.texts_per_batch > 0 else 1.0

    # ------------------------------------------------------------------------------------------- loss
    def loss(self, train_model, logits, labels, batch: list[int], ids, types):
        import paddle
        import paddle.nn.functional as F  # noqa: N812

        cfg = self.cfg
        task = self.cross_entropy(logits, labels)
        consistency = 0.0
        alpha = cfg.rdrop_alpha or cfg.noise_consistency
        if alpha > 0:
            if cfg.noise_consistency > 0:
                noisy_ids, noisy_types = self.tokenizer.pad(self.noisy_copy(batch))
                ids, types = paddle.to_tensor(noisy_ids), paddle.to_tensor(noisy_types)
            logits2 = train_model(ids, token_type_ids=types)
            task = (task + self.cross_entropy(logits2, labels)) / 2
            lp1, lp2 = F.log_softmax(logits, -1), F.log_softmax(logits2, -1)
            kl = F.kl_div(lp1, lp2.exp(), reduction="sum") + F.kl_div(lp2, lp1.exp(), reduction="sum")
            consistency = alpha * kl / (2 * logits.shape[0])  # per example ("batchmean")
        if self.data.teacher_logits is not None:
            t = cfg.distill_temperature
            soft = paddle.to_tensor(softmax(self.data.teacher_logits[batch], t).astype(np.float32))
            distill = F.kl_div(F.log_softmax(logits / t, -1), soft, reduction="sum") * t * t / logits.shape[0]
            task = (1 - cfg.distill_alpha) * task + cfg.distill_alpha * distill
        return task + consistency

    def label_weight(self) -> float:
        """How much the label loss counts: 1 - distill_alpha with a teacher, else 1."""
        return 1.0 - self.cfg.distill_alpha if self.data.teacher_logits is not None else 1.0

    def cross_entropy(self, logits, labels):
        """Cross-entropy with label smoothing, each example weighted by its class's weight when there are weights."""
        import paddle
        import paddle.nn.functional as F  # noqa: N812

        if self.class_weights is None:
            return F.cross_entropy(logits, labels, label_smoothing=self.cfg.label_smoothing)
        per_example = F.cross_entropy(logits, labels, label_smoothing=self.cfg.label_smoothing, reduction="none")
        weights = paddle.gather(paddle.to_tensor(self.class_weights), labels.flatten())
        return (per_example.flatten() * weights).sum() / weights.sum()

    def adversarial_step(self, train_model, labels, ids, types) -> None:
        if self.cfg.adversarial != "fgm" or self.label_weight() == 0:
            return
        import paddle

        weight = self.model.ernie.embeddings.word_embeddings.weight
        grad = weight.grad
        if grad is None:
            return
        norm = float(paddle.linalg.norm(grad))
        if norm == 0 or not np.isfinite(norm):
            return
        backup = weight.detach().clone()
        with paddle.no_grad():
            weight.set_value(weight + self.cfg.adv_epsilon * grad / norm)
        adv_logits = train_model(ids, token_type_ids=types)
        share = self.label_weight() * self.text_weight(int(labels.shape[0]))
        (self.cross_entropy(adv_logits, labels) * share).backward()
        with paddle.no_grad():
            weight.set_value(backup)


def _cut(ids: list[int], width: int | None) -> list[int]:
    """[CLS] ... [SEP] cut to `width` tokens, keeping the [SEP] (a noisy copy can be longer than its text)."""
    if width is None or len(ids) <= width:
        return ids
    return [*ids[: width - 1], ids[-1]]


def balanced_weights(labels: np.ndarray) -> np.ndarray:
    """n / (K x count) per class (scikit-learn's "balanced"): every class weighs as much in total."""
    counts = np.bincount(labels, minlength=int(labels.max()) + 1).astype(np.float64)
    weights = len(labels) / (len(counts) * np.maximum(counts, 1))
    return weights.astype(np.float32)
