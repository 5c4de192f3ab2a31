"""
Checkpoints: one file holding the model config, the weights, the tokenizer, the training config
and the step. Written atomically, so a crash mid-save leaves the previous checkpoint intact;
read with torch.load(weights_only=True), so loading one never runs code from it.
"""
import os
from dataclasses import asdict, is_dataclass

import torch

from minirlhf.model import GPT, GPTConfig
from minirlhf.tokenizer import check_tokenizer, tokenizer_from_spec

FORMAT = "minirlhf-checkpoint-v1"


def save_checkpoint(path, model, tokenizer, train_config, step, **extra):
    """Write the checkpoint to path via a temporary file in the same directory and a rename."""
    ckpt = {
        "format": FORMAT,
        "model_config": asdict(model.config),
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "tokenizer": tokenizer.spec(),
        "train_config": asdict(train_config) if is_dataclass(train_config) else dict(train_config),
        "step": step,
        **extra,
    }
    atomic_save(ckpt, path)


def atomic_save(obj, path):
    """torch.save to path such that path holds either the old file or the whole new one."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())  # the bytes are on disk before the rename makes them the checkpoint
        os.replace(tmp, path)  # atomic on POSIX: readers see the old file or the new one
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def read_checkpoint(path):
    """The checkpoint dict at path, checked to be a minirlhf checkpoint."""
    if not os.path.isfile(path):
        raise ValueError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"checkpoint {path} cannot be read (truncated or not a torch file?): {type(e).__name__}: {e}") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise ValueError(f"{path} is not a minirlhf checkpoint (no format {FORMAT!r})")
    for key in ("model_config", "model", "tokenizer", "train_config", "step"):
        if key not in ckpt:
            raise ValueError(f"checkpoint {path} has no {key!r} entry")
    return ckpt


def load_checkpoint(path, tokenizer=None, device="cpu", **overrides):
    """(model, tokenizer, ckpt) from the checkpoint at path. If tokenizer is given it must be the
    one the checkpoint was trained with; otherwise the checkpoint's tokenizer is rebuilt.
    overrides change GPTConfig fields: dropout, attn_impl, or scalar_head=True to put a freshly
    initialized scalar head on a language model (how the reward model starts from the SFT model)."""
    ckpt = read_checkpoint(path)
    if tokenizer is None:
        tokenizer = tokenizer_from_spec(ckpt["tokenizer"], f"checkpoint {path}")
    else:
        check_tokenizer(tokenizer, ckpt["tokenizer"], f"checkpoint {path}")
    try:
        config = GPTConfig(**{**ckpt["model_config"], **overrides})
    except TypeError as e:
        raise ValueError(f"checkpoint {path}: bad model config: {e}") from None
    model = GPT(config)
    try:
        missing, unexpected = model.load_state_dict(ckpt["model"], strict=False)
    except RuntimeError as e:
        raise ValueError(f"checkpoint {path}: weights do not fit its model config: {e}") from None
    # a scalar head asked for on a language model starts fresh (the reward model from the SFT model)
    missing = [k for k in missing if not k.startswith("score_head")]
    if missing or unexpected:
        raise ValueError(f"checkpoint {path}: weights do not fit its model config: missing {missing}, "
                         f"unexpected {unexpected}")
    return model.to(device), tokenizer, ckpt
