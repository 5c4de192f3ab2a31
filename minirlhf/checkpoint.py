"""
Checkpoints: one file holding everything a stage of the recipe leaves behind or needs to go on.

    format          "minirlhf-checkpoint-v2"
    model_config    the GPTConfig of the model, as a dict; model: its weights (the policy's, in PPO)
    tokenizer       what tokenizer.spec() says: name, sizes, a fingerprint of the vocabulary
    train_config    the script's whole config; command: the command line that started the run (how to resume it)
    step            steps (SFT, RM) or iterations (PPO) done, of total_steps
    finished        True once the stage is trained, evaluated and summarized. Later stages take only finished
                    checkpoints, so a killed run is never taken for a result.
    value_model     PPO's value model (config and weights), in the policy's file: a crash can never pair a policy
                    with another iteration's value model
    state           while unfinished: what resuming needs (optimizers, RNG states, data position, metrics, ...)

Written atomically (a temporary file, then a rename), so a crash mid-save leaves the previous checkpoint intact;
never with non-finite weights; read with torch.load(weights_only=True), so loading one never runs code from it.
"""
import os
import re
from dataclasses import asdict, is_dataclass

import torch

from minirlhf.model import GPT, GPTConfig
from minirlhf.tokenizer import check_tokenizer, get_tokenizer, tokenizer_from_spec

FORMAT = "minirlhf-checkpoint-v2"
OLD_FORMATS = ("minirlhf-checkpoint-v1",)  # no "finished" flag: read as finished, as they were used


def _weights(model, state_dict=None):
    """The model's state dict (or the one given) on the CPU; a ValueError naming a non-finite tensor."""
    sd = {k: v.detach().cpu() for k, v in (model.state_dict() if state_dict is None else state_dict).items()}
    for name, w in sd.items():
        if w.is_floating_point() and not torch.isfinite(w).all():
            raise ValueError(f"refusing to save a checkpoint: {name} holds non-finite values")
    return sd


def save_checkpoint(path, model, tokenizer, train_config, step, *, finished=True, state=None, value_model=None,
                    weights=None, value_weights=None, **extra):
    """Write the checkpoint to path atomically; a non-finite weight is a ValueError, the file left as it was.
    weights / value_weights: state dicts to save instead of the models' own (gathered from FSDP shards)."""
    ckpt = {"format": FORMAT, "model_config": asdict(model.config), "model": _weights(model, weights),
            "tokenizer": tokenizer.spec(),
            "train_config": asdict(train_config) if is_dataclass(train_config) else dict(train_config),
            "step": step, "finished": bool(finished), **extra}
    if value_model is not None:
        ckpt["value_model"] = {"model_config": asdict(value_model.config),
                               "model": _weights(value_model, value_weights)}
    if state is not None:
        ckpt["state"] = state
    atomic_save(ckpt, path)


def _temporary(path):
    return f"{path}.tmp{os.getpid()}"


def _atomic(path, mode, write):
    # write(f) into a temporary file beside path, on disk before the rename makes it the file: readers see
    # the old file or the whole new one (os.replace is atomic on POSIX)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = _temporary(path)
    try:
        with open(tmp, mode, **({"encoding": "utf-8"} if "b" not in mode else {})) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def atomic_save(obj, path):
    """torch.save to path such that path holds either the old file or the whole new one."""
    _atomic(path, "wb", lambda f: torch.save(obj, f))


def atomic_write_text(path, text):
    """Write a text file (a summary, a report, metrics) so that it is complete or absent."""
    _atomic(path, "w", lambda f: f.write(text))


def alive(pid):
    """Whether a process with this pid runs (on this machine)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temporaries(directory):
    """Delete the temporary files (NAME.tmpPID) a process killed mid-write left in directory (not a live one's)."""
    removed = []
    for name in os.listdir(directory):
        m = re.fullmatch(r".+\.tmp(\d+)", name)
        if m and (int(m.group(1)) == os.getpid() or not alive(int(m.group(1)))):
            os.remove(os.path.join(directory, name))
            removed.append(name)
    return removed


def read_checkpoint(path, mmap=False, option=None):
    """The checkpoint dict at path, checked to be a minirlhf checkpoint. mmap: map the file (cheap when only
    the small entries are read). option: the command-line option that named path, for the errors."""
    where = f"--{option}={path}" if option else f"checkpoint {path}"
    if os.path.isdir(path):
        raise ValueError(f"{where} is a directory, not a checkpoint file (a run's checkpoint is DIR/ckpt.pt)")
    if not os.path.isfile(path):
        raise ValueError(f"{where} does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception:
        raise ValueError(f"{where} is not a minirlhf checkpoint (torch cannot read it: not a file torch.save "
                         f"wrote, or truncated)") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") not in (FORMAT, *OLD_FORMATS):
        raise ValueError(f"{where} is not a minirlhf checkpoint (no format {FORMAT!r})")
    for key in ("model_config", "model", "tokenizer", "train_config", "step"):
        if key not in ckpt:
            raise ValueError(f"{where} has no {key!r} entry")
    ckpt.setdefault("finished", True)
    return ckpt


def kind_of(ckpt):
    """What a checkpoint holds: "policy" (SFT or PPO) or "reward" (a model with a scalar head)."""
    return "reward" if ckpt["model_config"].get("scalar_head") else "policy"


def script_of(ckpt):
    """The script that wrote a checkpoint."""
    if "value_model" in ckpt or "rm_ckpt" in ckpt["train_config"]:  # a critic-free PPO run saves no value model
        return "train_ppo.py"
    return "train_rm.py" if kind_of(ckpt) == "reward" else "train_sft.py"


def resume_command(ckpt, path):
    """The command that finishes the unfinished run whose checkpoint is at path."""
    command = ckpt.get("command") or f"python {script_of(ckpt)} --out_dir={os.path.dirname(path) or '.'}"
    return f"{command} --resume"


def check(ckpt, path, kind=None, option=None, finished=True):
    """A ValueError naming the option unless the checkpoint holds `kind` ("policy" or "reward") and,
    with finished, its run is complete."""
    where = f"--{option}={path}" if option else f"checkpoint {path}"
    if kind is not None and kind_of(ckpt) != kind:
        held = "a reward or value model (it has a scalar head)" if kind_of(ckpt) == "reward" else \
            "a policy (a language model, no scalar head)"
        raise ValueError(f"{where} is {held}, not a {'reward model' if kind == 'reward' else 'policy'}")
    if finished and not ckpt["finished"]:
        raise ValueError(f"{where} is an unfinished run (stopped at step {ckpt['step']} of "
                         f"{ckpt.get('total_steps', '?')}): finish it first with `{resume_command(ckpt, path)}`")


def model_from(ckpt, path, which="model", device="cpu", **overrides):
    """The model stored in a checkpoint dict (which: "model" or PPO's "value_model"). overrides change
    GPTConfig fields: attn_impl, logprob_impl, or scalar_head=True for a fresh scalar head (the RM's start)."""
    entry = ckpt if which == "model" else ckpt.get(which)
    if entry is None:
        raise ValueError(f"checkpoint {path} holds no {which}")
    try:
        config = GPTConfig(**{"activation": "gelu_tanh", **entry["model_config"], **overrides})  # older ones: GPT-2's
    except TypeError as e:
        raise ValueError(f"checkpoint {path}: bad model config: {e}") from None
    model = GPT(config)
    try:
        missing, unexpected = model.load_state_dict(entry["model"], strict=False)
    except RuntimeError as e:
        raise ValueError(f"checkpoint {path}: weights do not fit its model config: {e}") from None
    # a scalar head asked for on a language model starts fresh (the reward model from the SFT model)
    missing = [k for k in missing if not k.startswith("score_head")]
    if missing or unexpected:
        raise ValueError(f"checkpoint {path}: weights do not fit its model config: missing {missing}, "
                         f"unexpected {unexpected}")
    return model.to(device)


def load_checkpoint(path, tokenizer=None, device="cpu", *, kind=None, option=None, finished=True, **overrides):
    """(model, tokenizer, ckpt) from the checkpoint at path, checked as check() does. A tokenizer given must
    be the one the checkpoint was trained with; otherwise the checkpoint's is rebuilt. overrides: model_from's."""
    ckpt = read_checkpoint(path, option=option)
    check(ckpt, path, kind, option, finished)
    if tokenizer is None:
        tokenizer = tokenizer_from_spec(ckpt["tokenizer"], f"checkpoint {path}")
    else:
        check_tokenizer(tokenizer, ckpt["tokenizer"], f"checkpoint {path}")
    return model_from(ckpt, path, device=device, **overrides), tokenizer, ckpt


def load_ppo_models(cfg, resume_path, critic, device):
    """PPO's (policy, value_model, ref_policy, reward_model, tokenizer): the frozen two from cfg.sft_ckpt and
    cfg.rm_ckpt; the trained two from resume_path, else init_from, else SFT and RM (no value model if not critic)."""
    kw = dict(attn_impl=cfg.kernels, logprob_impl=cfg.kernels, device=device)
    tokenizer = get_tokenizer(cfg.tokenizer) if cfg.tokenizer else None
    ref_policy, tokenizer, sft = load_checkpoint(cfg.sft_ckpt, tokenizer, kind="policy", option="sft_ckpt", **kw)
    reward_model, _, rm = load_checkpoint(cfg.rm_ckpt, tokenizer, kind="reward", option="rm_ckpt", **kw)
    if start_path := resume_path or cfg.init_from:
        policy, _, start = load_checkpoint(start_path, tokenizer, kind="policy", option=None if resume_path else
                                           "init_from", finished=not resume_path, **kw)
        value_model = model_from(start, start_path, "value_model", **kw) if critic else None
    else:
        policy = model_from(sft, cfg.sft_ckpt, **kw)  # a second copy of each, from the checkpoints already read
        value_model = model_from(rm, cfg.rm_ckpt, **kw) if critic else None
    for m in (ref_policy, reward_model):
        m.requires_grad_(False).eval()
    return policy, value_model, ref_policy, reward_model, tokenizer
