"""
Command lines for the training scripts: one dataclass per script, each field followed by its
docstring (as in cleanrl), overridden with --key=value. Unknown keys, values of the wrong type and
non-finite numbers are errors, never ignored; each script's __post_init__ checks the ranges, so a
bad option fails at once with its name, before anything is loaded or written. --help prints every
field with its type, default and docstring.
"""
import ast
import inspect
import math
import os
import re
import sys
import textwrap
import types
import typing
from contextlib import nullcontext
from dataclasses import asdict, dataclass, fields, is_dataclass
from functools import partial

import torch

_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def field_docs(cls):
    """{field name: the docstring written under it} from the source of the dataclass and its bases."""
    docs = {}
    for klass in reversed([k for k in cls.__mro__ if is_dataclass(k)]):
        body = ast.parse(textwrap.dedent(inspect.getsource(klass))).body[0].body
        for stmt, nxt in zip(body, body[1:]):
            if (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name) and isinstance(nxt, ast.Expr)
                    and isinstance(nxt.value, ast.Constant) and isinstance(nxt.value.value, str)):
                docs[stmt.target.id] = " ".join(nxt.value.value.split())
    return docs


def _convert(name, text, tp):
    """text -> a value of type tp (int, float, str, bool or Optional of one)."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if text.lower() == "none":
            return None
        return _convert(name, text, args[0])
    if tp is bool:
        if text.lower() in _TRUE:
            return True
        if text.lower() in _FALSE:
            return False
        raise ValueError(f"--{name}: expected true or false, got {text!r}")
    try:
        value = tp(text)
    except ValueError:
        raise ValueError(f"--{name}: expected {tp.__name__}, got {text!r}") from None
    if tp is float and not math.isfinite(value):
        raise ValueError(f"--{name} must be a finite number, got {text!r}")
    return value


def _type_name(tp):
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(tp))
    return "None" if tp is type(None) else tp.__name__


def usage(cls, prog):
    hints, docs = typing.get_type_hints(cls), field_docs(cls)
    lines = [f"usage: python {prog} [--key=value ...]", ""]
    doc = inspect.getdoc(cls)
    if doc:
        lines += [doc, ""]
    for f in fields(cls):
        lines.append(f"  --{f.name}={f.default!r}  ({_type_name(hints[f.name])})")
        if f.name in docs:
            lines += textwrap.wrap(docs[f.name], 96, initial_indent="      ", subsequent_indent="      ")
    return "\n".join(lines)


def parse_config(cls, argv=None, prog="script.py", task_defaults=None):
    """An instance of dataclass cls with --key=value overrides from argv applied (ValueError on bad
    input). task_defaults: a key of the chosen task's DEFAULTS (minirlhf/tasks): that task's defaults
    for the script ("sft", "rm", "ppo") replace the dataclass's own where the command line is silent."""
    argv = sys.argv[1:] if argv is None else argv
    hints, names = typing.get_type_hints(cls), {f.name for f in fields(cls)}
    overrides = {}
    for arg in argv:
        if arg in ("-h", "--help"):
            print(usage(cls, prog))
            sys.exit(0)
        if not arg.startswith("--"):
            raise ValueError(f"argument {arg!r}: options are written --key=value (see --help)")
        key, eq, text = arg[2:].partition("=")
        key = key.replace("-", "_")
        if key not in names:
            raise ValueError(f"unknown option --{key} (see --help for the {len(names)} options)")
        if not eq:
            if hints[key] is not bool:
                raise ValueError(f"--{key} needs a value: --{key}=...")
            text = "true"
        overrides[key] = _convert(key, text, hints[key])
    if task_defaults is not None:
        overrides = {**task_config_defaults(overrides.get("task", cls.task), task_defaults), **overrides}
    return cls(**overrides)


def task_config_defaults(task, script):
    """The defaults a built-in task sets for a script's options (its DEFAULTS[script])."""
    from minirlhf.tasks import get_task
    try:
        return dict(get_task(task).DEFAULTS.get(script, {}))
    except ValueError as e:
        raise ValueError(f"--task={task}: {e}") from None


def print_config(cfg):
    width = max(len(k) for k in asdict(cfg))
    for k, v in asdict(cfg).items():
        print(f"  {k:<{width}} = {v!r}")


def check(cfg, name, ok, must):
    """A ValueError naming the option unless ok(value) holds:
    check(cfg, "gamma", lambda x: 0 <= x <= 1, "in [0, 1]")."""
    value = getattr(cfg, name)
    if not ok(value):
        raise ValueError(f"--{name} must be {must}, got {value!r}")


def check_at_least_one(cfg, *names):
    """A ValueError naming the option if any of these fields of cfg is below 1."""
    for name in names:
        check(cfg, name, lambda x: x >= 1, "at least 1")


@dataclass
class RunOptions:
    """The options every training script has: which task, where and how it runs, how it restarts."""
    task: str = "instruct"
    """the built-in task: instruct (one-line instructions) or chat (dialogues). It sets the defaults of the other
    options (chat: out/chat/..., block_size 128, ...) and the gold scorer of the built-in data"""
    out_dir: str = "out"
    """where the run writes its checkpoint (ckpt.pt), metrics.jsonl, summary.json and report"""
    resume: bool = False
    """continue the unfinished run in out_dir from its last checkpoint, exactly (weights, optimizer, data order, RNG)"""
    overwrite: bool = False
    """start over in an out_dir that holds a run (its files are replaced at the new run's first checkpoint)"""
    seed: int = 1337
    """seed of the data order, the initialization and the sampling"""
    device: str = "auto"
    """auto (cuda if available, else cpu), cpu, cuda, cuda:1, ... (under torchrun: each rank's own GPU)"""
    dtype: str = "auto"
    """autocast dtype of the forward passes: auto (bf16 on CUDA, fp32 on the CPU), fp32, bf16, fp16"""
    kernels: str = "auto"
    """attention and log-prob implementations: auto (Triton on CUDA), torch, or triton (on the CPU only under
    TRITON_INTERPRET=1: the CUDA code path, simulated)"""
    fsdp: bool = False
    """under torchrun, shard the trained models with FSDP2 instead of replicating them with DDP"""
    threads: int = 0
    """torch CPU threads (0: torch's default)"""

    def __post_init__(self):
        from minirlhf.tasks import TASKS
        check(self, "task", lambda x: x in TASKS, f"one of {', '.join(TASKS)}")
        check(self, "out_dir", lambda x: x.strip() != "", "a directory path")
        if os.path.exists(self.out_dir) and not os.path.isdir(self.out_dir):
            raise ValueError(f"--out_dir={self.out_dir} is a file, not a directory")
        check(self, "threads", lambda x: x >= 0, ">= 0 (0: torch's default)")
        check(self, "dtype", lambda x: x in DTYPES, f"one of {', '.join(DTYPES)}")
        check(self, "kernels", lambda x: x in ("auto", "torch", "triton"), "auto, torch or triton")
        check_device(self.device)
        if self.resume and self.overwrite:
            raise ValueError("--resume and --overwrite exclude each other: continue the run in --out_dir, "
                             "or start over")


def check_files(cfg, *names):
    """Each option names comma-separated files that must exist ("builtin" and "" name none)."""
    for name in names:
        value = getattr(cfg, name)
        for path in (value.split(",") if value not in ("", "builtin") else []):
            if not os.path.isfile(path):
                raise ValueError(f"--{name}: {path} does not exist")


def check_device(device):
    """auto, cpu, cuda or cuda:N, with the GPU present."""
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", device):
        raise ValueError(f"--device must be auto, cpu, cuda or cuda:N, got {device!r}")
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(f"--device={device}: no CUDA GPU is available here (use --device=cpu or auto)")
        index = int(device.split(":")[1]) if ":" in device else 0
        if index >= torch.cuda.device_count():
            raise ValueError(f"--device={device}: there are only {torch.cuda.device_count()} GPUs")


DTYPES = {"auto": None, "fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def setup_device(cfg, device=None):
    """(device, autocast) from cfg.device, cfg.dtype and cfg.threads; use as `with autocast():`.
    auto picks cuda when there is one. The weights stay fp32; the forward passes run under autocast
    in cfg.dtype (auto: bf16 on CUDA, none on the CPU). fp16 autocast on the CPU runs the same code as
    bf16 on a GPU, where the Triton interpreter, which has no bf16, can run the kernels: the CUDA path,
    simulated."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = device or cfg.device  # under torchrun: this rank's device (distributed.setup)
    device = device if device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if cfg.dtype == "auto" and device.startswith("cuda") else DTYPES[cfg.dtype]
    if device.startswith("cuda"):
        torch.cuda.set_device(device)
        # fp32 matmuls (the log-prob logits) on tensor cores in TF32, rollout and training alike
        torch.backends.cuda.matmul.allow_tf32 = True
    # a factory, not one context object: `with autocast():` makes a fresh one each time, so nesting is safe
    autocast = partial(torch.autocast, device.split(":")[0], dtype=dtype) if dtype is not None else nullcontext
    return device, autocast


def run(main, cls, prog, task_defaults=None):
    """Parse cls from the command line and call main(cfg); a ValueError is a user error: one line on
    stderr and exit status 2, no traceback (a traceback means a bug). Under torchrun every rank
    runs this; a rank that exits makes torchrun stop the others."""
    try:
        main(parse_config(cls, prog=prog, task_defaults=task_defaults))
    except ValueError as e:
        print(f"{prog}: error: {e}", file=sys.stderr, flush=True)
        sys.exit(2)
