"""Background batch production for training: the next batches are ready before the GPU asks for them.

A thread (not a process) runs the patch sampler: its work is NumPy slicing, flipping and copying, which release
the GIL, and a thread shares the in-memory dataset without copying it into workers. A batch is a pair of tensors,
or a :class:`cldl.data.augment.PlannedBatch` (drawn here, augmented on the training device). Each batch carries the
sampler's RNG state after it was drawn, so a checkpoint records the state after the last batch *used*, never
after batches prefetched but not yet trained on: resuming continues with exactly the batches an uninterrupted run
would have used, whatever the prefetch depth.
"""

from __future__ import annotations

import queue
import threading
from typing import Any, Protocol

import numpy as np
import torch

from ..data.augment import PlannedBatch

Batch = tuple[torch.Tensor, torch.Tensor] | PlannedBatch


class Sampler(Protocol):
    """What the prefetcher needs: seeded ``sample(batch_size)`` drawing from ``rng``."""

    rng: np.random.Generator

    def sample(self, batch_size: int) -> Batch:
        """One batch."""
        ...


class BatchPrefetcher:
    """Draws ``batch_size`` batches from ``sampler`` ``depth`` ahead in a thread (``depth=0``: on demand)."""

    def __init__(self, sampler: Sampler, batch_size: int, depth: int = 2, pin_memory: bool = False) -> None:
        if depth < 0:
            raise ValueError(f"prefetch depth must be >= 0, got {depth}")
        self.sampler = sampler
        self.batch_size = batch_size
        self.depth = depth
        self.pin_memory = pin_memory
        self._state: dict[str, Any] = sampler.rng.bit_generator.state
        self._queue: queue.Queue = queue.Queue(maxsize=max(depth, 1))
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if depth > 0:
            self._thread = threading.Thread(target=self._produce, name="cldl-prefetch", daemon=True)
            self._thread.start()

    def sample(self, batch_size: int) -> Batch:
        """The next batch, in the order the sampler drew them."""
        if batch_size != self.batch_size:
            raise ValueError(f"this prefetcher draws batches of {self.batch_size}, not {batch_size}")
        if self._thread is None:
            batch = self.sampler.sample(batch_size)
            self._state = self.sampler.rng.bit_generator.state
            return _pinned(batch) if self.pin_memory else batch
        while True:
            try:
                item = self._queue.get(timeout=1.0)
                break
            except queue.Empty:
                if not self._thread.is_alive():
                    raise RuntimeError("the batch prefetch thread stopped unexpectedly") from None
        if isinstance(item, BaseException):
            raise item
        batch, self._state = item
        return batch

    def rng_state(self) -> dict[str, Any]:
        """The sampler's RNG state after the last batch returned by :meth:`sample` (what a checkpoint stores)."""
        return self._state

    def close(self) -> None:
        """Stop the thread and drop the batches it drew ahead."""
        self._stop.set()
        if self._thread is not None:
            while self._thread.is_alive():
                try:
                    self._queue.get_nowait()
                except queue.Empty:
                    self._thread.join(timeout=0.1)
            self._thread = None

    def __enter__(self) -> BatchPrefetcher:
        """Use as a context manager: the thread stops on exit."""
        return self

    def __exit__(self, *exc: object) -> None:
        """Stop the thread."""
        self.close()

    def _produce(self) -> None:
        """Thread body: draw, pin, queue; stop when asked; hand an exception over to :meth:`sample`."""
        try:
            while not self._stop.is_set():
                batch = self.sampler.sample(self.batch_size)
                state = self.sampler.rng.bit_generator.state
                if self.pin_memory:
                    batch = _pinned(batch)
                while not self._stop.is_set():
                    try:
                        self._queue.put((batch, state), timeout=0.1)
                        break
                    except queue.Full:
                        continue
        except BaseException as exc:  # handed to the consumer, which raises it
            self._queue.put(exc)


def _pinned(batch: Batch) -> Batch:
    """``batch`` in page-locked memory, from which copies to a GPU run asynchronously."""
    if isinstance(batch, PlannedBatch):
        return batch.pin_memory()
    x, y = batch
    return x.pin_memory(), y.pin_memory()
