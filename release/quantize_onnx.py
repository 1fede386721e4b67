"""INT8 ONNX in the explicit Q/DQ form TensorRT builds INT8 engines from, every scale taken from QAT.

    FP32 ONNX of the QAT-trained float weights + the QAT scales (per encoder Linear: activation scale, per-output-
    channel weight scales; quant_scales.json of the QAT checkpoint)
      -> for each encoder Linear's MatMul (24 in scratch:nano):
           input:  its own QuantizeLinear -> DequantizeLinear pair, int8, zero point 0, that layer's QAT activation
                   scale (per tensor). Nothing else reads the pair, so the residual path stays float, as in QAT.
           weight: an int8 initializer, round(w / s) clipped to +-127 with s the QAT per-output-channel scale
                   -> DequantizeLinear (axis 1: Paddle's Linear weight is [in, out]) -> the MatMul
           output: float; no QuantizeLinear (TensorRT and ONNX Runtime pick the output precision themselves)
      -> an integer CumSum (the position ids) is computed in float: TensorRT's CumSum takes FP32/FP16/BF16 only
      -> embeddings, attention QK^T/AV, LayerNorm, softmax, GELU and the head stay float
    = onnx/model.int8.onnx, for TensorRT and for ONNX Runtime on CPU alike: ONNX Runtime's QDQ transformer turns every
      DQ -> MatMul <- DQ group into an integer GEMM (MatMulIntegerToFloat), checked at export.

Written here rather than by onnxruntime.quantization.quantize_static: the quantiser also quantises MatMul outputs
(with calibrated scales) and shares one Q/DQ pair among all readers of a tensor, residual Add included; with
`OpTypesToExcludeOutputQuantization` and `DedicatedQDQPair` set, ONNX Runtime still ran 16 of its 24 MatMuls in
float. The insertion is a few fixed rules; release/qdq_rules.py checks every one of them on the written file.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

INT8_MAX = 127
WEIGHT_AXIS = 1  # Paddle's (and paddle2onnx's) Linear weight is [in, out]: output channels on axis 1


def linear_matmuls(model, weight_names: set[str]) -> dict[str, tuple[str, str]]:
    """{node name: (activation tensor, weight initializer)} for MatMuls whose weight is one of `weight_names`."""
    inits = {i.name for i in model.graph.initializer}
    return {
        node.name: (node.input[0], node.input[1])
        for node in model.graph.node
        if node.op_type == "MatMul" and node.input[1] in weight_names and node.input[1] in inits
    }


def quantize_weight(weight: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """Symmetric int8 per output channel, as QAT's weight quanter rounds: round(w / s) clipped to +-127."""
    return np.clip(np.round(weight / scales[None, :]), -INT8_MAX, INT8_MAX).astype(np.int8)


def _quantize_matmul(model, node, weight: str, scales: dict, inits: dict) -> list:
    """Q/DQ on the MatMul's input and a DQ'd int8 weight; returns the new nodes (to go right before the MatMul)."""
    from onnx import helper, numpy_helper

    channel_scales = np.asarray(scales["weight_scales"], dtype=np.float32)
    if scales.get("weight_axis", WEIGHT_AXIS) != WEIGHT_AXIS:
        raise ValueError(f"{weight}: QAT weight scales on axis {scales['weight_axis']}, expected {WEIGHT_AXIS}")
    float_weight = numpy_helper.to_array(inits[weight])
    model.graph.initializer.remove(inits[weight])
    pair = f"{node.name}_input"
    model.graph.initializer.extend(
        [
            # the int8 weight keeps the float weight's name, so quant_scales.json (keyed by it) names it too
            numpy_helper.from_array(quantize_weight(float_weight, channel_scales), weight),
            numpy_helper.from_array(channel_scales, f"{weight}_scale"),
            numpy_helper.from_array(np.zeros(len(channel_scales), dtype=np.int8), f"{weight}_zero_point"),
            numpy_helper.from_array(np.array(scales["activation_scale"], dtype=np.float32), f"{pair}_scale"),
            numpy_helper.from_array(np.array(0, dtype=np.int8), f"{pair}_zero_point"),
        ]
    )
    activation = node.input[0]
    node.input[0], node.input[1] = f"{pair}_dequantized", f"{weight}_dequantized"
    return [
        helper.make_node(
            "QuantizeLinear", [activation, f"{pair}_scale", f"{pair}_zero_point"], [f"{pair}_quantized"],
            name=f"{pair}_QuantizeLinear",
        ),
        helper.make_node(
            "DequantizeLinear", [f"{pair}_quantized", f"{pair}_scale", f"{pair}_zero_point"], [node.input[0]],
            name=f"{pair}_DequantizeLinear",
        ),
        helper.make_node(
            "DequantizeLinear", [weight, f"{weight}_scale", f"{weight}_zero_point"], [node.input[1]],
            name=f"{weight}_DequantizeLinear", axis=WEIGHT_AXIS,
        ),
    ]  # fmt: skip


def insert_qdq(model, scales_by_weight: dict[str, dict]) -> dict[str, str]:
    """Quantise every MatMul whose weight has QAT scales; returns {weight: its MatMul}. Keeps the graph sorted."""
    for i, node in enumerate(model.graph.node):
        node.name = node.name or f"{node.op_type}_{i}"
    matmuls = linear_matmuls(model, set(scales_by_weight))
    missing = set(scales_by_weight) - {w for _, w in matmuls.values()}
    if missing:
        raise ValueError(f"QAT layers without a MatMul in the ONNX graph: {sorted(missing)}")
    inits = {i.name: i for i in model.graph.initializer}
    nodes = []
    for node in model.graph.node:
        if node.name in matmuls:
            weight = matmuls[node.name][1]
            nodes += _quantize_matmul(model, node, weight, scales_by_weight[weight], inits)
        nodes.append(node)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return {weight: node for node, (_, weight) in matmuls.items()}


INTEGER_TYPES = (6, 7)  # onnx.TensorProto.INT32, INT64


def element_types(model) -> dict[str, int]:
    """{tensor name: ONNX element type} for the graph's inputs and every tensor shape inference can type."""
    import onnx

    graph = onnx.shape_inference.infer_shapes(model).graph
    return {v.name: v.type.tensor_type.elem_type for v in [*graph.value_info, *graph.input]}


def cumsum_in_float(model) -> int:
    """Compute each integer CumSum in float32 (exact below 2**24) between two Casts; returns how many."""
    from onnx import helper

    types = element_types(model)
    nodes, done = [], 0
    for node in model.graph.node:
        if node.op_type == "CumSum" and types.get(node.input[0]) in INTEGER_TYPES:
            source, result, int_type = node.input[0], node.output[0], types[node.input[0]]
            node.input[0], node.output[0] = f"{node.name}_float_in", f"{node.name}_float_out"
            nodes.append(helper.make_node("Cast", [source], [node.input[0]], f"{node.name}_to_float", to=1))
            nodes.append(node)
            nodes.append(helper.make_node("Cast", [node.output[0]], [result], f"{node.name}_to_int", to=int_type))
            done += 1
        else:
            nodes.append(node)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return done


def write_int8_qdq(fp32_path: Path, out_path: Path, scales_by_weight: dict[str, dict]) -> dict:
    """FP32 ONNX + QAT scales (keyed by weight initializer name) -> the INT8 QDQ file; returns what was done, with
    the MatMul each weight feeds (`matmul_of`: recorded with the scales, so the rules can check where each sits)."""
    import onnx

    model = onnx.load(str(fp32_path))
    matmul_of = insert_qdq(model, scales_by_weight)
    matmuls = len(matmul_of)
    cumsums = cumsum_in_float(model)
    onnx.checker.check_model(model)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(out_path))
    log.info("INT8 QDQ: %d MatMuls quantised with QAT scales, %d integer CumSum in float", matmuls, cumsums)
    return {"matmuls": matmuls, "cumsum_in_float": cumsums, "matmul_of": matmul_of}
