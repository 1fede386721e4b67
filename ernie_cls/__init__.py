"""ernie-cls: Chinese text classification with ERNIE, from labelled file to served INT8 model.

Data path:  data file -> training.data (load, split) -> ernie_cls.tokenization (normalise, WordPiece ids)
            -> training.finetune (FP32 checkpoint) -> [qat -> export] -> exported/<name> -> service/.

This package holds what training and serving must share so they can never drift: the error hierarchy,
text normalisation and the tokenizer. It imports neither paddle nor FastAPI.
"""

__version__ = "0.1.0"
