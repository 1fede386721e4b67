"""`ernie-cls verify exported/<name> --data <labelled file>`: the pre-launch checklist, run on the artifact exactly as
the service loads it.

    artifact ─┬─ 1 integrity       every file present with its manifest sha256; every runtime format loads
              ├─ 2 weights/graph   ONNX checker (full); every initializer used, every node input defined; the
              │                    n-gram branch in the graph iff the manifest says so; INT8 QDQ rules
              ├─ 3 interface       input/output names, dtypes, dynamic axes as the manifest says
              ├─ 4 accuracy        accuracy, macro-F1 and calibration error (raw / as served) per format
              ├─ 5 agreement       Paddle FP32 vs ONNX FP32 logits; INT8 vs FP32 argmax agreement, accuracy delta
              ├─ 6 latency         p50/p95/p99 and throughput at batch 1 and 32 (the served format)
              ├─ 7 edge inputs     empty, overlong, emoji, mixed scripts, control characters via the service's Engine
              ├─ 8 safety          loads with pickle disabled and without paddle; no absolute paths or secrets;
              │                    a membership-inference attack cannot tell training rows from held-out ones
              ├─ 9 explanations    occlusion attributions per token for a few texts
              └─ 10 completeness   what the service and the Triton repository need is there
    -> verify.json + VERIFY.md (+ verify.png); exit 1 when a check fails. Thresholds: VerifyConfig (defaults there).

A check that cannot run on this artifact (e.g. no FP32 format in a compact artifact) is reported "skipped" with the
reason, never "passed".
"""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import re
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ernie_cls.artifact import Artifact, ArtifactError, inside, sha256_file, verify_artifact
from ernie_cls.calibration import expected_calibration_error, softmax
from ernie_cls.errors import ErnieClsError, UserInputError
from ernie_cls.explain import occlusion_attributions, occlusion_inputs
from ernie_cls.privacy import membership_advantage
from ernie_cls.runtime import RUNTIME_FORMATS, load_backend, load_tokenizer, logits_in_batches
from ernie_cls.runtime.paddle_inference import PaddleNotInstalledError
from ernie_cls.tokenization import ErnieTokenizerFast
from release.config import VerifyConfig
from release.qdq_rules import ort_integer_gemms, qdq_problems
from release.triton import repository_problems
from training.data import LabelMap, check_known_labels, load_examples, stratified_split
from training.metrics import classification_metrics

EXAMPLE_TEXTS = ["送餐很快，味道很好，下次还点", "等了两个小时，饭都凉了，差评", "菜品分量太少了，而且还洒了一半"]


@dataclass
class Check:
    name: str
    status: str = "passed"  # passed | failed | skipped
    details: dict = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    def fail(self, problem: str) -> None:
        self.status = "failed"
        self.problems.append(problem)


class VerifyError(ErnieClsError):
    pass


def run_verify(cfg: VerifyConfig) -> dict:
    started = time.perf_counter()
    checks: list[Check] = []
    try:
        artifact = verify_artifact(cfg.artifact)
        integrity_error = None
    except ArtifactError as err:
        artifact, integrity_error = None, err
    check = Check("1 integrity")
    checks.append(check)
    if artifact is None:
        check.fail(f"{integrity_error.message} {integrity_error.hint}")  # type: ignore[union-attr]
        return _finish(cfg, None, checks, {}, started)
    tokenizer = load_tokenizer(artifact)
    runners = _load_runners(artifact, cfg.threads, check)
    check.details["formats_loaded"] = sorted(runners)
    check.details["files_verified"] = len(artifact.spec.files)

    checks.append(_check_graphs(artifact))
    checks.append(_check_interface(artifact))
    data = labelled_data(cfg, artifact)
    ids = tokenizer.encode_ids(data["texts"]) if data else []  # once: every format shares the tokenizer
    logits = {fmt: logits_in_batches(run, tokenizer, ids) for fmt, run in runners.items()} if data else {}
    checks.append(_check_accuracy(cfg, artifact, data, logits))
    checks.append(_check_agreement(cfg, data, logits))
    default_format = artifact.spec.default_format
    checks.append(_check_latency(cfg, runners.get(default_format), tokenizer, ids, default_format))
    checks.append(_check_edge_inputs(artifact))
    safety = _check_safety(artifact)
    served = (runners.get(default_format), artifact.spec.formats[default_format].temperature)
    _check_memorisation(cfg, safety, served, tokenizer, data, logits.get(default_format))
    checks.append(safety)
    explained = _explanations(cfg, runners.get(default_format), tokenizer, artifact, data)
    checks.append(explained)
    checks.append(_check_completeness(artifact))
    return _finish(cfg, artifact, checks, {"default_format": default_format}, started)


# ------------------------------------------------------------------------------------------------- loading
def _load_runners(artifact: Artifact, threads: int, check: Check) -> dict[str, Callable]:
    runners = {}
    for fmt in RUNTIME_FORMATS:
        if fmt not in artifact.spec.formats:
            continue
        try:
            runners[fmt] = load_backend(artifact, fmt, threads).infer
        except ErnieClsError as err:
            if isinstance(err, PaddleNotInstalledError):  # installed but broken is a failure, not a skip
                check.details.setdefault("not_loaded", {})[fmt] = "paddlepaddle not installed (serve-only install)"
                continue
            check.fail(f"{fmt} does not load: {err.message}")
        except Exception as err:  # a runtime's own error: the model file is broken
            check.fail(f"{fmt} does not load: {type(err).__name__}: {err}")
    return runners


def labelled_data(cfg: VerifyConfig, artifact: Artifact) -> dict | None:
    """Texts and label ids from --data: the artifact's own test split when the file is the one it trained on."""
    if not cfg.data:
        return None

    examples, report = load_examples(cfg.data, cfg.text_col, cfg.label_col)
    provenance = artifact.manifest.get("provenance", {})
    training = provenance.get("training_config", {})
    split, members = "all", []
    if cfg.split in ("auto", "test") and report.sha256 == provenance.get("training_data_sha256") and training:
        splits = stratified_split(examples, training["test_size"], training["dev_size"], training["seed"])
        examples, members = splits.test, splits.train
        split = "test (the artifact's own held-out split)"
    elif cfg.split == "test":
        raise VerifyError(
            f"{cfg.data} is not the file this model was trained on (sha256 differs), so its test split is unknown.",
            "Pass the held-out file itself with --split all.",
        )
    if cfg.max_examples:
        examples = examples[: cfg.max_examples]
    label_map = LabelMap(list(artifact.spec.raw_labels))
    check_known_labels(examples, label_map, cfg.data)
    members = random.Random(0).sample(members, min(len(members), cfg.membership_rows))
    return {
        "texts": [e.text for e in examples],
        "labels": np.array([label_map.id_of(e.label) for e in examples]),
        "split": split,
        "path": cfg.data,
        "member_texts": [e.text for e in members],  # training rows (only when --data is the training file)
        "member_labels": np.array([label_map.id_of(e.label) for e in members], dtype=np.int64),
    }


# ------------------------------------------------------------------------------------------------- checks
def _onnx_files(artifact: Artifact) -> dict[str, Path]:
    return {
        fmt: inside(artifact.root, spec.path)
        for fmt, spec in artifact.spec.formats.items()
        if spec.runtime == "onnxruntime"
    }


def _check_graphs(artifact: Artifact) -> Check:
    import onnx

    check = Check("2 weights/graph consistency")
    for fmt, path in _onnx_files(artifact).items():
        data = path.read_bytes()  # read once: parsed here, and given to ONNX Runtime for the GEMM count
        model = onnx.load_from_string(data)
        try:
            onnx.checker.check_model(model, full_check=True)
        except Exception as err:
            check.fail(f"{fmt}: ONNX checker: {err}")
            continue
        graph = model.graph
        produced = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
        used: set[str] = set()
        for node in graph.node:
            used.update(node.input)
            produced.update(node.output)
        for node in graph.node:  # subgraphs (If/Loop) are not used by these models; their inputs would show here
            for name in node.input:
                if name not in produced:
                    check.fail(f"{fmt}: node {node.name} reads {name!r}, which nothing defines")
        used.update(o.name for o in graph.output)
        unused = [i.name for i in graph.initializer if i.name not in used]
        if unused:
            check.fail(f"{fmt}: {len(unused)} weights are in the file but not used by the graph: {unused[:3]}")
        check.details[fmt] = {
            "nodes": len(graph.node),
            "weights": len(graph.initializer),
            "opset": model.opset_import[0].version,
        }
        _check_ngram_branch(check, fmt, graph, artifact.manifest)
        if artifact.spec.formats[fmt].scales:
            _check_int8_graph(check, artifact, fmt, model, data)
    paddle_formats = [f for f in artifact.spec.formats if f.startswith("paddle")]
    if paddle_formats:
        check.details["paddle"] = "program and parameters load together (check 1)"
    return check


def _check_ngram_branch(check: Check, fmt: str, graph, manifest: dict) -> None:
    """The manifest's `ngram_branch` is what the graph holds: a [table_rows, labels] float table and integer Mod
    hashing when it claims the branch, neither when it does not."""
    from onnx import TensorProto

    branch = manifest.get("ngram_branch")
    rows = branch["table_rows"] if branch else None
    tables = [i for i in graph.initializer if len(i.dims) == 2 and i.dims[1] == len(manifest["labels"])]
    has_table = any(i.dims[0] == rows and i.data_type == TensorProto.FLOAT for i in tables) if rows else False
    has_mod = any(n.op_type == "Mod" for n in graph.node)
    check.details[fmt]["ngram_branch"] = {"claimed": branch is not None, "table": has_table, "mod_hashing": has_mod}
    if branch is not None and not (has_table and has_mod):
        check.fail(f"{fmt}: the manifest claims an n-gram branch ({rows} table rows) that the graph does not hold")
    if branch is None and has_mod:
        check.fail(f"{fmt}: the graph hashes n-grams (Mod nodes) but the manifest claims no n-gram branch")


def _check_int8_graph(check: Check, artifact: Artifact, fmt: str, model, data: bytes) -> None:
    """The INT8 file still keeps the TensorRT/QAT rules with the scales the artifact records, and ONNX Runtime still
    runs every quantised MatMul as an integer GEMM (what export checked, re-checked on the files as shipped)."""
    spec, scales = artifact.manifest["formats"][fmt], artifact.spec.formats[fmt].scales or ""
    problems = qdq_problems(model, json.loads(inside(artifact.root, scales).read_text(encoding="utf-8")))
    check.details[fmt]["qdq_rules"] = "kept" if not problems else f"{len(problems)} broken"
    for problem in problems[:5]:
        check.fail(f"{fmt}: {problem}")
    expected = spec.get("quantization", {}).get("quantized_matmuls")
    gemms = check.details[fmt]["onnxruntime_integer_gemms"] = ort_integer_gemms(data)
    if gemms != expected:
        check.fail(f"{fmt}: ONNX Runtime runs {gemms} integer GEMMs, the manifest promises {expected}")


_ORT_DTYPES = {"int64": "tensor(int64)", "float32": "tensor(float)"}


def _check_interface(artifact: Artifact) -> Check:
    import onnxruntime as ort

    check = Check("3 interface")
    spec_in, spec_out = artifact.manifest["inputs"], artifact.manifest["outputs"]
    for fmt, path in _onnx_files(artifact).items():
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        sides = (("input", session.get_inputs(), spec_in), ("output", session.get_outputs(), spec_out))
        for kind, actual, expected in sides:
            if [a.name for a in actual] != [e["name"] for e in expected]:
                check.fail(
                    f"{fmt}: {kind} names {[a.name for a in actual]} != manifest {[e['name'] for e in expected]}"
                )
                continue
            for a, e in zip(actual, expected, strict=True):
                if a.type != _ORT_DTYPES[e["dtype"]]:
                    check.fail(f"{fmt}: {a.name} is {a.type}, manifest says {e['dtype']}")
                for axis, (got, want) in enumerate(zip(a.shape, e["shape"], strict=True)):
                    dynamic_ok = isinstance(want, str) and not isinstance(got, int)
                    if not dynamic_ok and got != want:
                        check.fail(f"{fmt}: {a.name} axis {axis} is {got}, manifest says {want}")
        check.details[fmt] = {
            "inputs": [(i.name, i.type, list(i.shape)) for i in session.get_inputs()],
            "outputs": [(o.name, o.type, list(o.shape)) for o in session.get_outputs()],
        }
    return check


def _check_accuracy(cfg: VerifyConfig, artifact: Artifact, data: dict | None, logits: dict) -> Check:
    check = Check("4 accuracy")
    if data is None:
        check.status = "skipped"
        check.details["reason"] = "no --data given"
        return check
    names = list(artifact.spec.labels)
    check.details["data"] = {"path": data["path"], "split": data["split"], "n": len(data["texts"])}
    recorded = artifact.manifest.get("metrics", {})
    for fmt, rows in logits.items():
        metrics = classification_metrics(data["labels"], rows.argmax(1), names)
        temperature = artifact.spec.formats[fmt].temperature
        entry = {
            "accuracy": round(metrics["accuracy"], 4),
            "macro_f1": round(metrics["macro_f1"], 4),
            "temperature": temperature,
            "ece_raw": round(expected_calibration_error(softmax(rows), data["labels"]), 4),
            "ece_served": round(expected_calibration_error(softmax(rows, temperature), data["labels"]), 4),
        }
        reference = recorded.get(fmt, {}).get("test_accuracy")
        if reference is not None and data["split"].startswith("test"):
            entry["recorded_at_export"] = round(reference, 4)
            if metrics["accuracy"] < reference - cfg.max_accuracy_drop:
                check.fail(f"{fmt}: accuracy {metrics['accuracy']:.4f} is below the exported {reference:.4f}")
        if metrics["accuracy"] < cfg.min_accuracy:
            check.fail(f"{fmt}: accuracy {metrics['accuracy']:.4f} < --min-accuracy {cfg.min_accuracy}")
        check.details[fmt] = entry
    return check


def _check_agreement(cfg: VerifyConfig, data: dict | None, logits: dict) -> Check:
    check = Check("5 cross-format agreement")
    if data is None:
        check.status, check.details["reason"] = "skipped", "no --data given"
        return check
    if "paddle-fp32" in logits and "onnx-fp32" in logits:
        diff = float(np.abs(logits["paddle-fp32"] - logits["onnx-fp32"]).max())
        check.details["paddle-fp32 vs onnx-fp32"] = {"max_abs_logit_diff": diff}
        if diff > cfg.max_fp32_logit_diff:
            check.fail(f"Paddle FP32 and ONNX FP32 logits differ by {diff:.2e} > {cfg.max_fp32_logit_diff}")
    reference = next((f for f in ("onnx-fp32", "paddle-fp32") if f in logits), None)
    int8 = [f for f in logits if "int8" in f]
    pairs = [(f, reference) for f in int8] if reference else [(a, b) for a, b in itertools.pairwise(int8)]
    for fmt, ref in pairs:
        agree = float((logits[fmt].argmax(1) == logits[ref].argmax(1)).mean())
        acc = float((logits[fmt].argmax(1) == data["labels"]).mean())
        ref_acc = float((logits[ref].argmax(1) == data["labels"]).mean())
        check.details[f"{fmt} vs {ref}"] = {
            "argmax_agreement": round(agree, 4),
            "accuracy_delta": round(acc - ref_acc, 4),
        }
        if agree < cfg.min_int8_agreement:
            check.fail(f"{fmt} agrees with {ref} on {agree:.3f} of texts < {cfg.min_int8_agreement}")
        if ref.endswith("fp32") and ref_acc - acc > cfg.max_int8_accuracy_drop:
            check.fail(f"{fmt} loses {ref_acc - acc:.4f} accuracy vs {ref} > {cfg.max_int8_accuracy_drop}")
    if not pairs and "paddle-fp32 vs onnx-fp32" not in check.details:
        check.status, check.details["reason"] = "skipped", "only one runtime format in the artifact"
    elif not reference:
        check.details["note"] = "no FP32 format in this artifact: INT8 forms compared with each other"
    return check


def _check_latency(cfg: VerifyConfig, run, tokenizer, ids: list[list[int]], fmt: str) -> Check:
    check = Check("6 latency")
    if run is None:
        check.status, check.details["reason"] = "skipped", f"{fmt} did not load"
        return check
    encoded = ids[:2048] or tokenizer.encode_ids(EXAMPLE_TEXTS * 64)
    rng = np.random.default_rng(0)
    for batch in (1, 32):
        times: list[float] = []
        start = time.perf_counter()
        while time.perf_counter() - start < 2.0 or len(times) < 10:
            pick = rng.choice(len(encoded), size=batch)
            ids, types = tokenizer.pad([encoded[i] for i in pick])
            t0 = time.perf_counter()
            run(ids, types)
            times.append(time.perf_counter() - t0)
        ms = np.array(times) * 1000
        check.details[f"batch {batch}"] = {
            "p50_ms": round(float(np.percentile(ms, 50)), 2),
            "p95_ms": round(float(np.percentile(ms, 95)), 2),
            "p99_ms": round(float(np.percentile(ms, 99)), 2),
            "texts_per_second": round(batch * len(times) / sum(times), 1),
        }
    check.details["format"], check.details["threads"] = fmt, cfg.threads
    if check.details["batch 1"]["p99_ms"] > cfg.max_p99_ms_batch1:
        check.fail(f"p99 at batch 1 is {check.details['batch 1']['p99_ms']} ms > {cfg.max_p99_ms_batch1} ms")
    return check


EDGE_CASES: list[
    tuple[str, str, bool, str]
] = [  # (name, text, truncate, expected: "result" | "rejected" | "truncated")
    ("empty", "", False, "rejected"),
    ("whitespace and zero-width only", " \u200b\u3000\t", False, "rejected"),
    ("overlong", "好吃" * 1500, False, "rejected"),
    ("overlong, truncate=true", "好吃" * 1500, True, "truncated"),
    ("emoji only", "😀😡👍🏻", False, "result"),
    ("mixed scripts", "iPhone很好用 123 ＡＢＣ café", False, "result"),
    ("control characters", "\x00\x07好\x1f吃\x7f", False, "result"),
    ("RTL and BOM marks", "\u202e好吃\u202c\ufeff", False, "result"),
    ("special-token literal", "[SEP][CLS] 退款", False, "result"),
]


def _check_edge_inputs(artifact: Artifact) -> Check:
    from service.config import Settings
    from service.engine import Engine

    check = Check("7 edge inputs")
    engine = Engine(Settings(artifact=str(artifact.root), workers=1, threads=1, cache_size=0))
    engine.load()
    if engine.backend is None:
        check.fail(f"the service's engine does not load: {engine.not_ready_reason}")
        return check

    async def run_all() -> None:
        engine.start()
        try:
            for name, text, truncate, expected in EDGE_CASES:
                try:
                    result = (await engine.classify([text], 1, truncate, time.monotonic() + 10))[0]
                    got = "truncated" if result.truncated else "result"
                    detail = f"{result.label} {result.score:.3f}"
                except UserInputError as err:
                    got, detail = "rejected", err.message
                check.details[name] = {"expected": expected, "got": got, "detail": detail[:120]}
                if got != expected:
                    check.fail(f"{name}: expected {expected}, got {got} ({detail[:80]})")
        finally:
            await engine.stop()

    asyncio.run(run_all())
    return check


_ABSOLUTE_PATH = re.compile(
    r"""(?:^|["'\s=])(/(?:home|root|Users|tmp|work|mnt|var|opt)/[^\s"']*|[A-Za-z]:\\[^\s"']+)"""
)
_SECRETS = re.compile(r"AKIA[0-9A-Z]{16}|sk-[A-Za-z0-9]{20,}|ghp_[A-Za-z0-9]{30,}|-----BEGIN [A-Z ]*PRIVATE KEY|"
                      r"(?i:password|passwd|api[_-]?key|secret)\s*[\"']?\s*[:=]")  # fmt: skip


def _check_safety(artifact: Artifact) -> Check:
    check = Check("8 safety")
    code = (
        "import pickle, sys\n"
        "def refuse(*a, **k):\n    raise AssertionError('pickle used')\n"
        "pickle.load = pickle.loads = pickle.Unpickler = refuse\n"
        "from service.config import Settings\nfrom service.engine import Engine\n"
        f"e = Engine(Settings(artifact={str(artifact.root)!r}, workers=1))\ne.load()\n"
        "assert e.backend is not None, e.not_ready_reason\n"
        "assert 'paddle' not in sys.modules, 'paddle imported'\nprint('ok')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False)
    check.details["loads_without_pickle_or_paddle"] = done.returncode == 0
    if done.returncode != 0:
        check.fail(f"the serving load path needs pickle or paddle: {done.stderr.strip()[-200:]}")
    texts = {"manifest.json": (artifact.root / "manifest.json").read_text(encoding="utf-8")}
    for rel in artifact.spec.files:
        if rel.endswith((".json", ".pbtxt", ".md", ".txt")) and not rel.endswith("vocab.txt"):
            texts[rel] = (artifact.root / rel).read_text(encoding="utf-8", errors="replace")
    for rel, text in texts.items():
        for m in _ABSOLUTE_PATH.finditer(text):
            check.fail(f"{rel} contains an absolute path: {m.group(1)[:60]}")
        for m in _SECRETS.finditer(text):
            check.fail(f"{rel} looks like it contains a secret: {m.group(0)[:20]}...")
    check.details["files_scanned"] = sorted(texts)
    import onnx

    for fmt, path in _onnx_files(artifact).items():
        model = onnx.load(str(path), load_external_data=False)
        external = [t.name for t in model.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
        if external:
            check.fail(f"{fmt} keeps weights in external files ({external[:2]}), which the manifest does not cover")
    return check


def _check_memorisation(
    cfg: VerifyConfig, check: Check, served: tuple, tokenizer: ErnieTokenizerFast, data: dict | None, held_out_logits
) -> None:
    """Part of the safety check: a loss-threshold membership-inference attack on the served format (ernie_cls/
    privacy.py) with training rows against held-out rows; fails above --max-membership-advantage."""
    run, temperature = served
    if run is None or data is None or held_out_logits is None or not data["member_texts"]:
        check.details["membership_inference"] = "skipped: needs --data = the file the model was trained on"
        check.details.setdefault("warnings", []).append(
            "membership inference not checked: pass the training file itself as --data (byte for byte)"
        )
        return
    rows = min(len(data["texts"]), cfg.membership_rows)
    member_logits = logits_in_batches(run, tokenizer, tokenizer.encode_ids(data["member_texts"]))
    members = _true_label_probability(member_logits, data["member_labels"], temperature)
    held_out = _true_label_probability(held_out_logits[:rows], data["labels"][:rows], temperature)
    report = membership_advantage(members, held_out)
    check.details["membership_inference"] = {
        **{k: round(v, 4) if isinstance(v, float) else v for k, v in asdict(report).items()},
        "bound": cfg.max_membership_advantage,
        "attack": "p(true label) >= threshold means 'training row'; advantage = TPR - FPR at the best threshold",
    }
    # Sampling noise alone reaches `noise_level` 5 % of the time: a bound below it would fail models that memorised
    # nothing, so the check fails only above both.
    if report.advantage > max(cfg.max_membership_advantage, report.noise_level):
        check.fail(
            f"a membership-inference attack tells training rows from held-out ones with advantage "
            f"{report.advantage:.3f} > {cfg.max_membership_advantage} (noise level {report.noise_level:.3f}): the "
            "model memorises its training data; train with fewer epochs, more data or more regularisation"
        )


def _true_label_probability(logits: np.ndarray, labels: np.ndarray, temperature: float) -> np.ndarray:
    return softmax(logits, temperature)[np.arange(len(labels)), labels]


def _explanations(cfg: VerifyConfig, run, tokenizer: ErnieTokenizerFast, artifact: Artifact, data) -> Check:
    """Occlusion: each word piece replaced by [UNK] in turn; its attribution is the drop in the predicted label's
    logit margin. Model-agnostic, runs on the INT8 model as served."""
    check = Check("9 explanations")
    if run is None:
        check.status, check.details["reason"] = "skipped", "the served format did not load"
        return check
    texts = (data["texts"] if data else EXAMPLE_TEXTS)[: cfg.explain] if cfg.explain else []
    labels = artifact.manifest["labels"]
    samples = []
    for text in texts:
        ids = tokenizer.encode_ids([text])[0]
        pieces = tokenizer.tokenize(text)[: len(ids) - 2]
        batch, types = tokenizer.pad(occlusion_inputs(ids, tokenizer.unk_id))
        logits = run(batch, types)
        label, scores = occlusion_attributions(logits)
        probs = softmax(logits[:1])
        if not np.all(np.isfinite(scores)):
            check.fail(f"non-finite attributions for {text[:20]!r}")
        samples.append({
            "text": text, "label": labels[str(label)], "score": round(float(probs[0, label]), 4),
            "tokens": [[p, round(s, 6)] for p, s in zip(pieces, scores, strict=True)],
            "max_abs_attribution": float(np.abs(scores).max()) if scores else 0.0,
        })  # fmt: skip
    check.details["method"] = "occlusion ([UNK] per word piece), drop in the predicted label's logit margin"
    check.details["samples"] = samples
    if texts and not any(x["max_abs_attribution"] > 0 for x in samples):
        check.fail("every attribution is zero: the model ignores its input")
    return check


def _check_completeness(artifact: Artifact) -> Check:
    check = Check("10 package completeness")
    spec, root = artifact.spec, artifact.root
    needed = {
        "tokenizer vocabulary": Path(spec.tokenizer_path) / "vocab.txt",
        "tokenizer settings": Path(spec.tokenizer_path) / "ernie_cls_tokenizer.json",
        "served model": Path(spec.formats[spec.default_format].path),
        "model card": Path("MODEL_CARD.md"),
    }
    if "triton" in spec.formats:
        for problem in repository_problems(root / "triton", list(spec.labels)):
            check.fail(f"triton/{problem}")
        for config in root.glob("triton/*/config.pbtxt"):
            needed[f"Triton {config.parent.name}"] = config.relative_to(root)
    for what, rel in needed.items():
        if not (root / rel).is_file():
            check.fail(f"{what} is missing: {rel}")
        elif rel.as_posix() not in spec.files:
            check.fail(f"{what} ({rel}) is not covered by the manifest's sha256 table")
    labels = artifact.manifest.get("labels", {})
    if sorted(labels, key=int) != [str(i) for i in range(len(labels))]:
        check.fail("the manifest's labels are not numbered 0..K-1")
    check.details["present"] = {k: str(v) for k, v in needed.items()}
    return check


# ------------------------------------------------------------------------------------------------- report
def _finish(cfg: VerifyConfig, artifact: Artifact | None, checks: list[Check], extra: dict, started: float) -> dict:
    name = (artifact.spec.name or "artifact") if artifact else Path(cfg.artifact).name
    out = Path(cfg.output or f"reports/verify-{name}")
    out.mkdir(parents=True, exist_ok=True)
    report = {
        "artifact": str(cfg.artifact),
        "manifest_sha256": sha256_file(Path(cfg.artifact) / "manifest.json") if artifact else None,
        "passed": all(c.status != "failed" for c in checks),
        "seconds": round(time.perf_counter() - started, 1),
        "thresholds": {k: v for k, v in asdict(cfg).items() if k.startswith(("max_", "min_")) and k != "max_examples"},
        **extra,
        "checks": [asdict(c) for c in checks],
    }
    (out / "verify.json").write_text(json.dumps(report, indent=2, ensure_ascii=False, default=str), encoding="utf-8")
    _plot(report, out / "verify.png")
    (out / "VERIFY.md").write_text(_markdown(report), encoding="utf-8")
    report["output"] = str(out)
    return report


def _markdown(report: dict) -> str:
    icon = {"passed": "PASS", "failed": "FAIL", "skipped": "skip"}
    lines = [
        f"# Pre-launch verification: {report['artifact']}",
        "",
        f"**{'PASSED' if report['passed'] else 'FAILED'}** in {report['seconds']} s. "
        f"Thresholds: `{json.dumps(report['thresholds'])}`. Manifest sha256 (pin it with "
        f"`ERNIE_CLS_ARTIFACT_SHA256`): `{report.get('manifest_sha256')}`.",
        "",
        "| check | result | problems |",
        "|---|---|---|",
    ]
    for c in report["checks"]:
        lines.append(f"| {c['name']} | {icon[c['status']]} | {'; '.join(c['problems']) or ''} |")
    for c in report["checks"]:
        lines += ["", f"## {c['name']}: {icon[c['status']]}", ""]
        if c["name"].startswith("9"):
            for s in c["details"].get("samples", []):
                marked = " ".join(f"{t}({v:+.2f})" for t, v in s["tokens"])
                lines.append(f"- **{s['label']}** ({s['score']}): {marked}")
            lines.append("")
            lines.append("Attributions: drop in the predicted label's logit margin when the piece is masked "
                         "(positive: the piece supports the label). Plot: verify.png.")  # fmt: skip
        else:
            lines.append("```json")
            lines.append(json.dumps(c["details"], indent=2, ensure_ascii=False, default=str)[:3000])
            lines.append("```")
    return "\n".join(lines) + "\n"


def _plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    explain = next((c for c in report["checks"] if c["name"].startswith("9")), None)
    samples = explain["details"].get("samples", []) if explain else []
    latency = next((c for c in report["checks"] if c["name"].startswith("6")), None)
    fig, axes = plt.subplots(1 + len(samples), 1, figsize=(10, 1.2 + 1.1 * (1 + len(samples))), squeeze=False)
    ax = axes[0][0]
    if latency and latency["status"] != "skipped":
        keys = [k for k in latency["details"] if k.startswith("batch")]
        for i, p in enumerate(("p50_ms", "p95_ms", "p99_ms")):
            ax.bar(np.arange(len(keys)) + (i - 1) * 0.25, [latency["details"][k][p] for k in keys], 0.25, label=p)
        ax.set_xticks(range(len(keys)), keys)
        ax.set_ylabel("ms")
        ax.legend(fontsize=7)
    ax.set_title("latency of the served format", fontsize=9)
    for row, s in enumerate(samples, start=1):
        ax = axes[row][0]
        values = np.array([v for _, v in s["tokens"]]) if s["tokens"] else np.zeros(1)
        ax.imshow(
            values[None, :], cmap="RdBu", vmin=-abs(values).max() - 1e-9, vmax=abs(values).max() + 1e-9, aspect="auto"
        )
        ax.set_yticks([])
        ax.set_xticks(range(len(s["tokens"])), [f"{i}" for i in range(len(s["tokens"]))], fontsize=6)
        ax.set_title(f"{s['label']} {s['score']}: token attributions (index = piece; text in VERIFY.md)", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
