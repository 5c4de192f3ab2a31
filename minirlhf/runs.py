"""
A training run's life in its out_dir, safe to kill and to run again. A new run needs an empty out_dir;
--resume goes on exactly where the last checkpoint left (weights, optimizers, RNG states, data position,
metrics) with the options the run was started with; --overwrite starts over, the old files kept until
the first new checkpoint. A live run holds its out_dir (run.lock). The default pipeline's missing
stages run as child processes (ensure).
"""
import atexit
import json
import math
import os
import shlex
import signal
import subprocess
import sys
import time

import torch

from minirlhf import checkpoint as ckpts
from minirlhf import distributed

# what a run leaves besides ckpt.pt and metrics.jsonl; an --overwrite run deletes them at its first checkpoint
OUTPUTS = ("summary.json", "report.md", "curves.png")
# options that may differ between a run and its resumption: where and how it computes, not what
RESUMABLE_CHANGES = ("device", "threads", "dtype", "kernels", "resume", "overwrite")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # where the training scripts are


class Run:
    """A run in cfg.out_dir (checked and held by start), its metrics, skipped steps and checkpoints.
    step: the steps done by the checkpoint resumed from (0 for a new run)."""

    def __init__(self, cfg, d, total_steps, unit="step"):
        self.cfg, self.d, self.total, self.unit = cfg, d, total_steps, unit
        self.path = os.path.join(cfg.out_dir, "ckpt.pt")
        self.ckpt = start(cfg, d.is_main)
        state = self.ckpt["state"] if self.ckpt else {}
        self.step = self.ckpt["step"] if self.ckpt else 0
        self.metrics = Metrics(cfg.out_dir, state.get("metrics", []), owned=d.is_main and not cfg.overwrite)
        self.skips = Skips(cfg.max_bad_steps, unit, state.get("skips"))
        args = [a for a in sys.argv[1:] if a not in ("--resume", "--overwrite")]
        self.command = " ".join(["python", os.path.basename(sys.argv[0]), *map(shlex.quote, args)])
        self.info = {}  # saved in every checkpoint: what the run was trained on ("data_format")
        self.t0, self.seconds_before = time.time(), state.get("seconds", 0.0)  # the run's time, over its restarts

    def seconds(self):
        """The run's time so far, the processes it was resumed from included."""
        return self.seconds_before + time.time() - self.t0

    def restore(self, models, optimizers, rng, gen=None):
        """On --resume: the optimizers and random streams as the checkpoint left them. Returns its state."""
        if self.ckpt is None:
            return {}
        state = self.ckpt["state"]
        for m, opt, s in zip(models, optimizers, state["optimizers"]):
            distributed.load_optimizer_state(m, opt, s)
        set_rng_state(rank_state(state["rng"], self.d), rng, gen)
        print(f"resuming {self.cfg.out_dir} at {self.unit} {self.step} of {self.total}")
        return state

    def save(self, step, models, optimizers, tokenizer, rng, gen=None, finished=False, **state):
        """Checkpoint the trained models (PPO's value model after its policy, in one file) and, unless
        finished, what resuming needs. Every rank calls it (FSDP2 gathers the shards); rank 0 writes."""
        weights = [distributed.model_state(m) for m in models]
        if not finished:
            state = {"optimizers": [distributed.optimizer_state(m, o) for m, o in zip(models, optimizers)],
                     "rng": distributed.all_gather_objects(rng_state(rng, gen)), "metrics": self.metrics.rows,
                     "skips": self.skips.state(), "seconds": self.seconds(), **state}
        if self.d.is_main:
            nets = [distributed.unwrapped(m) for m in models]
            ckpts.save_checkpoint(self.path, nets[0], tokenizer, self.cfg, step, finished=finished,
                                  state=None if finished else state, weights=weights[0],
                                  value_model=nets[1] if len(nets) > 1 else None,
                                  value_weights=weights[1] if len(nets) > 1 else None,
                                  total_steps=self.total, command=self.command, **self.info)
            self.metrics.own()

    def snapshot(self, step, model, tokenizer):
        """A copy of the model's weights as a finished checkpoint, out_dir/snapshots/iter_<step>.pt."""
        weights = distributed.model_state(model)
        if self.d.is_main:
            path = os.path.join(self.cfg.out_dir, "snapshots", f"iter_{step}.pt")
            ckpts.save_checkpoint(path, distributed.unwrapped(model), tokenizer, self.cfg, step, weights=weights)


def start(cfg, is_main=True):
    """Check cfg.out_dir against --resume / --overwrite, and (main rank) lock and clean it. Returns the
    checkpoint to resume from, or None for a new run."""
    out_dir, path = cfg.out_dir, os.path.join(cfg.out_dir, "ckpt.pt")
    if is_main:
        hold(out_dir)
        ckpts.remove_stale_temporaries(out_dir)
    ckpt = ckpts.read_checkpoint(path, mmap=True) if os.path.exists(path) else None
    if ckpt is None:
        if cfg.resume:
            raise ValueError(f"--resume: {out_dir} holds no run to resume (no ckpt.pt)")
    elif not cfg.overwrite:
        if not cfg.resume:
            what = ("a finished run" if ckpt["finished"] else
                    f"an unfinished run (stopped at step {ckpt['step']} of {ckpt.get('total_steps', '?')})")
            fix = "--overwrite to train it again" if ckpt["finished"] else \
                f"`{ckpts.resume_command(ckpt, path)}` to continue it, --overwrite to start over"
            raise ValueError(f"{out_dir} already holds {what}: {fix}, or choose another --out_dir")
        if ckpt["finished"]:
            raise ValueError(f"--resume: {out_dir} holds a finished run, there is nothing to resume "
                             f"(--overwrite to train it again)")
        if "state" not in ckpt:
            raise ValueError(f"--resume: {path} holds no training state to resume from")
        check_same_config(cfg, ckpt["train_config"], out_dir, ckpt.get("command"))
        return ckpt
    return None


def hold(out_dir):
    """Lock out_dir (run.lock holds the pid) until this process exits; a ValueError if a live process holds
    it. An out_dir made here and left empty is removed at exit."""
    made = not os.path.exists(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    lock = os.path.join(out_dir, "run.lock")
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            break
        except FileExistsError:
            try:
                pid = int(open(lock).read() or 0)
            except (OSError, ValueError):
                pid = 0
            if pid and pid != os.getpid() and ckpts.alive(pid):
                raise ValueError(f"{out_dir} is in use by another run (pid {pid}); wait for it to end, "
                                 f"or choose another --out_dir") from None
            os.remove(lock)  # left by a process that died
    os.write(fd, str(os.getpid()).encode())
    os.close(fd)

    def release():
        if os.path.exists(lock) and open(lock).read() == str(os.getpid()):
            os.remove(lock)
        if made and os.path.isdir(out_dir) and not os.listdir(out_dir):
            os.rmdir(out_dir)
    _held.append(release)


_held = []  # what hold() must undo when the run ends (config.main calls release, or the interpreter's exit)


@atexit.register
def release():
    while _held:
        _held.pop()()


def check_same_config(cfg, saved, out_dir, command=None):
    """A resumed run must be the run it continues: the same options, but for RESUMABLE_CHANGES."""
    now = vars(cfg)
    changed = [f"--{k}={now[k]!r} " + (f"(was {saved[k]!r})" if k in saved else "(an option newer than the run)")
               for k in now if k not in RESUMABLE_CHANGES and now[k] != saved.get(k)]
    if changed:
        fix = f"finish it with `{command} --resume`" if command else "resume it with the options it was started with"
        raise ValueError(f"--resume: the run in {out_dir} was started with other options ({', '.join(changed)}): "
                         f"{fix}, or start over with --overwrite")


def finite(obj):
    """obj with every non-finite float replaced by None, so that it is valid JSON (null)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    return obj


def write_json(path, obj):
    """A JSON file written atomically; NaN and infinities become null."""
    ckpts.atomic_write_text(path, json.dumps(finite(obj), indent=2, allow_nan=False) + "\n")


class Metrics:
    """out_dir/metrics.jsonl, a JSON object per logged step, rewritten atomically at every row. Until the run
    owns out_dir (--overwrite, before its first checkpoint) the rows stay in memory, the old files as they are."""

    def __init__(self, out_dir, rows=(), owned=True):
        self.out_dir, self.rows, self.owned = out_dir, [finite(r) for r in rows], owned
        if owned and self.rows:
            self._write()

    def append(self, row):
        self.rows.append(finite(row))
        if self.owned:
            self._write()

    def own(self):
        """Take over out_dir (called with the run's first checkpoint): the previous run's outputs go."""
        if self.owned:
            return
        for name in OUTPUTS:
            if os.path.exists(os.path.join(self.out_dir, name)):
                os.remove(os.path.join(self.out_dir, name))
        self.owned = True
        self._write()

    def _write(self):
        text = "".join(json.dumps(r, allow_nan=False) + "\n" for r in self.rows)
        ckpts.atomic_write_text(os.path.join(self.out_dir, "metrics.jsonl"), text)


class Skips:
    """Counts skipped steps; after `limit` in a row, a ValueError stops the run (its checkpoint kept)."""

    def __init__(self, limit, what, state=None):
        self.limit, self.what = limit, what
        self.total, self.in_row = (state or {}).get("skipped", 0), (state or {}).get("in_row", 0)

    def record(self, ok, where):
        if ok:
            self.in_row = 0
            return
        self.total, self.in_row = self.total + 1, self.in_row + 1
        print(f"{where}: non-finite loss, reward or gradient: {self.what} skipped ({self.in_row} in a row)")
        if self.in_row >= self.limit:
            raise ValueError(f"{self.in_row} {self.what}s in a row had a non-finite loss, reward or gradient (is the "
                             f"learning rate too high?); stopped at {where}, the last checkpoint is kept")

    def state(self):
        return {"skipped": self.total, "in_row": self.in_row}


def rng_state(rng, gen=None):
    """Every random stream a script draws from: Python's, torch's (CPU and CUDA) and the sampler's."""
    state = {"python": rng.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    if gen is not None:
        state["gen"] = gen.get_state()
    return state


def rank_state(states, d):
    """This rank's entry of the per-rank RNG states a checkpoint saved (one list entry per rank)."""
    if len(states) != d.world:
        raise ValueError(f"--resume: the run was saved by {len(states)} ranks, this one has {d.world}: "
                         f"resume it with as many")
    return states[d.rank]


def set_rng_state(state, rng, gen=None):
    rng.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if gen is not None:
        gen.set_state(state["gen"])


def format_eta(seconds):
    seconds = int(max(seconds, 0))
    return f"{seconds // 60}m{seconds % 60:02d}s"


class Progress:
    """One readable line per interval: step, the metrics given, throughput and ETA. start: the steps done
    before this process began (a resumed run)."""

    def __init__(self, total, start=0, label="step"):
        self.total, self.start, self.label, self.last_n = total, start, label, 0
        self.t0 = self.last_t = time.time()

    def line(self, step, n_items, unit="tok", **metrics):
        """n_items: items (tokens, pairs...) processed since the start, for the throughput."""
        now = time.time()
        rate = (n_items - self.last_n) / max(now - self.last_t, 1e-9)
        self.last_t, self.last_n = now, n_items
        eta = (now - self.t0) / max(step - self.start, 1) * (self.total - step)
        parts = [f"{self.label} {step:>{len(str(self.total))}}/{self.total}"]
        parts += [f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in metrics.items()]
        return " | ".join(parts + [f"{rate:,.0f} {unit}/s", f"eta {format_eta(eta)}"])


def _die_with_parent():
    # Linux: the child gets SIGKILL when this process dies, so a killed driver leaves no stage running on
    import ctypes
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def device_args(cfg):
    return [f"--device={cfg.device}", f"--dtype={cfg.dtype}", f"--kernels={cfg.kernels}", f"--threads={cfg.threads}"]


def stage(path, script, args, what):
    """`python script args` unless path holds its finished checkpoint (--resume where it holds an
    unfinished one); a failure is a ValueError pointing at its output."""
    if os.path.isfile(path) and ckpts.read_checkpoint(path, mmap=True)["finished"]:
        return
    args = args + (["--resume"] if os.path.isfile(path) else [])
    print(f"{what}: running `python {script} {' '.join(args)}`", flush=True)
    done = subprocess.run([sys.executable, os.path.join(ROOT, script), *args],
                          preexec_fn=_die_with_parent if sys.platform == "linux" else None)
    if done.returncode != 0:
        raise ValueError(f"{script} failed (exit status {done.returncode}); see its output above")


def ensure_stages(cfg, defaults, auto):
    """PPO's SFT and RM checkpoints, finished; with auto, those at their default paths trained first if need be."""
    ensure(cfg.sft_ckpt, "sft_ckpt", "train_sft.py", [f"--task={cfg.task}"], cfg,
           auto and cfg.sft_ckpt == defaults["sft_ckpt"])
    ensure(cfg.rm_ckpt, "rm_ckpt", "train_rm.py", [f"--task={cfg.task}", f"--sft_ckpt={cfg.sft_ckpt}"], cfg,
           auto and cfg.rm_ckpt == defaults["rm_ckpt"])


def ensure(path, option, script, args, cfg, auto):
    """The checkpoint of --option=path, finished: with auto (the default pipeline) trained, or finished,
    by `python script args --out_dir=...`; else an error that says what to run."""
    if auto and (not os.path.isfile(path) or not ckpts.read_checkpoint(path, mmap=True)["finished"]):
        stage(path, script, args + [f"--out_dir={os.path.dirname(path) or '.'}"] + device_args(cfg),
              f"--{option}={path} is {'unfinished' if os.path.isfile(path) else 'missing'}")
    if not os.path.isfile(path):
        raise ValueError(f"--{option}={path} does not exist: first run `python {script} {' '.join(args)} "
                         f"--out_dir={os.path.dirname(path) or '.'}`")
    ckpts.check(ckpts.read_checkpoint(path, mmap=True, option=option), path, option=option)
