"""Multi-process training under ``torchrun``: the process group, rank-0 writing, agreement between ranks, stops.

``torchrun --nproc_per_node N -m cldl train ...`` starts N processes with ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR`` and ``MASTER_PORT`` set; :func:`init_distributed` joins them into one process group (NCCL on GPUs,
gloo on CPU) and gives each process its device. Without those variables (or with ``WORLD_SIZE=1``) everything
here is a no-op and training runs in one process exactly as before.
"""

from __future__ import annotations

import hashlib
import logging
import os
import signal
import sys
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from types import FrameType
from typing import Any, NoReturn

import torch
import torch.distributed as dist
from torch import nn

from ..inference.predictor import resolve_device

STOP_SIGNALS = ("SIGTERM", "SIGUSR1")
TIMEOUT_ENV = "CLDL_DIST_TIMEOUT_S"


@dataclass
class DistContext:
    """Where this process sits: ``rank`` of ``world_size`` processes, its device and the backend (None: alone)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    backend: str | None = None
    owns_group: bool = False

    @property
    def enabled(self) -> bool:
        """Whether several processes train together."""
        return self.backend is not None and self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the only process that writes checkpoints, logs and events."""
        return self.rank == 0


def launched_by_torchrun() -> bool:
    """Whether the environment describes a multi-process launch (``WORLD_SIZE`` > 1 with a ``RANK``)."""
    return "RANK" in os.environ and int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_distributed(device: str = "auto") -> DistContext:
    """Join the launch's process group (or reuse an initialised one); alone, just resolve ``device``."""
    if dist.is_available() and dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
        local = int(os.environ.get("LOCAL_RANK", rank))
        backend, owns = str(dist.get_backend()), False
    elif dist.is_available() and launched_by_torchrun():
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        local = int(os.environ.get("LOCAL_RANK", "0"))
        backend, owns = None, True
    else:
        return DistContext(device=resolve_device(device))
    resolved = resolve_device(device)
    if resolved.type == "cuda":
        if local >= torch.cuda.device_count():
            raise RuntimeError(
                f"local rank {local} has no GPU ({torch.cuda.device_count()} visible): start at most that many "
                "processes per node (torchrun --nproc_per_node)"
            )
        resolved = torch.device("cuda", local)
        torch.cuda.set_device(resolved)
    if backend is None:
        backend = "nccl" if resolved.type == "cuda" else "gloo"
        timeout = timedelta(seconds=float(os.environ.get(TIMEOUT_ENV, "1800")))
        dist.init_process_group(
            backend=backend,
            timeout=timeout,
            device_id=resolved if resolved.type == "cuda" else None,
        )
    return DistContext(rank, world, local, resolved, backend, owns)


def end_launched_process(code: int) -> NoReturn:
    """Flush and end a ``torchrun``-launched process now, skipping interpreter finalisation (never returns).

    ``DistributedDataParallel`` in torch 2.13 keeps its process group alive after ``destroy_process_group`` (the
    Python objects are freed, the C++ group is not), so gloo's worker and socket threads still run when Python
    finalises. One that touches a tensor or the GIL during finalisation aborts the process ("terminate called
    without an active exception", exit -6) after a run that finished and saved everything; CI saw this once.
    Every file is closed by the time this is called, so ending the process here loses nothing and removes that race.
    """
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe (the reader quit) or a closed stream: nothing left to save
            pass
    os._exit(code)


def shutdown(context: DistContext) -> None:
    """Leave the process group if this context created it."""
    if context.owns_group and dist.is_initialized():
        dist.destroy_process_group()
        context.owns_group = False


def barrier(context: DistContext) -> None:
    """Wait for every rank (no-op alone)."""
    if context.enabled:
        if context.backend == "nccl":
            dist.barrier(device_ids=[context.device.index])
        else:
            dist.barrier()


def any_rank(context: DistContext, flags: Sequence[bool]) -> list[bool]:
    """Each flag is True on every rank if it is True on any rank (one small all-reduce)."""
    if not context.enabled:
        return [bool(f) for f in flags]
    values = torch.tensor([1 if f else 0 for f in flags], dtype=torch.int32, device=context.device)
    dist.all_reduce(values, op=dist.ReduceOp.MAX)
    return [bool(v) for v in values.tolist()]


def all_gather_objects(context: DistContext, value: Any) -> list[Any]:
    """Every rank's ``value`` (picklable), in rank order, on every rank."""
    if not context.enabled:
        return [value]
    gathered: list[Any] = [None] * context.world_size
    dist.all_gather_object(gathered, value)
    return gathered


def mean_over_ranks(context: DistContext, values: dict[str, float]) -> dict[str, float]:
    """The mean of each value over the ranks (float64; unchanged alone). Every rank must pass the same keys."""
    if not context.enabled or not values:
        return dict(values)
    keys = sorted(values)
    tensor = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=context.device)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return {k: float(v) / context.world_size for k, v in zip(keys, tensor.tolist())}


def broadcast_buffers(context: DistContext, module: nn.Module) -> None:
    """Give every rank rank 0's buffers (BatchNorm running statistics), as DDP does before each forward."""
    if context.enabled:
        for buffer in module.buffers():
            dist.broadcast(buffer.data, src=0)


def weights_digest(tensors: dict[str, torch.Tensor] | nn.Module) -> str:
    """SHA-256 of a state dict (names, dtypes, shapes and bytes): equal digests mean bit-identical weights."""
    state = tensors.state_dict() if isinstance(tensors, nn.Module) else tensors
    digest = hashlib.sha256()
    for name in sorted(state):
        value = state[name].detach()
        digest.update(f"{name}:{value.dtype}:{tuple(value.shape)};".encode())
        value = value.to("cpu").contiguous().reshape(-1)
        digest.update(value.view(torch.uint8).numpy().tobytes() if value.numel() else b"")
    return digest.hexdigest()


def check_in_sync(context: DistContext, module: nn.Module) -> str:
    """The weights' digest; with several ranks, a RuntimeError on every rank if any rank's weights differ."""
    digest = weights_digest(module)
    digests = all_gather_objects(context, digest)
    if len(set(digests)) > 1:
        raise RuntimeError(f"the ranks' weights diverged (digests {[d[:12] for d in digests]}); this is a bug")
    return digest


class StopSignals:
    """SIGTERM / SIGUSR1 ask for a graceful stop (finish the step, checkpoint, exit 0); a second one kills at once.

    Call the object to ask whether a stop was requested (the Trainer's ``stop_requested``). Under ``torchrun``
    every worker gets the agent's SIGTERM, or its SIGUSR1 with ``TORCHELASTIC_SIGNALS_TO_HANDLE`` naming it;
    a signal to any one worker is enough, since the ranks agree on stopping after every step. ``stop_file``: a
    file whose appearance asks for the same graceful stop (checked at every call), for callers that cannot
    signal, such as 3D Slicer on Windows.
    """

    def __init__(self, names: Iterable[str] = STOP_SIGNALS, stop_file: str | os.PathLike | None = None) -> None:
        self.names = [n for n in names if hasattr(signal, n)]
        self.stop_file = stop_file
        self.received: str | None = None
        self._previous: dict[int, Any] = {}

    def __call__(self) -> bool:
        """Whether a stop was requested (a signal, or the stop file exists)."""
        if self.received is None and self.stop_file is not None and os.path.exists(self.stop_file):
            self.received = "stop file"
        return self.received is not None

    def install(self) -> StopSignals:
        """Install the handlers (main thread only; elsewhere a no-op)."""
        if threading.current_thread() is threading.main_thread():
            for name in self.names:
                number = getattr(signal, name)
                self._previous[number] = signal.signal(number, self._handle)
        return self

    def restore(self) -> None:
        """Put the previous handlers back."""
        for number, handler in self._previous.items():
            signal.signal(number, handler)
        self._previous.clear()

    def __enter__(self) -> StopSignals:
        """Install the handlers."""
        return self.install()

    def __exit__(self, *exc: object) -> None:
        """Restore the previous handlers."""
        self.restore()

    def _handle(self, number: int, frame: FrameType | None) -> None:
        """First signal: remember it. Second: the default action (the process ends now)."""
        if self.received is not None:
            signal.signal(number, signal.SIG_DFL)
            os.kill(os.getpid(), number)
            return
        self.received = signal.Signals(number).name
