"""Data parallel on PyTorch's own runtime: the ranks torchrun starts, and the few collectives the loop needs.

``torchrun --nproc-per-node N -m training.cli train ...`` (or ``triplay train --nproc N``) starts N processes
with ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and a rendezvous in their environment; :func:`from_env` joins
them into one process group (gloo on CPU, NCCL on GPU, one GPU per rank picked by ``LOCAL_RANK``). Without
those variables, or with ``WORLD_SIZE=1``, it returns :data:`SINGLE` and no process group is created.

What each rank does (see ``training.coevolve``):

- plays a contiguous block of the global batch's GRPO groups (a group never straddles ranks) and of the
  held-out games; every game's sampling is seeded by its global index, so the union of the ranks' games is
  the set one process plays with the same global batch;
- gathers the light record of every game (:meth:`Dist.all_gather`), so advantages, baselines, metrics and
  the league's credit are computed over the global batch, identically on every rank;
- exchanges the Attack Success Pool's new entries (and the verdict gate's outcomes) after every judged step,
  in global game order, so every rank's pool holds what one process's would;
- sums the trained role's LoRA gradients with one all-reduce (:meth:`Dist.all_reduce_`), the loss already
  normalised by global counts, so every rank takes the same optimizer step;
- rank 0 alone writes metrics, TensorBoard, transcripts, checkpoints and the report.

Why an explicit all-reduce and not ``DistributedDataParallel``: the three role adapters live in one model and
only the phase's adapter gets gradients, which DDP reports as unused parameters (or must search for every
step with ``find_unused_parameters=True``); the loss is normalised by the global batch, so gradients are
*summed*, not averaged; and one flat all-reduce of 0.5M LoRA values per step needs no buckets or hooks.

A rank that dies breaks the others' next collective: gloo and NCCL report the lost peer, or give up after
``dist.timeout_s``; :class:`RankFailure` then says so in one line and the run resumes from its checkpoint.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch

__all__ = ["Dist", "RankFailure", "SINGLE", "block", "from_env"]


class RankFailure(RuntimeError):
    """A collective failed: another rank died or stopped answering within ``dist.timeout_s``."""


def block(n: int, rank: int, world_size: int) -> range:
    """The contiguous share of ``n`` items that ``rank`` owns: sizes differ by at most one, earlier ranks first.

    >>> [list(block(5, r, 2)) for r in range(2)]
    [[0, 1, 2], [3, 4]]
    """
    base, extra = divmod(n, world_size)
    start = rank * base + min(rank, extra)
    return range(start, start + base + (rank < extra))


@dataclass
class Dist:
    """This process's place among the ranks, and the collectives the loop uses (no-ops for one process)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: str = "cpu"
    """where tensor collectives run: ``cpu`` for gloo, ``cuda:LOCAL_RANK`` for NCCL"""

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the one writer."""
        return self.rank == 0

    def _call(self, what: str, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except (RuntimeError, OSError) as e:  # gloo/NCCL errors (DistBackendError is a RuntimeError)
            raise RankFailure(
                f"rank {self.rank} of {self.world_size}: {what} failed, so another rank has died or stopped answering "
                f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); every rank stops here; resume from "
                f"the last checkpoint with --resume") from e

    def all_gather(self, obj: Any, what: str = "all_gather") -> list[Any]:
        """Every rank's ``obj``, in rank order (pickled; for small records, not tensors)."""
        if not self.enabled:
            return [obj]
        import torch.distributed as td

        out: list[Any] = [None] * self.world_size
        self._call(what, lambda: td.all_gather_object(out, obj))
        return out

    def all_reduce_(self, tensor: torch.Tensor, what: str = "all_reduce") -> torch.Tensor:
        """Sum ``tensor`` over ranks, in place (moved to :attr:`device` and back if it lives elsewhere)."""
        if not self.enabled:
            return tensor
        import torch.distributed as td

        target = tensor if tensor.device == torch.device(self.device) else tensor.to(self.device)
        self._call(what, lambda: td.all_reduce(target))
        if target is not tensor:
            tensor.copy_(target)
        return tensor

    def sum(self, values: Sequence[float], what: str = "sum") -> list[float]:
        """Element-wise sums over ranks (float64)."""
        t = torch.tensor(list(values), dtype=torch.float64)
        return self.all_reduce_(t, what).tolist()

    def max(self, value: float, what: str = "max") -> float:
        if not self.enabled:
            return value
        return max(self.all_gather(value, what))

    def any(self, flag: bool, what: str = "any") -> bool:
        return self.sum([float(bool(flag))], what)[0] > 0

    def barrier(self, what: str = "barrier") -> None:
        if self.enabled:
            import torch.distributed as td

            self._call(what, td.barrier)

    def concat(self, items: list, what: str = "exchange") -> list:
        """Every rank's ``items`` concatenated in rank order: the global order of blocks of games."""
        return [x for part in self.all_gather(items, what) for x in part]

    def check_equal(self, value: float, what: str) -> None:
        """Raise on every rank if ``value`` (a checksum) is not bitwise the same on all ranks."""
        values = self.all_gather(value, f"checking {what}")
        if len(set(values)) > 1:
            raise RuntimeError(f"ranks drifted apart: {what} differs across ranks {dict(enumerate(values))}; "
                               f"rank {self.rank} stops")

    def close(self) -> None:
        if self.enabled:
            import torch.distributed as td

            if td.is_initialized():
                td.destroy_process_group()


SINGLE = Dist()
"""one process: every collective returns its input"""


def from_env(*, timeout_s: float = 600.0, device: str = "auto") -> Dist:
    """Join the process group torchrun set up in the environment, or :data:`SINGLE` without one.

    ``device`` is the model's (``auto``, ``cpu``, ``cuda``...): on a GPU every rank takes ``cuda:LOCAL_RANK``
    and the backend is NCCL; on the CPU, gloo. ``timeout_s`` bounds how long a rank waits for a dead peer.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return SINGLE
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if use_cuda:
        gpus = torch.cuda.device_count()
        if local_rank >= gpus:
            raise RuntimeError(f"rank {rank} has LOCAL_RANK={local_rank} but this node has {gpus} GPU(s): start at most "
                               f"{gpus} processes per node (--nproc-per-node {gpus})")
        torch.cuda.set_device(local_rank)
        tensor_device = f"cuda:{local_rank}"
    else:
        tensor_device = "cpu"
    import torch.distributed as td

    if not td.is_initialized():
        td.init_process_group(backend="nccl" if use_cuda else "gloo", timeout=timedelta(seconds=timeout_s),
                              **({"device_id": torch.device(tensor_device)} if use_cuda else {}))
    return Dist(rank=rank, world_size=world_size, local_rank=local_rank, device=tensor_device)


def run_difference(a, b) -> dict:
    """How far two finished runs (``runs/<name>`` folders) are apart, record by record of ``metrics.jsonl``:

    - ``paid_max_abs``: the largest absolute difference of any loss, reward or return;
    - ``metrics_max_scaled``: of every other logged number, ``|x - y| / max(1, |x|)`` (float32 noise in a value
      of 10, such as a token entropy, is 1e-6 absolute); timings and the verdict cache's hit rate are left out,
      they measure the machine and the cache's history, not the run;
    - ``weights_max_abs``: the largest absolute difference of any LoRA weight in the final checkpoint.

    The check that N ranks play what one process plays: ``run_difference(one_rank_dir, n_rank_dir)``.
    """
    import json
    import math
    from pathlib import Path

    from safetensors.torch import load_file

    a, b = Path(a), Path(b)
    rows = [[json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines()] for d in (a, b)]
    steps = [[(r["iteration"], r["phase"], r["step"]) for r in run] for run in rows]
    if steps[0] != steps[1]:
        raise ValueError(f"{a} and {b} logged different steps: not the same run")
    out = {"paid_max_abs": 0.0, "paid_worst": "", "paid_values": 0, "metrics_max_scaled": 0.0, "metrics_worst": "",
           "metric_values": 0}
    for ra, rb in zip(*rows):
        where = f"iteration {ra['iteration']} {ra['phase']} step {ra['step']}"
        for k in sorted(set(ra) & set(rb)):
            va, vb = ra[k], rb[k]
            if (k.startswith("time/") or "cache_hit_rate" in k or "/" not in k
                    or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (va, vb))):
                continue  # None (a nan) on one side only is caught below by the key sets
            if any(w in k.rsplit("/", 1)[-1] for w in ("loss", "reward", "return")):
                d, key, worst, count = abs(va - vb), "paid_max_abs", "paid_worst", "paid_values"
            else:
                d, key, worst, count = abs(va - vb) / max(1.0, abs(va)), "metrics_max_scaled", "metrics_worst", "metric_values"
            out[count] += 1
            if d > out[key] or math.isnan(d):
                out[key], out[worst] = d, f"{k} at {where}"
        nulls = {k for k in set(ra) | set(rb) if (ra.get(k) is None) != (rb.get(k) is None)}
        if nulls:
            raise ValueError(f"{a} and {b} differ in which values are missing at {where}: {sorted(nulls)}")
    out["weights_max_abs"], out["weight_tensors"] = 0.0, 0
    for file in sorted((a / "checkpoint" / "adapters").rglob("*.safetensors")):
        wa, wb = load_file(str(file)), load_file(str(b / file.relative_to(a)))
        for k, t in wa.items():
            out["weights_max_abs"] = max(out["weights_max_abs"], float((t.double() - wb[k].double()).abs().max()))
            out["weight_tensors"] += 1
    return out
