"""Process-group helpers: one code path for one CPU, one GPU and `torchrun` (docs/design.md §6).

This is the only module in the package that reads the launcher's environment
(`RANK`, `LOCAL_RANK`, `WORLD_SIZE`; `MASTER_ADDR`/`MASTER_PORT` are read by
`torch.distributed` itself through `init_method="env://"`). Every helper is safe to call
when no process group exists: `rank()` is 0, `world_size()` is 1, collectives return
their input, `barrier()` does nothing. So library code calls them unconditionally.

Launch, one node with 8 GPUs:   torchrun --nproc_per_node 8 -m iddpm train …
Several nodes (on each node):   torchrun --nnodes N --node_rank R --nproc_per_node 8 \
                                    --master_addr HOST --master_port PORT -m iddpm train …
"""

from __future__ import annotations

import datetime
import os

import torch
import torch.distributed as dist

_LAUNCH_VARS = ("RANK", "WORLD_SIZE")


def launched_by_torchrun() -> bool:
    """True when the launcher's environment (RANK and WORLD_SIZE) is present."""
    return all(v in os.environ for v in _LAUNCH_VARS)


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def init(timeout_s: float = 1800.0) -> bool:
    """Join the process group described by the environment, if there is one.

    Uses nccl when CUDA is available and gloo otherwise; on CUDA the current device is set
    from LOCAL_RANK first (one GPU per process). Returns True when a group is (already)
    initialised and False for a plain single-process run.
    """
    if is_initialized():
        return True
    if not launched_by_torchrun():
        return False
    if not dist.is_available():
        raise RuntimeError(
            "this PyTorch build has no torch.distributed; run a single process without torchrun"
        )
    use_cuda = torch.cuda.is_available()
    if use_cuda:
        torch.cuda.set_device(_env_int("LOCAL_RANK", 0))
    dist.init_process_group(
        backend="nccl" if use_cuda else "gloo",
        init_method="env://",
        timeout=datetime.timedelta(seconds=timeout_s),
    )
    return True


def shutdown() -> None:
    """Leave the process group (no-op when none exists)."""
    if is_initialized():
        dist.destroy_process_group()


def rank() -> int:
    """Global rank of this process; 0 without a process group."""
    return dist.get_rank() if is_initialized() else 0


def world_size() -> int:
    """Number of processes; 1 without a process group."""
    return dist.get_world_size() if is_initialized() else 1


def local_rank() -> int:
    """Rank within this node (LOCAL_RANK); 0 without a process group."""
    return _env_int("LOCAL_RANK", 0) if is_initialized() else 0


def is_main() -> bool:
    """True on global rank 0: the process that logs and writes checkpoints."""
    return rank() == 0


def device() -> torch.device:
    """cuda:LOCAL_RANK when CUDA is available, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", local_rank())
    return torch.device("cpu")


def barrier() -> None:
    """Wait for every rank (no-op without a process group)."""
    if is_initialized() and world_size() > 1:
        dist.barrier()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum `tensor` over ranks, in place; returns it (unchanged without a process group)."""
    if is_initialized() and world_size() > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_gather_1d(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate a 1-d tensor over ranks in rank order: [n_r] on rank r -> [Σ n_r].

    Lengths may differ between ranks: each rank pads to the longest length, gathers, and
    the padding is cut off again. Returns the input itself without a process group.
    """
    if tensor.ndim != 1:
        raise ValueError(
            f"all_gather_1d takes a 1-d tensor, got shape {tuple(tensor.shape)}; flatten it first"
        )
    if not is_initialized() or world_size() == 1:
        return tensor
    n = world_size()
    length = torch.tensor([tensor.shape[0]], dtype=torch.int64, device=tensor.device)
    lengths = [torch.zeros_like(length) for _ in range(n)]
    dist.all_gather(lengths, length)
    sizes = [int(x.item()) for x in lengths]
    padded = tensor.new_zeros(max(sizes))
    padded[: tensor.shape[0]] = tensor
    parts = [torch.empty_like(padded) for _ in range(n)]
    dist.all_gather(parts, padded.contiguous())
    return torch.cat([p[:s] for p, s in zip(parts, sizes)])


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None:
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(
            f"environment variable {name}={raw!r} is not an integer; launch with torchrun"
        ) from None


def rank_block(num: int, rank: int, world_size: int) -> range:
    """The contiguous block of `range(num)` that `rank` of `world_size` handles; the blocks
    of all ranks, in rank order, are range(num) again (so gathered results stay in order)."""
    per = -(-num // world_size)
    return range(min(num, rank * per), min(num, (rank + 1) * per))
