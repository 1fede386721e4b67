"""Exponential moving average of a model's trainable weights (Polyak averaging), for evaluation and saving.

    after each optimiser step:  shadow = d_t * shadow + (1 - d_t) * weights,   d_t = min(decay, (1 + t) / (10 + t))
    at evaluation:              swapped_in() puts the shadow into the model, and the training weights back after

The warm-up of d_t (as in TensorFlow's ExponentialMovingAverage with num_updates) keeps the random initial weights
from lingering in the average of a short fine-tune.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


class WeightAverage:
    def __init__(self, model, decay: float) -> None:
        if not 0 < decay < 1:
            raise ValueError("decay must be in (0, 1)")
        self.decay = decay
        self.updates = 0
        self.params = [p for p in model.parameters() if not p.stop_gradient]
        self.shadow = [p.detach().clone() for p in self.params]

    def update(self) -> None:
        import paddle

        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        with paddle.no_grad():
            for shadow, p in zip(self.shadow, self.params, strict=True):
                shadow.set_value(shadow * d + p.detach() * (1 - d))

    @contextmanager
    def swapped_in(self) -> Iterator[None]:
        backup = [p.detach().clone() for p in self.params]
        for p, shadow in zip(self.params, self.shadow, strict=True):
            p.set_value(shadow)
        try:
            yield
        finally:
            for p, saved in zip(self.params, backup, strict=True):
                p.set_value(saved)
