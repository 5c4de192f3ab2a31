"""
--fsdp under torchrun: the trained models sharded with FSDP2 (fully_shard), per transformer block,
for models that do not fit one device. Each rank keeps 1/N of every weight, gradient and Adam
moment and gathers a block's weights just before using it. Frozen models (PPO's reference and
reward model) stay replicated. minirlhf/distributed.py calls these when a model is sharded.
"""
import contextlib

from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.fsdp import FSDPModule, fully_shard

FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)  # whole tensors on the CPU: loads on any world size


def shard(model):
    for block in model.transformer.h:
        fully_shard(block)
    fully_shard(model)  # the root: embeddings (tied to lm_head), ln_f, the scalar head
    return model


@contextlib.contextmanager
def no_sync(model):
    """Backward passes inside only add up gradients; the first one outside reduces them over ranks."""
    model.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        model.set_requires_gradient_sync(True)


class full_weights:
    """The model's whole weights held on every rank for work that is not a training forward: sampling
    (whose loop length differs between ranks, so it must not gather weights step by step) and evaluation."""

    def __init__(self, model):
        self.modules = [m for m in model.modules() if isinstance(m, FSDPModule)]

    def __enter__(self):
        for m in self.modules:
            m.set_reshard_after_forward(False, recurse=False)  # no gathers inside: they would have to be in step
            m.unshard()

    def __exit__(self, *exc):
        for m in self.modules:
            m.reshard()
            m.set_reshard_after_forward(True, recurse=False)


def model_state(model):
    return get_model_state_dict(model, options=FULL)


def optimizer_state(model, optimizer):
    return get_optimizer_state_dict(model, optimizer, options=FULL)


def load_optimizer_state(model, optimizer, state):
    set_optimizer_state_dict(model, optimizer, state, options=StateDictOptions(full_state_dict=True))
