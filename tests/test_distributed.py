"""Data parallelism for real: `paddle.distributed.launch` with 2 CPU processes (Paddle's gloo backend), a batch count
that does not divide by 2. On main a0f9293 one rank ran out of batches first and the other waited in an all-reduce
for ever (a GPU run of the bundled data would hang at the end the same way)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, waimai_rows, write_csv

DRIVER = """
import json, sys
from training.distributed import rank_and_world
stage = sys.argv[1]
if stage == "train":
    from training import ngrams
    from training.config import TrainConfig
    from training.finetune import train
    real = ngrams.choose_weight  # 20 dev rows cannot resolve the privacy bound: force the branch in, so that
    ngrams.choose_weight = lambda dev, members: (0.5, real(dev, members)[1])  # rank 0 rewrites best/ mid-run
    metrics = train(TrainConfig(output=sys.argv[2], train_file=sys.argv[3], dev_file=sys.argv[4],
        base_model="scratch:pico", max_seq_len=32, batch_size=16, epochs=3, eval_every=2, patience=10,
        learning_rate=2e-3, vocab_size=800, progress=False, overwrite=True, label_names={"0": "neg", "1": "pos"}))
else:
    from training.qat import QATConfig, run_qat
    metrics = run_qat(QATConfig(checkpoint=sys.argv[2], output=sys.argv[3], epochs=2, batch_size=16, eval_every=2,
        progress=False, overwrite=True, data=None))
rank, world = rank_and_world()
print("RESULT", json.dumps({"rank": rank, "world": world, "steps": metrics["steps"]}), flush=True)
import os
os._exit(0)  # what is tested ends here; once (2026-11-30) rank 0 aborted (-6) in interpreter teardown after its RESULT
"""


def launch(tmp_path: Path, name: str, *args: str) -> list[dict]:
    """Run DRIVER under paddle.distributed.launch with 2 CPU processes; each rank's RESULT line."""
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    logs = tmp_path / f"log-{name}"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-m", "paddle.distributed.launch", "--nproc_per_node", "2", "--log_dir", str(logs),
         str(driver), *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=240, check=False,
    )  # fmt: skip
    worker_logs = sorted(logs.glob("workerlog.*"))
    text = "\n".join(p.read_text(errors="replace") for p in worker_logs)
    assert done.returncode == 0, (done.stdout + done.stderr)[-2000:] + text[-3000:]
    return [json.loads(m) for m in re.findall(r"^RESULT (.*)$", text, re.M)]


@pytest.mark.slow
def test_two_cpu_processes_train_and_qat_with_an_uneven_batch_count_and_finish_together(tmp_path):
    train_csv = write_csv(tmp_path / "train.csv", waimai_rows(35))  # 70 texts / 16 = 5 batches: uneven for 2
    dev_csv = write_csv(tmp_path / "dev.csv", waimai_rows(10, offset=40))
    out = tmp_path / "run"
    ranks = launch(tmp_path, "train", "train", str(out), str(train_csv), str(dev_csv))
    assert sorted(r["rank"] for r in ranks) == [0, 1] and {r["world"] for r in ranks} == {2}
    assert len({r["steps"] for r in ranks}) == 1  # the same steps on both ranks: they stopped together
    assert (out / "best" / "model_state.pdparams").is_file() and (out / "metrics.json").is_file()
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == ranks[0]["steps"]
    assert metrics["ngrams"]["in_model"]  # rank 0 attached the branch; rank 1 then scored the rewritten best/
    assert "ngram_weight" in json.loads((out / "best" / "config.json").read_text())

    qat_out = tmp_path / "qat"
    ranks = launch(tmp_path, "qat", "qat", str(out / "best"), str(qat_out))
    assert sorted(r["rank"] for r in ranks) == [0, 1] and len({r["steps"] for r in ranks}) == 1
    assert (qat_out / "metrics.json").is_file()


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [({"amp": True, "device": "cpu"}, "--amp"), ({"device": "gpu"}, "--device gpu")],
)
def test_gpu_only_options_are_refused_on_the_cpu_with_a_fix(tmp_path, small_csv, overrides, needle):
    """What of the GPU path can be checked without a GPU: its options are refused, saying what to do instead."""
    from ernie_cls.errors import ConfigError
    from tests.conftest import tiny_train_config
    from training.finetune import train

    with pytest.raises(ConfigError, match=needle) as err:
        train(tiny_train_config(tmp_path / "out", small_csv, **overrides))
    assert err.value.hint
