"""What "TensorRT-ready INT8 with the QAT scales" means, as rules checked on the ONNX graph itself.

TensorRT 10's explicit quantisation (docs: "Explicit Quantization", onnx-tensorrt's operator matrix) takes Q/DQ
pairs with zero point 0, per-tensor activation scales, per-channel weight scales on the output-channel axis, and a
DequantizeLinear directly on the weight input of the GEMM; its Gather and CumSum take no quantised or integer data
(CumSum: FP32/FP16/BF16); integer arithmetic stays integer (no Cast -> Div -> Floor, inexact above 2**24). Ours
add: the pairs are the QAT network (one pair per Linear input, nothing else reading
it, so the residual path stays float; no quantised outputs) and every scale is the QAT checkpoint's, never a
calibrated one. `qdq_problems` returns one line per broken rule; export refuses to write an artifact with any, and
tests/test_quantize_onnx.py breaks each rule on purpose to show the check sees it.
"""

from __future__ import annotations

import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np

from release.quantize_onnx import INTEGER_TYPES, element_types

QUANTIZED_OPS = {"QuantizeLinear", "DequantizeLinear"}
# QOperator/integer ops: the explicit form has none (TensorRT's parser does not take them)
IMPLICIT_INT8_OPS = {"QLinearMatMul", "MatMulInteger", "QLinearConv", "ConvInteger", "DynamicQuantizeLinear"}
ORT_INTEGER_GEMMS = {"MatMulIntegerToFloat", "QLinearMatMul", "MatMulInteger", "DynamicQuantizeMatMul"}


class _Graph:
    def __init__(self, model) -> None:
        from onnx import numpy_helper

        self.nodes = list(model.graph.node)
        self.inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
        self.producer = {o: n for n in self.nodes for o in n.output}
        self.consumers: dict[str, list] = defaultdict(list)
        for n in self.nodes:
            for i in n.input:
                self.consumers[i].append(n)
        self.outputs = {o.name for o in model.graph.output}

    def readers(self, tensor: str) -> list:
        """Nodes reading `tensor`, plus a marker when the graph also returns it (a reader outside the graph)."""
        return self.consumers[tensor] + (["graph output"] if tensor in self.outputs else [])

    def qat_matmul(self, node, qat_scales: dict) -> bool:
        """A MatMul whose weight input is the DequantizeLinear of a QAT layer's int8 weight."""
        dq = self.producer.get(node.input[1]) if node.op_type == "MatMul" else None
        return dq is not None and dq.op_type == "DequantizeLinear" and dq.input[0] in qat_scales

    def zero_point_problem(self, node) -> str | None:
        zp = self.inits.get(node.input[2]) if len(node.input) > 2 else None
        if zp is None or zp.dtype != np.int8 or np.any(zp != 0):
            return f"{node.name}: zero point must be an int8 initializer of zeros (symmetric int8)"
        return None


def qdq_problems(model, qat_scales: dict[str, dict]) -> list[str]:
    """Broken rules of the INT8 QDQ graph; `qat_scales` maps each weight initializer name to its QAT scales."""
    g = _Graph(model)
    problems = [f"{n.name}: {n.op_type} is implicit quantisation" for n in g.nodes if n.op_type in IMPLICIT_INT8_OPS]
    problems += [p for n in g.nodes if n.op_type in QUANTIZED_OPS for p in [g.zero_point_problem(n)] if p]
    problems += _pair_problems(g, qat_scales)
    problems += _dequantize_problems(g, qat_scales)
    quantized = {}
    for node in g.nodes:
        if node.op_type == "MatMul" and (dq := g.producer.get(node.input[1])) and dq.op_type == "DequantizeLinear":
            quantized[dq.input[0]] = node
            scales = qat_scales.get(dq.input[0])
            problems += _weight_problems(g, node, dq, scales)
            problems += _activation_problems(g, node, scales)
            if scales is not None and scales.get("matmul", node.name) != node.name:
                problems.append(f"{node.name}: reads {dq.input[0]}, which belongs to {scales['matmul']}")
    if set(quantized) != set(qat_scales):
        problems.append(
            f"quantised MatMuls are not the QAT layers: missing {sorted(set(qat_scales) - set(quantized))}, "
            f"extra {sorted(set(quantized) - set(qat_scales))}"
        )
    problems += _float_only_problems(model, g)
    return problems


def _pair_problems(g: _Graph, qat_scales: dict) -> list[str]:
    """Every Q feeds one DQ with the same scale and zero point, which feeds one QAT MatMul's input 0 and nothing
    else; so no Q reads a GEMM output and no pair sits in front of the attention or head matmuls."""
    problems = []
    for q in (n for n in g.nodes if n.op_type == "QuantizeLinear"):
        source = g.producer.get(q.input[0])
        if source is not None and source.op_type == "MatMul":
            problems.append(f"{q.name}: quantises the output of {source.name} (outputs stay float)")
        readers = g.readers(q.output[0])
        if len(readers) != 1 or readers[0] == "graph output" or readers[0].op_type != "DequantizeLinear":
            problems.append(f"{q.name}: must feed exactly one DequantizeLinear (a dedicated pair)")
            continue
        dq = readers[0]
        if list(q.input[1:3]) != list(dq.input[1:3]) or any(a.name == "axis" for a in q.attribute):
            problems.append(f"{q.name}: quantises with other scales than its DequantizeLinear {dq.name} dequantises")
        users = g.readers(dq.output[0])
        if len(users) != 1 or users[0] == "graph output" or users[0].input[0] != dq.output[0]:
            problems.append(f"{dq.name}: a pair must feed one MatMul's input 0, nothing else (shared pair)")
        elif not g.qat_matmul(users[0], qat_scales):
            problems.append(f"{dq.name}: a pair in front of {users[0].name}, which is not a QAT layer (stays float)")
    return problems


def _dequantize_problems(g: _Graph, qat_scales: dict) -> list[str]:
    """Every DequantizeLinear feeds exactly one QAT MatMul: nothing else (a Gather, through any op) reads int8."""
    problems = []
    for dq in (n for n in g.nodes if n.op_type == "DequantizeLinear"):
        users = g.readers(dq.output[0])
        if len(users) != 1 or users[0] == "graph output" or not g.qat_matmul(users[0], qat_scales):
            names = [u if isinstance(u, str) else f"{u.op_type} {u.name}" for u in users]
            problems.append(f"{dq.name}: dequantised data must feed one QAT MatMul, not {names}")
    return problems


def _weight_problems(g: _Graph, matmul, dq, scales: dict | None) -> list[str]:
    weight, scale = g.inits.get(dq.input[0]), g.inits.get(dq.input[1])
    if weight is None or weight.dtype != np.int8 or weight.ndim != 2 or scale is None:
        return [f"{matmul.name}: weight must be an int8 [in, out] initializer dequantised right before the MatMul"]
    axis = next((a.i for a in dq.attribute if a.name == "axis"), 1)
    problems = []
    if scale.shape != (weight.shape[1],) or axis != 1:
        problems.append(f"{dq.name}: weight scales must be per output channel (axis 1, {weight.shape[1]} of them)")
    if weight.min() < -127:
        problems.append(f"{dq.name}: weight uses -128 (symmetric int8 is +-127)")
    if scales is not None and not np.array_equal(scale, np.asarray(scales["weight_scales"], dtype=np.float32)):
        problems.append(f"{dq.name}: weight scales differ from the QAT checkpoint's")
    return problems


def _activation_problems(g: _Graph, matmul, scales: dict | None) -> list[str]:
    dq = g.producer.get(matmul.input[0])
    if dq is None or dq.op_type != "DequantizeLinear" or g.producer.get(dq.input[0], dq).op_type != "QuantizeLinear":
        return [f"{matmul.name}: activation input is not quantised (no Q/DQ pair in front of it)"]
    scale = g.inits.get(dq.input[1])
    if scale is None or scale.size != 1:
        return [f"{dq.name}: activation scale must be one per tensor"]
    if scales is None:
        return [f"{matmul.name}: no QAT scales for its weight"]
    if np.float32(scale.reshape(())) != np.float32(scales["activation_scale"]):
        return [
            f"{dq.name}: activation scale {float(scale.reshape(()))} is not the QAT scale {scales['activation_scale']}"
        ]
    return []


def _float_only_problems(model, g: _Graph) -> list[str]:
    problems = [
        f"{n.name}: Gather reads a DequantizeLinear (TensorRT's Gather takes no quantised tables)"
        for n in g.nodes
        if n.op_type == "Gather" and (p := g.producer.get(n.input[0])) is not None and p.op_type == "DequantizeLinear"
    ]
    types = element_types(model)
    problems += [
        f"{n.name}: CumSum on an integer tensor (TensorRT's CumSum takes FP32/FP16/BF16)"
        for n in g.nodes
        if n.op_type == "CumSum" and types.get(n.input[0]) in INTEGER_TYPES
    ]
    problems += [
        f"{n.name}: integer division computed in float32 (Cast -> Div -> Floor), inexact above 2**24"
        for n in g.nodes
        if n.op_type == "Floor" and _divides_cast_integers(g, n, types)
    ]
    return problems


def _divides_cast_integers(g: _Graph, floor, types: dict) -> bool:
    """paddle2onnx's integer floor_divide (so the n-gram branch hashes with Mod: training/ngram_model.py)."""
    div = g.producer.get(floor.input[0])
    cast = g.producer.get(div.input[0]) if div is not None and div.op_type == "Div" else None
    return cast is not None and cast.op_type == "Cast" and types.get(cast.input[0]) in INTEGER_TYPES


def ort_integer_gemms(model_bytes: bytes) -> int:
    """How many integer GEMMs ONNX Runtime's CPU provider runs from this model, read from its optimised graph."""
    import onnx
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        options.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])
        optimized = onnx.load(options.optimized_model_filepath)
    return sum(n.op_type in ORT_INTEGER_GEMMS for n in optimized.graph.node)
