"""Training stages: data -> modeling -> pretrain -> finetune -> qat, and evaluate/predict.

Importing this package has no side effects. Paddle reads its CPU environment once, when it is first imported: entry
points call `training.paddle_env.configure()` before that (the CLI does it for every Paddle command).
"""
