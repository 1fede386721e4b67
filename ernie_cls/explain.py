"""Occlusion attributions: which word pieces (for Chinese: which characters) the prediction rests on.

    ids = [CLS] p1 .. pn [SEP] -> n + 1 inputs: the text itself, then the text with p_i replaced by [UNK], each i
    -> attribution(p_i) = margin(original) - margin(without p_i), where margin = the predicted label's logit minus
       the best other label's logit (unlike a probability it still moves when the model is 99 % sure)

Model-agnostic and runs on the model as served (INT8 included): `ernie-cls verify` and the service's
/v1/models/{name}/explain both use it. Costs one model row per piece.
"""

from __future__ import annotations

import numpy as np


def occlusion_inputs(ids: list[int], unk_id: int) -> list[list[int]]:
    """The text's ids, then one copy per piece (between [CLS] and [SEP]) with that piece replaced by [UNK]."""
    return [ids] + [[*ids[:i], unk_id, *ids[i + 1 :]] for i in range(1, len(ids) - 1)]


def occlusion_attributions(logits: np.ndarray) -> tuple[int, list[float]]:
    """Logits of `occlusion_inputs` -> (predicted label of the text, attribution per piece)."""
    label = int(np.argmax(logits[0]))
    others = np.delete(logits, label, axis=1).max(axis=1)
    margin = logits[:, label] - others
    return label, (margin[0] - margin[1:]).tolist()
