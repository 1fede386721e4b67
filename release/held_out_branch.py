"""The temperature of a model whose n-gram branch saw dev.

`train` refits the branch on train+dev once dev has chosen its share (training/finetune.py), so dev is no longer
held out for it: on the second dataset the served model read 91.8 % on dev against 88.2 % with the branch fitted on
train, and a temperature fitted on those rows left test ECE at 0.035 instead of 0.013 (docs/benchmarks.md section
10). Export fits the temperature with the branch dev chose from instead: refitted here on the training rows alone,
which gives the same table (the same rows, settings and order), swapped into each format's dev outputs
(ngrams.swap_branch: exact, the branch is float in every format).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ernie_cls.errors import ConfigError
from training import ngrams
from training.batching import Encoded, encode
from training.checkpoint import recorded_config
from training.finetune import load_splits

SAW_DEV = "train+dev"


def fitted_on(model, training_metrics: dict) -> str | None:
    """The rows the served branch was fitted on ("train" or "train+dev"), or None without a branch: the config key
    written with it, else the run's metrics.json (checkpoints written between the refit and the key)."""
    if not hasattr(model, "ngram_table"):
        return None
    recorded = getattr(model.config, ngrams.FITTED_ON_KEY, None)
    if recorded:
        return str(recorded)
    return (training_metrics.get("ngrams") or {}).get("fitted_on") or "train"  # before the refit: train only


def logits_on_dev(
    model, checkpoint: Path, training_metrics: dict, tokenizer, dev: Encoded
) -> tuple[np.ndarray, np.ndarray, float]:
    """(the served branch's logits on dev, the train-only branch's, the transformer's share) for ngrams.swap_branch."""
    from training.ngram_model import head_of

    cfg = recorded_config(checkpoint)
    path = cfg.data or cfg.train_file
    if not path or not Path(path).is_file():
        raise ConfigError(
            f"The n-gram branch saw the dev rows, and its training rows are not at {path!r} (training_config.json) "
            "to refit it on them alone for the temperature.",
            f"Put the training file back at {path!r}, or export with --data <a labelled file the model never saw>.",
        )
    splits, label_map, provenance = load_splits(cfg)  # the split `train` read
    recorded = training_metrics.get("provenance", {}).get("data" if cfg.data else "train") or {}
    now = (provenance.get("data" if cfg.data else "train") or {}).get("sha256")
    if recorded.get("sha256") and recorded["sha256"] != now:
        raise ConfigError(
            f"{path} changed since training (sha256 {str(now)[:12]}, trained on {recorded['sha256'][:12]}), so "
            "the n-gram branch cannot be refitted on the same training rows for the temperature.",
            "Restore the file training read, or export with --data <a labelled file the model never saw>.",
        )
    train = encode(splits.train, tokenizer, label_map)
    served = head_of(model)
    held_out = ngrams.refit(served, train.ids, train.labels, fitted_on="train")
    if held_out is None:
        raise ConfigError(
            "The n-gram branch saw the dev rows, and refitting it on the training rows alone (to fit the temperature "
            "on rows it did not see) found fewer than two classes there.",
            "Export with --data <a labelled file the model never saw>.",
        )
    return served.logits(dev.ids), held_out.logits(dev.ids), float(model.config.ngram_weight)
