"""The model runtime: an exported artifact -> a tokenizer and model instances that turn token ids into logits.

    artifact directory -> verify (manifest pin, every file's sha256, no path outside) -> format (the manifest's
    default unless asked) -> tokenizer and model bytes read once and checked -> backends (one per instance) -> warm-up

`LoadedModel.open` is that sequence, written once; the service's engine, `verify`, and every benchmark use it, so
what is measured is what is served. Backends sit behind one small protocol (`base.Backend`); each imports its
runtime (onnxruntime, paddle) only in its own module. No HTTP here, no training: the service and training import
this, never the other way round.
"""

from __future__ import annotations

from ernie_cls.runtime.base import Backend
from ernie_cls.runtime.batched import logits_in_batches
from ernie_cls.runtime.loaded import RUNTIME_FORMATS, WARMUP_SHAPES, LoadedModel, load_backend, load_tokenizer

__all__ = [
    "RUNTIME_FORMATS",
    "WARMUP_SHAPES",
    "Backend",
    "LoadedModel",
    "load_backend",
    "load_tokenizer",
    "logits_in_batches",
]
