"""minirlhf/config.py and presets.py: --key=value options, --help showing the defaults a run will use for
the task given, and the reader's core: what the three scripts import on one device, and no extra."""
import contextlib
import importlib.util
import os
import re
import subprocess
import sys
from dataclasses import dataclass

import pytest

from minirlhf import config
from minirlhf.presets import PRESETS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STAGES = {"train_sft": "sft", "train_rm": "rm", "train_ppo": "ppo"}


def script(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, f"{name}.py"))
    module = sys.modules[name] = importlib.util.module_from_spec(spec)  # inspect reads the docstrings' source
    spec.loader.exec_module(module)
    return module


def printed(capsys, module, name, *args):
    """What the script prints for these arguments (--help or --check): {option: its value as printed}."""
    with pytest.raises(SystemExit) if "--help" in args else contextlib.nullcontext():
        config.main(module.main, module.Config, f"{name}.py", STAGES[name], argv=list(args))
    out = capsys.readouterr().out
    pattern = r"^  --(\w+)=(.*)  \(\w+\)$" if "--help" in args else r"^  (\w+)\s+= (.*)$"
    return dict(re.findall(pattern, out, re.MULTILINE))


@pytest.mark.parametrize("name", list(STAGES))
@pytest.mark.parametrize("task", list(PRESETS))
def test_help_shows_the_defaults_the_run_uses(capsys, name, task):
    """--help for a task prints every option with the value that run gets (--check prints the config the run
    starts with), and those values are the task's presets over the script's defaults."""
    module = script(name)
    shown = printed(capsys, module, name, f"--task={task}", "--help")
    used = printed(capsys, module, name, f"--task={task}", "--check")
    assert shown == used and len(used) == len(config.presets(module.Config, task))
    for key, value in PRESETS[task].get(STAGES[name], {}).items():
        assert used[key] == repr(value), key
    given = printed(capsys, module, name, f"--task={task}", "--seed=7", "--check")
    assert given["seed"] == "7" and {k: v for k, v in given.items() if k != "seed"} == \
        {k: v for k, v in used.items() if k != "seed"}


def test_the_chat_presets_are_what_a_chat_run_uses(capsys):
    used = printed(capsys, script("train_ppo"), "train_ppo", "--task=chat", "--check")
    assert (used["iterations"], used["kl_coef"], used["out_dir"]) == ("60", "0.2", "'out/chat/ppo'")
    used = printed(capsys, script("train_ppo"), "train_ppo", "--task=chat", "--iterations=3", "--check")
    assert used["iterations"] == "3" and used["kl_coef"] == "0.2"  # the command line over the preset


@dataclass
class Toy:
    """A toy."""
    n: int = 1
    """a count"""
    rate: float = 0.5
    """a rate"""
    flag: bool = False
    """a flag"""
    name: str = "x"
    """a name"""


def test_options_are_typed_and_checked():
    assert config.parse(Toy, ["--n=3", "--rate=1e-3", "--flag", "--name=a=b"], "toy.py") == Toy(3, 1e-3, True, "a=b")
    assert config.parse(Toy, ["--flag=false", "--flag=yes"], "toy.py").flag is True  # the last one counts
    for args, message in ((["--n=two"], "--n: expected int, got 'two'"), (["--rate=inf"], "--rate must be a finite"),
                          (["--flag=maybe"], "--flag: expected true or false"), (["--n"], "--n needs a value"),
                          (["--m=1"], "unknown option --m (see --help for the 4 options)"),
                          (["n=1"], "argument 'n=1': options are written --key=value")):
        with pytest.raises(ValueError, match=re.escape(message)):
            config.parse(Toy, args, "toy.py")


def test_the_readers_core_imports_no_extra():
    """The three scripts on one device, on the built-in instruct task, import these minirlhf modules and no
    extra (rounds, FSDP2, export, the REPL, GPT-2 import and vocabularies, user JSONL files, the chat task, the
    task export)."""
    code = ("import importlib.util, sys\n"
            "for n in ('train_sft', 'train_rm', 'train_ppo'):\n"
            "    s = importlib.util.spec_from_file_location(n, n + '.py')\n"
            "    s.loader.exec_module(importlib.util.module_from_spec(s))\n"
            "from minirlhf.tasks import get_task\n"
            "get_task('instruct')\n"
            "print(' '.join(sorted(k for k in sys.modules if k.startswith('minirlhf'))))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": ROOT}, timeout=120)
    assert done.returncode == 0, done.stderr
    modules = set(done.stdout.split())
    extras = {"minirlhf.rounds", "minirlhf.fsdp", "minirlhf.export", "minirlhf.chat", "minirlhf.gpt2",
              "minirlhf.jsonl", "minirlhf.bpe", "minirlhf.tasks.dialogue", "minirlhf.tasks.__main__",
              "minirlhf.tasks.reference"}
    assert not modules & extras and {"minirlhf.model", "minirlhf.reward", "minirlhf.ppo", "minirlhf.rl"} <= modules
    files = ["train_sft.py", "train_rm.py", "train_ppo.py", "minirlhf/tasks/__init__.py"]
    files += [m.replace(".", "/") + ".py" for m in modules if m != "minirlhf.tasks"]
    lines = sum(len(open(os.path.join(ROOT, f)).readlines()) for f in files if os.path.isfile(os.path.join(ROOT, f)))
    assert lines <= 3538, f"the reader's core has grown to {lines} lines"
