"""Training stages: data -> finetune -> (qat -> export) -> evaluate/predict.

Importing this package sets Paddle's CPU environment (threads, MKL on AMD) before Paddle loads; see
training/paddle_env.py. Paddle itself is imported lazily, inside the functions that need it.
"""

from training import paddle_env

paddle_env.configure()
