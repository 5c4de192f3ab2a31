"""
One script for one device or many: `python train_x.py` runs in one process, `torchrun
--nproc_per_node=N train_x.py` runs N, one per GPU (NCCL) or CPU (Gloo), with nothing else to change.

Every rank draws the whole global batch with the same random stream and keeps its slice, so N ranks
train on what one process would. The trained models are replicated with DistributedDataParallel or,
with --fsdp, sharded by FSDP2 (minirlhf/fsdp.py). Both average gradients over ranks, so losses are
normalized by global counts times the world size: the mean of world * local_sum / global_count is the
single-process loss. Only rank 0 writes files and prints.
"""
import atexit
import os
import sys
from contextlib import nullcontext
from functools import partial
from typing import NamedTuple

import torch
import torch.distributed as dist

from minirlhf.config import DTYPES, print_config


class Dist(NamedTuple):
    rank: int
    world: int
    local_rank: int

    @property
    def is_main(self):
        return self.rank == 0


ONE = Dist(0, 1, 0)  # a single process


def setup(cfg, show_config=True):
    """(Dist, device, autocast) for cfg.device, cfg.dtype and cfg.threads; prints the config (rank 0). Under torchrun
    it joins the process group, a GPU becomes cuda:LOCAL_RANK. Weights stay fp32; forwards run `with autocast():` in
    cfg.dtype (auto: bf16 on CUDA, none on the CPU; fp16 on the CPU runs bf16's CUDA path under TRITON_INTERPRET)."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = cfg.device if cfg.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    d = ONE
    if int(os.environ.get("WORLD_SIZE", 1)) > 1:
        d = Dist(*(int(os.environ[k]) for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK")))
        device = f"cuda:{d.local_rank}" if device.startswith("cuda") else device
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo", rank=d.rank, world_size=d.world)
        if not d.is_main:
            sys.stdout = open(os.devnull, "w")  # one rank speaks; errors still reach stderr
    if show_config:
        print_config(cfg)
    dtype = torch.bfloat16 if cfg.dtype == "auto" and device.startswith("cuda") else DTYPES[cfg.dtype]
    if device.startswith("cuda"):
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = True  # fp32 matmuls (the log-prob logits) on tensor cores
    # a factory, not one context object: `with autocast():` makes a fresh one each time, so nesting is safe
    autocast = partial(torch.autocast, device.split(":")[0], dtype=dtype) if dtype is not None else nullcontext
    return d, device, autocast


def shutdown():
    """Leave the process group together (a rank that tears down Gloo while another still writes its files can
    abort), then end without finalizing the interpreter: Gloo's threads free Python-backed tensors just after the
    last collective, and one doing so while the interpreter finalizes aborts the finished rank."""
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
        atexit.register(_exit_before_finalization)


def _exit_before_finalization():
    atexit.unregister(_exit_before_finalization)
    atexit._run_exitfuncs()  # the other exit handlers (one releases the out_dir), then exit without finalizing
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


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


def shard(items, d):
    """Rank d.rank's items of a list, every world-th one: evaluation work split over the ranks."""
    return items[d.rank::d.world]


def unshard(parts):
    """The inverse of shard over the lists of all ranks (all_gather_objects of each rank's results)."""
    out = [None] * sum(len(p) for p in parts)
    for r, part in enumerate(parts):
        out[r::len(parts)] = part
    return out


def all_sum(x):
    """x summed over all ranks (a tensor; the same tensor back on a single process)."""
    if dist.is_initialized():
        x = x.clone()
        dist.all_reduce(x)
    return x


def all_max(x):
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


def wrap(model, d, fsdp):
    """The model as it is trained: itself on one process, DDP-wrapped, or sharded with FSDP2."""
    if fsdp:
        return _fsdp().shard(model)
    if d.world == 1:
        return model
    from torch.nn.parallel import DistributedDataParallel
    device_ids = [model.lm_head.weight.device.index] if model.lm_head.weight.is_cuda else None
    return DistributedDataParallel(model, device_ids=device_ids)


def unwrapped(model):
    """The GPT inside a DDP wrapper (FSDP2 modules are the model itself)."""
    return model.module if hasattr(model, "module") else model


def sharded(model):
    """Whether FSDP2 shards the model (its modules can unshard)."""
    return hasattr(unwrapped(model), "unshard")


def _fsdp():
    from minirlhf import fsdp  # imported only when a model is sharded: the extra stays out of other runs
    return fsdp


def grad_sync(model, sync):
    """Around the forward and backward of a step's micro-batch: with sync False (all but the step's last)
    the gradients only add up on each rank; DDP or FSDP2 reduce the sum over ranks once, in the last backward."""
    if sync or not (hasattr(model, "no_sync") or sharded(model)):
        return nullcontext()
    return model.no_sync() if hasattr(model, "no_sync") else _fsdp().no_sync(model)


def full_weights(model):
    """A context in which the model holds all of its weights (a no-op unless FSDP2 shards it), for
    sampling and evaluation, whose work differs between ranks."""
    return _fsdp().full_weights(model) if sharded(model) else nullcontext()


def model_state(model):
    """The full state dict of a trained model (with FSDP2 every rank must call it: it gathers the shards)."""
    return _fsdp().model_state(model) if sharded(model) else unwrapped(model).state_dict()


def optimizer_state(model, optimizer):
    """The optimizer's state, in a form that loads back on any number of ranks (collective with FSDP2)."""
    return _fsdp().optimizer_state(model, optimizer) if sharded(model) else optimizer.state_dict()


def load_optimizer_state(model, optimizer, state):
    if sharded(model):
        return _fsdp().load_optimizer_state(model, optimizer, state)
    optimizer.load_state_dict(state)


def local(x):
    """A tensor that may be a DTensor (FSDP2 results, e.g. the gradient norm) as a plain tensor."""
    return x.full_tensor() if hasattr(x, "full_tensor") else x
