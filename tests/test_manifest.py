"""The typed manifest: what readers rely on is checked when the artifact is read, and a gap is named."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from ernie_cls.artifact import ArtifactError, read_manifest, write_manifest
from ernie_cls.manifest import FormatSpec, Manifest, ManifestError

BUNDLED = Path(__file__).resolve().parents[1] / "exported" / "waimai-sentiment"


def test_the_bundled_manifest_parses_into_the_typed_contract():
    artifact = read_manifest(BUNDLED)
    spec = artifact.spec
    assert spec.labels == ("negative", "positive") and spec.default_format == "onnx-int8"
    assert isinstance(spec.formats["onnx-int8"], FormatSpec) and spec.formats["onnx-int8"].temperature > 0
    assert spec.formats["onnx-int8"].scales == "onnx/quant_scales.json"
    assert spec.files[spec.formats["onnx-int8"].path].size > 0 and spec.tokenizer_path == "tokenizer"


def breaks(data: dict) -> list[tuple[str, dict, str]]:
    no_formats = {k: v for k, v in data.items() if k != "formats"}
    bad_length = copy.deepcopy(data) | {"max_seq_len": "long"}
    gap_in_labels = copy.deepcopy(data) | {"labels": {"0": "negative", "5": "positive"}}
    missing_default = copy.deepcopy(data) | {"default_format": "tensorrt"}
    no_path = copy.deepcopy(data)
    del no_path["formats"]["onnx-int8"]["path"]
    infinite = copy.deepcopy(data) | {"max_seq_len": float("inf")}  # json reads Infinity
    cold = copy.deepcopy(data)
    cold["formats"]["onnx-int8"]["temperature"] = 0
    null_label = copy.deepcopy(data) | {"labels": {"0": "negative", "1": None}}
    return [
        ("an infinite max_seq_len", infinite, "wrong type"),
        ("a temperature of 0", cold, "temperature"),
        ("a label that is not a string", null_label, "not a string"),
        ("no formats", no_formats, "'formats'"),
        ("max_seq_len not a number", bad_length, "wrong type"),
        ("labels not numbered 0..K-1", gap_in_labels, "'1'"),
        ("default format it does not have", missing_default, "'tensorrt'"),
        ("a format without its path", no_path, "'path'"),
    ]


@pytest.mark.parametrize("case", range(8))
def test_a_manifest_missing_what_readers_need_is_refused_naming_it(tmp_path, case):
    """Refused when read (ArtifactError: the service stays not-ready, verify fails), never a crash later."""
    data = json.loads((BUNDLED / "manifest.json").read_text(encoding="utf-8"))
    _, broken, needle = breaks(data)[case]
    with pytest.raises(ManifestError, match=needle) as err:
        Manifest.parse(broken, "manifest.json")
    assert "Re-export" in err.value.hint
    (tmp_path / "tokenizer").mkdir()
    write_manifest(tmp_path, broken)
    with pytest.raises(ArtifactError, match=needle):  # the same, as the service and verify see it
        read_manifest(tmp_path)


def test_an_older_manifest_without_raw_labels_reads_the_labels_keys():
    data = json.loads((BUNDLED / "manifest.json").read_text(encoding="utf-8"))
    del data["raw_labels"]
    assert Manifest.parse(data, "m").raw_labels == ("0", "1")
