"""QAT wraps exactly the intended layers; the INT8 ONNX is explicit QDQ with QAT scales; bad pairings are refused."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from ernie_cls.artifact import verify_artifact
from ernie_cls.errors import ConfigError
from release.export import ExportConfig, export
from training.qat import QATConfig, quantizable_linears, quantize_model, run_qat


def test_qat_wraps_encoder_linears_only(trained_run):
    from paddle.nn.quant.qat import QuantedLinear

    from training.modeling import load_checkpoint

    model, _, _ = load_checkpoint(trained_run / "best")
    expected = set(quantizable_linears(model))
    assert len(expected) == 6 * model.config.num_hidden_layers  # q, k, v, out, ffn in, ffn out
    quantize_model(model)
    wrapped = {name for name, layer in model.named_sublayers() if isinstance(layer, QuantedLinear)}
    assert wrapped == expected
    assert not any("embeddings" in n or "pooler" in n or "classifier" in n for n in wrapped)


def test_qat_checkpoint_records_scales_and_fp32_vs_int8_metrics(qat_run):
    out, metrics = qat_run
    scales = json.loads((out / "best" / "quant_scales.json").read_text())
    assert len(scales) == 12
    layer = scales["ernie.encoder.layers.0.linear1"]
    assert layer["activation_scale"] > 0 and layer["weight_axis"] == 1 and len(layer["weight_scales"]) == 128
    assert set(metrics["fp32"]) == set(metrics["int8_simulated"]) == {"dev", "test"}


def test_qat_learns_the_fp32_models_predictions_and_reports_how_many_it_keeps(trained_run, tmp_path, monkeypatch):
    from training import qat
    from training.modeling import load_checkpoint

    seen = {}
    real_fit = qat.fit

    def spy(model, tokenizer, label_map, train_data, dev_data, *args, **kwargs):
        seen["teacher"], seen["ids"], seen["dev_ids"] = train_data.teacher_logits, train_data.ids, dev_data.ids
        return real_fit(model, tokenizer, label_map, train_data, dev_data, *args, **kwargs)

    monkeypatch.setattr(qat, "fit", spy)
    out = tmp_path / "q"
    metrics = run_qat(QATConfig(checkpoint=str(trained_run / "best"), output=str(out), max_steps=2, progress=False))
    fp32, tokenizer, _ = load_checkpoint(trained_run / "best")
    np.testing.assert_allclose(seen["teacher"], qat.predict_logits(fp32, tokenizer, seen["ids"]), atol=1e-5)
    # The recorded agreement is the saved INT8 model's against the FP32 model's, recomputed here.
    fp32_says = qat.predict_logits(fp32, tokenizer, seen["dev_ids"]).argmax(1)
    int8_says = qat.predict_logits(qat.load_qat_checkpoint(out / "best"), tokenizer, seen["dev_ids"]).argmax(1)
    assert metrics["agreement_with_fp32"]["dev"] == pytest.approx(float((fp32_says == int8_says).mean()))
    labels_only = QATConfig(
        checkpoint=str(trained_run / "best"), output=str(tmp_path / "q0"), max_steps=1, distill_alpha=0, progress=False
    )
    run_qat(labels_only)
    assert seen["teacher"] is None


def test_int8_artifact_passes_its_checks_and_verification(int8_artifact):
    artifact = verify_artifact(int8_artifact)
    m = artifact.manifest
    assert m["default_format"] == "onnx-int8"
    assert {"onnx-int8", "paddle-int8", "triton"} <= set(m["formats"]) and "onnx-int8-cpu" not in m["formats"]
    assert m["checks"]["qat_vs_onnx_int8"]["argmax_agreement"] >= 0.99
    assert m["checks"]["int8_accuracy_drop"]["passed"] and m["checks"]["int8_qdq_rules"]["passed"]
    assert (int8_artifact / "triton/ernie_cls/1/model.onnx").read_bytes() == (
        int8_artifact / "onnx/model.int8.onnx"
    ).read_bytes()


def test_qat_and_fp32_checkpoints_cannot_be_swapped(trained_run, qat_run, tmp_path):
    with pytest.raises(ConfigError, match="already a QAT checkpoint"):
        run_qat(QATConfig(checkpoint=str(qat_run[0] / "best"), output=str(tmp_path / "q")))
    with pytest.raises(ConfigError, match="expects a QAT checkpoint"):
        export(
            ExportConfig(
                checkpoint=str(trained_run / "best"), qat=str(trained_run / "best"), output=str(tmp_path / "e")
            )
        )
    with pytest.raises(ConfigError, match="is a QAT checkpoint"):
        export(ExportConfig(checkpoint=str(qat_run[0] / "best"), output=str(tmp_path / "e")))


def test_paddle_int8_inference_model_matches_the_qat_model(int8_artifact, qat_run, trained_run):
    from release.export import paddle_backend
    from training.loop import predict_logits
    from training.modeling import load_checkpoint
    from training.qat import load_qat_checkpoint

    _, tok, _ = load_checkpoint(trained_run / "best")
    ids = tok.encode_ids(["送餐很快，味道不错", "太难吃了"])
    expected = predict_logits(load_qat_checkpoint(qat_run[0] / "best"), tok, ids)
    runner = paddle_backend(int8_artifact / "paddle/int8/model")
    got = np.concatenate([runner.infer(*tok.pad([i])) for i in ids])
    assert np.abs(got - expected).max() < 1e-4


def test_export_leaves_the_callers_model_callable(qat_run, tmp_path):
    """to_static converts a Layer in place; a converted QAT model fails when called again (Paddle 3.3.1)."""
    from release.export import export_paddle_inference
    from training.loop import predict_logits
    from training.modeling import load_checkpoint
    from training.qat import load_qat_checkpoint

    qat_model = load_qat_checkpoint(qat_run[0] / "best")
    _, tok, _ = load_checkpoint(qat_run[0] / "best")
    before = predict_logits(qat_model, tok, tok.encode_ids(["好吃"]))
    export_paddle_inference(qat_model, tmp_path / "m")
    assert np.array_equal(predict_logits(qat_model, tok, tok.encode_ids(["好吃"])), before)


def test_copying_a_qat_dir_with_another_vocab_is_refused(trained_run, qat_run, tmp_path):
    other = tmp_path / "q"
    shutil.copytree(qat_run[0] / "best", other)
    with open(other / "vocab.txt", "a", encoding="utf-8") as fh:
        fh.write("新词\n")
    with pytest.raises(ConfigError, match="different vocabulary"):
        export(ExportConfig(checkpoint=str(trained_run / "best"), qat=str(other), output=str(tmp_path / "e")))


def test_bench_model_measures_every_format_and_writes_json_and_plot(int8_artifact, tmp_path):
    from bench.formats import BenchConfig, run_bench

    out = tmp_path / "bench.json"
    report = run_bench(
        BenchConfig(str(int8_artifact), batch_sizes=[1, 4], seq_lens=[16], min_seconds=0.01, output=str(out))
    )
    formats = {"paddle-fp32", "paddle-int8", "onnx-fp32", "onnx-int8"}
    assert {r["format"] for r in report["results"]} == formats
    assert all(r["items_per_second"] > 0 and r["runs"] >= 5 for r in report["results"])
    assert {(r["format"], r["vs"], r["batch_size"]) for r in report["int8_vs_fp32"]} == {
        (f, f.split("-")[0] + "-fp32", b) for f in formats if "int8" in f for b in (1, 4)
    }
    assert report["threads"] >= 1 and report["machine"]["cpu"]
    assert json.loads(out.read_text()) == report and out.with_suffix(".png").stat().st_size > 1000


def test_int8_file_stores_every_linear_weight_in_a_quarter_of_its_fp32_bytes(int8_artifact):
    """The INT8 file is the FP32 file minus 3/4 of the 24 (here 12) Linear weights; embeddings stay float."""
    import onnx
    from onnx import numpy_helper

    int8 = onnx.load(str(int8_artifact / "onnx/model.int8.onnx"))
    scales = json.loads((int8_artifact / "onnx/quant_scales.json").read_text())
    weights = [numpy_helper.to_array(i) for i in int8.graph.initializer if i.name in scales]
    assert len(weights) == 12 and all(w.dtype == np.int8 for w in weights)
    linear_bytes = 4 * sum(w.size for w in weights)  # what they take in float32
    saved = (int8_artifact / "onnx/model.fp32.onnx").stat().st_size - (
        int8_artifact / "onnx/model.int8.onnx"
    ).stat().st_size
    # 3/4 of the weight bytes saved, less the per-channel scales and Q/DQ nodes added (~5 % of a toy model)
    assert 0.65 * linear_bytes <= saved <= 0.75 * linear_bytes, (saved, linear_bytes)


def test_export_can_ship_a_subset_of_formats(trained_run, qat_run, tmp_path):
    from ernie_cls.artifact import verify_artifact

    out = tmp_path / "small"
    export(
        ExportConfig(
            checkpoint=str(trained_run / "best"),
            qat=str(qat_run[0] / "best"),
            output=str(out),
            keep_formats=["onnx-int8", "triton"],
        )
    )
    artifact = verify_artifact(out)
    assert set(artifact.manifest["formats"]) == {"onnx-int8", "triton"}
    assert set(artifact.manifest["omitted_formats"]) == {"onnx-fp32", "paddle-fp32", "paddle-int8"}
    assert "onnx-fp32" in artifact.manifest["metrics"]  # measured before it was left out
    assert not (out / "paddle").exists() and not (out / "onnx/model.fp32.onnx").exists()
    with pytest.raises(ConfigError, match="default format"):
        export(
            ExportConfig(
                checkpoint=str(trained_run / "best"),
                qat=str(qat_run[0] / "best"),
                output=str(tmp_path / "x"),
                keep_formats=["triton", "paddle-fp32"],
            )
        )


def test_qat_with_weight_averaging_saves_the_average_and_scales_that_match_it(trained_run, qat_run, tmp_path):
    import paddle

    out = tmp_path / "qat-ema"
    run_qat(
        QATConfig(checkpoint=str(trained_run / "best"), output=str(out), max_steps=6, ema_decay=0.9, progress=False)
    )
    assert json.loads((out / "best" / "qat_config.json").read_text())["ema_decay"] == 0.9
    name = "ernie.encoder.layers.0.linear1"
    averaged = paddle.load(str(out / "best" / "model_state.pdparams"))[f"{name}.weight"].numpy()
    plain = paddle.load(str(qat_run[0] / "best" / "model_state.pdparams"))[f"{name}.weight"].numpy()
    assert not np.allclose(averaged, plain)  # same seed and steps: only the averaging differs
    # The INT8 export quantises the saved (averaged) weights, so their scales must be the ones recorded.
    scales = json.loads((out / "best" / "quant_scales.json").read_text())[name]["weight_scales"]
    np.testing.assert_allclose(scales, np.abs(averaged).max(axis=0) / 127, rtol=1e-6)


def test_qat_refuses_a_bad_weight_average_decay_with_a_hint(trained_run, tmp_path):
    with pytest.raises(ConfigError, match="ema-decay") as info:
        run_qat(QATConfig(checkpoint=str(trained_run / "best"), output=str(tmp_path / "q"), ema_decay=1.0))
    assert info.value.hint
