"""
Iterated RLHF (ChatGPT: "we performed several iterations of this process"; Bai et al. 2022, iterated
online RLHF): rounds of fresh comparisons of the current policy, a retrained reward model and more PPO.

    python -m minirlhf.rounds --rounds=3                           # the built-in task, simulated labelers
    python -m minirlhf.rounds --rounds=2 --labels=files --prompts=p.jsonl --eval_prompts=e.jsonl \\
        --sft_ckpt=run/sft/ckpt.pt --out_dir=run/rounds           # your prompts, ranked by people

A reward model trained on the SFT policy's samples judges the PPO policy's samples less well the
further PPO moves (Gao et al. 2022); fresh comparisons of the current policy's samples keep it on the
distribution it has to judge. The label budget (rm_prompts prompts with rm_k ranked samples each) and
the PPO iterations are split over the rounds, so N rounds cost what one does. Round r:
  1. comparisons  rm_k samples per prompt of the current policy (SFT in round 1) on fresh training
                  prompts, ranked by the simulated labelers; or, with --labels=files, written to
                  round_<r>/to_label_*.jsonl for people to rank, and the run waits for them
  2. drift        the current reward model's pairwise accuracy on these new comparisons (held-out
                  ones), before it is retrained: how far the policy has moved from what it knows
  3. RM           `python train_rm.py` on all comparisons so far, from the SFT weights or the
                  previous round's reward model (--rm_init)
  4. PPO          `python train_ppo.py` on from the previous round's policy (and value model, with GAE),
                  with the SFT policy as the KL reference throughout
  5. red-teaming  the policy answers a held-out probe set; the next round's prompts over-sample the
                  kinds it scored worst on, and its failures join a red-team set that every later
                  round is tested on (the adversarial training ChatGPT's makers describe)
Everything of round r is in out_dir/round_<r>/; out_dir/rounds.json records the finished rounds, so a
stopped run (killed, or waiting for labels) goes on with --resume at the first unfinished round, and
within it at the first unfinished stage.
"""
import json
import os
import random
import shlex
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass

import torch

from minirlhf import config, distributed, evaluate, reward, runs
from minirlhf.checkpoint import atomic_write_text, load_checkpoint
from minirlhf.config import at_least_one, check, check_files
from minirlhf.data import encode_comparison, encode_prompt
from minirlhf.distributed import ONE
from minirlhf.jsonl import read_comparisons, read_prompts, write_jsonl
from minirlhf.sampling import sample
from minirlhf.tasks import get_task


@dataclass
class Config:
    """Iterated RLHF: rounds of fresh comparisons of the current policy, reward model retraining and PPO."""
    task: str = "instruct"
    """the built-in task (instruct or chat): its presets, and the gold scorer of the simulated labelers"""
    out_dir: str = "out/rounds"
    """where rounds.json, report.md, ckpt.pt (the last round's policy) and round_<r>/ go"""
    sft_ckpt: str = "out/sft/ckpt.pt"
    """the SFT checkpoint: round 1's policy and the KL reference (the default one is trained when missing)"""
    rm_ckpt: str = ""
    """a reward model to measure on round 1's new comparisons before retraining (empty: none)"""
    rounds: int = 3
    """rounds of comparisons, RM retraining and PPO"""
    labels: str = "simulated"
    """who ranks the new samples: the simulated labelers (built-in prompts), or people (files: the run writes
    round_<r>/to_label_*.jsonl and stops until they come back ranked)"""
    prompts: str = "builtin"
    """"builtin" or JSONL files of {"prompt"} (or chat {"messages"}) records, to sample, label and train on"""
    eval_prompts: str = ""
    """with JSONL prompts: held-out prompts for the labeled held-out comparisons and the reports"""
    iterations: int = 200
    """PPO iterations over all rounds"""
    batch_size: int = 64
    """PPO's prompts per rollout"""
    rm_prompts: int = 3000
    """prompts to label (rm_k ranked samples each) over all rounds"""
    rm_eval_prompts: int = 300
    """held-out prompts with rm_k ranked samples per round, for the reward model's accuracy"""
    rm_k: int = 4
    """samples ranked per prompt"""
    rm_epochs: int = 2
    """epochs of each retraining of the reward model over all comparisons so far"""
    rm_init: str = "sft"
    """retrain the reward model from the SFT weights (sft) or from the previous round's (previous)"""
    probe_prompts: int = 200
    """built-in: held-out probe prompts whose worst kinds the next round over-samples (red-teaming)"""
    n_eval: int = 500
    """held-out prompts of each round's comparison with SFT and with the previous round"""
    max_new_tokens: int = 24
    """response budget of every sample"""
    temperature: float = 1.0
    """sampling temperature (of the labels' samples and of PPO)"""
    eos_penalty_score: float = -1.0
    """score of a response that never emits EOS, instead of the reward model's (the EOS trick)"""
    ppo_options: str = ""
    """more train_ppo.py options for every round's PPO, e.g. "--kl_coef=0.2 --learning_rate=3e-5\""""
    seed: int = 1337
    """seed of the prompts, the samples and the labelers"""
    resume: bool = False
    """go on with the stopped run in out_dir (killed, or waiting for labels), at its first unfinished round"""
    overwrite: bool = False
    """start over in an out_dir that holds a run of rounds"""
    device: str = "auto"
    """auto, cpu, cuda or cuda:N, here and in every stage"""
    dtype: str = "auto"
    """autocast dtype: auto (bf16 on CUDA, fp32 on the CPU), fp32, bf16, fp16"""
    kernels: str = "auto"
    """attention and log-prob implementations: auto, torch or triton"""
    threads: int = 0
    """torch CPU threads, here and in every stage (0: torch's default)"""

    def __post_init__(self):
        at_least_one(self, "rounds", "iterations", "batch_size", "rm_prompts", "rm_eval_prompts", "rm_epochs",
                     "probe_prompts", "n_eval", "max_new_tokens")
        check(self, "rm_k", lambda x: x >= 2, "at least 2")
        check(self, "rm_init", lambda x: x in ("sft", "previous"), "sft or previous")
        check(self, "labels", lambda x: x in ("simulated", "files"), "simulated or files")
        check(self, "temperature", lambda x: x > 0, "> 0")
        check(self, "dtype", lambda x: x in config.DTYPES, f"one of {', '.join(config.DTYPES)}")
        check(self, "kernels", lambda x: x in ("auto", "torch", "triton"), "auto, torch or triton")
        config.check_device(self.device)
        if self.rounds > self.iterations:
            raise ValueError(f"--rounds={self.rounds} needs at least as many --iterations (got {self.iterations})")
        if self.resume and self.overwrite:
            raise ValueError("--resume and --overwrite exclude each other")
        if self.labels == "files" and self.prompts == "builtin":
            raise ValueError("--labels=files: people rank samples of your --prompts (JSONL files); the built-in "
                             "prompts are ranked by the simulated labelers (--labels=simulated)")
        if self.labels == "simulated" and self.prompts != "builtin":
            raise ValueError("--labels=simulated needs the built-in prompts (the simulated labelers rank by the "
                             "task's gold scorer); with your own prompts use --labels=files")
        if self.prompts != "builtin" and not self.eval_prompts:
            raise ValueError("--eval_prompts is required with JSONL --prompts (held-out comparisons and reports)")
        check_files(self, "prompts", "eval_prompts")


def shares(total, n):
    """total split into n nearly equal whole parts, the larger ones first."""
    return [total // n + (r < total % n) for r in range(n)]


def kind_weights(scores, floor=0.5):
    """Red-teaming: how often each kind of prompt comes up next round, from the current policy's gold
    score per kind on the probe set. Half of the prompts stay uniform over the kinds (floor), the rest
    go to each kind in proportion to how far it is from a perfect score."""
    misses = {k: max(1.0 - s, 0.0) for k, s in scores.items()}
    total = sum(misses.values())
    if total == 0:
        return {k: 1.0 / len(scores) for k in scores}
    return {k: floor / len(scores) + (1 - floor) * m / total for k, m in misses.items()}


def command():
    """The command that runs this driver with the options it was given but --resume / --overwrite."""
    args = [a for a in sys.argv[1:] if a not in ("--resume", "--overwrite")]
    return " ".join(["python -m minirlhf.rounds", *map(shlex.quote, args)])


def start(cfg):
    """The rounds of an earlier, unfinished run to go on from ([] for a new run), checking out_dir as
    runs.start does for a single run; a new run's rounds.json is written at once."""
    path = os.path.join(cfg.out_dir, "rounds.json")
    if os.path.isfile(path) and not cfg.overwrite:
        state = json.load(open(path))
        if state["finished"]:
            raise ValueError(f"{cfg.out_dir} holds a finished run of rounds: there is nothing to resume "
                             f"(--overwrite to start over, or choose another --out_dir)")
        if not cfg.resume:
            raise ValueError(f"{cfg.out_dir} holds an unfinished run of rounds ({len(state['rounds'])} of "
                             f"{cfg.rounds} done): `{command()} --resume` goes on with it, --overwrite starts over")
        runs.check_same_config(cfg, state["config"], cfg.out_dir)
        return state["rounds"]
    if cfg.resume:
        raise ValueError(f"--resume: {cfg.out_dir} holds no run of rounds to resume (no rounds.json)")
    if os.path.isdir(cfg.out_dir) and os.listdir(cfg.out_dir) != ["run.lock"] and not cfg.overwrite:
        raise ValueError(f"{cfg.out_dir} is not empty: --overwrite to start over there, or choose another --out_dir")
    for name in os.listdir(cfg.out_dir):
        if name.startswith("round_"):
            shutil.rmtree(os.path.join(cfg.out_dir, name))
    runs.write_json(path, {"config": asdict(cfg), "finished": False, "rounds": []})
    return []


# what the driver sets in every round's train_ppo.py itself
SET_BY_ROUNDS = ("out_dir", "sft_ckpt", "rm_ckpt", "init_from", "iterations", "batch_size", "prompts", "eval_prompts",
                 "n_eval", "temperature", "eos_penalty_score", "resume", "overwrite")


def check_ppo_options(cfg, stage_args):
    """The options passed on to train_ppo.py, checked by it now (its --check) rather than after a round's RM."""
    for arg in shlex.split(cfg.ppo_options):
        key = arg.removeprefix("--").partition("=")[0]
        if key in SET_BY_ROUNDS or any(a.startswith(f"--{key}=") for a in stage_args):
            raise ValueError(f"--ppo_options: {arg} is set by the rounds themselves; give it as --{key}=... here")
    done = subprocess.run([sys.executable, os.path.join(runs.ROOT, "train_ppo.py"), f"--task={cfg.task}",
                           *shlex.split(cfg.ppo_options), "--check"], capture_output=True, text=True)
    if done.returncode != 0:
        raise ValueError(f"--ppo_options={cfg.ppo_options!r}: {done.stderr.strip().splitlines()[-1]}")


def main(cfg):
    if int(os.environ.get("WORLD_SIZE", 1)) > 1:
        raise ValueError("the rounds run their stages as child processes of one process: start them with python, "
                         "not torchrun (each round's train_rm.py / train_ppo.py can be run with torchrun by hand)")
    _, device, autocast = distributed.setup(cfg)
    stage_args = [f"--task={cfg.task}", f"--seed={cfg.seed}", f"--max_new_tokens={cfg.max_new_tokens}",
                  *runs.device_args(cfg)]
    check_ppo_options(cfg, stage_args)
    runs.hold(cfg.out_dir)
    done = start(cfg)
    builtin = cfg.prompts == "builtin"
    task = get_task(cfg.task)
    runs.ensure(cfg.sft_ckpt, "sft_ckpt", "train_sft.py", [f"--task={cfg.task}"], cfg,
                builtin and cfg.sft_ckpt == config.presets(Config, cfg.task, "rounds")["sft_ckpt"])
    torch.manual_seed(cfg.seed)
    sft, tokenizer, _ = load_checkpoint(cfg.sft_ckpt, device=device, kind="policy", option="sft_ckpt")
    sft.requires_grad_(False).eval()
    block_size = sft.config.block_size
    iterations, label_prompts = shares(cfg.iterations, cfg.rounds), shares(cfg.rm_prompts, cfg.rounds)
    eval_path = os.path.join(cfg.out_dir, "eval_prompts.jsonl")  # the held-out prompts of every round's report
    if builtin:
        eval_records = task.prompt_records(cfg.n_eval, "eval", cfg.seed + 2)
        write_jsonl(eval_path, eval_records)
    else:
        eval_records, eval_path = read_prompts(cfg.eval_prompts)[:cfg.n_eval], cfg.eval_prompts
    probe_records = task.prompt_records(cfg.probe_prompts, "eval", cfg.seed + 5) if builtin else None
    gen = torch.Generator(device=device).manual_seed(cfg.seed + 7)
    kw = dict(temperature=cfg.temperature, max_new_tokens=cfg.max_new_tokens, d=ONE, autocast=autocast)
    redteam = [r for row in done for r in row.get("new_redteam", [])]
    weights = done[-1].get("next_weights") if done else None  # red-teaming's, on the built-in tasks

    for r in range(len(done) + 1, cfg.rounds + 1):
        rdir = os.path.join(cfg.out_dir, f"round_{r}")
        os.makedirs(rdir, exist_ok=True)
        prev = os.path.join(cfg.out_dir, f"round_{r - 1}")
        policy_path = cfg.sft_ckpt if r == 1 else os.path.join(prev, "ppo", "ckpt.pt")
        print(f"\n=== round {r} of {cfg.rounds}: {label_prompts[r - 1]} prompts to label, {iterations[r - 1]} PPO "
              f"iterations{', kind weights ' + str(weights) if weights else ''} ===", flush=True)

        # 1. comparisons of the current policy's samples on fresh prompts
        paths = {split: os.path.join(rdir, f"comparisons_{split}.jsonl") for split in ("train", "eval")}
        to_label = [os.path.join(rdir, f"to_label_{split}.jsonl") for split in ("train", "eval")]
        if not all(os.path.isfile(p) for p in paths.values()) and not all(os.path.isfile(p) for p in to_label):
            policy, _, _ = load_checkpoint(policy_path, tokenizer, device=device)
            rng = random.Random(cfg.seed + 100 * r)
            for split, n in (("train", label_prompts[r - 1]), ("eval", cfg.rm_eval_prompts)):
                if builtin:
                    records = task.prompt_records(n, split, cfg.seed + 100 * r + (split == "eval"), weights)
                    groups, _ = reward.comparisons(policy, tokenizer, records, task, rng, k=cfg.rm_k, gen=gen, **kw)
                    write_comparisons(paths[split], records, groups, tokenizer)
                else:
                    source = read_prompts(cfg.prompts if split == "train" else cfg.eval_prompts)
                    records = rng.sample(source, min(len(source), n))
                    write_samples(os.path.join(rdir, f"to_label_{split}.jsonl"), policy, tokenizer, records, cfg,
                                  gen, kw)
        if not all(os.path.isfile(p) for p in paths.values()):  # --labels=files: the people's turn
            print(f"\nround {r}: waiting for labels. Rank the samples in {to_label[0]} and {to_label[1]}: add to each "
                  f"record \"ranking\", the indices of its \"responses\" from best to worst (e.g. [2, 0, 1]), and save "
                  f"them as {paths['train']} and {paths['eval']}; then run `{command()} --resume`")
            return
        new_eval = [encode_comparison(tokenizer, rec, block_size) for rec in read_comparisons(paths["eval"])]
        gold = [[task.gold_score(rec, t, True) for t in rec["responses"]] for rec in read_comparisons(paths["eval"])] \
            if builtin else None

        # 2. how well the current reward model judges the current policy's samples, before retraining
        prev_rm = os.path.join(prev, "rm", "ckpt.pt") if r > 1 else cfg.rm_ckpt
        acc_before = gold_before = None
        if prev_rm:
            option = "rm_ckpt" if r == 1 else None  # the user's reward model, or the last round's
            rm = load_checkpoint(prev_rm, tokenizer, device=device, kind="reward", option=option)[0]
            acc_before, gold_before = reward.accuracy(rm, new_eval, tokenizer, device=device, autocast=autocast, d=ONE,
                                                      gold=gold)

        # 3. the reward model, retrained on all comparisons so far
        data = [os.path.join(cfg.out_dir, f"round_{i}", "comparisons_train.jsonl") for i in range(1, r + 1)]
        rm_path = os.path.join(rdir, "rm", "ckpt.pt")
        init = [f"--init_from={os.path.join(prev, 'rm', 'ckpt.pt')}"] if cfg.rm_init == "previous" and r > 1 else []
        runs.stage(rm_path, "train_rm.py", [*stage_args, f"--out_dir={os.path.dirname(rm_path)}",
                                            f"--sft_ckpt={cfg.sft_ckpt}", f"--data={','.join(data)}",
                                            f"--eval_data={paths['eval']}", f"--epochs={cfg.rm_epochs}",
                                            f"--seed={cfg.seed + r}", *init], f"round {r} RM")
        rm = load_checkpoint(rm_path, tokenizer, device=device)[0].eval()
        acc_after, gold_after = reward.accuracy(rm, new_eval, tokenizer, device=device, autocast=autocast, d=ONE,
                                                gold=gold)

        # 4. PPO, on from the previous round's policy (and value model, with GAE), against the new reward model
        prompts = cfg.prompts
        if builtin:  # fresh prompts, over-sampling the kinds the last probe found weak
            prompts = os.path.join(rdir, "prompts_train.jsonl")
            write_jsonl(prompts, task.prompt_records(iterations[r - 1] * cfg.batch_size, "train",
                                                     cfg.seed + 100 * r + 2, weights))
        ppo_path = os.path.join(rdir, "ppo", "ckpt.pt")
        runs.stage(ppo_path, "train_ppo.py", [*stage_args, f"--out_dir={os.path.dirname(ppo_path)}",
                                              f"--sft_ckpt={cfg.sft_ckpt}", f"--rm_ckpt={rm_path}",
                                              f"--iterations={iterations[r - 1]}", f"--batch_size={cfg.batch_size}",
                                              f"--prompts={prompts}", f"--eval_prompts={eval_path}",
                                              f"--n_eval={cfg.n_eval}", f"--temperature={cfg.temperature}",
                                              f"--eos_penalty_score={cfg.eos_penalty_score}",
                                              *shlex.split(cfg.ppo_options),
                                              *([f"--init_from={policy_path}"] if r > 1 else [])], f"round {r} PPO")
        summary = json.load(open(os.path.join(rdir, "ppo", "summary.json")))
        row = {"round": r, "labels": sum(len(read_comparisons(d)) for d in data), "iterations": sum(iterations[:r]),
               "rm_accuracy_before": acc_before, "rm_accuracy_after": acc_after,
               "rm_gold_accuracy_before": gold_before, "rm_gold_accuracy_after": gold_after,
               "kl": summary["ppo_kl"], "rm_score": summary["ppo_rm_score"],
               "gold": summary.get("ppo_gold_sampled"), "win_rate_over_sft": summary.get("win_rate_ppo_sampled"),
               "weights": weights}

        # 5. the held-out comparison with the previous round, red-teaming for the next (by the gold scorer)
        if builtin:
            policy = load_checkpoint(ppo_path, tokenizer, device=device)[0]
            previous = sft if r == 1 else load_checkpoint(policy_path, tokenizer, device=device)[0]
            versus = evaluate.compare({"previous": previous, "current": policy}, tokenizer, eval_records, cfg,
                                      reference=sft, reward_model=rm, task=task, seed=cfg.seed + 3, d=ONE,
                                      autocast=autocast)
            row["win_rate_over_previous"] = versus["win_rate_current_sampled"]
            probe = evaluate.compare({"current": policy}, tokenizer, probe_records, cfg, reference=sft,
                                     reward_model=rm, task=task, seed=cfg.seed + 4, d=ONE, autocast=autocast,
                                     n_examples=len(probe_records))
            row["probe_gold"] = {k: e["current_gold"] for k, e in probe["by_kind"].items()}
            if redteam:
                tested = evaluate.compare({"current": policy}, tokenizer, redteam, cfg, reference=sft, reward_model=rm,
                                          task=task, seed=cfg.seed + 6, d=ONE, autocast=autocast)
                row["redteam_gold"], row["redteam_size"] = tested["current_gold_sampled"], len(redteam)
            row["new_redteam"] = [rec for rec, e in zip(probe_records, probe["examples"]) if e["current_gold"] < 0.5]
            redteam += row["new_redteam"]
            weights = row["next_weights"] = kind_weights(row["probe_gold"])
        done.append(row)
        runs.write_json(os.path.join(cfg.out_dir, "rounds.json"),
                        {"config": asdict(cfg), "finished": r == cfg.rounds, "rounds": done})
        write_report(os.path.join(cfg.out_dir, "report.md"), done, cfg)

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


def write_samples(path, policy, tokenizer, records, cfg, gen, kw):
    """--labels=files: rm_k samples of the policy for the prompt records, for people to rank; a prompt
    keeps its distinct samples that are valid text, and needs two of them."""
    ids = [encode_prompt(tokenizer, rec, policy.config.block_size - cfg.max_new_tokens) for rec in records]
    responses = sample(policy, tokenizer, ids, n=cfg.rm_k, generator=gen, **kw)
    out = []
    for i, rec in enumerate(records):
        group = responses[i * cfg.rm_k:(i + 1) * cfg.rm_k]
        texts = list(dict.fromkeys(s["text"] for s in group if tokenizer.encode(s["text"]) == s["ids"]))
        if len(texts) >= 2:
            out.append({k: v for k, v in rec.items() if k in ("prompt", "messages")} | {"responses": texts})
    if not out:
        raise ValueError(f"{path}: no prompt got two distinct samples that are valid text; nothing to rank")
    write_jsonl(path, out)


def write_report(path, rows, cfg):
    fmt = lambda x, f: "—" if x is None else format(x, f)  # noqa: E731
    lines = [f"# {len(rows)} of {cfg.rounds} rounds of RLHF", "",
             f"Each round: {cfg.rm_k} samples per prompt of the current policy ranked by the "
             f"{'simulated labelers' if cfg.labels == 'simulated' else 'people'}, the reward model retrained on all "
             f"comparisons so far (from {cfg.rm_init}), PPO on from the previous policy. RM accuracy is on held-out "
             f"comparisons of the round's new samples; gold and win rates on {cfg.n_eval} held-out prompts, sampled.",
             "", "| round | labeled prompts so far | PPO iterations so far | RM accuracy before retraining | after | "
             "gold | win rate over SFT | over the previous round | KL to SFT | red-team set gold (size) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        redteam = (f"{row['redteam_gold']:.3f} ({row['redteam_size']})" if row.get("redteam_gold") is not None else "—")
        lines.append(f"| {row['round']} | {row['labels']} | {row['iterations']} "
                     f"| {fmt(row['rm_accuracy_before'], '.1%')} | {fmt(row['rm_accuracy_after'], '.1%')} "
                     f"| {fmt(row['gold'], '.3f')} | {fmt(row['win_rate_over_sft'], '.1%')} "
                     f"| {fmt(row.get('win_rate_over_previous'), '.1%')} | {row['kl']:.2f} | {redteam} |")
    if rows and rows[-1].get("probe_gold"):
        kinds = list(rows[-1]["probe_gold"])
        lines += ["", "Gold score per kind on the probe set, and the kind weights of the next round's prompts:", "",
                  "| round | " + " | ".join(kinds) + " |", "|---|" + "---|" * len(kinds)]
        for row in rows:
            lines.append(f"| {row['round']} | " + " | ".join(
                f"{row['probe_gold'][k]:.3f} (next {row['next_weights'][k]:.2f})" for k in kinds) + " |")
    lines += ["", "Each round's own report (SFT vs that round's policy): round_<r>/ppo/report.md."]
    atomic_write_text(path, "\n".join(lines) + "\n")


if __name__ == "__main__":
    config.main(main, Config, "-m minirlhf.rounds", "rounds")
