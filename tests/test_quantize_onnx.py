"""The INT8 file is the QAT network in TensorRT's explicit form, and ONNX Runtime runs every quantised Linear as an
integer GEMM: the rules (release/qdq_rules.py) hold on the exported file, are recomputed from the artifact rather
than read from its manifest, and each rule catches the graph that breaks it."""

from __future__ import annotations

import json

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import helper, numpy_helper  # noqa: E402

from release.qdq_rules import ort_integer_gemms, qdq_problems  # noqa: E402


def qat_scales(qat_run) -> dict[str, dict]:
    """The QAT checkpoint's own scales, by layer path: the source the artifact must not drift from."""
    return json.loads((qat_run[0] / "best" / "quant_scales.json").read_text())


def artifact_scales(artifact) -> dict[str, dict]:
    return json.loads((artifact / "onnx" / "quant_scales.json").read_text())


def test_the_exported_int8_file_keeps_every_rule(int8_artifact):
    model = onnx.load(str(int8_artifact / "onnx" / "model.int8.onnx"))
    assert qdq_problems(model, artifact_scales(int8_artifact)) == []


def test_every_scale_in_the_file_is_the_qat_checkpoints(int8_artifact, qat_run):
    model = onnx.load(str(int8_artifact / "onnx" / "model.int8.onnx"))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    producer = {o: n for n in model.graph.node for o in n.output}
    by_layer = qat_scales(qat_run)
    recorded = artifact_scales(int8_artifact)
    assert {s["layer"] for s in recorded.values()} == set(by_layer)
    activation_scales, seen = set(), 0
    for node in (n for n in model.graph.node if n.op_type == "DequantizeLinear"):
        scale = inits[node.input[1]]
        if node.input[0] in inits:  # a weight: its per-channel scales are its QAT layer's
            layer = by_layer[recorded[node.input[0]]["layer"]]
            np.testing.assert_array_equal(scale, np.float32(layer["weight_scales"]))
            seen += 1
        else:
            activation_scales.add(float(np.float32(scale.reshape(()))))
            assert producer[node.input[0]].op_type == "QuantizeLinear"
    assert seen == len(by_layer) == 12
    assert activation_scales <= {float(np.float32(s["activation_scale"])) for s in by_layer.values()}


def test_manifest_figures_are_what_the_file_holds(int8_artifact):
    spec = json.loads((int8_artifact / "manifest.json").read_text())["formats"]["onnx-int8"]["quantization"]
    data = (int8_artifact / "onnx" / "model.int8.onnx").read_bytes()
    model = onnx.load_from_string(data)
    producer = {o: n for n in model.graph.node for o in n.output}
    quantized = [
        n
        for n in model.graph.node
        if n.op_type == "MatMul" and producer.get(n.input[1], n).op_type == "DequantizeLinear"
    ]
    assert spec["quantized_matmuls"] == len(quantized) == 12
    assert spec["onnxruntime_integer_gemms"] == ort_integer_gemms(data) == 12  # every one, none left in float
    # attention QK^T / AV (2 per layer) and the pooler + classifier stay float
    assert sum(n.op_type in ("MatMul", "Gemm") for n in model.graph.node) - len(quantized) == 2 * 2 + 2


# ----------------------------------------------------------------------------------------- each rule, broken
def _parts(model):
    """The first quantised MatMul with its activation Q, activation DQ and weight DQ."""
    producer = {o: n for n in model.graph.node for o in n.output}
    matmul = next(
        n
        for n in model.graph.node
        if n.op_type == "MatMul" and producer.get(n.input[1], n).op_type == "DequantizeLinear"
    )
    act_dq = producer[matmul.input[0]]
    return matmul, producer[act_dq.input[0]], act_dq, producer[matmul.input[1]]


def _set_init(model, name: str, value: np.ndarray) -> None:
    """Replace (or add) an initializer."""
    for old in [i for i in model.graph.initializer if i.name == name]:
        model.graph.initializer.remove(old)
    model.graph.initializer.append(numpy_helper.from_array(value, name))


def _init(model, name: str) -> np.ndarray:
    return numpy_helper.to_array(next(i for i in model.graph.initializer if i.name == name))


def output_quantised(model):
    matmul, q, _, _ = _parts(model)
    model.graph.node.append(helper.make_node("QuantizeLinear", [matmul.output[0], q.input[1], q.input[2]], ["oq"]))
    model.graph.node.append(helper.make_node("DequantizeLinear", ["oq", q.input[1], q.input[2]], ["odq"]))


def shared_pair(model):
    _, q, act_dq, _ = _parts(model)
    reader = next(n for n in model.graph.node if q.input[0] in n.input and n is not q)  # e.g. the residual Add
    reader.input[list(reader.input).index(q.input[0])] = act_dq.output[0]


def nonzero_zero_point(model):
    _, q, _, _ = _parts(model)
    _set_init(model, q.input[2], np.array(1, dtype=np.int8))


def calibrated_activation_scale(model):
    _, q, _, _ = _parts(model)
    _set_init(model, q.input[1], _init(model, q.input[1]) * np.float32(1.01))


def calibrated_weight_scale(model):
    _, _, _, w_dq = _parts(model)
    _set_init(model, w_dq.input[1], _init(model, w_dq.input[1]) * np.float32(1.01))


def per_tensor_weight(model):
    _, _, _, w_dq = _parts(model)
    _set_init(model, w_dq.input[1], _init(model, w_dq.input[1])[:1])
    _set_init(model, w_dq.input[2], np.zeros(1, dtype=np.int8))


def weight_axis_zero(model):
    _, _, _, w_dq = _parts(model)
    w_dq.attribute.remove(next(a for a in w_dq.attribute if a.name == "axis"))
    w_dq.attribute.append(helper.make_attribute("axis", 0))


def weight_uses_minus_128(model):
    _, _, _, w_dq = _parts(model)
    weight = _init(model, w_dq.input[0]).copy()
    weight[0, 0] = -128
    _set_init(model, w_dq.input[0], weight)


def activation_left_float(model):
    matmul, q, _, _ = _parts(model)
    matmul.input[0] = q.input[0]


def weight_left_float(model):
    matmul, _, _, w_dq = _parts(model)
    scales = _init(model, w_dq.input[1])
    _set_init(model, "float_weight", _init(model, w_dq.input[0]).astype(np.float32) * scales)
    matmul.input[1] = "float_weight"


def int8_embedding_table(model):
    gather = next(n for n in model.graph.node if n.op_type == "Gather" and n.input[0].startswith("embedding"))
    table = _init(model, gather.input[0])
    scale = np.abs(table).max(axis=1) / 127 + 1e-8
    _set_init(model, "table_int8", np.round(table / scale[:, None]).astype(np.int8))
    _set_init(model, "table_scale", scale.astype(np.float32))
    _set_init(model, "table_zp", np.zeros(len(scale), dtype=np.int8))
    model.graph.node.insert(
        0, helper.make_node("DequantizeLinear", ["table_int8", "table_scale", "table_zp"], ["table_dq"], axis=0)
    )
    gather.input[0] = "table_dq"


def integer_cumsum(model):
    cumsum = next(n for n in model.graph.node if n.op_type == "CumSum")
    producer = {o: n for n in model.graph.node for o in n.output}
    cumsum.input[0] = producer[cumsum.input[0]].input[0]  # skip the Cast to float
    cast_back = next(n for n in model.graph.node if cumsum.output[0] in n.input)
    cast_back.attribute[0].i = onnx.TensorProto.INT64  # keep types consistent: int64 -> int64


def integer_division_in_float(model):
    """What paddle2onnx writes for an integer floor_divide (the n-gram hashing once did)."""
    model.graph.initializer.append(numpy_helper.from_array(np.array(131072.0, dtype=np.float32), "buckets"))
    model.graph.node.extend(
        [
            helper.make_node("Cast", ["input_ids"], ["ids_float"], "ids_to_float", to=onnx.TensorProto.FLOAT),
            helper.make_node("Div", ["ids_float", "buckets"], ["ids_div"], "ids_div"),
            helper.make_node("Floor", ["ids_div"], ["ids_floor"], "ids_floor"),
        ]
    )


def qoperator_matmul(model):
    model.graph.node.append(helper.make_node("QLinearMatMul", ["a", "b", "c", "d", "e", "f", "g", "h"], ["y"]))


def quantize_scale_differs(model):
    _, q, _, _ = _parts(model)
    _set_init(model, "q_scale_x10", _init(model, q.input[1]) * np.float32(10))
    q.input[1] = "q_scale_x10"  # the DQ still dequantises with the QAT scale


def pair_before_a_float_matmul(model):
    """A pair in front of a matmul QAT kept float (attention QK^T, pooler, classifier)."""
    producer = {o: n for n in model.graph.node for o in n.output}
    matmul = next(
        n
        for n in model.graph.node
        if n.op_type == "MatMul" and producer.get(n.input[1], n).op_type != "DequantizeLinear"
    )
    _, q, _, _ = _parts(model)
    model.graph.node.append(helper.make_node("QuantizeLinear", [matmul.input[0], q.input[1], q.input[2]], ["fq"]))
    model.graph.node.append(helper.make_node("DequantizeLinear", ["fq", q.input[1], q.input[2]], ["fdq"]))
    matmul.input[0] = "fdq"


def int8_table_through_identity(model):
    int8_embedding_table(model)
    gather = next(n for n in model.graph.node if n.op_type == "Gather" and n.input[0] == "table_dq")
    model.graph.node.append(helper.make_node("Identity", ["table_dq"], ["table_id"]))
    gather.input[0] = "table_id"


def cast_instead_of_quantize(model):
    _, q, _, _ = _parts(model)
    q.op_type = "Cast"
    del q.input[1:]
    q.attribute.append(helper.make_attribute("to", onnx.TensorProto.INT8))


def weights_swapped(model):
    producer = {o: n for n in model.graph.node for o in n.output}
    first, second = [
        n
        for n in model.graph.node
        if n.op_type == "MatMul" and producer.get(n.input[1], n).op_type == "DequantizeLinear"
    ][:2]  # q_proj and k_proj: same shape, so the graph still runs
    first.input[1], second.input[1] = second.input[1], first.input[1]


def pair_also_a_graph_output(model):
    _, _, act_dq, _ = _parts(model)
    model.graph.output.append(helper.make_tensor_value_info(act_dq.output[0], onnx.TensorProto.FLOAT, None))


BREAKS = [
    (output_quantised, "quantises the output"),
    (shared_pair, "shared pair"),
    (nonzero_zero_point, "zero point must be"),
    (calibrated_activation_scale, "is not the QAT scale"),
    (calibrated_weight_scale, "differ from the QAT checkpoint"),
    (per_tensor_weight, "per output channel"),
    (weight_axis_zero, "per output channel"),
    (weight_uses_minus_128, "-128"),
    (activation_left_float, "activation input is not quantised"),
    (weight_left_float, "are not the QAT layers"),
    (int8_embedding_table, "Gather reads a DequantizeLinear"),
    (integer_cumsum, "CumSum on an integer tensor"),
    (integer_division_in_float, "integer division computed in float32"),
    (qoperator_matmul, "implicit quantisation"),
    (quantize_scale_differs, "other scales than"),
    (pair_before_a_float_matmul, "not a QAT layer"),
    (int8_table_through_identity, "must feed one QAT MatMul"),
    (cast_instead_of_quantize, "activation input is not quantised"),
    (weights_swapped, "which belongs to"),
    (pair_also_a_graph_output, "shared pair"),
]


@pytest.mark.parametrize(("break_it", "needle"), BREAKS, ids=[b.__name__ for b, _ in BREAKS])
def test_each_rule_catches_the_graph_that_breaks_it(int8_artifact, break_it, needle):
    model = onnx.load(str(int8_artifact / "onnx" / "model.int8.onnx"))
    break_it(model)
    problems = qdq_problems(model, artifact_scales(int8_artifact))
    assert any(needle in p for p in problems), problems
