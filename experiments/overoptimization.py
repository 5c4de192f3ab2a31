"""
Reward model overoptimization, in miniature (Gao, Schulman, Hilton 2022, "Scaling laws for reward
model overoptimization").

Question: optimizing against a learned reward model (the proxy), does the true (gold) score rise,
peak and fall while the proxy keeps rising, as a function of d = sqrt(KL(pi || pi_sft)), with the
functional forms Gao et al. found, and do better reward models overoptimize later? The gold scorer
of the built-in task plays Gao et al.'s gold reward model; proxies are reward models trained on the
simulated labelers' rankings of SFT samples, from the SFT checkpoint, with the options of the
default run's RM but for the number of prompts labeled (--rm_prompts, and the default run's own).

(a) Best-of-n against each proxy, n = 1, 2, 4, ..., bon_max_n: the SFT policy samples bon_max_n
    responses to each held-out prompt once (minirlhf.sampling.best_of_n); every proxy scores all of
    them. Best-of-n's gold and proxy score are estimated without bias by splitting each prompt's
    samples into bon_max_n / n disjoint groups of n and keeping each group's proxy-best response.
    KL = log n - (n - 1) / n (exact for distinct samples, an upper bound otherwise).
    Fit: gold - gold_sft = d (alpha - beta d), peak d* = alpha / (2 beta).
(b) RL: PPO against each proxy with a small kl_coef, so that the KL grows large: the default run's
    PPO options but kl_coef and the reward model, the policy kept every snapshot_interval iterations
    (train_ppo.py --snapshot_interval); each snapshot answers held-out prompts, where its KL to SFT
    (per response, on its own samples), gold and proxy score are measured (evaluate.compare).
    Fit: gold - gold_sft = d (alpha - beta log d), peak d* = exp(alpha / beta - 1).
Both fits are linear least squares in (alpha, beta), on the points with d > 0; R^2 on those points.
Target: gold rises then falls while proxy rises, the better RMs peaking later, with R^2 >= 0.8. The
results state whether this miniature shows it, with the numbers; nothing is tuned until it does.

    python experiments/overoptimization.py                       # after (or including) python train_ppo.py
    python experiments/overoptimization.py --rm_prompts=250,750 --kl_coef=0.02 --bon_prompts=400
    python experiments/overoptimization.py --help

Its running time, as measured, is in its section of experiments/RESULTS.md (the tiny settings of
tests/test_experiments.py run it in well under a minute).

Writes out_dir/results.json, out_dir/bon.png, out_dir/rl.png and its section of experiments/RESULTS.md.
"""
import math
import os
import re
import time
from dataclasses import dataclass
from types import SimpleNamespace

import common
import numpy as np
import torch

from minirlhf import evaluate
from minirlhf.checkpoint import read_checkpoint
from minirlhf.config import check
from minirlhf.config import main as cli_main
from minirlhf.data import encode_prompt
from minirlhf.sampling import best_of_n, score_responses
from minirlhf.tasks import get_task

KEY = "overoptimization"


@dataclass
class Config(common.ExperimentOptions):
    """Reward model overoptimization: best-of-n and PPO against proxy reward models of three data sizes."""
    out_dir: str = "out/experiments/overoptimization"
    """where the extra reward models (rm_<n>/), the PPO runs (ppo_rm_<n>/), results.json and figures go"""
    sft_ckpt: str = "out/sft/ckpt.pt"
    """the SFT policy: best-of-n's sampler, PPO's start and KL reference"""
    rm_ckpt: str = "out/rm/ckpt.pt"
    """the default run's reward model: one of the proxies, and its options train the others"""
    ppo_ckpt: str = "out/ppo/ckpt.pt"
    """the default run's PPO: its options (but kl_coef and the reward model) make the PPO runs; its own
    policy is one more point, at its kl_coef, on the curve of its reward model"""
    rm_prompts: str = "500,1500"
    """the other proxies: prompts labeled for each (k ranked samples each), comma-separated"""
    bon_prompts: int = 200
    """held-out prompts for best-of-n"""
    bon_max_n: int = 256
    """samples per prompt (a power of 2): best-of-n for n = 1, 2, 4, ..., bon_max_n"""
    kl_coef: float = 0.01
    """PPO's KL coefficient in the RL runs (small: the KL grows large)"""
    ppo_iterations: int = 0
    """PPO iterations of the RL runs (0: the default run's)"""
    snapshot_interval: int = 20
    """iterations between the RL runs' policy snapshots, each a point of the curve"""
    n_eval: int = 300
    """held-out prompts that every RL snapshot answers"""

    def __post_init__(self):
        super().__post_init__()
        check_at_least = lambda name: check(self, name, lambda x: x >= 1, "at least 1")  # noqa: E731
        for name in ("bon_prompts", "snapshot_interval", "n_eval"):
            check_at_least(name)
        check(self, "bon_max_n", lambda x: x >= 2 and x & (x - 1) == 0, "a power of 2, at least 2")
        check(self, "kl_coef", lambda x: x >= 0, ">= 0")
        check(self, "ppo_iterations", lambda x: x >= 0, ">= 0 (0: the default run's)")
        parse_counts(self.rm_prompts)


def parse_counts(text):
    try:
        counts = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"--rm_prompts: expected comma-separated numbers of prompts, got {text!r}") from None
    if not counts or min(counts) < 1:
        raise ValueError(f"--rm_prompts: expected positive numbers of prompts, got {text!r}")
    return counts


# --- the estimators and fits (tested in tests/test_experiments.py) ------------------------------

def bon_kl(n):
    """KL(best-of-n || policy) = log n - (n - 1) / n when scores never tie, less otherwise (Gao et al. 2022)."""
    return math.log(n) - (n - 1) / n


def best_of_n_estimates(proxy, gold, n):
    """Best-of-n's mean proxy and gold score, estimated without bias from N samples per prompt
    (proxy, gold: (prompts, N) arrays, samples in the order drawn): each prompt's samples split into
    N / n disjoint groups of n, each group keeping its proxy-best sample (the first on a tie, as
    best_of_n does). Every group is n independent samples, so each kept sample is a draw of best-of-n.
    Returns (proxy mean, gold mean, the gold's standard error over prompts, per-prompt gold means)."""
    P, N = proxy.shape
    if N % n:
        raise ValueError(f"best-of-{n} needs a multiple of {n} samples per prompt, got {N}")
    groups = proxy.reshape(P, N // n, n)
    pick = groups.argmax(-1)[..., None]  # (P, N / n, 1): the first maximum of each group
    kept_proxy = np.take_along_axis(groups, pick, -1)[..., 0]
    kept_gold = np.take_along_axis(gold.reshape(P, N // n, n), pick, -1)[..., 0]
    per_prompt = kept_gold.mean(1)
    se = float(per_prompt.std(ddof=1) / math.sqrt(P)) if P > 1 else None
    return float(kept_proxy.mean()), float(per_prompt.mean()), se, per_prompt


def fit(d, gain, form):
    """Least squares of gain = d (alpha - beta d) (form "bon") or d (alpha - beta log d) (form "rl"),
    both linear in (alpha, beta), over the points with d > 0. Returns a dict: alpha, beta, r2 (on
    those points; None when they do not vary), d_peak and gain_peak (the curve's maximum; None
    when the curve has none at d > 0), n_points; None with fewer than 2 points."""
    d, gain = np.asarray(d, dtype=float), np.asarray(gain, dtype=float)
    keep = d > 0
    d, gain = d[keep], gain[keep]
    if len(d) < 2:
        return None
    second = d * d if form == "bon" else d * np.log(d)
    X = np.stack([d, -second], 1)
    (alpha, beta), *_ = np.linalg.lstsq(X, gain, rcond=None)
    residual = gain - X @ np.array([alpha, beta])
    total = ((gain - gain.mean()) ** 2).sum()
    r2 = float(1 - (residual ** 2).sum() / total) if total > 0 else None
    d_peak = gain_peak = None
    if beta > 0 and (form == "rl" or alpha > 0):  # BoN with alpha <= 0: the curve falls from d = 0, no peak
        d_peak = alpha / (2 * beta) if form == "bon" else math.exp(alpha / beta - 1)
        gain_peak = d_peak * (alpha - beta * (d_peak if form == "bon" else math.log(d_peak)))
    return {"alpha": float(alpha), "beta": float(beta), "r2": r2, "d_peak": d_peak, "gain_peak": gain_peak,
            "n_points": int(len(d))}


def curve(d, gold, proxy, gold_se=None):
    """What a curve shows, from its points in order of d: where gold peaks, how far it rose to the
    peak from the smallest d and fell from it to the largest, whether it rises before and falls
    after, and whether proxy is higher at the end than at the gold peak. With gold_se (each point's
    standard error), fall_se: the standard error of the fall, were the two points independent."""
    order = np.argsort(d, kind="stable")
    d, gold, proxy = (np.asarray(x, dtype=float)[order] for x in (d, gold, proxy))
    i = int(np.argmax(gold))
    fall_se = None
    if gold_se is not None and None not in gold_se:
        se = np.asarray(gold_se, dtype=float)[order]
        fall_se = float(math.sqrt(se[i] ** 2 + se[-1] ** 2))
    return {"gold_peak_d": float(d[i]), "gold_peak": float(gold[i]), "gold_at_max_d": float(gold[-1]),
            "proxy_at_gold_peak": float(proxy[i]), "proxy_at_max_d": float(proxy[-1]), "max_d": float(d[-1]),
            "rise": float(gold[i] - gold[0]), "fall": float(gold[i] - gold[-1]), "fall_se": fall_se,
            "gold_rises_then_falls": bool(0 < i < len(d) - 1 and gold[-1] < gold[i]),
            "proxy_rises_past_gold_peak": bool(proxy[-1] > proxy[i])}


# --- the experiment ----------------------------------------------------------------------------

def main(cfg):
    t_start = time.time()
    device, autocast = common.setup(cfg)
    common.ensure_default_run(cfg, "sft", "rm", "ppo")
    rm_config = read_checkpoint(cfg.rm_ckpt, mmap=True)["train_config"]
    ppo_config = read_checkpoint(cfg.ppo_ckpt, mmap=True)["train_config"]
    if rm_config["data"] != "builtin":
        raise ValueError(f"--rm_ckpt={cfg.rm_ckpt} was trained on JSONL comparisons: no number of prompts to vary")
    task = get_task(ppo_config["task"])
    temperature, max_new_tokens = ppo_config["temperature"], ppo_config["max_new_tokens"]
    penalty = ppo_config["eos_penalty_score"]
    settings = SimpleNamespace(**ppo_config)  # the sampling of the PPO runs, for every evaluation

    # 1. the proxies: the default run's reward model and ones trained on fewer (or more) labeled prompts
    rms = {rm_config["n_prompts"]: cfg.rm_ckpt}
    for n in parse_counts(cfg.rm_prompts):
        if n in rms:
            raise ValueError(f"--rm_prompts: {n} is listed twice (or is rm_ckpt's own number of prompts)")
        rms[n] = os.path.join(cfg.out_dir, f"rm_{n}", "ckpt.pt")
        common.train(rms[n], "train_rm.py", common.options_of(cfg.rm_ckpt, sft_ckpt=cfg.sft_ckpt, n_prompts=n), cfg,
                     f"proxy RM on {n} prompts")
    rms = dict(sorted(rms.items()))
    rm_rows = []
    for n, path in rms.items():
        summary = common.summary_of(path)
        rm_rows.append({"n_prompts": n, "checkpoint": path, "eval_accuracy": summary.get("eval_accuracy"),
                        "eval_gold_accuracy": summary.get("eval_gold_accuracy")})

    # 2. the PPO runs, one per proxy, with snapshots along the way
    iterations = cfg.ppo_iterations or ppo_config["iterations"]
    ppo_runs = {}
    for n, rm_path in rms.items():
        path = os.path.join(cfg.out_dir, f"ppo_rm_{n}", "ckpt.pt")
        args = common.options_of(cfg.ppo_ckpt, sft_ckpt=cfg.sft_ckpt, rm_ckpt=rm_path, kl_coef=cfg.kl_coef,
                                 iterations=iterations, snapshot_interval=cfg.snapshot_interval, train_missing=False,
                                 init_from="")
        common.train(path, "train_ppo.py", args, cfg, f"PPO against the proxy RM on {n} prompts")
        ppo_runs[n] = path

    sft, tokenizer = common.load(cfg, cfg.sft_ckpt, device)
    proxies = {n: common.load(cfg, path, device, tokenizer)[0] for n, path in rms.items()}

    # 3. best-of-n: bon_max_n SFT samples per held-out prompt, drawn once, scored by every proxy and by gold
    t0 = time.time()
    records = task.prompt_records(cfg.bon_prompts, "eval", cfg.seed + 10)
    prompt_ids = [encode_prompt(tokenizer, r, sft.config.block_size - max_new_tokens) for r in records]
    gen = torch.Generator(device=device).manual_seed(cfg.seed + 11)
    first = next(iter(proxies))
    _, samples = best_of_n(sft, proxies[first], tokenizer, prompt_ids, cfg.bon_max_n, max_new_tokens=max_new_tokens,
                           temperature=temperature, generator=gen, autocast=autocast, eos_penalty_score=penalty,
                           return_all=True)
    flat = [s for group in samples for s in group]
    flat_prompts = [p for p in prompt_ids for _ in range(cfg.bon_max_n)]
    shape = (len(records), cfg.bon_max_n)
    proxy_scores = {first: np.array([s["score"] for s in flat]).reshape(shape)}
    for n, rm in proxies.items():
        if n != first:
            proxy_scores[n] = np.array(score_responses(rm, tokenizer, flat_prompts, flat, eos_penalty_score=penalty,
                                                       autocast=autocast)).reshape(shape)
    gold = np.array([task.gold_score(r, s["text"], s["ended"]) for r, group in zip(records, samples)
                     for s in group]).reshape(shape)
    ns = [2 ** i for i in range(int(math.log2(cfg.bon_max_n)) + 1)]
    bon = {}
    for n_rm in proxies:
        points = []
        for n in ns:
            proxy_mean, gold_mean, gold_se, _ = best_of_n_estimates(proxy_scores[n_rm], gold, n)
            points.append({"n": n, "kl": bon_kl(n), "d": math.sqrt(bon_kl(n)), "gold": gold_mean, "gold_se": gold_se,
                           "proxy": proxy_mean})
        gold_sft = points[0]["gold"]
        d = [p["d"] for p in points]
        bon[n_rm] = {"points": points, "gold_sft": gold_sft,
                     "fit": fit(d, [p["gold"] - gold_sft for p in points], "bon"),
                     "curve": curve(d, [p["gold"] for p in points], [p["proxy"] for p in points],
                                    [p["gold_se"] for p in points])}
    bon_seconds = time.time() - t0

    # 4. RL: every snapshot (and the final policy) of each run answers the same held-out prompts
    eval_records = task.prompt_records(cfg.n_eval, "eval", cfg.seed + 2)
    rl = {}
    for n_rm, path in ppo_runs.items():
        steps = snapshots(os.path.dirname(path))
        if iterations not in steps:
            steps[iterations] = path  # the final policy, when the interval does not divide the iterations
        policies = {"sft": sft, **{f"iter_{it}": common.load(cfg, p, device, tokenizer)[0] for it, p in steps.items()}}
        result = evaluate.compare(policies, tokenizer, eval_records, settings, reference=sft,
                                  reward_model=proxies[n_rm], task=task, seed=cfg.seed + 3, d=common.ONE_PROCESS,
                                  autocast=autocast, n_examples=len(eval_records))  # every prompt's gold, for the SEs
        points = [{"iteration": 0 if name == "sft" else int(name[5:]), "kl": result[f"{name}_kl"],
                   "d": math.sqrt(max(result[f"{name}_kl"], 0.0)), "gold": result[f"{name}_gold_sampled"],
                   "gold_se": standard_error([e[f"{name}_gold"] for e in result["examples"]]),
                   "proxy": result[f"{name}_rm_score"], "exact": result[f"{name}_exact_sampled"],
                   "mean_length": result[f"{name}_mean_length"]} for name in policies]
        gold_sft = points[0]["gold"]
        d = [p["d"] for p in points]
        rl[n_rm] = {"points": points, "gold_sft": gold_sft, "run": os.path.dirname(path),
                    "fit": fit(d, [p["gold"] - gold_sft for p in points], "rl"),
                    "curve": curve(d, [p["gold"] for p in points], [p["proxy"] for p in points],
                                   [p["gold_se"] for p in points])}
    # the default run's PPO policy (its kl_coef) on the same prompts: one more point on its reward model's curve
    default_ppo = None
    if os.path.normpath(ppo_config["rm_ckpt"]) == os.path.normpath(cfg.rm_ckpt):
        ppo, _ = common.load(cfg, cfg.ppo_ckpt, device, tokenizer)
        result = evaluate.compare({"sft": sft, "ppo": ppo}, tokenizer, eval_records, settings, reference=sft,
                                  reward_model=proxies[rm_config["n_prompts"]], task=task, seed=cfg.seed + 3,
                                  d=common.ONE_PROCESS, autocast=autocast, n_examples=0)
        default_ppo = {"rm_prompts": rm_config["n_prompts"], "kl_coef": ppo_config["kl_coef"],
                       "iterations": ppo_config["iterations"], "kl": result["ppo_kl"],
                       "d": math.sqrt(max(result["ppo_kl"], 0.0)), "gold": result["ppo_gold_sampled"],
                       "proxy": result["ppo_rm_score"]}

    # 5. the verdict, in numbers: shape of each curve, fit quality, and the order of the peaks
    order = list(rms)
    verdict = {}
    for method, data in (("bon", bon), ("rl", rl)):
        fits = [data[n]["fit"] for n in order]
        peaks = [f["d_peak"] if f else None for f in fits]
        verdict[method] = {
            "all_rise_then_fall": all(data[n]["curve"]["gold_rises_then_falls"] for n in order),
            "all_proxy_rise": all(data[n]["curve"]["proxy_rises_past_gold_peak"] for n in order),
            "all_r2_at_least_0.8": all(f is not None and f["r2"] is not None and f["r2"] >= 0.8 for f in fits),
            "fitted_peaks_later_with_more_labels": (all(p is not None for p in peaks)
                                                    and all(a < b for a, b in zip(peaks, peaks[1:]))),
            "observed_peaks_later_with_more_labels": all(
                data[a]["curve"]["gold_peak_d"] < data[b]["curve"]["gold_peak_d"] for a, b in zip(order, order[1:]))}
    seconds = time.time() - t_start
    common.save_results(cfg, KEY, seconds, bon_seconds=bon_seconds, reward_models=rm_rows,
                        gold_sft_bon=bon[order[0]]["gold_sft"], bon={str(n): v for n, v in bon.items()},
                        rl={str(n): v for n, v in rl.items()}, default_ppo=default_ppo, verdict=verdict,
                        bon_ended=float(np.mean([s["ended"] for s in flat])), n_bon_prompts=len(records),
                        n_rl_prompts=len(eval_records))

    # 6. the figures: gold and proxy against d, one colour per proxy, the fitted gold curves dashed
    figures = {}
    if cfg.plot:
        plt = common.pyplot()
        for method, data, title in (("bon", bon, "best-of-n"), ("rl", rl, f"PPO, kl_coef {cfg.kl_coef}")):
            fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
            for i, n_rm in enumerate(order):
                pts, f = sorted(data[n_rm]["points"], key=lambda p: p["d"]), data[n_rm]["fit"]
                d = np.array([p["d"] for p in pts])
                label = f"RM on {n_rm} prompts"
                axes[0].plot(d, [p["gold"] for p in pts], "o", color=f"C{i}", label=label)
                if f is not None:
                    grid = np.linspace(0, d.max() * 1.05, 100)[1:]
                    shape_ = grid if method == "bon" else np.log(grid)
                    axes[0].plot(grid, data[n_rm]["gold_sft"] + grid * (f["alpha"] - f["beta"] * shape_), "--",
                                 color=f"C{i}", lw=1, label=f"fit, R² {common.fmt(f['r2'], '.2f')}")
                axes[1].plot(d, [p["proxy"] for p in pts], "o-", color=f"C{i}", label=label)
            if method == "rl" and default_ppo is not None:
                i = order.index(default_ppo["rm_prompts"])
                for ax, field in zip(axes, ("gold", "proxy")):
                    ax.plot([default_ppo["d"]], [default_ppo[field]], "*", color=f"C{i}", markersize=13,
                            label=f"default run, kl_coef {default_ppo['kl_coef']}")
            for ax, label in zip(axes, ("gold score", "proxy (RM) score")):
                ax.set_xlabel("d = sqrt(KL(pi || pi_sft))")
                ax.set_ylabel(label)
                ax.set_title(f"{title}: {label}", fontsize=10)
                ax.legend(fontsize=7)
            fig.tight_layout()
            figures[method] = common.save_figure(fig, cfg, KEY, f"{method}.png")

    # 7. the section of RESULTS.md
    lines = common.section_head(
        "Reward model overoptimization", "Against a learned proxy reward model, does the gold score rise then fall "
        "in d = sqrt(KL) while the proxy keeps rising (Gao et al. 2022), and do better proxies overoptimize later?",
        f"{KEY}.py", cfg, seconds)
    lines += ["Proxies (each trained from the SFT model on the labelers' rankings of k SFT samples per prompt; "
              "accuracy on held-out comparisons):", ""]
    lines += common.markdown_table(["proxy", "prompts labeled", "accuracy vs labelers", "accuracy vs gold"],
                                   [[f"RM {r['n_prompts']}", r["n_prompts"], common.fmt(r["eval_accuracy"], ".1%"),
                                     common.fmt(r["eval_gold_accuracy"], ".1%")] for r in rm_rows])
    lines += ["", f"**Best-of-n** on {len(records)} held-out prompts x {cfg.bon_max_n} SFT samples (gold ± standard "
              f"error over prompts; gold_sft = {bon[order[0]]['gold_sft']:.3f}):", ""]
    lines += common.markdown_table(
        ["n", "KL", "d"] + [f"{h} RM {n}" for n in order for h in ("gold", "proxy")],
        [[p["n"], f"{p['kl']:.2f}", f"{p['d']:.2f}"]
         + [x for n in order for x in (f"{bon[n]['points'][j]['gold']:.3f} ± "
                                       f"{common.fmt(bon[n]['points'][j]['gold_se'], '.3f')}",
                                       f"{bon[n]['points'][j]['proxy']:+.2f}")]
         for j, p in enumerate(bon[order[0]]["points"])])
    lines += ["", f"**RL** (PPO, kl_coef {cfg.kl_coef}, {iterations} iterations, the default run's other options) on "
              f"{len(eval_records)} held-out prompts, sampled:", ""]
    for n in order:
        lines += [f"RM {n} (`{rl[n]['run']}`):", ""]
        lines += common.markdown_table(["iteration", "KL", "d", "gold ± se", "exact", "proxy", "length"],
                                       [[p["iteration"], f"{p['kl']:.2f}", f"{p['d']:.2f}",
                                         f"{p['gold']:.3f} ± {common.fmt(p['gold_se'], '.3f')}",
                                         f"{p['exact']:.1%}", f"{p['proxy']:+.2f}", f"{p['mean_length']:.1f}"]
                                        for p in rl[n]["points"]]) + [""]
    if default_ppo is not None:
        lines += [f"The default run's PPO (kl_coef {default_ppo['kl_coef']}, RM {default_ppo['rm_prompts']}): KL "
                  f"{default_ppo['kl']:.2f}, d {default_ppo['d']:.2f}, gold {default_ppo['gold']:.3f}, proxy "
                  f"{default_ppo['proxy']:+.2f}.", ""]
    lines += ["**Fits** (gold - gold_sft; BoN: d (alpha - beta d), RL: d (alpha - beta log d); least squares on the "
              "points with d > 0) and what each curve shows:", ""]
    rows = []
    for method, data in (("BoN", bon), ("RL", rl)):
        for n in order:
            f, c = data[n]["fit"], data[n]["curve"]
            rows.append([method, f"RM {n}", common.fmt(f and f["alpha"], ".3f"), common.fmt(f and f["beta"], ".3f"),
                         common.fmt(f and f["r2"], ".3f"), common.fmt(f and f["d_peak"], ".2f"),
                         f"{c['gold_peak_d']:.2f} ({c['gold_peak']:.3f})",
                         f"{c['max_d']:.2f} ({c['gold_at_max_d']:.3f})",
                         f"{c['rise']:+.3f}", f"{c['fall']:.3f} ± {common.fmt(c['fall_se'], '.3f')}",
                         f"{c['proxy_at_gold_peak']:+.2f} -> {c['proxy_at_max_d']:+.2f}",
                         "yes" if c["gold_rises_then_falls"] else "no"])
    lines += common.markdown_table(["method", "proxy", "alpha", "beta", "R²", "fitted peak d*",
                                    "observed gold peak: d (gold)", "largest d (gold)", "rise to the peak",
                                    "fall after it ± se", "proxy: at gold peak -> at largest d",
                                    "gold rises then falls"], rows)
    lines += ["", "A fall within about two of its standard errors may be noise; the standard errors are over "
              "prompts and treat the two points as independent (they share prompts, so the fall's is smaller).", ""]
    lines += ["Verdict (computed from the numbers above; the target is all yes):", ""]
    for method, v in verdict.items():
        lines.append(f"- {method.upper()}: gold rises then falls for every proxy: {yes(v['all_rise_then_fall'])}; "
                     f"proxy higher at the largest d than at the gold peak: {yes(v['all_proxy_rise'])}; "
                     f"R² >= 0.8 for every fit: {yes(v['all_r2_at_least_0.8'])}; "
                     f"fitted peaks later for proxies with more labels: "
                     f"{yes(v['fitted_peaks_later_with_more_labels'])} (observed peaks: "
                     f"{yes(v['observed_peaks_later_with_more_labels'])}).")
    lines.append("")
    for method, path in figures.items():
        lines += [f"![{method}]({common.link(path, cfg)})", ""]
    common.publish(cfg, KEY, lines, seconds)


def standard_error(values):
    return float(np.std(values, ddof=1) / math.sqrt(len(values))) if len(values) > 1 else None


def yes(flag):
    return "yes" if flag else "**no**"


def snapshots(run_dir):
    """{iteration: path} of the policy snapshots train_ppo.py --snapshot_interval kept in run_dir."""
    folder = os.path.join(run_dir, "snapshots")
    found = {}
    for name in os.listdir(folder) if os.path.isdir(folder) else []:
        m = re.fullmatch(r"iter_(\d+)\.pt", name)
        if m:
            found[int(m.group(1))] = os.path.join(folder, name)
    return dict(sorted(found.items()))


if __name__ == "__main__":
    cli_main(main, Config, f"experiments/{KEY}.py")
