"""`ernie-cls verify`: the ten checks pass on a sound artifact and each catches what it is for."""

from __future__ import annotations

import json
import shutil

import pytest

from ernie_cls.artifact import write_manifest
from release.verify import VerifyConfig, run_verify

NAMES = [
    "1 integrity",
    "2 weights/graph consistency",
    "3 interface",
    "4 accuracy",
    "5 cross-format agreement",
    "6 latency",
    "7 edge inputs",
    "8 safety",
    "9 explanations",
    "10 package completeness",
]


def by_name(report: dict) -> dict:
    return {c["name"]: c for c in report["checks"]}


@pytest.fixture(scope="module")
def sound_report(int8_artifact, small_csv, tmp_path_factory):
    out = tmp_path_factory.mktemp("verify")
    return run_verify(VerifyConfig(str(int8_artifact), data=str(small_csv), output=str(out), explain=2)), out


def test_sound_artifact_passes_every_check_and_writes_the_report(sound_report):
    report, out = sound_report
    checks = by_name(report)
    assert list(checks) == NAMES
    assert report["passed"], [c["problems"] for c in report["checks"]]
    assert all(c["status"] == "passed" for c in report["checks"]), {n: c["status"] for n, c in checks.items()}
    # every runtime format was evaluated and compared
    assert {"paddle-fp32", "onnx-fp32", "onnx-int8", "paddle-int8"} <= set(checks["4 accuracy"]["details"])
    assert checks["5 cross-format agreement"]["details"]["paddle-fp32 vs onnx-fp32"]["max_abs_logit_diff"] < 1e-4
    assert checks["6 latency"]["details"]["batch 32"]["p99_ms"] >= checks["6 latency"]["details"]["batch 32"]["p50_ms"]
    samples = checks["9 explanations"]["details"]["samples"]
    assert len(samples) == 2 and all(s["tokens"] for s in samples)
    assert (out / "VERIFY.md").read_text().count("PASS") >= 10
    assert (out / "verify.png").stat().st_size > 5_000
    assert json.loads((out / "verify.json").read_text())["passed"] is True


def test_a_modified_model_fails_integrity(int8_artifact, tmp_path):
    art = tmp_path / "art"
    shutil.copytree(int8_artifact, art)
    model = art / "onnx" / "model.int8.onnx"
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 1
    model.write_bytes(bytes(data))
    report = run_verify(VerifyConfig(str(art), output=str(tmp_path / "out")))
    assert not report["passed"]
    assert "sha256 mismatch" in " ".join(by_name(report)["1 integrity"]["problems"])


def test_absolute_paths_and_secrets_in_the_package_fail_safety(int8_artifact, tmp_path):
    art = tmp_path / "art"
    shutil.copytree(int8_artifact, art)
    card = art / "MODEL_CARD.md"
    card.write_text(card.read_text() + "\ntrained from /home/alice/data.csv, api_key = 'abc'\n")
    manifest = json.loads((art / "manifest.json").read_text())
    manifest.pop("files")
    write_manifest(art, manifest)  # a consistent artifact: only the safety scan can object
    report = run_verify(VerifyConfig(str(art), output=str(tmp_path / "out"), explain=0))
    safety = by_name(report)["8 safety"]
    assert safety["status"] == "failed"
    assert any("absolute path" in p for p in safety["problems"]) and any("secret" in p for p in safety["problems"])
    assert by_name(report)["1 integrity"]["status"] == "passed"


def test_missing_triton_model_fails_completeness(int8_artifact, tmp_path):
    art = tmp_path / "art"
    shutil.copytree(int8_artifact, art)
    for f in art.glob("triton/*/1/model.onnx"):
        f.unlink()
    manifest = json.loads((art / "manifest.json").read_text())
    manifest.pop("files")
    write_manifest(art, manifest)
    report = run_verify(VerifyConfig(str(art), output=str(tmp_path / "out"), explain=0))
    assert any("model.onnx" in p for p in by_name(report)["10 package completeness"]["problems"])


def test_without_data_accuracy_and_agreement_are_skipped_not_passed(int8_artifact, tmp_path):
    report = run_verify(VerifyConfig(str(int8_artifact), output=str(tmp_path / "out"), explain=0))
    checks = by_name(report)
    assert checks["4 accuracy"]["status"] == "skipped" and checks["5 cross-format agreement"]["status"] == "skipped"


def test_a_triton_repository_missing_a_piece_fails_completeness(int8_artifact, tmp_path):
    art = tmp_path / "art"
    shutil.copytree(int8_artifact, art)
    (art / "triton/ernie_cls_tokenizer/1/model.py").unlink()
    (art / "triton/ernie_cls_postprocess/labels.txt").write_text("positive\nnegative\n")
    write_manifest(art, json.loads((art / "manifest.json").read_text()))  # re-signed: integrity passes, the gap stays
    report = run_verify(VerifyConfig(str(art), output=str(tmp_path / "out")))
    problems = " ".join(by_name(report)["10 package completeness"]["problems"])
    assert "ernie_cls_tokenizer/1/model.py is missing" in problems
    assert "ernie_cls_postprocess/labels.txt does not list the manifest's labels" in problems


def test_an_int8_file_that_breaks_the_qdq_rules_fails_the_graph_check(int8_artifact, tmp_path):
    """Re-signed after the edit (integrity passes): a pair in front of the classifier is caught before launch."""
    import onnx
    from onnx import helper

    art = tmp_path / "art"
    shutil.copytree(int8_artifact, art)
    path = art / "onnx" / "model.int8.onnx"
    model = onnx.load(str(path))
    q = next(n for n in model.graph.node if n.op_type == "QuantizeLinear")
    head = [n for n in model.graph.node if n.op_type == "MatMul"][-1]  # the classifier, float by design
    at = list(model.graph.node).index(head)  # keep the graph topologically sorted: the checker passes
    model.graph.node.insert(at, helper.make_node("DequantizeLinear", ["hq", q.input[1], q.input[2]], ["hdq"]))
    model.graph.node.insert(at, helper.make_node("QuantizeLinear", [head.input[0], q.input[1], q.input[2]], ["hq"]))
    head.input[0] = "hdq"
    onnx.save(model, str(path))
    write_manifest(art, json.loads((art / "manifest.json").read_text()))
    report = run_verify(VerifyConfig(str(art), output=str(tmp_path / "out")))
    problems = " ".join(by_name(report)["2 weights/graph consistency"]["problems"])
    assert "not a QAT layer" in problems and not report["passed"]


def test_the_membership_check_runs_on_the_training_file_and_fails_a_model_that_memorised(sound_report):
    import numpy as np

    from release.verify import Check, _check_memorisation

    report, _ = sound_report
    measured = by_name(report)["8 safety"]["details"]["membership_inference"]
    assert measured["members"] > 0 and measured["non_members"] > 0 and 0 <= measured["advantage"] <= 1

    class Tok:  # logits_in_batches only pads ids
        def pad(self, ids):
            return np.array(ids), np.zeros((len(ids), 1), dtype=np.int64)

        def encode_ids(self, texts):
            return [[i] for i in range(len(texts))]

    rng = np.random.default_rng(0)
    n = 600
    labels = rng.integers(0, 2, n)
    unsure = np.stack([rng.normal(0, 1, n), rng.normal(0, 1, n)], 1)  # held-out rows: no better than chance

    def confident(ids, types):  # every training row right with certainty
        return np.stack([np.where(labels[ids[:, 0]] == 0, 9.0, -9.0), np.zeros(len(ids))], 1)

    def as_unsure(ids, types):
        return unsure[ids[:, 0]]

    data = {"member_texts": ["x"] * n, "member_labels": labels, "texts": ["y"] * n, "labels": labels}
    cfg = VerifyConfig("a", max_membership_advantage=0.15)
    memorised = Check("8 safety")
    _check_memorisation(cfg, memorised, (confident, 1.0), Tok(), data, unsure)
    assert memorised.status == "failed" and "membership-inference" in memorised.problems[0]
    assert memorised.details["membership_inference"]["advantage"] > 0.5
    # the same scores on both sides: within noise, passes even with a bound below the noise level
    same = Check("8 safety")
    _check_memorisation(VerifyConfig("a", max_membership_advantage=0.0), same, (as_unsure, 1.0), Tok(), data, unsure)
    assert same.status == "passed", same.problems


def test_without_the_training_file_the_membership_check_says_it_was_skipped(int8_artifact, tmp_path):
    report = run_verify(VerifyConfig(str(int8_artifact), output=str(tmp_path / "out"), explain=0))
    safety = by_name(report)["8 safety"]["details"]
    assert safety["membership_inference"].startswith("skipped") and "training file" in safety["warnings"][0]


def test_the_attack_advantage_is_near_zero_for_one_distribution_and_near_one_for_memorised_rows():
    import numpy as np

    from ernie_cls.privacy import membership_advantage

    rng = np.random.default_rng(0)
    same = membership_advantage(rng.beta(8, 2, 2000), rng.beta(8, 2, 2000))
    assert same.advantage <= same.noise_level  # no memorisation: within sampling noise
    memorised = membership_advantage(rng.uniform(0.99, 1.0, 2000), rng.beta(8, 2, 2000))
    assert memorised.advantage > 0.9 and 0.9 < memorised.threshold <= 1.0
    half = membership_advantage(np.r_[np.ones(1000), rng.beta(8, 2, 1000)], rng.beta(8, 2, 2000))
    assert abs(half.advantage - 0.5) < 0.06  # half the training rows memorised: the attacker wins on half
