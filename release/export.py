"""Export a trained checkpoint into one verified artifact directory.

    checkpoint (best/) -> Paddle inference model (paddle.jit.save: model.json + model.pdiparams)
                       -> ONNX FP32 (paddle2onnx), inputs/outputs renamed to input_ids/token_type_ids -> logits,
                          dynamic axes named batch/sequence
                       -> tokenizer/ (the checkpoint's own tokenizer files)
    QAT checkpoint (--qat) -> Paddle INT8 (the fake-quantised program), ONNX INT8 (explicit Q/DQ with the QAT scales,
                          release/quantize_onnx.py) + onnx/quant_scales.json, Triton repository (release/triton.py)
    checks: onnx checker; ONNX Runtime loads; Paddle inference vs ONNX max |logit diff| on dev <= tolerance; the
            INT8 graph rules (release/qdq_rules.py) and ONNX Runtime running every quantised MatMul as an integer
            GEMM; INT8 vs the QAT model on dev; test accuracy and calibration per format
    -> manifest.json (files + sha256, metrics per format, checks, provenance) -> rename into place

Everything is written to a hidden temporary directory beside the output and renamed at the end, so an export that
fails a check leaves nothing that looks like a valid artifact.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import platform
import shutil
import subprocess
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from ernie_cls import __version__
from ernie_cls.artifact import TOKENIZER_DIR, write_manifest
from ernie_cls.calibration import expected_calibration_error, fit_temperature, softmax
from ernie_cls.errors import ConfigError, ErnieClsError, ModelLoadError, OutputExistsError
from ernie_cls.runtime import logits_in_batches
from release import held_out_branch
from release.config import ExportConfig
from release.qdq_rules import ort_integer_gemms, qdq_problems
from release.quantize_onnx import write_int8_qdq
from release.triton import write_triton_repository
from training import ngrams
from training.baseline import rows_sha256
from training.batching import Encoded, encode
from training.checkpoint import LABEL_MAP_FILE, METRICS_FILE, TRAINING_CONFIG_FILE
from training.data import Example, LabelMap, check_known_labels, load_examples, stratified_split
from training.loop import predict_logits
from training.metrics import classification_metrics
from training.modeling import load_checkpoint
from training.ngrams import NGRAM_CONFIG_KEYS
from training.qat import SCALES_FILE, is_qat_checkpoint, load_qat_checkpoint, quantizable_linears

log = logging.getLogger(__name__)

INPUT_NAMES = ("input_ids", "token_type_ids")
OUTPUT_NAME = "logits"
ONNX_OPSET = 14
PADDLE_FP32 = "paddle/fp32/model"
PADDLE_INT8 = "paddle/int8/model"
ONNX_FP32 = "onnx/model.fp32.onnx"
ONNX_INT8 = "onnx/model.int8.onnx"
ONNX_INT8_SCALES = "onnx/quant_scales.json"  # the QAT scales the INT8 file was written with
TRITON_DIR = "triton"
TRITON_ENSEMBLE = "ernie_cls_text"


class ExportCheckError(ErnieClsError):
    """An export-time check failed; no artifact was written."""


def _check_checkpoint(d: Path) -> dict:
    if not d.is_dir():
        raise ModelLoadError(
            f"Checkpoint {d} does not exist.", "Pass the best/ directory written by `ernie-cls train`."
        )
    if not (d / "vocab.txt").is_file():
        raise ModelLoadError(
            f"{d} has no tokenizer (vocab.txt), so the artifact could not tokenise as training did.",
            "Export the best/ directory written by `ernie-cls train`, which bundles the tokenizer.",
        )
    if not (d / LABEL_MAP_FILE).is_file():
        raise ModelLoadError(
            f"{d} has no {LABEL_MAP_FILE}, so predictions could not be named.",
            "Export the best/ directory written by `ernie-cls train`, which bundles the label map.",
        )
    if (d / "qat_config.json").is_file():
        raise ConfigError(
            f"{d} is a QAT checkpoint; `export` expects the FP32 checkpoint it came from.",
            "Pass the FP32 checkpoint (the QAT stage's --checkpoint).",
        )
    config_file = d / TRAINING_CONFIG_FILE
    return json.loads(config_file.read_text(encoding="utf-8")) if config_file.is_file() else {}


def _check_qat(d: Path, fp32_dir: Path) -> None:

    if not d.is_dir():
        raise ModelLoadError(f"QAT checkpoint {d} does not exist.", "Run `ernie-cls qat` and pass its best/ directory.")
    if not is_qat_checkpoint(d):
        raise ConfigError(
            f"{d} is an FP32 checkpoint, but --qat expects a QAT checkpoint.",
            "Run `ernie-cls qat --checkpoint <fp32 best/> --output <dir>` and pass <dir>/best to --qat.",
        )
    if (d / "vocab.txt").read_bytes() != (fp32_dir / "vocab.txt").read_bytes():
        raise ConfigError(
            f"The QAT checkpoint {d} has a different vocabulary from {fp32_dir}.",
            "Pass the QAT checkpoint made from this FP32 checkpoint.",
        )
    branches = [ngram_config(c) for c in (fp32_dir, d)]
    if branches[0] != branches[1]:
        raise ConfigError(
            f"The n-gram branch of {fp32_dir} ({branches[0]}) is not the QAT checkpoint's ({branches[1]}), so the "
            "manifest would describe another model than the INT8 one served.",
            "Pass the QAT checkpoint made from this FP32 checkpoint (`ernie-cls qat --checkpoint <fp32 best/>`).",
        )
    if branches[0] is not None and not _same_branch_weights(fp32_dir, d):
        raise ConfigError(
            f"The n-gram branch of {fp32_dir} has the same settings as the QAT checkpoint's but another table (QAT "
            "keeps it frozen), so the manifest would describe another model than the INT8 one served.",
            "Pass the QAT checkpoint made from this FP32 checkpoint (`ernie-cls qat --checkpoint <fp32 best/>`).",
        )


def _same_branch_weights(fp32_dir: Path, qat_dir: Path) -> bool:
    import paddle

    fp32, qat = (paddle.load(str(c / "model_state.pdparams"), return_numpy=True) for c in (fp32_dir, qat_dir))
    return all(
        key in fp32 and key in qat and np.array_equal(np.asarray(fp32[key]), np.asarray(qat[key]))
        for key in ("ngram_table", "ngram_bias")
    )


def ngram_config(checkpoint: Path) -> dict | None:
    """The n-gram branch's keys in a checkpoint's config.json (training/ngram_model.py) with its vocab_size, or None
    without a branch."""
    config = json.loads((checkpoint / "config.json").read_text(encoding="utf-8"))
    branch = {k: config[k] for k in NGRAM_CONFIG_KEYS if k in config}
    return {**branch, "vocab_size": config["vocab_size"]} if branch else None


def _check_examples(
    cfg: ExportConfig, training_config: dict, branch_saw_dev: bool
) -> tuple[list[Example], list[Example], str]:
    """(dev, test, data path) for the checks: the training split by default, or the given labelled file."""
    if cfg.data:
        examples, _ = load_examples(cfg.data, cfg.text_col, cfg.label_col)
        half = len(examples) // 2
        return examples[:half] or examples, examples[half:] or examples, cfg.data
    data = training_config.get("data")
    if data and Path(data).is_file():
        examples, _ = load_examples(data, training_config.get("text_col"), training_config.get("label_col"))
        splits = stratified_split(
            examples, training_config["test_size"], training_config["dev_size"], training_config["seed"]
        )
        return splits.dev, splits.test, data
    dev_file, test_file = training_config.get("dev_file"), training_config.get("test_file")
    if dev_file and Path(dev_file).is_file():
        if branch_saw_dev and not (test_file and Path(test_file).is_file()):
            raise ConfigError(
                f"The test file {test_file!r} (training_config.json) is not there, and dev cannot stand in for it: "
                "the n-gram branch was refitted on the dev rows.",
                f"Put the test file back at {test_file!r}, or pass --data <a labelled file the model never saw>.",
            )
        dev, _ = load_examples(dev_file, training_config.get("text_col"), training_config.get("label_col"))
        test = (
            load_examples(test_file, training_config.get("text_col"), training_config.get("label_col"))[0]
            if (test_file and Path(test_file).is_file())
            else dev
        )
        return dev, test, dev_file
    raise ConfigError(
        "The data the model was trained on is not where its training_config.json says, so the export checks "
        "have nothing to run on.",
        "Pass --data <labelled file> (same columns and labels as training).",
    )


def _rename_onnx_io(path: Path) -> None:
    """paddle2onnx names the output fetch_name_0 and the dynamic dims DynamicDimension.N; give them stable names."""
    import onnx

    model = onnx.load(str(path))
    old_out = model.graph.output[0].name
    for node in model.graph.node:
        node.output[:] = [OUTPUT_NAME if o == old_out else o for o in node.output]
        node.input[:] = [OUTPUT_NAME if i == old_out else i for i in node.input]
    model.graph.output[0].name = OUTPUT_NAME
    for value in list(model.graph.input) + list(model.graph.output):
        dims = value.type.tensor_type.shape.dim
        if len(dims) >= 1 and dims[0].dim_param:
            dims[0].dim_param = "batch"
        if value.name in INPUT_NAMES and len(dims) == 2 and dims[1].dim_param:
            dims[1].dim_param = "sequence"
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def export_paddle_inference(model, prefix: Path):
    """paddle.jit.save of a copy; returns the copy (its parameter names are the saved program's, which paddle2onnx
    keeps as ONNX initializer names). A copy because to_static converts a Layer in place, and a converted QAT model
    can no longer be called from Python (Paddle 3.3.1: its quanter's in-place state update fails in run_program)."""
    import copy

    import paddle

    spec = [paddle.static.InputSpec([None, None], "int64", name) for name in INPUT_NAMES]
    static = paddle.jit.to_static(copy.deepcopy(model), input_spec=spec, full_graph=True)
    paddle.jit.save(static, str(prefix))
    return static


def export_onnx(prefix: Path, onnx_path: Path) -> None:
    import paddle2onnx

    onnx_path.parent.mkdir(parents=True, exist_ok=True)
    paddle2onnx.export(
        f"{prefix}.json", f"{prefix}.pdiparams", str(onnx_path), opset_version=ONNX_OPSET, enable_onnx_checker=True
    )
    _rename_onnx_io(onnx_path)


def onnx_backend(path: Path, threads: int = 0):
    """The service's ONNX Runtime backend, so export checks load models exactly as serving does."""
    from ernie_cls.runtime.onnxruntime import OnnxRuntimeBackend

    return OnnxRuntimeBackend(path, "", threads or os.cpu_count() or 1)


def paddle_backend(prefix: Path, threads: int = 0):
    """The service's Paddle Inference backend on `<prefix>.json` + `<prefix>.pdiparams`."""
    from ernie_cls.runtime.paddle_inference import PaddleInferenceBackend

    return PaddleInferenceBackend(
        Path(f"{prefix}.json"), Path(f"{prefix}.pdiparams"), "", threads or os.cpu_count() or 1
    )


def _git_commit() -> str | None:
    try:
        return subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            timeout=5,
            cwd=Path(__file__).resolve().parent,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def _versions() -> dict[str, str]:
    out = {"ernie-cls": __version__, "python": platform.python_version()}
    for pkg in ("paddlepaddle", "paddlenlp", "paddle2onnx", "onnx", "onnxruntime", "tokenizers", "numpy"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[pkg] = metadata.version(pkg)
    return out


def export(cfg: ExportConfig) -> dict:
    """Write the artifact; returns its manifest. Raises ExportCheckError (nothing written) when a check fails."""

    ckpt = Path(cfg.checkpoint)
    training_config = _check_checkpoint(ckpt)
    out = Path(cfg.output)
    if out.exists() and not cfg.overwrite:
        raise OutputExistsError(f"{out} already exists.", "Pass --overwrite to replace it, or choose another --output.")
    if cfg.qat:
        _check_qat(Path(cfg.qat), ckpt)
    model, tokenizer, label_map = load_checkpoint(ckpt)
    metrics_file = ckpt / METRICS_FILE
    training_metrics = json.loads(metrics_file.read_text(encoding="utf-8")) if metrics_file.is_file() else {}
    fitted_on = held_out_branch.fitted_on(model, training_metrics)
    branch_saw_dev = fitted_on == held_out_branch.SAW_DEV and not cfg.data
    dev, test, data_path = _check_examples(cfg, training_config, branch_saw_dev)
    check_known_labels(dev + test, label_map, data_path)
    data = _Splits(encode(dev, tokenizer, label_map), encode(test, tokenizer, label_map), label_map)
    if hasattr(model, "ngram_table"):
        from training.ngram_model import head_of

        data.test_branch = head_of(model).logits(data.test.ids), float(model.config.ngram_weight)
    if branch_saw_dev:  # before any file is written: this can refuse
        data.held_out_branch = held_out_branch.logits_on_dev(model, ckpt, training_metrics, tokenizer, data.dev)

    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        tokenizer.save(tmp / TOKENIZER_DIR)
        (tmp / TOKENIZER_DIR / LABEL_MAP_FILE).write_text(
            json.dumps(label_map.to_json(), ensure_ascii=False, indent=2), encoding="utf-8"
        )
        export_paddle_inference(model, tmp / PADDLE_FP32)
        export_onnx(tmp / PADDLE_FP32, tmp / ONNX_FP32)
        int8 = _export_int8(cfg, tmp) if cfg.qat else None
        checks, runners, dev_logits = _parity_checks(cfg, tmp, model, tokenizer, data, int8)
        metrics = _measure(runners, dev_logits, tokenizer, data)
        if int8 is not None:
            checks["int8_accuracy_drop"] = _int8_accuracy_check(cfg, metrics)
            _write_triton(tmp, label_map, metrics["onnx-int8"]["temperature"], tokenizer.max_seq_len)
        manifest = _describe(cfg, tmp, tokenizer, label_map, training_config, training_metrics, metrics, checks, int8)
        if manifest["ngram_branch"] is not None:
            manifest["ngram_branch"].update(
                fitted_on=fitted_on,
                temperature_fitted_with=TEMPERATURE_WITH_HELD_OUT_BRANCH
                if data.held_out_branch
                else "the served model",
            )
        manifest["provenance"]["data_path"] = os.path.basename(data_path)
        manifest["metrics"]["test_rows_sha256"] = rows_sha256(test)  # which rows the formats were scored on
        if cfg.keep_formats is not None:
            _drop_formats(tmp, manifest, cfg.keep_formats)
        (tmp / "MODEL_CARD.md").write_text(model_card(manifest), encoding="utf-8")
        write_manifest(tmp, manifest)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("artifact written to %s", out)
    return json.loads((out / "manifest.json").read_text(encoding="utf-8"))


@dataclass
class _Splits:
    dev: Encoded
    test: Encoded
    label_map: LabelMap
    # (the served branch's logits on dev, a branch fitted on train alone's, the transformer's share): set when the
    # served branch saw dev
    held_out_branch: tuple[np.ndarray, np.ndarray, float] | None = None
    # (the branch's logits on test, the transformer's share): with a branch, each format's transformer part alone
    test_branch: tuple[np.ndarray, float] | None = None


def _export_int8(cfg: ExportConfig, tmp: Path) -> dict:
    """Paddle INT8 (the fake-quantised QAT program) and ONNX INT8 (QDQ with the QAT scales, rules checked)."""
    import onnx

    qat_dir = Path(cfg.qat or "")
    qat_model = load_qat_checkpoint(qat_dir)
    export_paddle_inference(qat_model, tmp / PADDLE_INT8)

    # The QAT-trained float weights as a plain model -> FP32 ONNX -> QDQ INT8 with the QAT scales.
    float_model, _, _ = load_checkpoint(qat_dir)
    scales = json.loads((qat_dir / SCALES_FILE).read_text(encoding="utf-8"))
    work = tmp / ".int8-work"
    saved = export_paddle_inference(float_model, work / "model")
    by_weight = {
        layer.weight.name: {"layer": name, **scales[name]} for name, layer in quantizable_linears(saved).items()
    }
    export_onnx(work / "model", work / "float.onnx")
    info = write_int8_qdq(work / "float.onnx", tmp / ONNX_INT8, by_weight)
    shutil.rmtree(work)
    for weight, matmul in info.pop("matmul_of").items():
        by_weight[weight]["matmul"] = matmul
    (tmp / ONNX_INT8_SCALES).write_text(json.dumps(by_weight, indent=1), encoding="utf-8")
    model_bytes = (tmp / ONNX_INT8).read_bytes()
    problems = qdq_problems(onnx.load_from_string(model_bytes), by_weight)
    info["checks"] = {
        "int8_qdq_rules": {"problems": problems[:20], "rules": "release/qdq_rules.py", "passed": not problems},
        "onnxruntime_integer_gemms": {
            "integer_gemms": (gemms := ort_integer_gemms(model_bytes)),
            "quantized_matmuls": info["matmuls"],
            "passed": gemms == info["matmuls"],
        },
    }
    info["onnxruntime_integer_gemms"] = gemms
    info["qat_model"] = qat_model
    info["qat_checkpoint"] = json.loads((qat_dir / "qat_config.json").read_text(encoding="utf-8"))
    return info


def _write_triton(tmp: Path, label_map: LabelMap, temperature: float, max_seq_len: int) -> None:

    labels = [label_map.display(i) for i in range(len(label_map))]
    write_triton_repository(tmp / TRITON_DIR, tmp / ONNX_INT8, tmp / TOKENIZER_DIR, labels, temperature, max_seq_len)


def _parity_checks(cfg: ExportConfig, tmp: Path, model, tokenizer, data: _Splits, int8: dict | None):
    """Every format against its source on dev -> (checks, runners, dev logits); raises if one fails."""
    import onnx

    checks: dict[str, dict] = {}
    onnx.checker.check_model(str(tmp / ONNX_FP32))
    checks["onnx_checker"] = {"passed": True}
    runners: dict[str, Any] = {
        "paddle-fp32": paddle_backend(tmp / PADDLE_FP32),
        "onnx-fp32": onnx_backend(tmp / ONNX_FP32),
    }
    checks["onnxruntime_loads"] = {"passed": True, "formats": ["onnx-fp32"]}
    ids = data.dev.ids
    dev_logits = {fmt: logits_in_batches(runner.infer, tokenizer, ids) for fmt, runner in runners.items()}
    dygraph = predict_logits(model, tokenizer, ids)
    # the transformer's error reaches a blended output times its share: the tolerance shrinks with it
    weight = getattr(model.config, "ngram_weight", None)  # the n-gram branch's transformer share, if any
    tolerance = cfg.parity_tolerance * (1.0 if weight is None else float(weight))
    for name, a, b in [
        ("paddle_fp32_vs_onnx_fp32", dev_logits["paddle-fp32"], dev_logits["onnx-fp32"]),
        ("checkpoint_vs_paddle_fp32", dev_logits["paddle-fp32"], dygraph),
    ]:
        diff = float(np.abs(a - b).max())
        checks[name] = {"max_abs_logit_diff": diff, "tolerance": tolerance, "n": len(ids)}
        checks[name]["passed"] = diff <= tolerance
    if int8 is not None:
        onnx.checker.check_model(str(tmp / ONNX_INT8))
        runners["paddle-int8"] = paddle_backend(tmp / PADDLE_INT8)
        runners["onnx-int8"] = onnx_backend(tmp / ONNX_INT8)
        checks["onnxruntime_loads"]["formats"].append("onnx-int8")
        checks.update(int8["checks"])
        qat_dev = predict_logits(int8["qat_model"], tokenizer, ids)
        int8_dev = dev_logits["onnx-int8"] = logits_in_batches(runners["onnx-int8"].infer, tokenizer, ids)
        checks["qat_vs_onnx_int8"] = _agreement_check(qat_dev, int8_dev, cfg.min_int8_agreement)
        if weight is not None:  # both outputs carry the QAT checkpoint's branch: unblend with that one
            qat, int8_part = _transformer_parts(int8["qat_model"], ids, qat_dev, int8_dev)
            checks["qat_vs_onnx_int8_transformer"] = _agreement_check(qat, int8_part, cfg.min_int8_agreement)
    failed = [name for name, c in checks.items() if not c["passed"]]
    if failed:
        raise ExportCheckError(
            f"Export checks failed: {', '.join(f'{n} {checks[n]}' for n in failed)}. No artifact was written.",
            "A corrupted or non-exportable checkpoint: retrain, or report the versions in `pip freeze`.",
        )
    return checks, runners, dev_logits


def _agreement_check(a: np.ndarray, b: np.ndarray, min_agreement: float) -> dict:
    agreement = float((a.argmax(-1) == b.argmax(-1)).mean())
    return {
        "argmax_agreement": agreement,
        "max_abs_logit_diff": float(np.abs(a - b).max()),
        "min_agreement": min_agreement,
        "n": len(a),
        "passed": agreement >= min_agreement,
    }


def _transformer_parts(model, ids: list[list[int]], *outputs: np.ndarray) -> list[np.ndarray]:
    """With an n-gram branch, blended outputs also agree through the float branch both sides share: the transformer
    parts alone, recovered from each output with `model`'s branch (training/ngrams.unblend)."""
    from training.ngram_model import head_of

    ngram, w = head_of(model).logits(ids), float(model.config.ngram_weight)
    return [ngrams.unblend(output, ngram, w) for output in outputs]


def _measure(runners: dict[str, Any], dev_logits: dict[str, np.ndarray], tokenizer, data: _Splits) -> dict:
    """Test accuracy, macro-F1 and calibration per format; the temperature is fitted on dev, per format."""
    names = [data.label_map.display(i) for i in range(len(data.label_map))]
    metrics = {}
    for fmt, runner in runners.items():
        logits = logits_in_batches(runner.infer, tokenizer, data.test.ids)
        m = classification_metrics(data.test.labels.tolist(), logits.argmax(-1).tolist(), names)
        if fmt not in dev_logits:
            dev_logits[fmt] = logits_in_batches(runner.infer, tokenizer, data.dev.ids)
        calibration = dev_logits[fmt]
        if data.held_out_branch is not None:  # every format carries the same branch (_check_qat)
            calibration = ngrams.swap_branch(calibration, *data.held_out_branch)
        temperature = fit_temperature(calibration, data.dev.labels)
        metrics[fmt] = {
            "test_accuracy": m["accuracy"],
            "test_macro_f1": m["macro_f1"],
            "n_test": m["n"],
            "temperature": round(temperature, 4),
            "test_ece": expected_calibration_error(softmax(logits), data.test.labels),
            "test_ece_calibrated": expected_calibration_error(softmax(logits, temperature), data.test.labels),
        }
        if data.test_branch is not None:  # the INT8 drop of the transformer part, not diluted by the float branch
            transformer = ngrams.unblend(logits, *data.test_branch)
            metrics[fmt]["test_accuracy_transformer_alone"] = float((transformer.argmax(-1) == data.test.labels).mean())
    return metrics


def _int8_accuracy_check(cfg: ExportConfig, metrics: dict) -> dict:
    """The served INT8 model's test accuracy drop from FP32; with an n-gram branch also its transformer part's alone
    (the float branch both share would otherwise dilute the drop by the transformer's share)."""
    fp32, int8 = metrics["onnx-fp32"], metrics["onnx-int8"]
    drop = fp32["test_accuracy"] - int8["test_accuracy"]
    check = {
        "fp32_test_accuracy": fp32["test_accuracy"],
        "int8_test_accuracy": int8["test_accuracy"],
        "drop": drop,
        "max_drop": cfg.max_int8_accuracy_drop,
    }
    key = "test_accuracy_transformer_alone"
    if key in fp32 and key in int8:
        check["transformer_alone_drop"] = fp32[key] - int8[key]
    worst = max(drop, check.get("transformer_alone_drop", drop))
    check["passed"] = worst <= cfg.max_int8_accuracy_drop
    if not check["passed"]:
        part = "" if worst == drop else " (the transformer part alone, behind the n-gram branch)"
        raise ExportCheckError(
            f"INT8 ONNX test accuracy{part} is {worst * 100:.2f} pt below FP32 (limit "
            f"{cfg.max_int8_accuracy_drop * 100:.2f} pt). No artifact was written.",
            "Look at the QAT run's agreement_with_fp32 (its metrics.json): below ~0.99, re-run `ernie-cls qat` with "
            "--distill-alpha 1.0 (the default) and --epochs 2; or relax --max-int8-accuracy-drop knowingly.",
        )
    return check


TEMPERATURE_WITH_HELD_OUT_BRANCH = "the branch refitted on train alone (the served one saw dev)"


def _ngram_line(branch: dict | None) -> str:
    if branch is None:
        return "none (the transformer alone)."
    w = branch["transformer_weight"]
    return (
        f"logits = {w} x log_softmax(transformer) + {round(1 - w, 4)} x log_softmax(linear model on hashed token "
        f"1-3-grams, {branch['table_rows']} table rows), weight chosen on dev; the linear model fitted on "
        f"{branch.get('fitted_on')}; the temperature fitted on dev with {branch.get('temperature_fitted_with')}."
    )


def model_card(manifest: dict) -> str:
    """A human summary of the artifact, generated from its manifest so the two cannot disagree."""
    prov, metrics, checks = manifest["provenance"], manifest["metrics"], manifest["checks"]
    train = prov.get("training_config") or {}
    rows = "\n".join(
        f"| {fmt} | {m['test_accuracy'] * 100:.2f} % | {m['test_macro_f1']:.4f} | {m['n_test']} | "
        f"{m.get('temperature', 1.0):.3f} | {m.get('test_ece', float('nan')):.4f} -> "
        f"{m.get('test_ece_calibrated', float('nan')):.4f} |"
        for fmt, m in metrics.items()
        if isinstance(m, dict) and "test_accuracy" in m
    )
    check_rows = "\n".join(f"| {name} | {'pass' if c['passed'] else 'FAIL'} |" for name, c in checks.items())
    shipped = ", ".join(f"`{f}`" for f in manifest["formats"])
    omitted = ", ".join(f"`{f}`" for f in manifest.get("omitted_formats", {})) or "none"
    return f"""# Model card: {manifest["name"]} (version {manifest["version"]})

Text classification of Chinese texts into {", ".join(manifest["labels"].values())}.
Written by `ernie-cls export` on {prov.get("created")} (git {str(prov.get("git_commit"))[:12]}).

## Training
- Base model: `{prov.get("base_model")}`; data: `{prov.get("data_path")}` (sha256 {prov.get("training_data_sha256")}).
- Recipe: {", ".join(f"{k}={v}" for k, v in train.items())}.
- QAT: {prov.get("qat")}.
- n-gram branch: {_ngram_line(manifest.get("ngram_branch"))}
- Tokenizer: ERNIE WordPiece, {manifest["tokenizer"]["vocab_size"]} tokens, max_seq_len {manifest["max_seq_len"]},
  normalisation v{manifest["tokenizer"]["normalization_version"]} (see tokenizers/README.md of ernie-cls).

## Test metrics (held-out split, measured at export on every format)
| format | accuracy | macro-F1 | n | temperature | ECE raw -> calibrated |
|---|---|---|---|---|---|
{rows}

Scores served are softmax(logits / temperature), the temperature fitted on the dev split at export (temperature
scaling); ECE is the expected calibration error on the test split (15 bins).

{_baseline_section(metrics)}
## Export checks
| check | result |
|---|---|
{check_rows}

## Formats
Shipped: {shipped}. Left out of this copy: {omitted}.

## Intended use and limits
Routing and triage of short customer messages in the domain of the training data. Scores are calibrated on
in-domain dev data (see the temperature above); texts from other domains, very long texts (cut at max_seq_len
tokens) and other languages are outside what it was evaluated on. Review low_confidence answers by hand.
"""


def _baseline_section(metrics: dict) -> str:
    training = metrics.get("training", {})
    base, result = training.get("baseline"), training.get("baseline_verdict")
    if not base or not result:
        return "## Against a baseline\nNot measured (trained before ernie-cls fitted one, or with --no-baseline).\n"
    ours = training.get(base["split"]) or {}
    verdict = "beats it" if result["beats_baseline"] else "**does not beat it**"
    text = f"""## Against a baseline
{base["model"]} on the same {base["split"]} rows (trained on {base["trained_on"]}): accuracy
{base["accuracy"] * 100:.2f} %, macro-F1 {base["macro_f1"]:.4f}. The FP32 model at training
({ours.get("accuracy", 0) * 100:.2f} %, {ours.get("macro_f1", 0):.4f}) {verdict}.
"""
    if base["split"] == "dev":
        text += "There was no test split: dev also chose the checkpoint, which favours the model in this comparison.\n"
    same_rows = base.get("rows_sha256") is not None and base.get("rows_sha256") == metrics.get("test_rows_sha256")
    rows = [
        f"- {fmt}: {m['test_accuracy'] * 100:.2f} %, {m['test_macro_f1']:.4f}: "
        + (
            "beats it"
            if m["test_accuracy"] > base["accuracy"] and m["test_macro_f1"] > base["macro_f1"]
            else "**does not**"
        )
        for fmt, m in metrics.items()
        if same_rows and isinstance(m, dict) and "test_accuracy" in m
    ]
    if rows:
        text += "Each format, measured at export on those same rows:\n" + "\n".join(rows) + "\n"
    return text


def _drop_formats(root: Path, manifest: dict, keep: list[str]) -> None:
    """Delete the files of formats not in `keep` (after every check ran on them) and record what was left out."""
    unknown = set(keep) - set(manifest["formats"])
    if unknown:
        raise ConfigError(
            f"--formats names {sorted(unknown)}, which this export does not produce.",
            f"Choose from {sorted(manifest['formats'])}.",
        )
    omitted = {}
    for fmt in [f for f in manifest["formats"] if f not in keep]:
        spec = manifest["formats"].pop(fmt)
        for key in ("path", "params", "model"):
            if key in spec:
                (root / spec[key]).unlink(missing_ok=True)
        if fmt == "triton":
            shutil.rmtree(root / TRITON_DIR, ignore_errors=True)
        omitted[fmt] = "checked at export, then left out (--formats); `make default-model` rebuilds all formats"
    for d in sorted((p for p in root.rglob("*") if p.is_dir()), reverse=True):
        if not any(d.iterdir()):
            d.rmdir()
    if manifest["default_format"] not in manifest["formats"]:
        raise ConfigError(
            f"--formats leaves out the default format {manifest['default_format']}.",
            "Keep it: the service serves it by default.",
        )
    manifest["omitted_formats"] = omitted


def _formats(int8: dict | None) -> dict[str, dict[str, Any]]:
    formats: dict[str, dict[str, Any]] = {
        "paddle-fp32": {
            "path": f"{PADDLE_FP32}.json",
            "params": f"{PADDLE_FP32}.pdiparams",
            "runtime": "paddle-inference",
            "precision": "fp32",
        },
        "onnx-fp32": {"path": ONNX_FP32, "runtime": "onnxruntime", "precision": "fp32", "opset": ONNX_OPSET},
    }
    if int8 is None:
        return formats
    formats["paddle-int8"] = {
        "path": f"{PADDLE_INT8}.json",
        "params": f"{PADDLE_INT8}.pdiparams",
        "runtime": "paddle-inference",
        "precision": "int8-simulated",
        "note": "the QAT program with fake-quantise ops: same numerics as INT8, runs in FP32 on CPU",
    }
    formats["onnx-int8"] = {
        "path": ONNX_INT8,
        "runtime": "onnxruntime",
        "precision": "int8",
        "opset": ONNX_OPSET,
        "quantization": {
            "form": "QDQ, explicit: what TensorRT builds INT8 engines from, and what ONNX Runtime runs on CPU",
            "scales": f"from QAT, never calibrated: {ONNX_INT8_SCALES} (by weight initializer)",
            "activations": "int8 symmetric per-tensor, zero point 0, one dedicated Q/DQ pair per Linear input",
            "weights": "int8 symmetric per-output-channel (axis 1), zero point 0",
            "outputs": "float: no Q/DQ on GEMM outputs",
            "quantized_matmuls": int8["matmuls"],
            "onnxruntime_integer_gemms": int8["onnxruntime_integer_gemms"],
            "embeddings": "float (TensorRT's Gather takes no quantised tables)",
            "position_ids": "CumSum computed in float32 (TensorRT's CumSum takes no integers)",
            "fp32": "embeddings, attention QK^T and AV matmuls, LayerNorm, softmax, GELU, pooler and classifier head",
        },
        "scales": ONNX_INT8_SCALES,
    }
    formats["triton"] = {
        "path": f"{TRITON_DIR}/{TRITON_ENSEMBLE}/config.pbtxt",
        "runtime": "triton",
        "precision": "int8",
        "model": f"{TRITON_DIR}/ernie_cls/1/model.onnx",
        "note": "ensemble: text in, label + score + probabilities out (docs/triton.md)",
    }
    return formats


def _describe(
    cfg, tmp: Path, tokenizer, label_map: LabelMap, training_config: dict, training_metrics: dict, metrics, checks, int8
) -> dict:
    num_labels = len(label_map)
    formats = _formats(int8)
    for fmt, spec in formats.items():
        if fmt in metrics:
            spec["temperature"] = metrics[fmt]["temperature"]
    return {
        "name": cfg.name or Path(cfg.output).name,
        "version": cfg.version,
        "task": "text-classification",
        "labels": {str(i): label_map.display(i) for i in range(num_labels)},
        "raw_labels": list(label_map.labels),
        "max_seq_len": tokenizer.max_seq_len,
        "tokenizer": {
            "path": TOKENIZER_DIR,
            "do_lower_case": tokenizer.do_lower_case,
            "vocab_size": tokenizer.vocab_size,
            **json.loads((tmp / TOKENIZER_DIR / "ernie_cls_tokenizer.json").read_text(encoding="utf-8")),
        },
        "inputs": [{"name": n, "dtype": "int64", "shape": ["batch", "sequence"]} for n in INPUT_NAMES],
        "outputs": [{"name": OUTPUT_NAME, "dtype": "float32", "shape": ["batch", num_labels]}],
        "formats": formats,
        "default_format": "onnx-int8" if int8 is not None else "onnx-fp32",
        "metrics": {**metrics, "training": _training_metrics(training_metrics)},
        "checks": checks,
        "ngram_branch": _ngram_branch(Path(cfg.checkpoint), training_metrics),
        "provenance": _provenance(training_config, training_metrics, int8),
    }


def _ngram_branch(checkpoint: Path, training_metrics: dict) -> dict | None:
    """What the manifest says about the n-gram branch (the FP32 and QAT checkpoints carry the same: _check_qat);
    `ernie-cls verify` checks the graph against it."""
    branch = ngram_config(checkpoint)
    if branch is None:
        return None
    record = training_metrics.get("ngrams") or {}
    chosen = record.get("dev_by_weight", {}).get(str(branch["ngram_weight"])) or {}
    return {
        "transformer_weight": branch["ngram_weight"],
        "buckets": branch["ngram_buckets"],
        "multipliers": branch["ngram_multipliers"],
        "table_rows": branch["vocab_size"] + 2 * branch["ngram_buckets"],
        # measured when dev chose the share, with the linear model fitted on train (before any refit on train+dev)
        "dev_membership_advantage": chosen.get("membership_advantage"),
        "graph": "int32 Mul/Add/Mod hashing of token-id 1-3-grams, Gather of a float table, ReduceSum",
    }


def _training_metrics(recorded: dict) -> dict:
    """What the training run measured: dev/test of the FP32 checkpoint, and the TF-IDF baseline on the same split."""
    keys = ("dev", "test", "baseline", "baseline_verdict")
    return {k: recorded[k] for k in keys if recorded.get(k) is not None}


_RECIPE_KEYS = (
    "epochs", "batch_size", "batch_tokens", "learning_rate", "max_seq_len", "seed", "dropout", "test_size", "dev_size",
    "pretrain_epochs", "vocab_size", "base_model", "class_weights", "label_smoothing", "adversarial", "noise_augment",
    "noise_rate", "rdrop_alpha", "noise_consistency", "distill_alpha", "time_budget", "max_steps", "ema_decay",
    "eval_every", "patience", "ngrams",
)  # fmt: skip


def _provenance(training_config: dict, training_metrics: dict, int8: dict | None) -> dict:
    qat_keys = "epochs batch_size batch_tokens learning_rate moving_rate ema_decay distill_alpha distill_temperature"
    qat_keys += " seed quantized_layers"
    teacher = training_config.get("teacher")
    return {
        "base_model": training_config.get("base_model"),
        "qat": None if int8 is None else {k: int8["qat_checkpoint"].get(k) for k in qat_keys.split()},
        "training_data_sha256": (training_metrics.get("provenance", {}).get("data") or {}).get("sha256"),
        "training_config": {k: training_config.get(k) for k in _RECIPE_KEYS if k in training_config}
        | {"teacher": Path(teacher).name if teacher else None},
        "versions": _versions(),
        "git_commit": _git_commit(),
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": platform.machine(),
    }
