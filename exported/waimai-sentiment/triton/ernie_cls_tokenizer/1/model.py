"""Triton Python-backend model `ernie_cls_tokenizer`: TEXT -> input_ids, token_type_ids, TRUNCATED.

ernie-cls's own normaliser and WordPiece tokenizer (the files in ./tokenizer, copied from the artifact), so Triton and
the REST service feed the model identical ids. Each request is padded to the smallest length bucket that holds its
longest text (parameter `length_buckets`), so Triton's dynamic batcher in front of the ONNX model can batch requests
of different lengths together: it batches only tensors of one shape.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

from ernie_cls.tokenization import ErnieTokenizerFast, normalize_text


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        params = {k: v["string_value"] for k, v in json.loads(args["model_config"]).get("parameters", {}).items()}
        here = Path(args["model_repository"]) / str(args["model_version"])
        self.tokenizer = ErnieTokenizerFast.load(here / "tokenizer", max_seq_len=int(params["max_seq_len"]))
        buckets = {int(b) for b in params.get("length_buckets", "").split(",") if b.strip()}
        self.buckets = sorted(buckets | {int(params["max_seq_len"])})

    def execute(self, requests: list) -> list:
        texts, problems = [], []
        for request in requests:
            raw = pb_utils.get_input_tensor_by_name(request, "TEXT").as_numpy().reshape(-1)
            decoded, problem = _decode(raw)
            texts.append(decoded)
            problems.append(problem)
        flat = [t for batch, problem in zip(texts, problems, strict=True) if problem is None for t in batch]
        encoded = iter(self.tokenizer.encode_with_overflow(flat, normalized=True))  # one call for every request
        responses = []
        for batch, problem in zip(texts, problems, strict=True):
            if problem is not None:
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(problem)))
                continue
            ids, truncated = zip(*(next(encoded) for _ in batch), strict=True)
            width = next(b for b in self.buckets if b >= max(map(len, ids)))
            input_ids, token_type_ids = self.tokenizer.pad(ids, pad_to=width)
            outputs = [
                pb_utils.Tensor("input_ids", input_ids.astype(np.int64)),
                pb_utils.Tensor("token_type_ids", token_type_ids.astype(np.int64)),
                pb_utils.Tensor("TRUNCATED", np.array(truncated, dtype=np.bool_).reshape(-1, 1)),
            ]
            responses.append(pb_utils.InferenceResponse(output_tensors=outputs))
        return responses


def _decode(raw: np.ndarray) -> tuple[list[str], str | None]:
    """Normalised texts, or the reason this request cannot be served (the same rules as the REST service)."""
    if raw.size == 0:
        return [], "TEXT holds no text: send at least one."
    texts = []
    for i, value in enumerate(raw):
        try:
            text = value.decode("utf-8") if isinstance(value, bytes) else str(value)
        except UnicodeDecodeError:
            return [], f"TEXT[{i}] is not valid UTF-8: send UTF-8 encoded text."
        normalized = normalize_text(text)
        if not normalized.strip():
            return [], f"TEXT[{i}] is empty after normalisation (only whitespace, control or invisible characters)."
        texts.append(normalized)
    return texts, None
