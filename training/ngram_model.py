"""ERNIE with the n-gram branch in its graph (training/ngrams.py fits it): one model, one ONNX file, the same
inputs; its output is w x log_softmax(transformer) + (1 - w) x log_softmax(n-gram), so softmax of it is the
normalised geometric mean of the two distributions. The branch's table and bias are frozen (never trained).

The config carries the branch (saved in config.json by save_pretrained): ngram_weight, ngram_buckets,
ngram_special_ids ([PAD], [CLS], [SEP]) and ngram_multipliers (the hash's, so a checkpoint keeps hashing as it was
fitted); modeling.classifier_class picks this class when they are there.
"""

from __future__ import annotations

import numpy as np
import paddle
import paddle.nn.functional as functional
from paddlenlp.transformers import ErnieForSequenceClassification

from ernie_cls.errors import ModelLoadError
from training.ngrams import BRANCH_CONFIG_KEYS, FITTED_ON_KEY, NGRAM_CONFIG_KEYS, NgramHead


class ErnieWithNgrams(ErnieForSequenceClassification):
    def __init__(self, config):
        missing = [k for k in NGRAM_CONFIG_KEYS if getattr(config, k, None) is None]
        if missing:
            raise ModelLoadError(
                f"The model config describes an n-gram branch without {missing}.",
                "Use a checkpoint written by this version of `ernie-cls train`, or retrain it.",
            )
        super().__init__(config)
        rows = config.vocab_size + 2 * config.ngram_buckets
        zero = paddle.nn.initializer.Constant(0.0)
        self.ngram_table = self.create_parameter([rows, config.num_labels], default_initializer=zero)
        self.ngram_bias = self.create_parameter([config.num_labels], is_bias=True, default_initializer=zero)
        self.ngram_table.stop_gradient = True
        self.ngram_bias.stop_gradient = True

    def forward(self, input_ids, token_type_ids=None, **kwargs):
        if any(kwargs.get(k) for k in ("labels", "return_dict", "output_hidden_states", "output_attentions")):
            raise ValueError("ErnieWithNgrams returns logits only; compute the loss outside (training/robust.py).")
        logits = super().forward(input_ids, token_type_ids=token_type_ids, **kwargs)
        w = float(self.config.ngram_weight)
        ngram = self.ngram_logits(input_ids)
        return w * functional.log_softmax(logits, -1) + (1 - w) * functional.log_softmax(ngram, -1)

    def ngram_logits(self, input_ids):
        """training/ngrams.py's ngram_positions in graph ops (int32 Mul/Add/Mod, Gather, ReduceSum)."""
        vocab, buckets = int(self.config.vocab_size), int(self.config.ngram_buckets)
        specials = [int(s) for s in self.config.ngram_special_ids]
        bigram_multiplier, trigram_multiplier = (int(m) for m in self.config.ngram_multipliers)
        tail = paddle.full_like(input_ids[:, :1], specials[0])
        tail = paddle.concat([tail, tail], axis=1)  # two [PAD]s, whatever the width: trigram slices are never empty
        ids = paddle.concat([input_ids, tail], axis=1).astype("int32")
        valid = paddle.ones_like(ids, dtype="float32")
        for special in specials:
            valid = valid * (ids != special).astype("float32")
        a, b, c = ids[:, :-2], ids[:, 1:-1], ids[:, 2:]
        va, vb, vc = valid[:, :-2], valid[:, 1:-1], valid[:, 2:]
        bigram = _remainder(_int(a, "*", bigram_multiplier) + b, buckets)
        trigram = _remainder(_int(bigram, "*", trigram_multiplier) + c, buckets)
        rows = paddle.concat([a, _int(bigram, "+", vocab), _int(trigram, "+", vocab + buckets)], axis=1)
        mask = paddle.concat([va, va * vb, va * vb * vc], axis=1)
        weights = mask / paddle.sqrt(paddle.clip(mask.sum(1, keepdim=True), min=1.0))
        return (functional.embedding(rows, self.ngram_table) * weights.unsqueeze(-1)).sum(1) + self.ngram_bias


def _int(x, op: str, value: int):
    """x * value or x + value as int32 tensor ops. Not `x * value`: with a Python number Paddle records a `scale`
    op, which paddle2onnx computes in float32 (inexact above 2**24)."""
    other = paddle.full_like(x, value)
    return paddle.multiply(x, other) if op == "*" else paddle.add(x, other)


def _remainder(x, divisor: int):
    """x mod divisor on int32 -> ONNX Mod (TensorRT >= 8.5 takes it on INT32). Not `x // divisor`: paddle2onnx
    computes an integer floor_divide in float32, inexact above 2**24."""
    return paddle.remainder(x, paddle.full_like(x, divisor))


def with_ngrams(model, head: NgramHead, weight: float) -> ErnieWithNgrams:
    """A copy of the fine-tuned `model` with the fitted branch at the transformer share `weight`."""
    import copy

    config = copy.deepcopy(model.config)
    config.ngram_weight = float(weight)
    config.ngram_buckets = int(head.buckets)
    config.ngram_special_ids = [int(s) for s in head.special_ids]
    config.ngram_multipliers = list(head.multipliers)
    setattr(config, FITTED_ON_KEY, head.fitted_on)
    if head.vocab != config.vocab_size:
        raise ValueError(f"the branch was fitted on a vocabulary of {head.vocab}, the model has {config.vocab_size}")
    blended = ErnieWithNgrams(config)
    state = {**model.state_dict(), "ngram_table": head.table.astype(np.float32), "ngram_bias": head.bias}
    missing, unexpected = blended.set_state_dict(state)
    assert not missing and not unexpected, (missing, unexpected)
    blended.eval()
    return blended


def without_ngrams(model: ErnieWithNgrams) -> ErnieForSequenceClassification:
    """The inverse of `with_ngrams`: the same transformer weights, without the branch."""
    import copy

    config = copy.deepcopy(model.config)
    for key in BRANCH_CONFIG_KEYS:
        if hasattr(config, key):
            delattr(config, key)
    plain = ErnieForSequenceClassification(config)
    plain.set_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("ngram_")})
    plain.eval()
    return plain


def head_of(model: ErnieWithNgrams) -> NgramHead:
    """The branch a model carries, as the numpy head (for checks that compute it outside the graph)."""
    config = model.config
    head = NgramHead(
        model.ngram_table.numpy(),
        model.ngram_bias.numpy(),
        int(config.vocab_size),
        int(config.ngram_buckets),
        tuple(int(s) for s in config.ngram_special_ids),
        0.0,
        str(getattr(config, FITTED_ON_KEY, None) or "train"),  # before the refit existed, every branch saw train only
    )
    if list(head.multipliers) != [int(m) for m in config.ngram_multipliers]:
        raise ModelLoadError(
            f"The checkpoint hashes n-grams with multipliers {config.ngram_multipliers}, this version with "
            f"{list(head.multipliers)}.",
            "Export it with the ernie-cls version that trained it, or retrain it.",
        )
    return head
