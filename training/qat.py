"""Quantisation-aware training: FP32 checkpoint -> INT8-ready checkpoint with learned scales.

    FP32 checkpoint -> paddle.quantization.QAT wraps the encoder's Linear layers (and only those) with
        weights:     per-output-channel symmetric INT8 fake quantisation (abs-max, straight-through gradient)
        activations: per-tensor symmetric INT8 fake quantisation, moving-average abs-max (Paddle's quanter)
    -> short fine-tune with the same loop as training (finetune.fit) -> QAT checkpoint:
        the float weights after QAT (save_pretrained), tokenizer, label map,
        quant_scales.json   {layer path: activation scale, per-channel weight scales}, scale = threshold / 127
        qat_config.json     marks the directory as a QAT checkpoint and records its FP32 source
        metrics.json        FP32 vs simulated-INT8 dev/test metrics

What stays FP32 (decided, documented in docs/quantization.md): the embeddings (stored INT8 weight-only at export,
no activation quantisation: a lookup has no GEMM to speed up), the attention score/context matmuls (QK^T, AV:
activation x activation, sensitive, no weights to shrink), LayerNorm/softmax/GELU, and the head (pooler +
classifier: 2 of 26 GEMMs, where quantisation error goes straight into the logits).

Paddle 3.3.1's `QAT.convert` is broken (docs/stack.md), so scales are read from the quanters directly.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from ernie_cls.errors import ConfigError, OutputExistsError
from training.batching import encode
from training.checkpoint import LABEL_MAP_FILE, METRICS_FILE, TRAINING_CONFIG_FILE, save_checkpoint
from training.config import QATConfig, TrainConfig, check_batch_tokens
from training.distributed import barrier, init_if_launched, rank_and_world
from training.finetune import load_splits
from training.loop import evaluate_logits, fit, predict_logits
from training.modeling import classifier_class, load_checkpoint

log = logging.getLogger(__name__)

QAT_CONFIG_FILE = "qat_config.json"
SCALES_FILE = "quant_scales.json"
INT8_MAX = 127


def quantizable_linears(model) -> dict[str, Any]:
    """The Linear layers QAT wraps: every Linear inside the encoder (attention projections and FFN)."""
    import paddle

    return {
        name: layer
        for name, layer in model.named_sublayers()
        if isinstance(layer, paddle.nn.Linear) and ".encoder." in f".{name}."
    }


def _weight_quanter_factory():
    """A per-output-channel symmetric INT8 weight quanter for Paddle's QAT (Paddle 3.3.1 ships only per-tensor)."""
    import paddle
    from paddle.quantization.base_quanter import BaseQuanter
    from paddle.quantization.factory import QuanterFactory

    class ChannelWiseAbsMaxWeightQuanterLayer(BaseQuanter):
        # Paddle's Linear weight is [in, out]: one scale per output channel = axis 1.
        def __init__(self, layer, bit_length: int = 8) -> None:
            super().__init__()
            self._bit_length = bit_length
            self._qmax = float(2 ** (bit_length - 1) - 1)
            self._last_scales = None

        def forward(self, weight):
            absmax = paddle.clip(paddle.max(paddle.abs(weight), axis=0, keepdim=True), min=1e-8)
            scale = absmax / self._qmax
            self._last_scales = scale.detach()
            quantized = paddle.clip(paddle.round(weight / scale), -self._qmax, self._qmax) * scale
            return weight + (quantized - weight).detach()  # straight-through estimator

        def scales(self):
            return self._last_scales

        def zero_points(self):
            return None if self._last_scales is None else paddle.zeros_like(self._last_scales)

        def quant_axis(self):
            return 1

        def bit_length(self):
            return self._bit_length

    class ChannelWiseAbsMaxWeightQuanter(QuanterFactory):
        def _get_class(self):
            return ChannelWiseAbsMaxWeightQuanterLayer

    return ChannelWiseAbsMaxWeightQuanter()


def quantize_model(model, moving_rate: float = 0.9):
    """Wrap the encoder Linears of `model` in place with fake quantisers; returns the same model."""
    from paddle.quantization import QAT, QuantConfig
    from paddle.quantization.quanters import FakeQuanterWithAbsMaxObserver

    model.train()  # Paddle's QAT refuses models in eval mode
    config = QuantConfig(activation=None, weight=None)
    config.add_layer_config(
        list(quantizable_linears(model).values()),
        activation=FakeQuanterWithAbsMaxObserver(moving_rate=moving_rate),
        weight=_weight_quanter_factory(),
    )
    return QAT(config).quantize(model, inplace=True)


def read_scales(qat_model) -> dict[str, dict]:
    """{layer path: {activation_scale, weight_scales, weight_axis}} in ONNX convention (scale = threshold/127)."""
    from paddle.nn.quant.qat import QuantedLinear

    scales = {}
    for name, layer in qat_model.named_sublayers():
        if isinstance(layer, QuantedLinear):
            assert layer.activation_quanter is not None
            threshold = float(layer.activation_quanter.scales().numpy().reshape(-1)[0])
            weight = layer.weight.numpy()
            w_scales = np.maximum(np.abs(weight).max(axis=0), 1e-8) / INT8_MAX
            scales[name] = {
                "activation_scale": threshold / INT8_MAX,
                "weight_scales": w_scales.astype(np.float32).tolist(),
                "weight_axis": 1,
            }
    return scales


def _load_fp32(checkpoint: Path):

    if (checkpoint / QAT_CONFIG_FILE).is_file():
        raise ConfigError(
            f"{checkpoint} is already a QAT checkpoint; `qat` starts from the FP32 checkpoint.",
            "Pass the FP32 best/ directory written by `ernie-cls train`.",
        )
    config_file = checkpoint / TRAINING_CONFIG_FILE
    if not config_file.is_file():
        raise ConfigError(
            f"{checkpoint} has no {TRAINING_CONFIG_FILE}, so QAT cannot reuse the training data and split.",
            "Pass a best/ directory written by `ernie-cls train`.",
        )
    return (*load_checkpoint(checkpoint), json.loads(config_file.read_text(encoding="utf-8")))


def run_qat(cfg: QATConfig) -> dict:
    """QAT fine-tune; returns the metrics (FP32 vs simulated INT8 on dev and test)."""
    import paddle

    ckpt = Path(cfg.checkpoint)
    out = Path(cfg.output)
    if out.exists() and any(out.iterdir()) and not cfg.overwrite:
        raise OutputExistsError(f"{out} already exists and is not empty.", "Pass --overwrite or another --output.")
    init_if_launched()
    rank, _ = rank_and_world()
    model, tokenizer, label_map, train_cfg = _load_fp32(ckpt)
    # The training loop runs with the FP32 run's settings (data, split, robustness options) and QAT's own schedule;
    # checked like a training run's, so a bad QAT option gets the same error and hint.
    inherited = {k: v for k, v in train_cfg.items() if k in TrainConfig.__dataclass_fields__}
    # Weight averaging (ema_decay) is chosen per stage, not inherited. It is consistent with the quantisers: weight
    # scales are recomputed from whichever weights are in the model (read_scales too), and the activation observers'
    # scales take no gradient, so they stay out of the average.
    own = "epochs batch_size batch_tokens eval_every patience max_steps seed progress ema_decay"
    own += " distill_alpha distill_temperature"
    overrides: dict[str, Any] = {name: getattr(cfg, name) for name in own.split()}
    overrides |= {"output": str(out), "warmup_ratio": 0.0, "teacher": None}
    if cfg.data:
        overrides |= {"data": cfg.data, "train_file": None}
    loop_cfg = TrainConfig(**(inherited | overrides))
    check_batch_tokens(cfg.batch_tokens, loop_cfg.max_seq_len, "the FP32 checkpoint's max_seq_len")
    loop_cfg.validate()
    splits, data_label_map, _ = load_splits(loop_cfg)
    if data_label_map.labels != label_map.labels:
        raise ConfigError(
            f"The data's labels {data_label_map.labels} differ from the checkpoint's {label_map.labels}.",
            "Run QAT on the data the FP32 model was trained on.",
        )
    train_data, dev_data = encode(splits.train, tokenizer, label_map), encode(splits.dev, tokenizer, label_map)
    test_data = encode(splits.test, tokenizer, label_map) if splits.test else None

    scored = {"dev": dev_data, "test": test_data} if test_data else {"dev": dev_data}
    fp32_logits = {split: predict_logits(model, tokenizer, data.ids) for split, data in scored.items()}
    fp32 = {split: evaluate_logits(fp32_logits[split], data, label_map) for split, data in scored.items()}
    if cfg.distill_alpha > 0:  # the FP32 model is the teacher: QAT learns to keep its predictions, not new ones
        train_data.teacher_logits = predict_logits(model, tokenizer, train_data.ids)
    paddle.seed(cfg.seed)
    qat_model = quantize_model(model, cfg.moving_rate)
    out.mkdir(parents=True, exist_ok=True)
    qat_record = {
        **asdict(cfg),
        "fp32_checkpoint": str(ckpt),
        "quantized_layers": sorted(quantizable_linears_names(qat_model)),
    }

    def save_best(dev_metrics: dict) -> None:
        _save_qat_checkpoint(qat_model, tokenizer, label_map, train_cfg, qat_record, dev_metrics, out / "best")

    result = fit(
        qat_model, tokenizer, label_map, train_data, dev_data, loop_cfg, cfg.learning_rate, save_best, desc="qat epoch"
    )
    barrier()  # rank 0 has written best/ before any rank reads it
    best_model = load_qat_checkpoint(out / "best")
    int8_logits = {split: predict_logits(best_model, tokenizer, data.ids) for split, data in scored.items()}
    int8 = {split: evaluate_logits(int8_logits[split], data, label_map) for split, data in scored.items()}
    metrics = {
        "fp32": {k: _summary(v) for k, v in fp32.items()},
        "int8_simulated": {k: _summary(v) for k, v in int8.items()},
        "int8_simulated_full": int8,
        # Share of texts where the simulated INT8 model predicts what the FP32 model predicts: QAT's own target.
        "agreement_with_fp32": {
            split: float((int8_logits[split].argmax(-1) == fp32_logits[split].argmax(-1)).mean()) for split in scored
        },
        "steps": result.steps,
        "train_seconds": round(result.train_seconds, 1),
        "history": result.history,
    }
    if rank == 0:  # one writer
        text = json.dumps(metrics, ensure_ascii=False, indent=2)
        (out / "best" / METRICS_FILE).write_text(text, encoding="utf-8")
        (out / METRICS_FILE).write_text(text, encoding="utf-8")
    return metrics


def quantizable_linears_names(qat_model) -> list[str]:
    from paddle.nn.quant.qat import QuantedLinear

    return [name for name, layer in qat_model.named_sublayers() if isinstance(layer, QuantedLinear)]


def _summary(m: dict) -> dict:
    return {"accuracy": m["accuracy"], "macro_f1": m["macro_f1"], "n": m["n"]}


def _save_qat_checkpoint(qat_model, tokenizer, label_map, train_cfg, qat_record, dev_metrics, target: Path) -> None:
    """Float weights after QAT (the FP32 checkpoint's class: paddlenlp ERNIE, or ERNIE with the n-gram branch) +
    scales + markers, written atomically."""
    plain = classifier_class(qat_model.config.to_dict())(qat_model.config)
    state = {k: v for k, v in qat_model.state_dict().items() if "quanter" not in k}
    missing, unexpected = plain.set_state_dict(state)
    assert not missing and not unexpected, (missing, unexpected)
    extra = {
        TRAINING_CONFIG_FILE: train_cfg,
        QAT_CONFIG_FILE: qat_record,
        SCALES_FILE: read_scales(qat_model),
        METRICS_FILE: {"dev_int8_simulated": dev_metrics},
    }
    save_checkpoint(plain, tokenizer, label_map, extra, target)


def load_qat_checkpoint(directory: str | Path):
    """A QAT checkpoint as a fake-quantised model whose quanters carry the saved scales (eval mode)."""
    import paddle

    d = Path(directory)
    if not (d / QAT_CONFIG_FILE).is_file():
        raise ConfigError(f"{d} is not a QAT checkpoint (no {QAT_CONFIG_FILE}).", "Run `ernie-cls qat` first.")
    model, _, _ = load_checkpoint(d)
    qat_model = quantize_model(model)
    scales = json.loads((d / SCALES_FILE).read_text(encoding="utf-8"))
    from paddle.nn.quant.qat import QuantedLinear

    for name, layer in qat_model.named_sublayers():
        if isinstance(layer, QuantedLinear):
            assert layer.activation_quanter is not None
            threshold = scales[name]["activation_scale"] * INT8_MAX
            layer.activation_quanter._scale.set_value(paddle.to_tensor([threshold], dtype="float32"))
    qat_model.eval()
    return qat_model


def is_qat_checkpoint(directory: str | Path) -> bool:
    return (Path(directory) / QAT_CONFIG_FILE).is_file()


__all__ = ["LABEL_MAP_FILE", "QATConfig", "is_qat_checkpoint", "load_qat_checkpoint", "run_qat"]
