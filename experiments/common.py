"""
What the experiments share: their common options, the default run's checkpoints (trained when
missing, with the commands `python train_ppo.py` uses), runs derived from those (the same options
but one or two, as child processes of the training scripts), and the outputs: a JSON of the numbers,
PNG figures, and the experiment's section of experiments/RESULTS.md, replaced atomically.

The experiments import it as `common` (Python puts the script's folder first on the path).
"""
import ast
import fcntl
import functools
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from types import SimpleNamespace

import torch

from minirlhf import distributed, runs
from minirlhf.checkpoint import atomic_write_text, load_checkpoint, read_checkpoint
from minirlhf.config import DTYPES, check, check_device
from minirlhf.distributed import ONE
from minirlhf.presets import PRESETS

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)  # the repository: the training scripts
ONE_PROCESS = ONE  # the experiments evaluate in one process
# the default run's checkpoints and the commands that make them (`python train_ppo.py` runs the same)
DEFAULT_RUN = {"sft": ("out/sft/ckpt.pt", "train_sft.py", ["--task=instruct", "--out_dir=out/sft"]),
               "rm": ("out/rm/ckpt.pt", "train_rm.py", ["--task=instruct", "--out_dir=out/rm",
                                                         "--sft_ckpt=out/sft/ckpt.pt"]),
               "ppo": ("out/ppo/ckpt.pt", "train_ppo.py", ["--task=instruct", "--out_dir=out/ppo"])}
# options that say where and how a run computes, not what it computes
PLACE_OPTIONS = ("out_dir", "resume", "overwrite", "device", "dtype", "kernels", "threads", "fsdp")


@dataclass
class RunOptions:
    """Where an experiment writes and how its runs compute."""
    out_dir: str = "out/experiments"
    """where the experiment's runs, results.json and figures go (runs found there with the same options are reused)"""
    results_md: str = ""
    """the markdown file whose section for this experiment is (re)written (empty: experiments/RESULTS.md)"""
    device: str = "auto"
    """auto (cuda if available, else cpu), cpu, cuda, cuda:N; the training runs get it too"""
    dtype: str = "auto"
    """autocast dtype: auto (bf16 on CUDA, fp32 on the CPU), fp32, bf16, fp16"""
    kernels: str = "auto"
    """attention and log-prob implementations: auto, torch or triton"""
    threads: int = 0
    """torch CPU threads, here and in the training runs (0: torch's default)"""

    def __post_init__(self):
        check(self, "out_dir", lambda x: x.strip() != "", "a directory path")
        check(self, "dtype", lambda x: x in DTYPES, f"one of {', '.join(DTYPES)}")
        check(self, "kernels", lambda x: x in ("auto", "torch", "triton"), "auto, torch or triton")
        check(self, "threads", lambda x: x >= 0, ">= 0 (0: torch's default)")
        check_device(self.device)

    @property
    def results_path(self):
        return self.results_md or os.path.join(HERE, "RESULTS.md")


@dataclass
class ExperimentOptions(RunOptions):
    """The options every experiment that evaluates and plots has."""
    plot: bool = True
    """write the PNG figures (needs matplotlib: pip install -e ".[plot]"); false: tables and JSON only"""
    seed: int = 1337
    """seed of the held-out prompts, the sampling and the labelers of the evaluation"""

    def __post_init__(self):
        super().__post_init__()
        if self.plot:
            pyplot()  # a missing matplotlib fails now, not after an hour of training


@dataclass
class PipelineOptions(RunOptions):
    """The options of an experiment that trains the pipeline (SFT, RM, then more) per built-in task and seed."""
    tasks: str = "instruct,chat"
    """the built-in tasks, comma-separated"""
    seeds: str = "1337,2,3"
    """seeds of the training runs, comma-separated: each gets its own SFT, reward model and runs after them"""
    sft_options: str = ""
    """more --key=value options of every SFT run (train_sft.py), space-separated"""
    rm_options: str = ""
    """more options of every reward model run (train_rm.py)"""
    ppo_options: str = ""
    """more options of every train_ppo.py run"""

    SET_HERE = ()  # (not an option) the child runs' options the experiment sets itself, kept out of *_options

    def __post_init__(self):
        super().__post_init__()
        check(self, "tasks", lambda x: distinct(x) and all(t in PRESETS for t in x.split(",")),
              f"distinct comma-separated built-in tasks ({', '.join(PRESETS)})")
        check(self, "seeds", lambda x: all(s.strip().lstrip("-").isdigit() for s in x.split(",")),
              "comma-separated integers, at least one")
        check(self, "seeds", lambda x: len(set(self.seed_list)) == len(self.seed_list), "distinct seeds")
        for f in fields(self):
            if f.name.endswith("_options"):
                check_child_options(self, f.name, self.SET_HERE)

    @property
    def seed_list(self):
        return [int(s) for s in self.seeds.split(",")]


def pyplot():
    """matplotlib.pyplot on the Agg backend, or a ValueError that says how to get it."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ValueError("--plot: matplotlib is not installed; install the plot extra (pip install -e \".[plot]\"), "
                         "or pass --plot=false for the tables and JSON alone") from None
    return plt


def command(script):
    """The command line that ran this experiment, to paste back."""
    return " ".join(["python", f"experiments/{script}", *map(shlex.quote, sys.argv[1:])])


def device_args(cfg):
    return runs.device_args(cfg)


def setup(cfg):
    """(device, autocast) of the experiment's options."""
    return distributed.setup(cfg, show_config=False)[1:]


def load(cfg, path, device, tokenizer=None):
    """(model, tokenizer) of a finished checkpoint, in eval mode, with the experiment's kernels."""
    model, tokenizer, _ = load_checkpoint(path, tokenizer, device=device, attn_impl=cfg.kernels,
                                          logprob_impl=cfg.kernels)
    return model.requires_grad_(False).eval(), tokenizer


def ensure_default_run(cfg, *whats):
    """The SFT, RM and PPO checkpoints the experiment starts from (cfg.sft_ckpt, ...), finished. Those
    of the default run (out/sft, out/rm, out/ppo) are trained when missing and finished when not,
    with the commands the default run uses; any other path must hold a finished run already."""
    for what in whats:
        path = getattr(cfg, f"{what}_ckpt")
        default, script, args = DEFAULT_RUN[what]
        if os.path.isfile(path) and read_checkpoint(path, mmap=True)["finished"]:
            continue
        if os.path.normpath(path) != os.path.normpath(default):
            problem = "is an unfinished run" if os.path.isfile(path) else "does not exist"
            raise ValueError(f"--{what}_ckpt={path} {problem}: train it first with {script} (the default run's "
                             f"checkpoint {default} is trained here when missing)")
        runs.stage(path, script, args + device_args(cfg), f"the default run's {what.upper()} {path}")


def options_of(ckpt_path, skip=(), **overrides):
    """The --key=value options that repeat the run that made ckpt_path (its stored config), but for
    the options in skip, where and how it computes, and the overrides."""
    config = read_checkpoint(ckpt_path, mmap=True)["train_config"]
    options = {k: v for k, v in config.items() if k not in set(skip) | set(PLACE_OPTIONS)}
    options.update(overrides)
    return [f"--{k}={v}" for k, v in options.items()]


def check_options(saved, args, where):
    """A ValueError unless the stored config `saved` has the value of every --key=value in args."""
    for arg in args:
        key, _, value = arg[2:].partition("=")
        if key not in PLACE_OPTIONS and str(saved.get(key)) != value:
            raise ValueError(f"{where} was made with --{key}={saved.get(key)}, not {value}: remove it, or choose "
                             f"another --out_dir for this experiment")


def train(path, script, args, cfg, what):
    """The run of `script args` whose checkpoint is path: reused when it is finished (with these
    options), resumed when it is not, started when it is missing."""
    if os.path.isfile(path):
        check_options(read_checkpoint(path, mmap=True)["train_config"], args, path)
    t0 = time.time()
    runs.stage(path, script, args + [f"--out_dir={os.path.dirname(path)}"] + device_args(cfg), what)
    return time.time() - t0


def summary_of(ckpt_path):
    """The summary.json a training run wrote beside its checkpoint ({} if there is none)."""
    path = os.path.join(os.path.dirname(ckpt_path), "summary.json")
    return json.load(open(path)) if os.path.isfile(path) else {}


def markdown_table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines


def fmt(x, spec):
    return "—" if x is None else format(x, spec)


def save_figure(fig, cfg, key, name):
    """The figure as out_dir/name and as figures/<key>_<name> beside the results markdown (which
    links it there); returns the second path."""
    plt = pyplot()
    os.makedirs(cfg.out_dir, exist_ok=True)
    path = os.path.join(cfg.out_dir, name)
    tmp = f"{path}.tmp{os.getpid()}.png"
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)
    figures = os.path.join(os.path.dirname(os.path.abspath(cfg.results_path)), "figures")
    os.makedirs(figures, exist_ok=True)
    copy = os.path.join(figures, f"{key}_{name}")
    shutil.copyfile(path, f"{copy}.tmp{os.getpid()}")
    os.replace(f"{copy}.tmp{os.getpid()}", copy)
    return copy


def link(path, cfg):
    """path relative to the results markdown's folder, for a link in it."""
    return os.path.relpath(path, os.path.dirname(os.path.abspath(cfg.results_path)))


def machine():
    gpu = f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    return f"{platform.machine()} CPU, {os.cpu_count()} cores{gpu}, torch {torch.__version__}"


@contextmanager
def locked(directory):
    """Hold an exclusive lock on a directory: two experiments finishing at once do not lose a section."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


RESULTS_HEADER = """# Experiments

Each section is written by the experiment named in it (`experiments/<name>.py`), with the exact
command that produced it; rerunning an experiment replaces its section and leaves the others as
they are. Figures are in `experiments/figures/`, all numbers in the run's `results.json`.
"""


def write_section(path, key, lines):
    """Replace (or append) the section of experiment `key` in the markdown file at path, atomically:
    the lines between <!-- BEGIN key --> and <!-- END key -->."""
    begin, end = f"<!-- BEGIN {key} -->", f"<!-- END {key} -->"
    section = "\n".join([begin, *lines, end])
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    with locked(directory):
        text = open(path, encoding="utf-8").read() if os.path.isfile(path) else RESULTS_HEADER
        if text.count(begin) != text.count(end) or text.count(begin) > 1:
            raise ValueError(f"{path}: the markers of section {key!r} are broken; fix them by hand")
        if begin in text:
            head, rest = text.split(begin, 1)
            text = head + section + rest.split(end, 1)[1]
        else:
            text = text.rstrip("\n") + "\n\n" + section + "\n"
        atomic_write_text(path, text)


def save_results(cfg, key, seconds, **numbers):
    """out_dir/results.json: the experiment, its command and options, its time and its numbers; returns them."""
    out = {"experiment": key, "command": command(f"{key}.py"), "config": asdict(cfg), "seconds": seconds, **numbers}
    os.makedirs(cfg.out_dir, exist_ok=True)
    runs.write_json(os.path.join(cfg.out_dir, "results.json"), out)
    return out


def publish(cfg, key, lines, seconds):
    """The experiment's section of the results markdown, written and printed."""
    write_section(cfg.results_path, key, lines)
    print("\n".join(lines))
    print(f"done in {seconds / 60:.1f} min: {cfg.out_dir}/results.json, {cfg.results_path}")


def section_head(title, question, script, cfg, seconds, trains=True):
    """The opening lines of a results section: the question, the command, when, where and how long."""
    reused = " (training runs that were already there are reused and not counted again)" if trains else ""
    return [f"## {title}", "", question, "", f"Command: `{command(script)}`", "",
            f"Run {time.strftime('%Y-%m-%d %H:%M')} on {machine()}; {seconds / 60:.1f} min{reused}.", ""]


def distinct(text):
    return len(set(text.split(","))) == len(text.split(","))


@functools.cache
def child(script, *args):
    """args as the script parses them (over the task's presets), each --key=value written as the run stores it, so
    that a finished run is found again, and all the options it will use; a bad option is an error here, before any
    training. `script --check` prints the parsed options: the scripts are run, never imported."""
    done = subprocess.run([sys.executable, os.path.join(ROOT, script), *args, "--check"], capture_output=True,
                          text=True)
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines()
        raise ValueError(lines[-1].replace(": error: ", ": ", 1) if lines else
                         f"{script} --check: exit status {done.returncode}")
    parsed = dict(line.strip().partition(" = ")[::2] for line in done.stdout.splitlines() if " = " in line)
    parsed = {k.strip(): ast.literal_eval(v) for k, v in parsed.items()}
    keys = dict.fromkeys(arg[2:].partition("=")[0] for arg in args)
    return [f"--{k}={parsed[k]}" for k in keys], SimpleNamespace(**parsed)


def spread(values):
    """{mean, min, max} over the seeds of the values that exist (None if none does)."""
    values = [v for v in values if v is not None]
    return {"mean": sum(values) / len(values), "min": min(values), "max": max(values)} if values else None


def cell(s, spec):
    """mean [min, max], in percent for spec %."""
    if s is None:
        return "—"
    f = (lambda x: f"{100 * x:.1f}") if spec == "%" else (lambda x: format(x, spec))
    return f"{f(s['mean'])}{'%' if spec == '%' else ''} [{f(s['min'])}, {f(s['max'])}]"


def check_child_options(cfg, name, set_here):
    """cfg.<name>: space-separated --key=value options of child runs, none of those the experiment sets itself."""
    try:
        words = shlex.split(getattr(cfg, name))
    except ValueError as e:  # an unclosed quote
        raise ValueError(f"--{name}: {e}") from None
    options = dict(arg[2:].partition("=")[::2] for arg in words)
    check(cfg, name, lambda x: all(a.startswith("--") and "=" in a for a in shlex.split(x)),
          "space-separated --key=value options")
    check(cfg, name, lambda x: not set(options) & set(set_here), f"free of {', '.join(set_here)}")
