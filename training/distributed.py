"""Data parallelism across processes (`paddle.distributed.launch`): what every rank must do alike.

A rank that runs one step fewer than the others leaves them waiting in a gradient all-reduce for ever, and ranks that
decide early stopping each on their own part ways at the first flipped prediction. So every rank gets the same
number of batches per epoch, rank 0's verdict on each evaluation is the verdict, and ranks wait for rank 0 before
reading what only it writes. Single-process runs (world size 1) skip all of it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

from ernie_cls.errors import ConfigError

T = TypeVar("T")


def rank_and_world() -> tuple[int, int]:
    import paddle

    return paddle.distributed.get_rank(), paddle.distributed.get_world_size()


def init_if_launched() -> None:
    """Join the process group when started by paddle.distributed.launch (gloo on CPU, NCCL on GPU)."""
    import paddle

    if paddle.distributed.get_world_size() > 1:
        paddle.distributed.init_parallel_env()


def rank_share(batches: Sequence[T], rank: int, world: int) -> list[T]:
    """This rank's batches of an epoch: every rank the same count. When the count does not divide, the last
    (count mod world) batches sit this epoch out (batches are reshuffled every epoch, so not the same ones)."""
    per_rank = len(batches) // world
    if per_rank == 0:
        raise ConfigError(
            f"{len(batches)} batches per epoch cannot be shared by {world} processes.",
            "Use fewer processes, a smaller --batch-size (or --batch-tokens), or more training data.",
        )
    return list(batches[rank * per_rank : (rank + 1) * per_rank]) if world > 1 else list(batches)


def agree(flag: bool) -> bool:
    """Rank 0's value of `flag`, on every rank."""
    import paddle

    if paddle.distributed.get_world_size() == 1:
        return flag
    tensor = paddle.to_tensor([int(flag)], dtype="int32")
    paddle.distributed.broadcast(tensor, src=0)
    return bool(int(tensor.numpy()[0]))


def barrier() -> None:
    """Wait until every rank is here (e.g. rank 0 has finished writing the checkpoint the others will read)."""
    import paddle

    if paddle.distributed.get_world_size() > 1:
        paddle.distributed.barrier()
