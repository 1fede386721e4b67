"""Queue + dynamic batcher. Imports neither FastAPI nor a model runtime; its errors are in service/errors.py."""

from service.batching.batcher import Batcher

__all__ = ["Batcher"]
