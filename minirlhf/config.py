"""
Options from the command line, as in cleanrl: a script's Config dataclass, each field followed by its
docstring, set with --key=value. Unknown keys, wrong types and out-of-range values (each Config's
__post_init__) fail at once, naming the option. The task's presets (minirlhf/presets.py) replace the
dataclass defaults; --help prints the values the run will use, --check the whole config.
"""
import ast
import inspect
import math
import os
import re
import sys
import textwrap
import typing
from dataclasses import asdict, dataclass, fields, is_dataclass

import torch

from minirlhf.presets import PRESETS


def field_docs(cls):
    """{field name: the docstring written under it}, from the source of the dataclass and its bases."""
    docs = {}
    for klass in reversed([k for k in cls.__mro__ if is_dataclass(k)]):
        body = ast.parse(textwrap.dedent(inspect.getsource(klass))).body[0].body
        for stmt, doc in zip(body, body[1:]):
            if isinstance(stmt, ast.AnnAssign) and isinstance(doc, ast.Expr) and isinstance(doc.value, ast.Constant):
                docs[stmt.target.id] = " ".join(str(doc.value.value).split())
    return docs


def convert(name, text, tp):
    """The text of --name=text as a value of type tp (bool, int, float or str)."""
    if tp is bool:
        if text.lower() not in ("1", "true", "yes", "on", "0", "false", "no", "off"):
            raise ValueError(f"--{name}: expected true or false, got {text!r}")
        return text.lower() in ("1", "true", "yes", "on")
    try:
        value = tp(text)
    except ValueError:
        raise ValueError(f"--{name}: expected {tp.__name__}, got {text!r}") from None
    if tp is float and not math.isfinite(value):
        raise ValueError(f"--{name} must be a finite number, got {text!r}")
    return value


def parse(cls, argv, prog, stage=None):
    """A cls from --key=value arguments over the presets of the task for stage ("sft", "rm", "ppo", "rounds";
    None: none). --help prints the options with the values the run will use, and exits."""
    hints, overrides = typing.get_type_hints(cls), {}
    for arg in argv:
        if arg in ("-h", "--help", "--check"):
            continue
        key, eq, text = arg.removeprefix("--").partition("=")
        key = key.replace("-", "_")
        if not arg.startswith("--"):
            raise ValueError(f"argument {arg!r}: options are written --key=value (see --help)")
        if key not in hints:
            raise ValueError(f"unknown option --{key} (see --help for the {len(hints)} options)")
        if not eq and hints[key] is not bool:
            raise ValueError(f"--{key} needs a value: --{key}=...")
        overrides[key] = convert(key, text if eq else "true", hints[key])
    task = overrides.get("task", getattr(cls, "task", None))
    defaults = presets(cls, task, stage)
    if "-h" in argv or "--help" in argv:
        print(f"usage: python {prog} [--key=value ...]\n\n{inspect.getdoc(cls)}\n")
        if stage is not None:
            print(f"The values a run with these options uses (the defaults of --task={task}: minirlhf/presets.py):")
        docs, values = field_docs(cls), defaults | overrides
        for f in fields(cls):
            print(f"  --{f.name}={values[f.name]!r}  ({hints[f.name].__name__})")
            print(textwrap.fill(docs.get(f.name, ""), 100, initial_indent=" " * 6, subsequent_indent=" " * 6))
        sys.exit(0)
    return cls(**(defaults | overrides))


def presets(cls, task, stage=None):
    """The defaults of cls's options: the dataclass's own, under the task's presets for stage (if not None)."""
    defaults = {f.name: f.default for f in fields(cls)}
    if stage is None:
        return defaults
    if task not in PRESETS:
        raise ValueError(f"--task={task}: unknown task {task!r} (the built-in tasks are {', '.join(PRESETS)})")
    return defaults | PRESETS[task].get(stage, {})


def print_config(cfg):
    width = max(len(k) for k in asdict(cfg))
    for k, v in asdict(cfg).items():
        print(f"  {k:<{width}} = {v!r}")


def check(cfg, names, ok, must):
    """A ValueError naming the option unless ok(its value): check(cfg, "gamma", lambda x: 0 <= x <= 1, "in [0, 1]");
    names: an option, or several."""
    for name in (names,) if isinstance(names, str) else names:
        if not ok(getattr(cfg, name)):
            raise ValueError(f"--{name} must be {must}, got {getattr(cfg, name)!r}")


def at_least_one(cfg, *names):
    check(cfg, names, lambda x: x >= 1, "at least 1")


def check_files(cfg, *names):
    """Each option names comma-separated files that must exist ("builtin" and "" name none)."""
    for name in names:
        for path in getattr(cfg, name).split(",") if getattr(cfg, name) not in ("", "builtin") else []:
            if not os.path.isfile(path):
                raise ValueError(f"--{name}: {path} does not exist")


def check_device(device):
    """auto, cpu, cuda or cuda:N, with that GPU present."""
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", device):
        raise ValueError(f"--device must be auto, cpu, cuda or cuda:N, got {device!r}")
    if device.startswith("cuda") and int(device.partition(":")[2] or 0) >= torch.cuda.device_count():
        raise ValueError(f"--device={device}: no such CUDA GPU here ({torch.cuda.device_count()} found; "
                         f"use --device=cpu or auto)")


DTYPES = {"auto": None, "fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class Options:
    """What the three scripts share: the task, the run's directory, where it computes, the optimizer's safety."""
    task: str = "instruct"
    """the built-in task: instruct (one-line instructions) or chat (dialogues); it picks the presets of the other
    options (minirlhf/presets.py) and the gold scorer of the built-in data"""
    out_dir: str = "out"
    """where the run writes ckpt.pt, metrics.jsonl and summary.json"""
    resume: bool = False
    """continue the unfinished run in out_dir from its last checkpoint, exactly (weights, optimizer, data order, RNG)"""
    overwrite: bool = False
    """start over in an out_dir that holds a run (its files are replaced at the new run's first checkpoint)"""
    seed: int = 1337
    """seed of the data order, the initialization and the sampling"""
    eval_split: str = "eval"
    """the built-in held-out prompts measured: eval (the reports') or dev (for choosing settings; never reported)"""
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
    max_new_tokens: int = 24
    """response budget of every sample; a response without EOS by then has not ended"""
    adam_eps: float = 1e-5
    """Adam epsilon, as in the original RLHF code (the N+ implementation details)"""
    grad_clip: float = 1.0
    """clip the global gradient norm to this (0: off)"""
    max_bad_steps: int = 10
    """stop with an error after this many steps in a row with a non-finite loss or gradient (each is skipped)"""

    def __post_init__(self):
        check(self, "out_dir", lambda x: x.strip() != "", "a directory path")
        if os.path.exists(self.out_dir) and not os.path.isdir(self.out_dir):
            raise ValueError(f"--out_dir={self.out_dir} is a file, not a directory")
        if self.resume and self.overwrite:
            raise ValueError("--resume and --overwrite exclude each other: continue the run in --out_dir, or start "
                             "over")
        check_device(self.device)
        check(self, "dtype", lambda x: x in DTYPES, f"one of {', '.join(DTYPES)}")
        check(self, "kernels", lambda x: x in ("auto", "torch", "triton"), "auto, torch or triton")
        check(self, "threads", lambda x: x >= 0, ">= 0 (0: torch's default)")
        check(self, "eval_split", lambda x: x in ("eval", "dev"), "eval or dev")
        at_least_one(self, "max_new_tokens", "max_bad_steps")
        check(self, "adam_eps", lambda x: x > 0, "> 0")
        check(self, "grad_clip", lambda x: x >= 0, ">= 0 (0: off)")


@dataclass
class TrainOptions(Options):
    """What SFT and the reward model share besides: AdamW with warmup and cosine decay, the log's intervals."""
    learning_rate: float = 2e-3
    """peak learning rate (AdamW), reached after warmup_iters, then cosine decay to min_lr"""
    min_lr: float = 1e-4
    """learning rate at the end of the cosine decay"""
    warmup_iters: int = 100
    """linear warmup steps"""
    weight_decay: float = 0.1
    """AdamW weight decay on matrices (not on biases, LayerNorms and positions)"""
    log_interval: int = 50
    """steps between progress lines"""
    eval_interval: int = 500
    """steps between held-out measurements and checkpoints"""

    def __post_init__(self):
        super().__post_init__()
        at_least_one(self, "log_interval", "eval_interval")
        check(self, "learning_rate", lambda x: x > 0, "> 0")
        check(self, "min_lr", lambda x: 0 <= x <= self.learning_rate, "in [0, learning_rate]")
        check(self, "warmup_iters", lambda x: x >= 0, ">= 0")
        check(self, "weight_decay", lambda x: x >= 0, ">= 0")


def main(main_fn, cls, prog, stage=None, argv=None):
    """main_fn(cfg) with cfg parsed from argv (sys.argv[1:]). A ValueError is the user's error: one line on
    stderr and exit status 2, no traceback (a traceback means a bug)."""
    argv = sys.argv[1:] if argv is None else argv
    cfg = None
    try:
        cfg = parse(cls, argv, prog, stage)
        if "--check" in argv:
            return print_config(cfg)
        main_fn(cfg)
    except ValueError as e:
        if cfg is not None or int(os.environ.get("RANK", 0)) == 0:  # a bad option, the same on every rank: once
            print(f"{prog}: error: {e}", file=sys.stderr, flush=True)
        sys.exit(2)
    finally:
        if "minirlhf.runs" in sys.modules:  # the run's out_dir is let go when main ends (in a test too)
            sys.modules["minirlhf.runs"].release()
