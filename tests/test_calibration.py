"""Temperature scaling recovers a known temperature and lowers calibration error; the service applies it."""

from __future__ import annotations

import numpy as np

from ernie_cls.calibration import expected_calibration_error, fit_temperature, softmax, softmax_row


def _overconfident(n: int = 4000, true_t: float = 2.5, seed: int = 0):
    """Logits whose calibrated form is softmax(logits / true_t): labels drawn from exactly those probabilities."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 3, size=(n, 3))
    probs = softmax(logits, true_t)
    labels = np.array([rng.choice(3, p=p) for p in probs])
    return logits, labels


def test_fit_recovers_the_temperature_and_cuts_ece():
    logits, labels = _overconfident()
    t = fit_temperature(logits, labels)
    assert abs(t - 2.5) < 0.25
    before = expected_calibration_error(softmax(logits), labels)
    after = expected_calibration_error(softmax(logits, t), labels)
    assert before > 0.1 and after < 0.03


def test_temperature_never_changes_the_predicted_label():
    logits, labels = _overconfident(500)
    t = fit_temperature(logits, labels)
    assert (softmax(logits, t).argmax(1) == logits.argmax(1)).all()


def test_ece_of_a_perfectly_calibrated_predictor_is_small_and_of_a_liar_large():
    rng = np.random.default_rng(1)
    conf = rng.uniform(0.5, 1.0, 20000)
    correct = rng.uniform(size=conf.size) < conf
    probs = np.stack([conf, 1 - conf], 1)
    labels = np.where(correct, 0, 1)
    assert expected_calibration_error(probs, labels) < 0.02
    liar = np.stack([np.full(conf.size, 0.99), np.full(conf.size, 0.01)], 1)
    assert expected_calibration_error(liar, labels) > 0.2


def test_the_services_per_row_softmax_matches_the_batched_one():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 5, size=(50, 7)).astype(np.float32)
    for temperature in (0.5, 1.0, 1.7):
        rows = np.array([softmax_row(row.tolist(), temperature) for row in logits])
        np.testing.assert_allclose(rows, softmax(logits, temperature), rtol=1e-12, atol=1e-15)
