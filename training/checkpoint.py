"""Checkpoint files: what a `best/` directory holds, written atomically (best.tmp, then a rename), so a crash never
destroys the last good one; and the run's output directory."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from ernie_cls.errors import OutputExistsError
from ernie_cls.tokenization import ErnieTokenizerFast
from training.config import TrainConfig
from training.data import (
    LabelMap,
)

BEST_DIR = "best"


LABEL_MAP_FILE = "label_map.json"


TRAINING_CONFIG_FILE = "training_config.json"


METRICS_FILE = "metrics.json"


def save_checkpoint(model, tokenizer: ErnieTokenizerFast, label_map: LabelMap, extra: dict, target: Path) -> None:
    """Write a complete checkpoint next to `target`, then swap it in by rename (never a half-written best/)."""
    tmp = target.with_name(target.name + ".tmp")
    prev = target.with_name(target.name + ".prev")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    model.save_pretrained(str(tmp))
    tokenizer.save(tmp)
    label_map.save(tmp / LABEL_MAP_FILE)
    for name, payload in extra.items():
        (tmp / name).write_text(json.dumps(payload, ensure_ascii=False, indent=2), encoding="utf-8")
    shutil.rmtree(prev, ignore_errors=True)
    if target.exists():
        target.rename(prev)
    tmp.rename(target)
    shutil.rmtree(prev, ignore_errors=True)


def saved_records(target: Path) -> dict:
    """The JSON records (training config, metrics) a checkpoint holds, to write them again with a new model."""
    return {
        name: json.loads((target / name).read_text(encoding="utf-8"))
        for name in (TRAINING_CONFIG_FILE, METRICS_FILE)
        if (target / name).is_file()
    }


def prepare_output(cfg: TrainConfig) -> Path:
    out = Path(cfg.output)
    if out.exists() and any(out.iterdir()) and not cfg.overwrite:
        raise OutputExistsError(
            f"Output directory {out} already exists and is not empty.",
            "Pass --overwrite to train into it (its best/ checkpoint is only replaced by a better one from the "
            "new run), or choose another --output.",
        )
    out.mkdir(parents=True, exist_ok=True)
    return out


def recorded_config(checkpoint: Path) -> TrainConfig:
    """The options a checkpoint's training_config.json records (keys this version does not know are dropped)."""
    record = json.loads((Path(checkpoint) / TRAINING_CONFIG_FILE).read_text(encoding="utf-8"))
    return TrainConfig(**{k: v for k, v in record.items() if k in TrainConfig.__dataclass_fields__})
