"""Runs that many experiments of one investigation share, computed once.

The critic's five ablations of one claim (replication, the other method, three controls) and
the circuit search's ablation at every size all start from the same runs: the clean prompts
(with the activations the ablation reads), the source of the ablated values (the corrupted
prompts, or the reference prompts' means) and the everything-ablated baseline. Each is a
pure function of the weights and the prompts, so computing it once and reading it back for
the next ablation changes no number — only the forward passes spent.

The same holds for any unpatched run whose activations an experiment reads
(`tools.experiments.patching.cache_run`: the base and source runs of activation and path
patching too) and for the reference means of mean ablation. An unpatched run is held once per
prompt batch (`shared_covering`): a later experiment that reads a subset of its sites reads
them back; one that reads a site not held runs the batch once more, saving every site of the
model when that fits a quarter of the budget (else the union of the sites asked so far), and
that run takes the old one's place. So a batch is run at most twice however many experiments
read it. Which other sites a forward pass saves changes none of the values it saves.

`SharedRuns` holds those runs, least recently used first out, within a byte budget (a
value larger than the budget is computed and not kept). It is off unless a caller turns it
on for a block of work with `sharing_runs`; an investigation does so for each of its steps.
Nothing in it outlives the memo object, and nothing is written to disk: the workspace's
experiment cache (whole results, keyed by spec) is another thing.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Callable, Hashable, Iterator

import torch

DEFAULT_MAX_BYTES = 1 << 30


class SharedRuns:
    """Values by key, least recently used evicted first once they hold more than ``max_bytes``."""

    def __init__(self, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.max_bytes = max_bytes
        self.hits = 0
        self._items: OrderedDict[Hashable, tuple[Any, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.RLock()  # re-entrant: a computed value may read another one

    def get(self, key: Hashable, compute: Callable[[], Any]) -> Any:
        """The value stored under ``key``, else ``compute()`` (stored when it fits the budget)."""
        with self._lock:
            return self._get(key, compute)

    def _get(self, key: Hashable, compute: Callable[[], Any]) -> Any:
        if key in self._items:
            self._items.move_to_end(key)
            self.hits += 1
            return self._items[key][0]
        value = compute()
        size = nbytes(value)
        if size <= self.max_bytes:
            self._items[key] = (value, size)
            self._bytes += size
            while self._bytes > self.max_bytes:
                _, (_, dropped) = self._items.popitem(last=False)
                self._bytes -= dropped
        return value

    def get_covering(self, key: Hashable, covers: Callable[[Any], bool], compute: Callable[[Any], Any]) -> Any:
        """The value stored under ``key`` when ``covers(value)``; else ``compute(held)`` (``held``:
        the value stored there now, or None), stored in place of ``held`` when it fits."""
        with self._lock:
            held = self._items.get(key, (None, 0))[0]
            if held is not None and covers(held):
                return self._get(key, lambda: held)
            if held is not None:
                self._bytes -= self._items.pop(key)[1]
            return self._get(key, lambda: compute(held))

    @property
    def bytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._items)


_ACTIVE: ContextVar[SharedRuns | None] = ContextVar("circuitsleuth_shared_runs", default=None)


@contextmanager
def sharing_runs(memo: SharedRuns) -> Iterator[SharedRuns]:
    """``with sharing_runs(memo):`` — experiments run inside reuse the runs ``memo`` holds."""
    token = _ACTIVE.set(memo)
    try:
        yield memo
    finally:
        _ACTIVE.reset(token)


def shared(key: Hashable, compute: Callable[[], Any]) -> Any:
    """``compute()``, through the active memo when there is one."""
    memo = _ACTIVE.get()
    return compute() if memo is None else memo.get(key, compute)


def shared_covering(key: Hashable, covers: Callable[[Any], bool], compute: Callable[[Any], Any]) -> Any:
    """`SharedRuns.get_covering` on the active memo; with none, ``compute(None)``."""
    memo = _ACTIVE.get()
    return compute(None) if memo is None else memo.get_covering(key, covers, compute)


def budget() -> int:
    """The active memo's byte budget (0 when no memo is on)."""
    memo = _ACTIVE.get()
    return 0 if memo is None else memo.max_bytes


def fingerprint(tensor: torch.Tensor) -> tuple[tuple[int, ...], str]:
    """Shape and a digest of a tensor's values (a key for the ids and lengths of a prompt batch)."""
    data = tensor.detach().to("cpu").contiguous()
    return tuple(data.shape), f"{data.dtype}:" + hashlib.blake2b(data.numpy().tobytes(), digest_size=16).hexdigest()


def model_key(model: Any) -> tuple[str, str, str]:
    """Weights, dtype and device of a `LoadedModel`: what a shared run belongs to."""
    return model.weights_hash, str(model.dtype), str(model.device)


def nbytes(value: Any) -> int:
    """Bytes held by the tensors in ``value`` (nested dicts, lists and tuples)."""
    if isinstance(value, torch.Tensor):
        return value.untyped_storage().nbytes()
    if isinstance(value, dict):
        return sum(nbytes(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(nbytes(v) for v in value)
    return 0
