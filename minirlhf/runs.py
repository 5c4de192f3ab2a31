"""
A training run's output directory, made safe to kill and to run again.

Every file a run writes is complete or absent: checkpoints, metrics.jsonl, summary.json and the
report are written to a temporary file and renamed into place, and temporary files left by a killed
process are deleted when the next run starts. An out_dir that already holds a run is never touched
by accident:

    python train_x.py                   into an empty (or new) out_dir: a new run
    python train_x.py --resume          continue the unfinished run in out_dir exactly where its last
                                        checkpoint left it (model, optimizer, RNG states, data
                                        position, metrics, PPO's KL controller); the options must be
                                        those it was started with, but for device, dtype, kernels, threads
    python train_x.py --overwrite       start over; the previous run's files stay until the new run's
                                        first checkpoint replaces them

Without either flag, an out_dir holding a run (finished or not) is an error that says which flag
to use. Resuming is explicit rather than automatic so that a typo in --out_dir or a changed option
can never silently continue (or mix into) the wrong run; train_ppo.py, which trains missing SFT and
RM checkpoints of its default pipeline, resumes them itself when they are unfinished.
"""
import json
import math
import os

import torch

from minirlhf import distributed
from minirlhf.checkpoint import atomic_write_text, read_checkpoint, remove_stale_temporaries

# the files (besides ckpt.pt and metrics.jsonl) a run leaves in its out_dir; an --overwrite run deletes
# the previous run's ones when it writes its first checkpoint
OUTPUTS = ("summary.json", "report.md", "curves.png", "value.pt")
# options that may differ between a run and its resumption: where and how it computes, not what
RESUMABLE_CHANGES = ("device", "threads", "dtype", "kernels", "resume", "overwrite")


def start(cfg, is_main=True):
    """Check cfg.out_dir against cfg.resume / cfg.overwrite and prepare it (on the main rank; the
    others only read). Returns the checkpoint to resume from (a dict), or None for a new run."""
    out_dir = cfg.out_dir
    if is_main:
        os.makedirs(out_dir, exist_ok=True)
        remove_stale_temporaries(out_dir)
    path = os.path.join(out_dir, "ckpt.pt")
    if not os.path.exists(path):
        if cfg.resume:
            raise ValueError(f"--resume: {out_dir} holds no run to resume (no ckpt.pt)")
        return None
    ckpt = read_checkpoint(path, mmap=True)
    what = ("a finished run" if ckpt["finished"] else
            f"an unfinished run (stopped at step {ckpt['step']} of {ckpt.get('total_steps', '?')})")
    if cfg.overwrite:
        return None
    if not cfg.resume:
        raise ValueError(f"{out_dir} already holds {what}: pass --resume to continue it, --overwrite to start "
                         f"over, or choose another --out_dir")
    if ckpt["finished"]:
        raise ValueError(f"--resume: {out_dir} holds a finished run, there is nothing to resume "
                         f"(--overwrite to train it again)")
    if "state" not in ckpt:
        raise ValueError(f"--resume: {path} holds no training state to resume from")
    check_same_config(cfg, ckpt["train_config"], out_dir)
    return ckpt


def check_same_config(cfg, saved, out_dir):
    """A resumed run must be the run it continues: the same options, but for RESUMABLE_CHANGES."""
    now = vars(cfg)
    changed = [f"--{k}={now[k]!r} (was {saved.get(k)!r})" for k in now
               if k not in RESUMABLE_CHANGES and now[k] != saved.get(k)]
    if changed:
        raise ValueError(f"--resume: the run in {out_dir} was started with other options: {', '.join(changed)}; "
                         f"only {', '.join(RESUMABLE_CHANGES[:4])} may change")


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
    atomic_write_text(path, json.dumps(finite(obj), indent=2, allow_nan=False) + "\n")


class Metrics:
    """The run's metrics: one JSON object per logged step in out_dir/metrics.jsonl. The file is
    rewritten whole and atomically at every row (a few kB), so it is always valid JSONL; a resumed
    run starts from the rows its checkpoint saved. Until the run owns out_dir (an --overwrite run
    before its first checkpoint) rows stay in memory and the previous run's files stay as they are."""

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
            path = os.path.join(self.out_dir, name)
            if os.path.exists(path):
                os.remove(path)
        self.owned = True
        self._write()

    def _write(self):
        text = "".join(json.dumps(r, allow_nan=False) + "\n" for r in self.rows)
        atomic_write_text(os.path.join(self.out_dir, "metrics.jsonl"), text)


def rng_state(rng, gen=None):
    """Every random stream a script draws from: Python's (data order), torch's global ones (CPU and
    CUDA: minibatch permutations) and the sampling generator's."""
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


def apply_grads(params, optimizers, grad_clip):
    """One optimizer step on the gradients already there (added up over micro-batches): clip the global
    gradient norm to grad_clip (0: no clipping), and step every optimizer, unless the norm is non-finite
    (a NaN or inf loss or gradient): then the step is skipped. One device sync buys that guard. Under DDP
    and FSDP the gradients, and so the decision, are the same on every rank. Returns (stepped, grad_norm)."""
    grad_norm = distributed.local(torch.nn.utils.clip_grad_norm_(params, grad_clip if grad_clip > 0 else float("inf")))
    if not torch.isfinite(grad_norm):
        return False, grad_norm
    for opt in optimizers:
        opt.step()
    return True, grad_norm


class Skips:
    """Counts skipped steps; after `limit` in a row, stops the run with a ValueError (the last checkpoint
    stays as it was). state: the counts a checkpoint saved."""

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
