"""Multi-process training on `torch.distributed`: what each rank needs to know about the others.

`rlhf-interp train` runs unchanged under `torchrun --nproc-per-node N` (or `rlhf-interp train --nproc N`, which
launches torchrun): each rank samples `batch_size / N` episodes with its own seed, the policy + value head are
wrapped in `DistributedDataParallel` (gradients all-reduced), the statistics that must be global (advantage
whitening, score moments, the adaptive KL controller, logged metrics) are reduced across ranks, and only rank 0
writes files. Backend: gloo on CPU, nccl on CUDA. With one process every helper here is the identity.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from rlhf_interp.errors import UserError
from rlhf_interp.ppo import core


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1

    # --- collectives (no-ops with one process) -----------------------------------------------------------------
    def all_sum(self, x: Tensor) -> Tensor:
        if self.active:
            x = x.clone()
            torch.distributed.all_reduce(x, op=torch.distributed.ReduceOp.SUM)
        return x

    def any(self, flag: bool, device: torch.device) -> bool:
        """True on every rank when `flag` is True on any rank."""
        return bool(self.all_sum(torch.tensor([float(flag)], device=device)).item() > 0)

    def gather_rows(self, x: Tensor) -> Tensor:
        """Concatenate each rank's (n, ...) tensor along dim 0, in rank order, on every rank (same shapes)."""
        if not self.active:
            return x
        parts = [torch.empty_like(x) for _ in range(self.world)]
        torch.distributed.all_gather(parts, x.contiguous())
        return torch.cat(parts)

    def gather_objects(self, obj: Any) -> list[Any]:
        """Every rank's picklable `obj`, in rank order, on every rank."""
        if not self.active:
            return [obj]
        out: list[Any] = [None] * self.world
        torch.distributed.all_gather_object(out, obj)
        return out

    def broadcast_object(self, obj: Any) -> Any:
        """Rank 0's `obj` on every rank."""
        if not self.active:
            return obj
        box = [obj]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.active:
            torch.distributed.barrier()

    # --- statistics over the whole batch -----------------------------------------------------------------------
    def masked_moments(self, x: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """Mean and Bessel-corrected variance of the masked entries of `x` over all ranks (float64 sums)."""
        if not self.active:
            return core.masked_mean(x, mask), core.masked_var(x, mask)
        m = mask.to(torch.float64)
        x64 = core.masked_fill_zero(x.detach().to(torch.float64), mask)  # a select: inf/NaN on padding stays out
        sums = self.all_sum(torch.stack([x64.sum(), (x64 * x64).sum(), m.sum()]))
        s, ss, n = sums.unbind()
        mean = s / n.clamp(min=1)
        var = (ss / n.clamp(min=1) - mean * mean).clamp(min=0) * n / (n - 1).clamp(min=1)
        return mean.to(x.dtype), var.to(x.dtype)

    def masked_whiten(self, x: Tensor, mask: Tensor, eps: float = 1e-8) -> Tensor:
        """`core.masked_whiten` with the statistics of the global batch.

        # advantage whitening over the whole batch, not per rank: N implementation details #7
        """
        if not self.active:
            return core.masked_whiten(x, mask, eps=eps)
        mean, var = self.masked_moments(x, mask)
        return core.masked_fill_zero((x - mean) * torch.rsqrt(var + eps), mask)

    def explained_variance(self, values: Tensor, returns: Tensor, mask: Tensor) -> float:
        if not self.active:
            return core.explained_variance(values, returns, mask)
        var_returns = self.masked_moments(returns, mask)[1]
        if var_returns.item() == 0:
            return float("nan")
        return float(1 - self.masked_moments(returns - values, mask)[1] / var_returns)

    def mean_of_stats(self, stats: dict[str, float], device: torch.device) -> dict[str, float]:
        """Average each scalar over ranks (the logged optimisation statistics)."""
        if not self.active or not stats:
            return stats
        keys = list(stats)  # same order on every rank (the dict is built in the same order)
        total = self.all_sum(torch.tensor([stats[k] for k in keys], dtype=torch.float64, device=device))
        return {k: float(v) / self.world for k, v in zip(keys, total.tolist(), strict=True)}


def from_env() -> Dist:
    """The process's place in a torchrun job (RANK / WORLD_SIZE / LOCAL_RANK), or a single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    return Dist(rank=int(os.environ["RANK"]), world=world, local_rank=int(os.environ.get("LOCAL_RANK", "0")))


def init(dist: Dist, device: torch.device) -> torch.device:
    """Join the process group (gloo on CPU, nccl on CUDA); returns this rank's device (cuda:LOCAL_RANK on GPUs)."""
    if not dist.active:
        return device
    if device.type == "cuda":
        if torch.cuda.device_count() <= dist.local_rank:
            raise UserError(f"rank {dist.rank} wants cuda:{dist.local_rank} but this node has "
                            f"{torch.cuda.device_count()} GPUs; lower --nproc-per-node")
        device = torch.device("cuda", dist.local_rank)
        torch.cuda.set_device(device)
    if not torch.distributed.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        torch.distributed.init_process_group(backend=backend, device_id=device if device.type == "cuda" else None)
    return device


def shutdown(dist: Dist) -> None:
    if dist.active and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def check_batch(batch_size: int, minibatches: int, world: int) -> int:
    """Episodes per rank; the global batch must split into equal per-rank minibatches."""
    if batch_size % (world * minibatches):
        raise UserError(f"config 'batch_size' ({batch_size}) must be divisible by processes x minibatches "
                        f"({world} x {minibatches}) when training on {world} processes")
    return batch_size // world


def rank_seed(seed: int, rank: int) -> int:
    """Each rank's own sampling seed (rank 0 keeps `seed`, so a one-process run is unchanged)."""
    return seed + 1_000_003 * rank


def maybe_record_digest(step: int, dist: Dist, module: torch.nn.Module) -> None:
    """Tests: with RLHF_INTERP_PARAM_DIGESTS=DIR each rank appends `step sha256-of-its-parameters` to
    DIR/rank<r>.txt after every update, so a test can check that the ranks hold identical weights. Unset: nothing."""
    folder = os.environ.get("RLHF_INTERP_PARAM_DIGESTS")
    if not folder:
        return
    h = hashlib.sha256()
    for name, p in sorted(module.named_parameters()):
        h.update(name.encode())
        h.update(p.detach().to("cpu").contiguous().numpy().tobytes())
    with open(Path(folder) / f"rank{dist.rank}.txt", "a", encoding="utf-8") as f:
        f.write(f"{step} {h.hexdigest()}\n")
