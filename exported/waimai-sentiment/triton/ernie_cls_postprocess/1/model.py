"""Triton Python-backend model `ernie_cls_postprocess`: logits -> LABEL, SCORE, PROBABILITIES, LOW_CONFIDENCE.

The REST service's arithmetic: softmax(logits / temperature) with the temperature fitted at export for this model
(ernie_cls.calibration), the label of the highest probability (names in ./labels.txt, in the model's output order),
its probability as the score, and LOW_CONFIDENCE when the score is below `low_confidence_threshold`.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

from ernie_cls.calibration import softmax


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        params = {k: v["string_value"] for k, v in json.loads(args["model_config"]).get("parameters", {}).items()}
        labels = (Path(args["model_repository"]) / "labels.txt").read_text(encoding="utf-8").splitlines()
        self.labels = np.array([label.encode("utf-8") for label in labels], dtype=np.object_)
        self.temperature = float(params["temperature"])
        self.threshold = float(params["low_confidence_threshold"])

    def execute(self, requests: list) -> list:
        responses = []
        for request in requests:
            logits = pb_utils.get_input_tensor_by_name(request, "logits").as_numpy()
            probs = softmax(logits, self.temperature)
            best = probs.argmax(axis=-1)
            score = probs[np.arange(len(best)), best]
            outputs = [
                pb_utils.Tensor("LABEL", self.labels[best].reshape(-1, 1)),
                pb_utils.Tensor("SCORE", score.astype(np.float32).reshape(-1, 1)),
                pb_utils.Tensor("PROBABILITIES", probs.astype(np.float32)),
                pb_utils.Tensor("LOW_CONFIDENCE", (score < self.threshold).reshape(-1, 1)),
            ]
            responses.append(pb_utils.InferenceResponse(output_tensors=outputs))
        return responses
