"""
One script for one device or many: `python train_x.py` runs in one process, and
`torchrun --nproc_per_node=N train_x.py` (or --nnodes=M for several machines) runs N processes, one
per GPU (NCCL) or CPU (Gloo), with nothing else to change (nanochat's pattern).

Each rank takes its share of every global batch: the scripts draw the whole batch with the same
random stream on every rank and keep their slice, so N ranks train on what one process with the
whole batch would. The trained models are wrapped in DistributedDataParallel (a replica per rank,
gradients averaged in backward) or, with --fsdp, sharded per block with FSDP2 (fully_shard: each
rank keeps 1/N of every weight, gradient and Adam moment, and gathers a block's weights just
before using it), for models that do not fit one device. Frozen models (the PPO reference and
reward model) are replicated, in eval mode.

Losses are normalized by global counts (tokens, prompts) times the world size, because DDP and
FSDP average gradients over ranks: the average of world * local_sum / global_count is
global_sum / global_count, the single-process loss. Only rank 0 writes files and prints; the others
stay silent but for errors, and a rank that raises makes torchrun stop the whole job.
"""
import contextlib
import os
import sys
from typing import NamedTuple

import torch
import torch.distributed as dist


class Dist(NamedTuple):
    rank: int
    world: int
    local_rank: int

    @property
    def is_main(self):
        return self.rank == 0


def setup(device):
    """Join the process group when started by torchrun (RANK and WORLD_SIZE are set). Returns
    (Dist, device): under torchrun a "cuda" device becomes this rank's GPU, cuda:LOCAL_RANK."""
    if "WORLD_SIZE" not in os.environ or int(os.environ["WORLD_SIZE"]) == 1:
        return Dist(0, 1, 0), device
    rank, world, local_rank = (int(os.environ[k]) for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
    on_cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if on_cuda:
        device = f"cuda:{local_rank}"
        torch.cuda.set_device(device)
    elif device == "auto":
        device = "cpu"
    dist.init_process_group("nccl" if on_cuda else "gloo", rank=rank, world_size=world)
    if rank != 0:
        sys.stdout = open(os.devnull, "w")  # one rank speaks; errors still reach stderr
    return Dist(rank, world, local_rank), device


def shutdown():
    """Leave the process group together: a rank that tears down Gloo while another still writes its
    files can abort at exit ("terminate called without an active exception"), so all ranks meet first."""
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def share(n, d, name):
    """This rank's share of a global count n (a batch size); a ValueError naming the option if the
    ranks cannot split it evenly."""
    if n % d.world:
        raise ValueError(f"--{name}={n} is not divisible by the {d.world} ranks (each rank takes an equal share)")
    return n // d.world


def my_slice(items, d):
    """Rank d.rank's contiguous share of a list whose length the world size divides."""
    n = len(items) // d.world
    return items[d.rank * n:(d.rank + 1) * n]


def all_sum(x):
    """x summed over all ranks (a tensor; the same tensor back on a single process)."""
    if dist.is_initialized():
        x = x.clone()
        dist.all_reduce(x)
    return x


def all_max(x):
    """x maximized over all ranks."""
    if dist.is_initialized():
        x = x.clone()
        dist.all_reduce(x, op=dist.ReduceOp.MAX)
    return x


def all_gather_objects(obj):
    """[obj of rank 0, obj of rank 1, ...] on every rank."""
    if not dist.is_initialized():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def barrier():
    if dist.is_initialized():
        dist.barrier()


def wrap(model, d, fsdp):
    """The model as it is trained: itself on one process, DDP-wrapped, or sharded with FSDP2."""
    if fsdp:
        from torch.distributed.fsdp import fully_shard
        for block in model.transformer.h:
            fully_shard(block)
        fully_shard(model)  # the root: embeddings (tied to lm_head), ln_f, the scalar head
        return model
    if d.world == 1:
        return model
    from torch.nn.parallel import DistributedDataParallel
    device_ids = [model.lm_head.weight.device.index] if model.lm_head.weight.is_cuda else None
    return DistributedDataParallel(model, device_ids=device_ids)


@contextlib.contextmanager
def grad_sync(model, sync):
    """Around the forward and backward of one micro-batch of a step: with sync False (every one but the
    step's last) the gradients only add up on each rank, and DDP or FSDP2 reduce the sum over ranks in
    the last backward, once. (Reducing after each would give the same sum, with more communication.)"""
    if sync:
        yield
    elif hasattr(model, "no_sync"):  # DistributedDataParallel
        with model.no_sync():
            yield
    elif hasattr(model, "set_requires_gradient_sync"):  # FSDP2
        model.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            model.set_requires_gradient_sync(True)
    else:  # one process
        yield


def unwrapped(model):
    """The GPT inside a DDP wrapper (FSDP2 modules are the model itself)."""
    return model.module if hasattr(model, "module") else model


class full_weights:
    """Context in which an FSDP2-sharded model holds all of its weights, for work that is not a
    forward pass of training: sampling (whose loop length differs between ranks, so it must not
    gather weights step by step) and the held-out evaluation. A no-op for other models."""

    def __init__(self, model):
        from torch.distributed.fsdp import FSDPModule
        self.modules = [m for m in unwrapped(model).modules() if isinstance(m, FSDPModule)]

    def __enter__(self):
        for m in self.modules:
            m.set_reshard_after_forward(False, recurse=False)  # no gathers inside: they would have to be in step
            m.unshard()

    def __exit__(self, *exc):
        for m in self.modules:
            m.reshard()
            m.set_reshard_after_forward(True, recurse=False)


def model_state(model, fsdp):
    """The full (unsharded) state dict of a trained model, on every rank that calls it (with FSDP
    all ranks must call it: it gathers the shards)."""
    if not fsdp:
        return unwrapped(model).state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def optimizer_state(model, optimizer, fsdp):
    """The optimizer's state in a form that loads back on any number of ranks (collective with FSDP)."""
    if not fsdp:
        return optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict
    return get_optimizer_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_optimizer_state(model, optimizer, state, fsdp):
    if not fsdp:
        optimizer.load_state_dict(state)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict
    set_optimizer_state_dict(model, optimizer, state, options=StateDictOptions(full_state_dict=True))


def local(x):
    """A tensor that may be a DTensor (FSDP2 results, e.g. the gradient norm) as a plain tensor."""
    return x.full_tensor() if hasattr(x, "full_tensor") else x


def shard(items, d):
    """Rank d.rank's items of a list, every world-th one: evaluation work split over the ranks."""
    return items[d.rank::d.world]


def unshard(parts):
    """The inverse of shard over the lists of all ranks (all_gather_objects of each rank's results)."""
    out = [None] * sum(len(p) for p in parts)
    for r, part in enumerate(parts):
        out[r::len(parts)] = part
    return out
