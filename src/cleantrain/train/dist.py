"""Distributed runs under `torchrun` (DistributedDataParallel), kept in one place.

`torchrun --nproc_per_node N -m cleantrain train ...` starts N copies of the
same command; torchrun sets RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE,
MASTER_ADDR and MASTER_PORT. `init()` joins them into one process group
(NCCL on GPUs, gloo on CPU); without those variables everything here is a
no-op and a run is the ordinary single process.

Every rank runs the same program on the same data with the same seed, so the
ranks agree on every random draw that decides *what* to train on; the Trainer
then gives each rank its share of the work and gathers the results
(`trainer.py`). Only rank 0 writes files (`is_main()`).
"""

from __future__ import annotations

import gc
import os
import signal
import sys
import traceback
from datetime import timedelta
from typing import Any, Callable

import torch
import torch.distributed as tdist
from torch import nn

from ..errors import UserError

ENV_KEYS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def launched() -> bool:
    """True in a process started by torchrun (or with its variables set by hand) with > 1 ranks."""
    return all(k in os.environ for k in ENV_KEYS) and int(os.environ["WORLD_SIZE"]) > 1


def active() -> bool:
    """True once this process is one rank of a process group with more than one rank."""
    return tdist.is_available() and tdist.is_initialized() and tdist.get_world_size() > 1


def rank() -> int:
    if tdist.is_available() and tdist.is_initialized():
        return tdist.get_rank()
    return int(os.environ.get("RANK", "0")) if launched() else 0


def world_size() -> int:
    if tdist.is_available() and tdist.is_initialized():
        return tdist.get_world_size()
    return int(os.environ.get("WORLD_SIZE", "1")) if launched() else 1


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0")) if launched() else 0


def is_main() -> bool:
    """Rank 0 (or a plain single process): the one that writes files and the run store."""
    return rank() == 0


def cpu_threads() -> int:
    """CPU threads for this process: the cores shared out among the ranks on this node."""
    per_node = int(os.environ.get("LOCAL_WORLD_SIZE", "1")) if launched() else 1
    return max(1, (os.cpu_count() or 1) // max(1, per_node))


def init(timeout_s: float = 1800.0) -> bool:
    """Join the torchrun process group (idempotent). True when this process is now distributed."""
    if not launched():
        return False
    if not tdist.is_initialized():
        cuda = torch.cuda.is_available()
        if cuda:
            torch.cuda.set_device(local_rank())  # a bare "cuda" device now means this rank's GPU
        # with GPUs: NCCL for CUDA tensors and gloo for CPU ones (a `--device cpu` run on a GPU node)
        tdist.init_process_group("cpu:gloo,cuda:nccl" if cuda else "gloo", timeout=timedelta(seconds=timeout_s))
    return active()


def local_device(device: torch.device) -> torch.device:
    """This rank's GPU for a bare `cuda` device when distributed; otherwise `device` itself."""
    if active() and device.type == "cuda" and device.index is None:
        return torch.device("cuda", local_rank())
    return device


def shutdown(wait: bool = True) -> None:
    """Leave the process group. With `wait`, every rank first meets at a barrier, so no rank tears its
    connections down while another still talks to it; then the group is destroyed and garbage is
    collected while the interpreter is fully alive (not at exit, should a DDP wrapper in a reference
    cycle still hold the group). Without these, one gloo rank in ~10 died at exit with "terminate
    called without an active exception" after finishing its work; with them, 0 of 30
    (docs/results/distributed.md)."""
    if tdist.is_available() and tdist.is_initialized():
        if wait:
            tdist.barrier()
        tdist.destroy_process_group()
        gc.collect()


class Stopped(Exception):
    """This rank was stopped by torchrun (SIGTERM): another rank failed, or the job was cancelled."""


def _stopped(signum, frame):
    raise Stopped("stopped by torchrun (SIGTERM): another rank failed or the job was cancelled")


def run_launched(fn: Callable[[], int]) -> int:
    """Run a command as one rank: join the group, run it, leave the group.

    A rank that fails prints its error with its rank and exits non-zero (a UserError is left to
    the CLI's one-line message); torchrun then stops the other ranks (its default) and names the
    failed rank. gloo groups are torn down on the way out; an NCCL group is left for the process
    exit (destroying it while other ranks wait in a collective can hang)."""
    init()
    if active():  # torchrun stops the other ranks with SIGTERM: record it as a failure, not a silent death
        signal.signal(signal.SIGTERM, _stopped)
    try:
        code = fn()
    except BaseException as e:
        if not isinstance(e, (UserError, SystemExit)):
            print(f"cleantrain: rank {rank()}/{world_size()} failed: {type(e).__name__}: {e}", file=sys.stderr)
            if not isinstance(e, Stopped):
                traceback.print_exc(file=sys.stderr)
            sys.stderr.flush()
        if tdist.is_initialized() and tdist.get_backend() == "gloo":
            shutdown(wait=False)  # the other ranks may never reach a barrier
        raise
    shutdown()
    return code


# ---------------------------------------------------------------- collectives
def _comm_device(t: torch.Tensor) -> torch.device:
    """Where a collective on `t` runs: gloo moves CPU tensors, NCCL CUDA ones; a group with a backend
    per device type (cpu:gloo,cuda:nccl, what `init` makes on GPU nodes) takes `t` where it is."""
    backend = tdist.get_backend()
    if backend == "gloo":
        return torch.device("cpu")
    if backend == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return t.device


def sum_(t: torch.Tensor) -> torch.Tensor:
    """The sum of `t` over all ranks (a new tensor on `t`'s device); `t` itself when not distributed."""
    if not active():
        return t
    buf = t.detach().to(_comm_device(t), copy=True)
    tdist.all_reduce(buf)
    return buf.to(t.device)


def all_gather_rows(t: torch.Tensor) -> torch.Tensor:
    """Concatenate every rank's `t` along dim 0, in rank order; the ranks may hold different row counts."""
    if not active():
        return t
    dev = _comm_device(t)
    n = torch.tensor([t.shape[0]], device=dev)
    counts = [torch.zeros_like(n) for _ in range(world_size())]
    tdist.all_gather(counts, n)
    counts_i = [int(c) for c in counts]
    most = max(counts_i)
    buf = torch.zeros((most, *t.shape[1:]), dtype=t.dtype, device=dev)
    buf[: t.shape[0]] = t.detach().to(dev)
    parts = [torch.empty_like(buf) for _ in counts_i]
    tdist.all_gather(parts, buf)
    return torch.cat([p[:c] for p, c in zip(parts, counts_i)]).to(t.device)


def broadcast_flag(flag: bool, src: int = 0) -> bool:
    """Rank `src`'s boolean on every rank (a tensor broadcast; nothing is pickled)."""
    if not active():
        return flag
    t = torch.tensor([int(bool(flag))], device=_comm_device(torch.empty(0)))
    tdist.broadcast(t, src=src)
    return bool(t.item())


def broadcast_module(model: nn.Module, src: int = 0) -> None:
    """Copy rank `src`'s parameters and buffers into every rank's `model`, in place."""
    if not active():
        return
    with torch.no_grad():
        for t in list(model.parameters()) + list(model.buffers()):
            buf = t.data.to(_comm_device(t), copy=True)
            tdist.broadcast(buf, src=src)
            t.data.copy_(buf.to(t.device))


def barrier() -> None:
    if active():
        tdist.barrier()


# ------------------------------------------------------------------ sharding
def shard_rows(n: int) -> torch.Tensor:
    """This rank's block of rows 0..n-1 for a whole-set pass: contiguous, so blocks gathered in rank
    order are dataset order; every rank gets ceil(n / world) rows, the last block padded by repeating
    row n-1 (the caller trims the gathered result to n rows)."""
    per = -(-n // world_size())
    start = rank() * per
    return torch.arange(start, start + per).clamp_(max=max(0, n - 1))


def shard_epoch(order: torch.Tensor) -> torch.Tensor:
    """This rank's share of an epoch's permutation (the same on every rank): every world-th sample,
    the order padded by wrapping so every rank takes the same number of samples (DDP needs the same
    number of steps on every rank)."""
    w, n = world_size(), len(order)
    per = -(-n // w)
    if per * w > n:
        order = order[torch.arange(per * w, device=order.device) % n]
    return order[rank()::w]


def local_batch(batch_size: int) -> int:
    """Each rank's batch so that the ranks together take the recipe's (global) batch size."""
    return max(1, -(-batch_size // world_size()))


def split_batch(*ts: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """This rank's rows of one batch that every rank drew alike (every world-th row; a batch with
    fewer rows than ranks gives a rank one repeated row rather than none)."""
    n = ts[0].shape[0]
    sel = torch.arange(rank(), max(n, world_size()), world_size(), device=ts[0].device) % max(1, n)
    return tuple(t[sel.to(t.device)] for t in ts)


def wrap(model: nn.Module, device: torch.device, sync_bn: bool = False) -> nn.Module:
    """The DDP wrapper used for forward/backward (gradients all-reduced); `model` stays the module
    that defenses see. With `sync_bn` its BatchNorm layers become SyncBatchNorm in place (same
    parameters and buffers). Not distributed: `model` itself."""
    if not active():
        return model
    from torch.nn.parallel import DistributedDataParallel as DDP

    if sync_bn:
        if device.type != "cuda":
            raise UserError("train.sync_bn needs GPUs: PyTorch's SyncBatchNorm runs on CUDA only")
        plain = any(isinstance(m, nn.modules.batchnorm._BatchNorm) and not isinstance(m, nn.SyncBatchNorm)
                    for m in model.modules())
        if plain and nn.SyncBatchNorm.convert_sync_batchnorm(model) is not model:
            raise UserError("train.sync_bn: the model itself is a BatchNorm layer; nothing to wrap")
    ids = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else None
    return DDP(model, device_ids=ids)  # buffers (BN statistics) follow rank 0 at each forward
