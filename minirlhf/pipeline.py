"""
The stages of the recipe run as processes, so that each keeps its own checkpoints, metrics and
resumability: train_ppo.py trains a missing SFT or RM stage of the default pipeline, and iterates
rounds of RLHF (`--rounds=N`).

Rounds (ChatGPT: "we performed several iterations of this process"; Bai et al. 2022, iterated online
RLHF). A reward model trained on the SFT policy's samples judges the PPO policy's samples less well
the further PPO moves (Gao et al. 2022); fresh comparisons of the current policy's samples keep it on
the distribution it has to judge. With --rounds=N the label budget (rm_prompts prompts with k ranked
samples each) and the PPO iterations are split over the rounds, so N rounds cost what one does. Round r:
  1. comparisons  k samples per prompt of the current policy (SFT in round 1) on fresh training
                  prompts, ranked by the simulated labelers (or, --labels=files, by people: the
                  samples are written to_label.jsonl and the run stops until they come back ranked)
  2. drift        the current reward model's pairwise accuracy on these new comparisons (held-out
                  ones), before it is retrained: how far the policy has moved from what it knows
  3. RM           retrained on all comparisons so far (train_rm.py), from the SFT weights or the
                  previous round's reward model (--rm_init)
  4. PPO          continues from the previous round's policy and value model (train_ppo.py), with
                  the SFT policy as the KL reference throughout
  5. red-teaming  the policy answers a held-out probe set; the next round's prompts over-sample the
                  kinds it scored worst on, and its failures join a red-team set that every later
                  round is tested on (the adversarial training ChatGPT's makers describe)
Everything of round r is in out_dir/round_<r>/; out_dir/rounds.json records the finished rounds, so
an interrupted run (--resume) restarts at the first unfinished round, and within it at the first
unfinished stage.
"""
import json
import os
import random
import shutil
import signal
import subprocess
import sys
from dataclasses import asdict, dataclass, fields

import torch

from minirlhf import evaluate, runs
from minirlhf.checkpoint import atomic_write_text, load_checkpoint, read_checkpoint
from minirlhf.cli import check, check_at_least_one
from minirlhf.data import encode_comparison, read_comparisons, write_jsonl
from minirlhf.tasks import get_task


def _die_with_parent():
    # Linux: the child gets SIGKILL when this process dies, so a killed driver leaves no stage running
    # on (one that a resumed run would then race for the same files)
    import ctypes
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def run_script(scripts_dir, script, args):
    """Run one of the scripts in a child process; a failure is a ValueError pointing at its output."""
    done = subprocess.run([sys.executable, os.path.join(scripts_dir, script), *args],
                          preexec_fn=_die_with_parent if sys.platform == "linux" else None)
    if done.returncode != 0:
        raise ValueError(f"{script} failed (exit status {done.returncode}); see its output above")


def device_args(cfg):
    return [f"--device={cfg.device}", f"--dtype={cfg.dtype}", f"--kernels={cfg.kernels}", f"--threads={cfg.threads}"]


def stage(path, script, args, scripts_dir, what):
    """Run script unless path holds a finished checkpoint; resume it where it holds an unfinished one."""
    if os.path.isfile(path) and read_checkpoint(path, mmap=True)["finished"]:
        return
    resume = ["--resume"] if os.path.isfile(path) else []
    print(f"{what}: running `python {script} {' '.join(args + resume)}`", flush=True)
    run_script(scripts_dir, script, args + resume)


def ensure_stage(cfg, d, what, script, default_path, scripts_dir):
    """The SFT or RM checkpoint PPO needs, finished. In the default pipeline (built-in prompts, the
    default path) a missing one is trained and an unfinished one resumed, with `python script`;
    otherwise either is an error that says what to do."""
    path = getattr(cfg, f"{what}_ckpt")
    out_dir = os.path.dirname(path) or "."
    exists = os.path.isfile(path)
    if exists and read_checkpoint(path, mmap=True)["finished"]:
        return
    auto = cfg.train_missing and cfg.prompts == "builtin" and path == default_path and d.world == 1
    args = [f"--task={cfg.task}", f"--out_dir={out_dir}"] + ([f"--sft_ckpt={cfg.sft_ckpt}"] if what == "rm" else [])
    if not auto:
        problem = "is an unfinished run" if exists else "does not exist"
        fix = f"python {script} {' '.join(args)}" + (" --resume" if exists else "")
        raise ValueError(f"--{what}_ckpt={path} {problem}: first run `{fix}`")
    stage(path, script, args + device_args(cfg), scripts_dir, f"{what.upper()} checkpoint {path} "
          f"{'is unfinished' if exists else 'is missing'}")


# ----------------------------------------------------------------------------------------------
# rounds


@dataclass
class RoundOptions:
    """train_ppo.py's options for --rounds (set nowhere else)."""
    rounds: int = 1
    """iterated RLHF: rounds of fresh comparisons of the current policy, RM retraining and PPO (minirlhf/pipeline.py);
    the label budget (rm_prompts) and the iterations are split over the rounds"""
    rm_prompts: int = 3000
    """rounds: prompts to label (k ranked samples each) over all rounds (train_rm.py's n_prompts in one round)"""
    rm_eval_prompts: int = 300
    """rounds: held-out prompts with k ranked samples per round, for the reward model's accuracy"""
    rm_k: int = 4
    """rounds: samples ranked per prompt"""
    rm_epochs: int = 2
    """rounds: epochs of each retraining of the reward model over all comparisons so far"""
    rm_init: str = "sft"
    """rounds: retrain the reward model from the SFT weights (sft) or from the previous round's (previous); sft was
    measured better on each round's new held-out comparisons (README: round 2 64.2% vs 60.0%, round 3 59.0% vs 55.1%)"""
    labels: str = "simulated"
    """rounds: who ranks the new samples: the simulated labelers (built-in prompts), or people (files: the run
    writes round_<r>/to_label_*.jsonl and stops until they come back ranked)"""
    probe_prompts: int = 200
    """rounds: held-out probe prompts whose worst kinds the next round over-samples (red-teaming)"""

    def __post_init__(self):
        super().__post_init__()
        check_at_least_one(self, "rounds", "rm_prompts", "rm_eval_prompts", "rm_epochs", "probe_prompts")
        check(self, "rm_k", lambda x: x >= 2, "at least 2")
        check(self, "rm_init", lambda x: x in ("sft", "previous"), "sft or previous")
        check(self, "labels", lambda x: x in ("simulated", "files"), "simulated or files")


# train_ppo.py options that the driver sets itself for each round's PPO, or that only it reads
DRIVER_OPTIONS = ("rounds", "out_dir", "resume", "overwrite", "train_missing", "init_from", "rm_ckpt", "iterations",
                  "prompt_seed", "kind_weights", "rm_prompts", "rm_eval_prompts", "rm_k", "rm_epochs", "rm_init",
                  "labels", "probe_prompts", "snapshot_interval")


def shares(total, n):
    """total split into n nearly equal whole parts, the larger ones first."""
    return [total // n + (r < total % n) for r in range(n)]


def start_rounds(cfg):
    """The rounds of an earlier, unfinished run to go on from ([] for a new run), checking out_dir as
    runs.start does for a single run."""
    os.makedirs(cfg.out_dir, exist_ok=True)
    path = os.path.join(cfg.out_dir, "rounds.json")
    if not os.path.isfile(path):
        if os.path.isfile(os.path.join(cfg.out_dir, "ckpt.pt")) and not cfg.overwrite:
            raise ValueError(f"{cfg.out_dir} already holds a single-round run: pass --overwrite to start over, or "
                             f"choose another --out_dir")
        if cfg.resume:
            raise ValueError(f"--resume: {cfg.out_dir} holds no rounds to resume (no rounds.json)")
        return []
    state = json.load(open(path))
    if cfg.overwrite:
        for r in range(1, len(state["rounds"]) + 2):
            shutil.rmtree(os.path.join(cfg.out_dir, f"round_{r}"), ignore_errors=True)
        return []
    what = "finished" if state["finished"] else f"unfinished ({len(state['rounds'])} of {cfg.rounds} rounds done)"
    if not cfg.resume:
        raise ValueError(f"{cfg.out_dir} already holds a {what} run of rounds: pass --resume to continue it, "
                         f"--overwrite to start over, or choose another --out_dir")
    if state["finished"]:
        raise ValueError(f"--resume: {cfg.out_dir} holds a finished run of rounds, there is nothing to resume")
    runs.check_same_config(cfg, state["config"], cfg.out_dir)
    return state["rounds"]


def kind_weights(scores, floor=0.5):
    """Red-teaming: how often each kind of prompt comes up next round, from the current policy's gold
    score per kind on the probe set. Half of the prompts stay uniform over the kinds (floor), the rest
    go to each kind in proportion to how far it is from a perfect score."""
    misses = {k: max(1.0 - s, 0.0) for k, s in scores.items()}
    total = sum(misses.values())
    if total == 0:
        return {k: 1.0 / len(scores) for k in scores}
    return {k: floor / len(scores) + (1 - floor) * m / total for k, m in misses.items()}


def weights_text(weights):
    return ",".join(f"{k}={w:.4f}" for k, w in weights.items())


def read_groups(path, tokenizer, block_size):
    return [encode_comparison(tokenizer, r, block_size) for r in read_comparisons(path)]


def run_rounds(cfg, d, device, autocast, scripts_dir):
    """--rounds=N: train_ppo.py hands the whole run to this driver (one process; each stage a child)."""
    if d.world > 1:
        raise ValueError("--rounds drives its stages as child processes of one process; run it with python, not "
                         "torchrun (each round's train_rm.py / train_ppo.py can be run with torchrun by hand)")
    done = start_rounds(cfg)
    task = get_task(cfg.task)
    builtin = cfg.prompts == "builtin"
    if cfg.labels == "simulated" and not builtin:
        raise ValueError("--labels=simulated needs the built-in prompts (the simulated labelers rank by the built-in "
                         "gold scorer); with your own prompts use --labels=files")
    sft, tokenizer, _ = load_checkpoint(cfg.sft_ckpt, device=device)
    sft.requires_grad_(False).eval()
    block_size = sft.config.block_size
    iterations, label_prompts = shares(cfg.iterations, cfg.rounds), shares(cfg.rm_prompts, cfg.rounds)
    eval_records = task.prompt_records(cfg.n_eval, "eval", cfg.seed + 2) if builtin else None
    probe_records = task.prompt_records(cfg.probe_prompts, "eval", cfg.seed + 5) if builtin else None
    gen = torch.Generator(device=device).manual_seed(cfg.seed + 7)
    kw = dict(temperature=cfg.temperature, max_new_tokens=cfg.max_new_tokens, d=d, autocast=autocast)
    redteam = [r for row in done for r in row.get("new_redteam", [])]
    weights = done[-1]["next_weights"] if done else None
    ppo_args = [f"--{f.name}={getattr(cfg, f.name)}" for f in fields(cfg) if f.name not in DRIVER_OPTIONS]

    for r in range(len(done) + 1, cfg.rounds + 1):
        rdir = os.path.join(cfg.out_dir, f"round_{r}")
        os.makedirs(rdir, exist_ok=True)
        prev = os.path.join(cfg.out_dir, f"round_{r - 1}")
        policy_path = cfg.sft_ckpt if r == 1 else os.path.join(prev, "ppo", "ckpt.pt")
        print(f"\n=== round {r} of {cfg.rounds}: {label_prompts[r - 1]} prompts to label, {iterations[r - 1]} PPO "
              f"iterations{', kind weights ' + weights_text(weights) if weights else ''} ===", flush=True)

        # 1. comparisons of the current policy's samples on fresh prompts
        train_path = os.path.join(rdir, "comparisons_train.jsonl")
        eval_path = os.path.join(rdir, "comparisons_eval.jsonl")
        if not (os.path.isfile(train_path) and os.path.isfile(eval_path)):
            policy, _, _ = load_checkpoint(policy_path, tokenizer, device=device)
            rng = random.Random(cfg.seed + 100 * r)
            for path, n, split in ((train_path, label_prompts[r - 1], "train"),
                                   (eval_path, cfg.rm_eval_prompts, "eval")):
                if builtin:
                    records = task.prompt_records(n, split, cfg.seed + 100 * r + (split == "eval"), weights)
                    groups, _ = evaluate.ranked_samples(policy, tokenizer, records, task, rng, k=cfg.rm_k, gen=gen,
                                                        **kw)
                    write_comparisons(path, records, groups, tokenizer)
                else:
                    to_label = os.path.join(rdir, f"to_label_{split}.jsonl")
                    write_samples(to_label, policy, tokenizer, cfg, split, r, gen, kw)
            if not builtin:
                raise ValueError(f"round {r}: the samples to rank are in {rdir}/to_label_*.jsonl; add a \"ranking\" "
                                 f"(indices, best first) to each record, save them as {train_path} and {eval_path}, "
                                 f"and run again with --resume")
        new_eval = read_groups(eval_path, tokenizer, block_size)
        gold = [[task.gold_score(rec, t, True) for t in rec["responses"]] for rec in read_comparisons(eval_path)] \
            if builtin else None

        # 2. how well the current reward model judges the current policy's samples, before retraining
        prev_rm = cfg.rm_ckpt if r == 1 and not builtin else (os.path.join(prev, "rm", "ckpt.pt") if r > 1 else None)
        acc_before = gold_before = None
        if prev_rm:
            rm, _, _ = load_checkpoint(prev_rm, tokenizer, device=device)
            acc_before, gold_before = evaluate.rm_accuracy(rm.eval(), new_eval, tokenizer, device=device,
                                                           autocast=autocast, d=d, gold=gold)

        # 3. the reward model, retrained on all comparisons so far
        data = [os.path.join(cfg.out_dir, f"round_{i}", "comparisons_train.jsonl") for i in range(1, r + 1)]
        rm_path = os.path.join(rdir, "rm", "ckpt.pt")
        init = ([f"--init_from={os.path.join(prev, 'rm', 'ckpt.pt')}"] if cfg.rm_init == "previous" and r > 1 else [])
        stage(rm_path, "train_rm.py", [f"--task={cfg.task}", f"--out_dir={os.path.join(rdir, 'rm')}",
                                       f"--sft_ckpt={cfg.sft_ckpt}", f"--data={','.join(data)}",
                                       f"--eval_data={eval_path}", f"--epochs={cfg.rm_epochs}",
                                       f"--seed={cfg.seed + r}", *init, *device_args(cfg)],
              scripts_dir, f"round {r} RM")
        rm, _, _ = load_checkpoint(rm_path, tokenizer, device=device)
        acc_after, gold_after = evaluate.rm_accuracy(rm.eval(), new_eval, tokenizer, device=device, autocast=autocast,
                                                     d=d, gold=gold)

        # 4. PPO, on from the previous round's policy and value model, against the new reward model
        ppo_path = os.path.join(rdir, "ppo", "ckpt.pt")
        stage(ppo_path, "train_ppo.py", [*ppo_args, f"--out_dir={os.path.join(rdir, 'ppo')}", f"--rm_ckpt={rm_path}",
                                         f"--iterations={iterations[r - 1]}", f"--prompt_seed={cfg.seed + 100 * r + 2}",
                                         *(["--init_from=" + policy_path] if r > 1 else []),
                                         *([f"--kind_weights={weights_text(weights)}"] if weights else [])],
              scripts_dir, f"round {r} PPO")
        summary = json.load(open(os.path.join(rdir, "ppo", "summary.json")))
        row = {"round": r, "labels": sum(label_prompts[:r]), "iterations": sum(iterations[:r]),
               "rm_accuracy_before": acc_before, "rm_accuracy_after": acc_after,
               "rm_gold_accuracy_before": gold_before, "rm_gold_accuracy_after": gold_after,
               "kl": summary["ppo_kl"], "rm_score": summary["ppo_rm_score"],
               "gold": summary.get("ppo_gold_sampled"), "win_rate_over_sft": summary.get("win_rate_ppo_sampled"),
               "weights": weights}

        # 5. the held-out comparison with the previous round, red-teaming for the next
        if builtin:
            policy, _, _ = load_checkpoint(ppo_path, tokenizer, device=device)
            previous = sft if r == 1 else load_checkpoint(policy_path, tokenizer, device=device)[0]
            versus = evaluate.compare({"previous": previous, "current": policy}, tokenizer, eval_records, reference=sft,
                                      reward_model=rm, task=task, eos_penalty_score=cfg.eos_penalty_score,
                                      seed=cfg.seed + 3, device=device, **kw)
            row["win_rate_over_previous"] = versus["win_rate_current_sampled"]
            probe = evaluate.compare({"current": policy}, tokenizer, probe_records, reference=sft, reward_model=rm,
                                     task=task, eos_penalty_score=cfg.eos_penalty_score, seed=cfg.seed + 4,
                                     device=device, n_examples=len(probe_records), **kw)
            row["probe_gold"] = {k: e["current_gold"] for k, e in probe["by_kind"].items()}
            if redteam:
                tested = evaluate.compare({"current": policy}, tokenizer, redteam, reference=sft, reward_model=rm,
                                          task=task, eos_penalty_score=cfg.eos_penalty_score, seed=cfg.seed + 6,
                                          device=device, **kw)
                row["redteam_gold"], row["redteam_size"] = tested["current_gold_sampled"], len(redteam)
            row["new_redteam"] = [rec for rec, e in zip(probe_records, probe["examples"]) if e["current_gold"] < 0.5]
            redteam += row["new_redteam"]
            weights = row["next_weights"] = kind_weights(row["probe_gold"])
        done.append(row)
        runs.write_json(os.path.join(cfg.out_dir, "rounds.json"),
                        {"config": asdict(cfg), "finished": r == cfg.rounds, "rounds": done})
        write_rounds_report(os.path.join(cfg.out_dir, "report.md"), done, cfg)

    # the last round's policy is the run's: out_dir/ckpt.pt, as after a single round
    last = os.path.join(cfg.out_dir, f"round_{cfg.rounds}", "ppo")
    for name in ("ckpt.pt", "summary.json"):
        shutil.copyfile(os.path.join(last, name), os.path.join(cfg.out_dir, name + ".tmp"))
        os.replace(os.path.join(cfg.out_dir, name + ".tmp"), os.path.join(cfg.out_dir, name))
    print(open(os.path.join(cfg.out_dir, "report.md")).read())


def write_comparisons(path, records, groups, tokenizer):
    """Ranked groups as comparison JSONL (the prompt record, the responses' text, the ranking). A group
    with a sample whose tokens are not valid text (bytes that are no UTF-8) is left out: its text would
    not encode back to what the policy sampled. Samples repeated in a group are shown once, at the best
    rank the labeler gave them, and a group with fewer than two distinct samples is left out: there is
    nothing to compare. If every group is left out, nothing is written and it is an error. Returns how
    many groups were written."""
    out, invalid = [], 0
    for record, (_, responses, ranking) in zip(records, groups):
        texts = [tokenizer.decode(ids) for ids in responses]  # the EOS each ends with is not text
        if not all(tokenizer.encode(t) + [tokenizer.eos_id] == ids for t, ids in zip(texts, responses)):
            invalid += 1
            continue
        best = {}  # text -> its best rank
        for rank, i in enumerate(ranking):
            best.setdefault(texts[i], rank)
        kept = [i for i, t in enumerate(texts) if i == texts.index(t)]  # first occurrences, in sampled order
        if len(kept) >= 2:
            by_rank = sorted(range(len(kept)), key=lambda j: best[texts[kept[j]]])
            out.append({k: v for k, v in record.items() if k in ("prompt", "messages")}
                       | {"responses": [texts[i] for i in kept], "ranking": by_rank})
    if not out:
        raise ValueError(f"{path}: none of the {len(groups)} groups has two distinct samples that are valid text "
                         f"({invalid} hold bytes that are no UTF-8); the policy is too little trained to be labeled")
    write_jsonl(path, out)
    if len(out) < len(groups):
        print(f"{path}: {len(groups) - len(out)} of {len(groups)} groups left out ({invalid} with samples that are "
              f"not valid text, {len(groups) - len(out) - invalid} with fewer than two distinct samples)")
    return len(out)


def write_samples(path, policy, tokenizer, cfg, split, r, gen, kw):
    """--labels=files: k samples of the policy for prompts of the user's JSONL, for people to rank."""
    from minirlhf.data import encode_prompt, read_prompts
    source = cfg.prompts if split == "train" else cfg.eval_prompts
    records = [rec for p in source.split(",") for rec in read_prompts(p)]
    records = random.Random(cfg.seed + 100 * r).sample(records, min(len(records), cfg.rm_prompts // cfg.rounds))
    ids = [encode_prompt(tokenizer, rec, policy.config.block_size - cfg.max_new_tokens) for rec in records]
    responses = evaluate.sample(policy, tokenizer, ids, n=cfg.rm_k, gen=gen, **kw)
    out = []
    for i, rec in enumerate(records):  # distinct samples that are valid text, as write_comparisons keeps
        group = responses[i * cfg.rm_k:(i + 1) * cfg.rm_k]
        texts = list(dict.fromkeys(s["text"] for s in group if tokenizer.encode(s["text"]) == s["ids"]))
        if len(texts) >= 2:
            out.append({k: v for k, v in rec.items() if k in ("prompt", "messages")} | {"responses": texts})
    if not out:
        raise ValueError(f"{path}: no prompt got two distinct samples that are valid text; nothing to rank")
    write_jsonl(path, out)


def write_rounds_report(path, rows, cfg):
    fmt = lambda x, f: "—" if x is None else format(x, f)  # noqa: E731
    lines = [f"# {len(rows)} of {cfg.rounds} rounds of RLHF", "",
             f"Each round: {cfg.rm_k} samples per prompt of the current policy ranked by the labelers, the reward "
             f"model retrained on all comparisons so far (from {cfg.rm_init}), PPO on from the previous policy. "
             f"RM accuracy is on held-out comparisons of the round's new samples; gold and win rates on "
             f"{cfg.n_eval} held-out prompts, sampled.", "",
             "| round | labels so far | PPO iterations so far | RM accuracy before retraining | after | gold | "
             "win rate over SFT | over the previous round | KL to SFT | red-team set gold (size) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        redteam = (f"{row['redteam_gold']:.3f} ({row['redteam_size']})" if row.get("redteam_gold") is not None else "—")
        lines.append(f"| {row['round']} | {row['labels']} | {row['iterations']} "
                     f"| {fmt(row['rm_accuracy_before'], '.1%')} "
                     f"| {fmt(row['rm_accuracy_after'], '.1%')} | {fmt(row['gold'], '.3f')} "
                     f"| {fmt(row['win_rate_over_sft'], '.1%')} | {fmt(row.get('win_rate_over_previous'), '.1%')} "
                     f"| {row['kl']:.2f} | {redteam} |")
    if rows and rows[-1].get("probe_gold"):
        lines += ["", "Gold score per kind on the probe set, and the kind weights of the next round's prompts:", "",
                  "| round | " + " | ".join(rows[-1]["probe_gold"]) + " |",
                  "|---|" + "---|" * len(rows[-1]["probe_gold"])]
        for row in rows:
            lines.append(f"| {row['round']} | " + " | ".join(
                f"{row['probe_gold'][k]:.3f} (next {row['next_weights'][k]:.2f})" for k in row["probe_gold"]) + " |")
    lines += ["", "Each round's own report (SFT vs that round's policy): round_<r>/ppo/report.md."]
    atomic_write_text(path, "\n".join(lines) + "\n")
