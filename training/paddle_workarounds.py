"""Workarounds for Paddle 3.3.1 quantisation bugs, in one place. Each has a canary test in
tests/test_paddle_workarounds.py that fails once upstream fixes the bug, so the workaround can be dropped.

1. `paddle.jit.save` of a model holding Paddle's `FakeQuanterWithAbsMaxObserverLayer` fails
   ("Tensor not initialized yet when DenseTensor::place() is called", from `assign_out_` in its PIR forward,
   which writes the moving-average state in place). `QAT.convert`, the intended export route, is itself broken
   (docs/stack.md). We replace each trained activation quanter by `FrozenFakeQuant`, plain ops with the learned
   scale, which saves fine and computes the same quantise-dequantise.
"""

from __future__ import annotations


def frozen_fake_quant(scale: float, bits: int = 8):
    """A Layer computing clip(round(x / scale), -qmax, qmax) * scale with a fixed, learned scale."""
    import paddle

    class FrozenFakeQuant(paddle.nn.Layer):
        def __init__(self) -> None:
            super().__init__()
            self.qmax = float(2 ** (bits - 1) - 1)
            self.register_buffer("scale", paddle.to_tensor([scale], dtype="float32"))

        def forward(self, x):
            return paddle.clip(paddle.round(x / self.scale), -self.qmax, self.qmax) * self.scale

    return FrozenFakeQuant()


def freeze_activation_quanters(qat_model) -> int:
    """Swap every QuantedLinear's activation quanter for a FrozenFakeQuant with its scale; returns how many."""
    from paddle.nn.quant.qat import QuantedLinear

    count = 0
    for layer in qat_model.sublayers():
        if isinstance(layer, QuantedLinear) and layer.activation_quanter is not None:
            threshold = float(layer.activation_quanter.scales().numpy().reshape(-1)[0])
            qmax = 2 ** (layer.activation_quanter.bit_length() - 1) - 1
            layer.activation_quanter = frozen_fake_quant(threshold / qmax)
            count += 1
    return count
