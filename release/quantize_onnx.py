"""INT8 ONNX from the QAT scales, written by ONNX Runtime's quantiser (no fresh calibration decides a scale).

    FP32 ONNX of the QAT-trained weights
      -> onnxruntime.quantization.quantize_static(QDQ, INT8 activations and weights, symmetric, zero point 0)
         restricted to the MatMuls of the QAT-wrapped Linears, every scale pinned by TensorQuantOverrides:
           activation (MatMul input 0): the QAT moving-average scale, per tensor
           weight     (MatMul input 1): the QAT per-output-channel scale, axis 1
      -> embedding tables (Gather data) stored INT8 weight-only, per-row scale, via DequantizeLinear
    = model.int8.onnx: explicit quantisation (Q/DQ pairs) in the form TensorRT builds INT8 engines from.
    The same scales written in QOperator form with uint8 activations (zero point 128) = model.int8-cpu.onnx, the
    flavour ONNX Runtime runs fast on x86 CPUs without VNNI (docs/benchmarks.md).

quantize_static still runs a calibration pass (its API requires one); with every quantised tensor overridden,
the calibrated ranges are not used. The one hand-written graph edit is the embedding weight-only step, because
ORT's Gather quantisation also quantises the Gather output (an activation), which is not what we want.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)


class _Batches:
    """CalibrationDataReader over a few pre-tokenised batches."""

    def __init__(self, feeds: list[dict[str, np.ndarray]]) -> None:
        self._iter: Iterator[dict[str, np.ndarray]] = iter(feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._iter, None)


def _name_nodes(model) -> None:
    for i, node in enumerate(model.graph.node):
        if not node.name:
            node.name = f"{node.op_type}_{i}"


def linear_matmuls(model, weight_names: set[str]) -> dict[str, tuple[str, str]]:
    """{node name: (activation tensor, weight initializer)} for MatMuls whose weight is one of `weight_names`."""
    inits = {i.name for i in model.graph.initializer}
    return {
        node.name: (node.input[0], node.input[1])
        for node in model.graph.node
        if node.op_type == "MatMul" and node.input[1] in weight_names and node.input[1] in inits
    }


def _f32(value: float) -> np.ndarray:
    return np.array([value], dtype=np.float32)  # ORT wants arrays here, not numpy scalars


def _zero() -> np.ndarray:
    return np.zeros(1, dtype=np.int8)


def build_overrides(
    matmuls: dict[str, tuple[str, str]], scales_by_weight: dict[str, dict], activation_zero_point: np.ndarray
) -> dict[str, list[dict]]:
    """TensorQuantOverrides pinning every activation and weight scale of the quantised MatMuls to the QAT ones."""
    overrides: dict[str, list[dict]] = {}
    for activation, weight in matmuls.values():
        s = scales_by_weight[weight]
        # q/k/v projections read the same tensor; their QAT quanters observed the same values, take the largest.
        prev = float(overrides.get(activation, [{"scale": np.zeros(1)}])[0]["scale"][0])
        overrides[activation] = [{"scale": _f32(max(prev, s["activation_scale"])), "zero_point": activation_zero_point}]
        # per-channel entries: one scalar each (ORT stacks them into the [channels] scale vector)
        channel = [{"scale": np.float32(v), "zero_point": np.array(0, dtype=np.int8)} for v in s["weight_scales"]]
        channel[0]["axis"] = s["weight_axis"]
        overrides[weight] = channel
    return overrides


def quantize_embeddings_weight_only(model) -> list[str]:
    """Store every Gather table (initializer, rank 2) as INT8 with per-row symmetric scales + DequantizeLinear."""
    from onnx import helper, numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    done = []
    new_nodes = []
    for node in model.graph.node:
        if node.op_type != "Gather" or node.input[0] not in inits:
            continue
        table = numpy_helper.to_array(inits[node.input[0]])
        if table.ndim != 2 or table.dtype != np.float32:
            continue
        name = node.input[0]
        scale = np.maximum(np.abs(table).max(axis=1), 1e-8) / 127.0
        q = np.clip(np.round(table / scale[:, None]), -127, 127).astype(np.int8)
        model.graph.initializer.remove(inits[name])
        model.graph.initializer.extend(
            [
                numpy_helper.from_array(q, f"{name}_int8"),
                numpy_helper.from_array(scale.astype(np.float32), f"{name}_scale"),
                numpy_helper.from_array(np.zeros(len(scale), dtype=np.int8), f"{name}_zero_point"),
            ]
        )
        new_nodes.append(
            helper.make_node(
                "DequantizeLinear",
                [f"{name}_int8", f"{name}_scale", f"{name}_zero_point"],
                [name],
                name=f"{name}_DequantizeLinear",
                axis=0,
            )
        )
        done.append(name)
    for n in reversed(new_nodes):  # DequantizeLinear first, so the graph stays topologically sorted
        model.graph.node.insert(0, n)
    return done


def write_int8_qdq(
    fp32_path: Path, out_path: Path, scales_by_weight: dict[str, dict], calibration: list[dict[str, np.ndarray]]
) -> dict:
    """The TensorRT form: QDQ, int8 activations and weights, symmetric, zero point 0. Returns what was quantised."""
    return _write_int8(fp32_path, out_path, scales_by_weight, calibration, tensorrt_form=True)


def write_int8_cpu(
    fp32_path: Path, out_path: Path, scales_by_weight: dict[str, dict], calibration: list[dict[str, np.ndarray]]
) -> dict:
    """The CPU-tuned INT8 flavour from the same QAT scales: QOperator, uint8 activations, int8 weights.

    On x86 without VNNI, ONNX Runtime's u8s8 integer GEMM kernels are the fast path; its kernels for the QDQ form
    with int8 activations (the TensorRT form) are not. uint8 with zero point 128 and the QAT scale s is the same
    quantisation grid as symmetric int8 with scale s, shifted: the learned ranges carry over unchanged.
    """
    return _write_int8(fp32_path, out_path, scales_by_weight, calibration, tensorrt_form=False)


def _write_int8(
    fp32_path: Path,
    out_path: Path,
    scales_by_weight: dict[str, dict],
    calibration: list[dict[str, np.ndarray]],
    tensorrt_form: bool,
) -> dict:
    import onnx
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    model = onnx.load(str(fp32_path))
    _name_nodes(model)
    matmuls = linear_matmuls(model, set(scales_by_weight))
    missing = set(scales_by_weight) - {w for _, w in matmuls.values()}
    if missing:
        raise ValueError(f"QAT layers without a MatMul in the ONNX graph: {sorted(missing)}")
    if tensorrt_form:
        fmt, act_type, zero = QuantFormat.QDQ, QuantType.QInt8, _zero()
    else:
        fmt, act_type, zero = QuantFormat.QOperator, QuantType.QUInt8, np.array([128], dtype=np.uint8)
    extra = {"WeightSymmetric": True, "TensorQuantOverrides": build_overrides(matmuls, scales_by_weight, zero)}
    if tensorrt_form:
        extra["ActivationSymmetric"] = True
    named = out_path.with_suffix(".named.onnx")
    onnx.save(model, str(named))
    try:
        quantize_static(
            str(named),
            str(out_path),
            calibration_data_reader=_Batches(calibration),
            quant_format=fmt,
            activation_type=act_type,
            weight_type=QuantType.QInt8,
            per_channel=True,
            op_types_to_quantize=["MatMul"],
            nodes_to_quantize=list(matmuls),
            extra_options=extra,
        )
    finally:
        named.unlink(missing_ok=True)
    quantized = onnx.load(str(out_path))
    embeddings = quantize_embeddings_weight_only(quantized)
    onnx.checker.check_model(quantized)
    onnx.save(quantized, str(out_path))
    return {"matmuls": len(matmuls), "embedding_tables_int8": embeddings}
