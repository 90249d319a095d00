"""Shared state whose updates wait: the Attack Success Pool and the verdict gate are read by every env of a
batch, so the lockstep runner holds them while the envs step and releases them once all have."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["Held"]


class Held:
    """Between :meth:`hold` and :meth:`release` updates queue in ``self._pending`` (the subclass appends to it
    while ``self._held``); :meth:`release` applies them in arrival order with ``self._apply``."""

    _held = False
    exchange: Callable[[list], list] | None = None
    """with several processes sharing one logical object: maps this process's held updates to everyone's, in a
    fixed global order (``training.distributed.Dist.concat``); None keeps them local"""

    def hold(self) -> None:
        self._held = True

    def release(self) -> None:
        self._held = False
        pending, self._pending = self._pending, []
        if self.exchange is not None:
            pending = self.exchange(pending)
        self._apply(pending)

    def _apply(self, pending: list[Any]) -> None:
        raise NotImplementedError
