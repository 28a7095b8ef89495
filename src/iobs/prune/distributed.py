"""Data-parallel calibration and layer-parallel solves over torch.distributed processes.

With R ranks the calibration samples are split into R contiguous shards; rank r captures and propagates
its own samples only and accumulates H_r = Σ_{x in shard r} x xᵀ for each layer. The full H = Σ_r H_r
(and the token count) is summed onto the one rank that solves the layer (``reduce``, a sum delivered
where it is needed); the layers of a group are spread over the ranks by their solve cost, and every
solved W (with its record) is broadcast back, so all ranks hold the same pruned block before they run
it on their own samples. Results equal the single-process run up to the order of the float sums in H.

Backend: gloo on CPU, NCCL on CUDA (each rank on ``cuda:LOCAL_RANK``). The process group comes from the
environment that ``torchrun`` or ``iobs prune --nproc N`` (torch.distributed's elastic launcher) set up.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

BACKENDS = ("gloo", "nccl")
TIMEOUT = datetime.timedelta(minutes=60)  # one rank may solve a large layer while the others wait


def env_world() -> int:
    """WORLD_SIZE from the environment (1 when unset): the processes torchrun / --nproc started."""
    raw = os.environ.get("WORLD_SIZE", "1")
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"environment variable WORLD_SIZE must be an integer, got {raw!r}") from None


def init_from_env(device: torch.device | str = "cpu") -> Group | None:
    """Join the process group described by RANK / WORLD_SIZE / MASTER_ADDR / MASTER_PORT (env://); gloo
    for a CPU ``device``, NCCL for CUDA (after selecting ``cuda:LOCAL_RANK``). None in a single process."""
    if env_world() <= 1:
        return None
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, init_method="env://", timeout=TIMEOUT)
    return active()


def active() -> Group | None:
    """The running process group when it has more than one rank, else None (the single-process path)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return Group(dist.get_rank(), dist.get_world_size())
    return None


def is_main() -> bool:
    """True on rank 0 (and in a single process): the one process that writes outputs and prints."""
    g = active()
    return g is None or g.rank == 0


def shutdown() -> None:
    """Wait for every rank (rank 0 may still be writing or evaluating), then leave the process group."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def solve_cost(module: nn.Module) -> int:
    """d_in · (d_in + d_out): the relative time of a SparseGPT layer solve as measured here on SmolLM2's
    shapes (576..1536, one CPU thread: within ±6 % for q/k/gate/down), where the per-column updates
    dominate; only the ranking matters (at d ≥ 4096 the d_in³ + d_out·d_in² flops rank the same way)."""
    from iobs.prune.layers import get_weight

    d_out, d_in = get_weight(module).shape
    return d_in * (d_in + d_out)


@dataclass(frozen=True)
class Group:
    """This process's ``rank`` among ``world`` ranks."""

    rank: int
    world: int

    def shard(self, n: int) -> slice:
        """Rank r's contiguous share of n samples: [⌊rn/R⌋, ⌊(r+1)n/R⌋); needs n ≥ R."""
        if n < self.world:
            raise ValueError(
                f"nsamples ({n}) must be at least the number of processes ({self.world}): every rank "
                "needs calibration samples of its own"
            )
        return slice(self.rank * n // self.world, (self.rank + 1) * n // self.world)

    def owners(self, layers: dict[str, nn.Module]) -> dict[str, int]:
        """Which rank solves each layer: largest solve cost first, each to the least-loaded rank
        (ties: the lower rank), the same answer on every rank."""
        load = [0] * self.world
        owner = {}
        for name in sorted(layers, key=lambda n: -solve_cost(layers[n])):  # stable: ties keep walk order
            r = min(range(self.world), key=lambda k: (load[k], k))
            owner[name] = r
            load[r] += solve_cost(layers[name])
        return owner

    def reduce_to_owners(self, acc: dict, owners: dict[str, int]) -> None:
        """Sum every layer's H and token count over the ranks onto its owner; others drop their H."""
        for name, a in acc.items():
            H = a.H.contiguous()
            dist.reduce(H, dst=owners[name], op=dist.ReduceOp.SUM)
            tokens = torch.tensor([a.tokens], dtype=torch.int64, device=H.device)
            dist.reduce(tokens, dst=owners[name], op=dist.ReduceOp.SUM)
            if self.rank == owners[name]:
                a.H, a.tokens = H, int(tokens.item())
            else:
                a.H = None

    def broadcast_weights(self, layers: dict[str, nn.Module], owners: dict[str, int]) -> None:
        """Every layer's weight from the rank that solved it to all ranks (in place)."""
        with torch.no_grad():
            for name, m in layers.items():
                w = m.weight.data
                buf = w if w.is_contiguous() else w.contiguous()
                dist.broadcast(buf, src=owners[name])
                if buf is not w:
                    w.copy_(buf)

    def gather_records(self, mine: list[dict], order: list[str]) -> list[dict]:
        """Every rank's layer records, merged in walk order ``order``."""
        parts: list[list[dict] | None] = [None] * self.world
        dist.all_gather_object(parts, mine)
        by_name = {r["name"]: r for part in parts for r in part}
        return [by_name[n] for n in order]

    def all_reduce_hessians(self, acc: dict) -> None:
        """H = Σ_r H_r and the token counts on every rank (the reduce hook of the dense step)."""
        for a in acc.values():
            dist.all_reduce(a.H, op=dist.ReduceOp.SUM)
            tokens = torch.tensor([a.tokens], dtype=torch.int64, device=a.H.device)
            dist.all_reduce(tokens, op=dist.ReduceOp.SUM)
            a.tokens = int(tokens.item())

    def all_reduce_grads(self, params, value: float = 0.0) -> float:
        """Σ_r of every parameter's gradient (a missing one counts as zero), in place; returns Σ_r ``value``
        (e.g. the loss) summed in the same collective."""
        params = [p for p in params if p.requires_grad]
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        flat = torch.cat(
            [p.grad.reshape(-1) for p in params]
            + [torch.tensor([value], dtype=params[0].dtype, device=params[0].device)]
        )
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        k = 0
        for p in params:
            p.grad.copy_(flat[k : k + p.numel()].view_as(p.grad))
            k += p.numel()
        return float(flat[-1])

    def barrier(self) -> None:
        dist.barrier()


def hessian_reduce(group: Group, layers: dict[str, nn.Module]):
    """The ``reduce`` hook of :func:`iobs.prune.hessian.accumulate_hessians` for a walk: each H summed
    onto the rank that will solve its layer."""
    return lambda acc: group.reduce_to_owners(acc, group.owners(layers))


def solve_group_distributed(
    group: Group, layers: dict[str, nn.Module], acc: dict, solver, extra: dict
) -> list[dict]:
    """:func:`iobs.prune.solve.solve_group` over the ranks (H already reduced by :func:`hessian_reduce`):
    each owner solves its layers, the weights and records are shared with every rank."""
    from iobs.prune.solve import solve_group

    owners = group.owners(layers)
    mine = {n: m for n, m in layers.items() if owners[n] == group.rank}
    records = solve_group(mine, {n: acc[n] for n in mine}, solver, {**extra, "rank": group.rank})
    group.broadcast_weights(layers, owners)
    return group.gather_records(records, list(layers))


def launch(fn, nproc: int, args: tuple = ()) -> dict:
    """Run ``fn(*args)`` in ``nproc`` local processes through torch.distributed's elastic launcher
    (what ``torchrun --standalone --nproc-per-node nproc`` does: c10d rendezvous on a free loopback port,
    RANK / WORLD_SIZE / MASTER_ADDR / MASTER_PORT in each worker's environment, no restarts).
    Returns {rank: fn's return value}; a failing worker raises ``ChildFailedError`` with its traceback."""
    import uuid

    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    if not isinstance(nproc, int) or isinstance(nproc, bool) or nproc < 1:
        raise ValueError(f"nproc must be an integer >= 1, got {nproc!r}")
    config = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=nproc,
        run_id=f"iobs-{uuid.uuid4().hex[:8]}",
        rdzv_backend="c10d",
        rdzv_endpoint="127.0.0.1:0",
        max_restarts=0,
        monitor_interval=0.5,
        start_method="spawn",
    )
    return elastic_launch(config, fn)(*args)
