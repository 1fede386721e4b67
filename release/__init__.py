"""Release: a trained checkpoint -> one verified artifact (Paddle and ONNX models, INT8, tokenizer, Triton repository,
model card, manifest with sha256s) -> the pre-launch checks of `ernie-cls verify`."""
