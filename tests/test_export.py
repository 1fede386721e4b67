"""Export: every file in the manifest with matching hashes, formats agree, checks fail loudly, nothing half-written."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from ernie_cls.artifact import ArtifactError, read_manifest, verify_artifact
from ernie_cls.errors import ConfigError, ModelLoadError, OutputExistsError
from release.export import ExportCheckError, ExportConfig, export, onnx_backend
from tests.conftest import corrupt_onnx_exports


@pytest.fixture(scope="module")
def artifact(trained_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("exported") / "tiny"
    export(ExportConfig(checkpoint=str(trained_run / "best"), output=str(out)))
    return out


def test_manifest_lists_every_file_with_its_hash(artifact):
    manifest = json.loads((artifact / "manifest.json").read_text())
    on_disk = {p.relative_to(artifact).as_posix() for p in artifact.rglob("*") if p.is_file()} - {"manifest.json"}
    assert set(manifest["files"]) == on_disk
    assert {
        "onnx/model.fp32.onnx",
        "paddle/fp32/model.json",
        "paddle/fp32/model.pdiparams",
        "tokenizer/vocab.txt",
        "tokenizer/tokenizer.json",
    } <= on_disk
    assert verify_artifact(artifact).labels == ["negative", "positive"]


def test_manifest_describes_interface_metrics_checks_and_provenance(artifact):
    m = read_manifest(artifact).manifest
    assert [i["name"] for i in m["inputs"]] == ["input_ids", "token_type_ids"]
    assert m["outputs"][0]["name"] == "logits" and m["outputs"][0]["shape"] == ["batch", 2]
    assert all(c["passed"] for c in m["checks"].values())
    assert m["checks"]["paddle_fp32_vs_onnx_fp32"]["max_abs_logit_diff"] <= 1e-4
    assert set(m["metrics"]) >= {"paddle-fp32", "onnx-fp32"}
    assert m["metrics"]["paddle-fp32"]["test_accuracy"] == m["metrics"]["onnx-fp32"]["test_accuracy"]
    prov = m["provenance"]
    assert prov["versions"]["paddlepaddle"] and prov["created"] and len(prov["training_data_sha256"]) == 64
    assert "/" not in json.dumps(prov["training_config"])  # no absolute paths leak


def test_onnx_has_named_dynamic_axes_and_matches_the_checkpoint(artifact, trained_run):
    import onnx
    import paddle

    from training.modeling import load_checkpoint

    graph = onnx.load(str(artifact / "onnx/model.fp32.onnx")).graph
    dims = [[d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in graph.input]
    assert dims == [["batch", "sequence"], ["batch", "sequence"]]
    model, tok, _ = load_checkpoint(trained_run / "best")
    for batch in (["好"], ["送餐很快，味道不错", "太难吃了，再也不点了，差评差评差评"]):
        ids, tt = tok(batch)
        expected = model(paddle.to_tensor(ids), token_type_ids=paddle.to_tensor(tt)).numpy()
        assert np.abs(onnx_backend(artifact / "onnx/model.fp32.onnx").infer(ids, tt) - expected).max() < 1e-4


def test_tampered_missing_or_newer_artifacts_fail_verification(artifact, tmp_path):
    copy = tmp_path / "a"
    shutil.copytree(artifact, copy)
    with open(copy / "tokenizer/vocab.txt", "a", encoding="utf-8") as fh:
        fh.write("extra\n")
    with pytest.raises(ArtifactError, match=r"tokenizer/vocab\.txt: sha256 mismatch"):
        verify_artifact(copy)
    (copy / "onnx/model.fp32.onnx").unlink()
    with pytest.raises(ArtifactError, match=r"onnx/model\.fp32\.onnx: missing"):
        verify_artifact(copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    (copy / "manifest.json").write_text(json.dumps({**manifest, "schema_version": 99}))
    with pytest.raises(ArtifactError, match="schema version 99") as err:
        read_manifest(copy)
    assert "Upgrade ernie-cls" in err.value.hint


def test_parity_check_catches_a_corrupted_weight(trained_run, tmp_path, monkeypatch):
    """Corrupt one weight of the ONNX export only: the Paddle-vs-ONNX check must fail and write nothing."""
    corrupt_onnx_exports(monkeypatch)
    out = tmp_path / "bad"
    with pytest.raises(ExportCheckError, match="paddle_fp32_vs_onnx_fp32"):
        export(ExportConfig(checkpoint=str(trained_run / "best"), output=str(out)))
    assert not out.exists() and not list(tmp_path.glob(".bad.tmp*"))


def test_bad_checkpoints_and_existing_output_are_refused(trained_run, artifact, tmp_path):
    broken = tmp_path / "ckpt"
    shutil.copytree(trained_run / "best", broken)
    (broken / "label_map.json").unlink()
    with pytest.raises(ModelLoadError, match="no label_map"):
        export(ExportConfig(checkpoint=str(broken), output=str(tmp_path / "o")))
    (broken / "vocab.txt").unlink()
    with pytest.raises(ModelLoadError, match="no tokenizer"):
        export(ExportConfig(checkpoint=str(broken), output=str(tmp_path / "o")))
    qat = tmp_path / "qat"
    shutil.copytree(trained_run / "best", qat)
    (qat / "qat_config.json").write_text("{}")
    with pytest.raises(ConfigError, match="QAT checkpoint"):
        export(ExportConfig(checkpoint=str(qat), output=str(tmp_path / "o")))
    with pytest.raises(OutputExistsError) as err:
        export(ExportConfig(checkpoint=str(trained_run / "best"), output=str(artifact)))
    assert "--overwrite" in err.value.hint
