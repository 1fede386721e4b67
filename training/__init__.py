"""Training stages: data -> finetune -> (qat -> export) -> evaluate/predict.

Importing this package sets Paddle's CPU environment (threads, MKL on AMD) before Paddle loads; see
training/paddle_env.py. Paddle itself is imported lazily, inside the functions that need it.
"""

import os

from training import paddle_env

if not os.environ.get("ERNIE_CLS_NO_PADDLE_ENV"):  # set by training.bench_speed to measure Paddle's defaults
    paddle_env.configure()
