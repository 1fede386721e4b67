"""The artifact's Triton repository: every config parses as Triton's own ModelConfig, the ensemble wires models that
exist, and text sent through the Python models (against a stand-in of Triton's Python-backend utilities, with ONNX
Runtime standing in for Triton's ONNX Runtime backend) gets the REST service's labels and scores. Triton itself does
not run here: no Docker engine, and the `tritonserver` wheel on PyPI is a placeholder."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import shutil
import sys

import httpx
import numpy as np
import pytest

from release.triton import ENSEMBLE, MODEL, POSTPROCESS, TOKENIZER
from tests import triton_backend_stub
from tests.conftest import waimai_rows

model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2")
from google.protobuf import json_format, text_format  # noqa: E402


def parse(path):
    return text_format.Parse(path.read_text(encoding="utf-8"), model_config_pb2.ModelConfig())


def test_every_config_is_a_triton_model_config_and_the_ensemble_is_wired(int8_artifact):
    root = int8_artifact / "triton"
    configs = {p.parent.name: parse(p) for p in root.glob("*/config.pbtxt")}
    assert set(configs) == {ENSEMBLE, TOKENIZER, MODEL, POSTPROCESS}
    assert all(configs[name].name == name for name in configs)
    ensemble = configs[ENSEMBLE]
    assert ensemble.platform == "ensemble" and (root / ENSEMBLE / "1").is_dir()
    produced = {"TEXT"}  # each step reads only tensors that exist by then, with the types its model declares
    for step in ensemble.ensemble_scheduling.step:
        model = configs[step.model_name]
        declared_in = {t.name for t in model.input}
        assert set(step.input_map) == declared_in and set(step.input_map.values()) <= produced
        assert set(step.output_map) <= {t.name for t in model.output}
        produced |= set(step.output_map.values())
    assert {t.name for t in ensemble.output} <= produced
    labels = (root / MODEL / "labels.txt").read_text(encoding="utf-8").splitlines()
    assert labels == ["negative", "positive"] and configs[MODEL].output[0].label_filename == "labels.txt"
    assert (root / MODEL / "1" / "model.onnx").read_bytes() == (int8_artifact / "onnx/model.int8.onnx").read_bytes()


def test_the_gpu_config_runs_the_int8_file_through_tensorrt_with_a_cache_and_a_profile(int8_artifact):
    gpu = parse(int8_artifact / "triton" / MODEL / "configs" / "gpu.pbtxt")
    cpu = parse(int8_artifact / "triton" / MODEL / "config.pbtxt")
    assert gpu.name == cpu.name == MODEL and gpu.input == cpu.input and gpu.output == cpu.output
    assert gpu.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_GPU
    assert cpu.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_CPU
    (trt,) = gpu.optimization.execution_accelerators.gpu_execution_accelerator
    assert trt.name == "tensorrt" and trt.parameters["precision_mode"] == "INT8"
    assert trt.parameters["trt_engine_cache_enable"] == "true"
    max_seq = json.loads((int8_artifact / "manifest.json").read_text())["max_seq_len"]
    shapes = {
        kind: dict(item.split(":") for item in trt.parameters[f"trt_profile_{kind}_shapes"].split(","))
        for kind in ("min", "opt", "max")
    }
    for name in ("input_ids", "token_type_ids"):  # one profile covers every batch and length served
        low, mid, high = ([int(d) for d in shapes[kind][name].split("x")] for kind in ("min", "opt", "max"))
        assert low == [1, 1] and high == [gpu.max_batch_size, max_seq]
        assert all(a <= b <= c for a, b, c in zip(low, mid, high, strict=True)), (low, mid, high)  # TensorRT's rule


def load_model(int8_artifact, name: str, root=None):
    """Import <name>/1/model.py as Triton's Python backend would, and initialise it with its config as JSON."""
    sys.modules["triton_python_backend_utils"] = triton_backend_stub
    root = root or int8_artifact / "triton"
    path = root / name / "1" / "model.py"
    spec = importlib.util.spec_from_file_location(f"triton_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = json_format.MessageToDict(
        parse(root / name / "config.pbtxt"), preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    model = module.TritonPythonModel()
    model.initialize(
        {"model_config": json.dumps(config), "model_repository": str(path.parents[1]), "model_version": "1"}
    )
    return model


def text_request(texts: list[str]):
    array = np.array([t.encode("utf-8") for t in texts], dtype=np.object_).reshape(-1, 1)
    return triton_backend_stub.InferenceRequest([triton_backend_stub.Tensor("TEXT", array)])


def through_triton(int8_artifact, requests: list[list[str]]) -> list[dict]:
    """tokenizer -> ONNX model -> postprocess, as the ensemble runs them; one dict per text."""
    import onnxruntime as ort

    stub = triton_backend_stub
    tokenizer, postprocess = load_model(int8_artifact, TOKENIZER), load_model(int8_artifact, POSTPROCESS)
    session = ort.InferenceSession(str(int8_artifact / "triton" / MODEL / "1" / "model.onnx"))
    results = []
    for response in tokenizer.execute([text_request(texts) for texts in requests]):  # one dynamic batch
        assert not response.has_error(), response.error().message()
        feed = {n: stub.get_output_tensor_by_name(response, n).as_numpy() for n in ("input_ids", "token_type_ids")}
        logits = session.run(["logits"], feed)[0]
        logits_request = stub.InferenceRequest([stub.Tensor("logits", logits)])
        (scored,) = postprocess.execute([logits_request])
        out = {t.name(): t.as_numpy() for t in scored.output_tensors()}
        truncated = stub.get_output_tensor_by_name(response, "TRUNCATED").as_numpy()
        for i in range(len(logits)):
            results.append(
                {
                    "label": out["LABEL"][i, 0].decode("utf-8"),
                    "score": float(out["SCORE"][i, 0]),
                    "low_confidence": bool(out["LOW_CONFIDENCE"][i, 0]),
                    "truncated": bool(truncated[i, 0]),
                    "width": feed["input_ids"].shape[1],
                }
            )
    return results


def through_the_service(int8_artifact, texts: list[str]) -> list[dict]:
    from service.config import Settings
    from service.main import create_app

    app = create_app(Settings(artifact=str(int8_artifact), threads=1, max_texts_per_request=32, cache_size=0))

    async def main():
        async with app.router.lifespan_context(app):
            await app.state.loading
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
                replies = [
                    await client.post("/v1/classify", json={"texts": texts[i : i + 32]})
                    for i in range(0, len(texts), 32)
                ]
        return [p for r in replies for p in r.json()["predictions"]]

    return asyncio.run(main())


def test_text_through_the_triton_models_gets_the_services_labels_and_scores(int8_artifact):
    texts = [row["review"] for row in waimai_rows(150, offset=500)] + ["ＡＢＣ全角😀", "好" * 400]
    sizes = [1, 3, 2, 5, 4]  # requests of different sizes in one dynamic batch
    requests, start = [], 0
    while start < len(texts):
        requests.append(texts[start : start + sizes[len(requests) % len(sizes)]])
        start += len(requests[-1])
    triton = through_triton(int8_artifact, requests)
    service = through_the_service(int8_artifact, texts)
    assert len(triton) == len(service) == 302
    for ours, theirs in zip(triton, service, strict=True):
        assert ours["label"] == theirs["label"] and ours["low_confidence"] == theirs["low_confidence"]
        assert ours["truncated"] == theirs["truncated"]
        assert ours["score"] == pytest.approx(theirs["score"], abs=1e-5)
    assert triton[-1]["truncated"] and {r["width"] for r in triton} <= {16, 32, 64, 128}  # padded to buckets


def test_a_bad_request_fails_alone(int8_artifact):
    tokenizer = load_model(int8_artifact, TOKENIZER)
    bad = text_request(["好"])
    bad.inputs["TEXT"] = triton_backend_stub.Tensor("TEXT", np.array([[b"\xff\xfe"]], dtype=np.object_))
    empty, good = text_request(["\u200b "]), text_request(["送餐很快"])
    none = triton_backend_stub.InferenceRequest(
        [triton_backend_stub.Tensor("TEXT", np.zeros((0, 1), dtype=np.object_))]
    )
    responses = tokenizer.execute([bad, empty, none, good])
    assert "not valid UTF-8" in responses[0].error().message()
    assert "empty after normalisation" in responses[1].error().message()
    assert "holds no text" in responses[2].error().message()
    assert not responses[3].has_error()


@pytest.mark.parametrize("max_seq_len", [8, 16, 48])
def test_short_and_odd_max_lengths_give_a_loadable_repository(tmp_path, int8_artifact, max_seq_len):
    """No bucket below max_seq_len (8, 16) or one that is not a power of two (48): the models still load, and the
    GPU profile keeps min <= opt <= max."""
    from release.triton import model_config, tokenizer_config

    config = text_format.Parse(tokenizer_config(max_seq_len), model_config_pb2.ModelConfig())
    root = tmp_path / "repo"
    (root / TOKENIZER / "1").mkdir(parents=True)
    shutil.copytree(int8_artifact / "triton" / TOKENIZER / "1", root / TOKENIZER / "1", dirs_exist_ok=True)
    (root / TOKENIZER / "config.pbtxt").write_text(tokenizer_config(max_seq_len))
    model = load_model(root.parent / "repo", TOKENIZER, root=root)
    (response,) = model.execute([text_request(["好" * 100])])
    assert response.output_tensors()[0].as_numpy().shape == (1, max_seq_len) and config.name == TOKENIZER
    gpu = text_format.Parse(model_config(2, max_seq_len, gpu=True), model_config_pb2.ModelConfig())
    params = gpu.optimization.execution_accelerators.gpu_execution_accelerator[0].parameters
    assert f"input_ids:32x{min(64, max_seq_len)}" in params["trt_profile_opt_shapes"]


def test_the_bundled_repository_runs_the_current_python_models():
    """The artifact carries copies of release/triton_models (it must stand alone); a source edited without
    re-exporting the bundled model would leave Triton running the old code."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    bundled = root / "exported" / "waimai-sentiment" / "triton"
    for model, source in ((TOKENIZER, "tokenizer.py"), (POSTPROCESS, "postprocess.py")):
        assert (bundled / model / "1" / "model.py").read_bytes() == (
            root / "release/triton_models" / source
        ).read_bytes()
