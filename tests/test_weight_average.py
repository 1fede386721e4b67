"""Weight averaging (--ema-decay): the average follows the documented formula, evaluation sees it, training resumes
on the raw weights, and a training run with it saves a checkpoint."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.conftest import tiny_train_config


def test_average_follows_the_formula_and_swapping_restores_the_training_weights():
    import paddle

    from training.weight_average import WeightAverage

    paddle.seed(0)
    layer = paddle.nn.Linear(3, 2)
    start = layer.weight.numpy().copy()
    average = WeightAverage(layer, decay=0.9)
    expected = start.copy()
    for t in range(1, 6):
        layer.weight.set_value(layer.weight + 1.0)  # stands in for an optimiser step
        average.update()
        d = min(0.9, (1 + t) / (10 + t))
        expected = d * expected + (1 - d) * layer.weight.numpy()
    trained = layer.weight.numpy().copy()
    with average.swapped_in():
        np.testing.assert_allclose(layer.weight.numpy(), expected, rtol=1e-6)
        assert not np.allclose(expected, trained)
    np.testing.assert_array_equal(layer.weight.numpy(), trained)
    with pytest.raises(ValueError):
        WeightAverage(layer, decay=1.0)


def test_training_with_weight_averaging_saves_and_records_it(small_csv, tmp_path):
    from training.finetune import train

    metrics = train(tiny_train_config(tmp_path / "run", small_csv, max_steps=6, eval_every=3, ema_decay=0.9))
    assert len(metrics["history"]) == 2
    saved = json.loads((tmp_path / "run" / "best" / "training_config.json").read_text())
    assert saved["ema_decay"] == 0.9
