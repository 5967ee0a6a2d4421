"""Work on particle images split over the processes of a `torchrun` launch.

Under `torchrun` (WORLD_SIZE > 1) every process runs the same command; `world()` joins them in one
process group (gloo on CPU, NCCL when the process has a GPU). Commands on particle stacks
(`poses`, `abinitio`, `refine`) then give rank r the images r, r + W, r + 2W, ... of every set
they process (`share`), each rank searches and inserts its own images, and the results are
joined: inserted Fourier data summed over ranks (`sum_`), per-image results gathered back in the
stack's order (`gather_rows`). Every rank then holds the same maps and poses, so the iterations
go on in step, and only rank 0 writes files. With one process every function is the identity.
"""

from __future__ import annotations

import atexit
import os

import torch

__all__ = ["world", "share", "sum_", "gather_rows", "is_writer", "barrier"]


def world() -> tuple[int, int]:
    """(rank, world size) of this process; joins the process group of a `torchrun` launch the first time."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size > 1 and not torch.distributed.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        torch.distributed.init_process_group(backend)
        atexit.register(_leave)
    return int(os.environ.get("RANK", "0")), size


def _active() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1


def is_writer() -> bool:
    """True in the one process that writes outputs (rank 0, or the only process)."""
    return not _active() or torch.distributed.get_rank() == 0


def share(indices: torch.Tensor) -> torch.Tensor:
    """This rank's share of `indices` (rank r of W takes positions r, r + W, ...)."""
    if not _active():
        return indices
    return indices[torch.distributed.get_rank() :: torch.distributed.get_world_size()]


def sum_(tensor: torch.Tensor) -> torch.Tensor:
    """`tensor` summed over ranks, in place (complex tensors as their real pairs); returned for chaining."""
    if _active():
        nccl = torch.distributed.get_backend() == "nccl"
        work = tensor.to(torch.device("cuda", torch.cuda.current_device()) if nccl else torch.device("cpu"))
        torch.distributed.all_reduce(torch.view_as_real(work) if work.is_complex() else work)
        if work is not tensor:
            tensor.copy_(work)
    return tensor


def gather_rows(rows: torch.Tensor, total: int) -> torch.Tensor:
    """Per-item rows computed by each rank for its `share` of `total` items, put back in item order on every rank."""
    if not _active():
        return rows
    rank, size = torch.distributed.get_rank(), torch.distributed.get_world_size()
    out = torch.zeros((total, *rows.shape[1:]), dtype=rows.dtype)
    out[rank::size] = rows.cpu()
    return sum_(out).to(rows.device)


def _leave() -> None:
    """At exit: wait for every rank (rank 0 may still be writing), then leave the group (a process that exits
    inside it aborts)."""
    if _active():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


def barrier() -> None:
    """Wait for every rank (nothing with one process)."""
    if _active():
        torch.distributed.barrier()
