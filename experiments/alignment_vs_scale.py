"""
Alignment beats scale, in miniature.

Question: does the default-size PPO policy beat supervised (SFT-only) models with several times its
parameters, trained on the same demonstrations? InstructGPT (Ouyang et al. 2022): labelers preferred
the 1.3B InstructGPT to the 175B GPT-3; Stiennon et al. 2020: a 1.3B model trained with human
feedback beat a supervised model about 10x its size. Here the gold scorer judges instead of people.

The SFT models of the other sizes are trained from scratch with every option of the default-size
SFT run but the shape (the same demonstrations, steps, batch size and learning-rate schedule): a
larger model gets more compute per step and never fewer steps, so the comparison, if anything,
favours the larger SFT models. The PPO policy is the default run's (out/ppo), trained from the
default-size SFT model. All policies answer the same held-out prompts (evaluate.compare), sampled at
PPO's temperature and greedy; the head-to-head gold win rate of PPO over each SFT model counts ties
half. Target: PPO beats an SFT model with >= 4x its parameters at >= 60% (sampled).

    python experiments/alignment_vs_scale.py                        # after (or including) python train_ppo.py
    python experiments/alignment_vs_scale.py --sizes=6x256x4,8x320x5 --n_eval=1000
    python experiments/alignment_vs_scale.py --help

Sizes (n_layer x n_embd x n_head, default 4x192x4 = 1.84M parameters): 2x128x2 (0.44M, 0.24x),
6x256x4 (4.82M, 2.6x), 8x320x5 (9.97M, 5.4x).

Its running time, as measured, is in its section of experiments/RESULTS.md (the tiny settings of
tests/test_experiments.py run it in well under a minute).

Writes out_dir/results.json, out_dir/gold_vs_params.png and its section of experiments/RESULTS.md.
"""
import os
import time
from dataclasses import dataclass
from types import SimpleNamespace

import common

from minirlhf import evaluate
from minirlhf.checkpoint import read_checkpoint
from minirlhf.config import check
from minirlhf.config import main as cli_main
from minirlhf.tasks import get_task

KEY = "alignment_vs_scale"


@dataclass
class Config(common.ExperimentOptions):
    """Alignment vs scale: the default-size PPO policy against SFT-only models of increasing size."""
    out_dir: str = "out/experiments/alignment_vs_scale"
    """where the other SFT sizes (sft_<shape>/), results.json and gold_vs_params.png go"""
    sft_ckpt: str = "out/sft/ckpt.pt"
    """the default-size SFT model; its run's options train every other size (trained when it is the default run's)"""
    rm_ckpt: str = "out/rm/ckpt.pt"
    """the reward model PPO was trained against; its score of every policy is reported too"""
    ppo_ckpt: str = "out/ppo/ckpt.pt"
    """the PPO policy, trained from sft_ckpt"""
    sizes: str = "2x128x2,6x256x4,8x320x5"
    """the other SFT models, comma-separated n_layer x n_embd x n_head"""
    n_eval: int = 500
    """held-out prompts that every policy answers"""

    def __post_init__(self):
        super().__post_init__()
        check(self, "n_eval", lambda x: x >= 1, "at least 1")
        parse_sizes(self.sizes)


def parse_sizes(text):
    """[(n_layer, n_embd, n_head)] from "6x256x4,8x320x5"."""
    sizes = []
    for part in filter(None, text.split(",")):
        try:
            n_layer, n_embd, n_head = (int(x) for x in part.strip().split("x"))
        except ValueError:
            raise ValueError(f"--sizes: expected n_layer x n_embd x n_head like 6x256x4, got {part!r}") from None
        if min(n_layer, n_embd, n_head) < 1 or n_embd % n_head:
            raise ValueError(f"--sizes: {part!r} needs positive numbers and n_embd divisible by n_head")
        sizes.append((n_layer, n_embd, n_head))
    if not sizes:
        raise ValueError("--sizes: give at least one SFT size to compare with")
    return sizes


def main(cfg):
    t_start = time.time()
    device, autocast = common.setup(cfg)
    common.ensure_default_run(cfg, "sft", "rm", "ppo")
    base = read_checkpoint(cfg.sft_ckpt, mmap=True)
    if base["train_config"].get("init_from", "scratch") != "scratch":
        raise ValueError(f"--sft_ckpt={cfg.sft_ckpt} was not trained from scratch: other sizes cannot repeat its run")
    mc = base["model_config"]
    base_shape = (mc["n_layer"], mc["n_embd"], mc["n_head"])

    # 1. the SFT models of the other sizes: the default-size run's options, another shape
    ckpts = {base_shape: cfg.sft_ckpt}
    for shape in parse_sizes(cfg.sizes):
        if shape in ckpts:
            raise ValueError(f"--sizes: {'x'.join(map(str, shape))} is listed twice (or is sft_ckpt's own shape)")
        L, C, H = shape
        path = os.path.join(cfg.out_dir, f"sft_{L}x{C}x{H}", "ckpt.pt")
        common.train(path, "train_sft.py", common.options_of(cfg.sft_ckpt, n_layer=L, n_embd=C, n_head=H), cfg,
                     f"SFT {L}x{C}x{H}")
        ckpts[shape] = path

    # 2. every policy answers the same held-out prompts; PPO first, so each SFT model's win rate is over PPO's
    ppo_config = read_checkpoint(cfg.ppo_ckpt, mmap=True)["train_config"]
    if os.path.normpath(ppo_config["sft_ckpt"]) != os.path.normpath(cfg.sft_ckpt):
        raise ValueError(f"--ppo_ckpt={cfg.ppo_ckpt} was trained from {ppo_config['sft_ckpt']}, not from "
                         f"--sft_ckpt={cfg.sft_ckpt}: the comparison is of a policy with its own SFT model's size")
    task = get_task(ppo_config["task"])
    sft, tokenizer = common.load(cfg, cfg.sft_ckpt, device)
    ppo, _ = common.load(cfg, cfg.ppo_ckpt, device, tokenizer)
    rm, _ = common.load(cfg, cfg.rm_ckpt, device, tokenizer)
    names = {shape: f"sft_{shape[0]}x{shape[1]}x{shape[2]}" for shape in ckpts}
    policies = {"ppo": ppo, **{names[s]: (sft if p == cfg.sft_ckpt else common.load(cfg, p, device, tokenizer)[0])
                               for s, p in ckpts.items()}}
    records = task.prompt_records(cfg.n_eval, "eval", cfg.seed + 2)
    result = evaluate.compare(policies, tokenizer, records, SimpleNamespace(**ppo_config), reference=sft,
                              reward_model=rm, task=task, seed=cfg.seed + 3, d=common.ONE_PROCESS, autocast=autocast)

    # 3. the table: a win rate over PPO, ties half, is 1 minus PPO's win rate over that model
    ppo_params = ppo.num_params()
    ckpts = dict(sorted(ckpts.items(), key=lambda kv: policies[names[kv[0]]].num_params()))
    rows = []
    for shape, path in ckpts.items():
        name, summary = names[shape], common.summary_of(path)
        params = policies[name].num_params()
        rows.append({"name": name, "shape": shape, "checkpoint": path, "parameters": params,
                     "x_ppo_parameters": params / ppo_params, "default_size": path == cfg.sft_ckpt,
                     "eval_loss": summary.get("eval_loss"), "train_seconds": summary.get("train_seconds"),
                     **{f"{f}_{m}": result[f"{name}_{f}_{m}"] for f in ("gold", "exact")
                        for m in ("sampled", "greedy")},
                     "rm_score": result[f"{name}_rm_score"], "mean_length": result[f"{name}_mean_length"],
                     "ppo_win_rate_sampled": 1 - result[f"win_rate_{name}_sampled"],
                     "ppo_win_rate_greedy": 1 - result[f"win_rate_{name}_greedy"]})
    ppo_row = {"name": "ppo", "parameters": ppo_params, "kl": result["ppo_kl"], "rm_score": result["ppo_rm_score"],
               "mean_length": result["ppo_mean_length"],
               **{f"{f}_{m}": result[f"ppo_{f}_{m}"] for f in ("gold", "exact") for m in ("sampled", "greedy")}}
    big = [r for r in rows if r["x_ppo_parameters"] >= 4]
    target = {"met": any(r["ppo_win_rate_sampled"] >= 0.6 for r in big),
              "largest_beaten_at_60": max((r["x_ppo_parameters"] for r in rows if r["ppo_win_rate_sampled"] >= 0.6),
                                          default=None),
              "sft_models_with_4x": [r["name"] for r in big]}
    by_kind = {kind: {"n": e["n"], "ppo_gold": e["ppo_gold"],
                      **{f"{names[s]}_gold": e[f"{names[s]}_gold"] for s in ckpts},
                      **{f"ppo_win_rate_over_{names[s]}": 1 - e[f"{names[s]}_win_rate"] for s in ckpts}}
               for kind, e in result["by_kind"].items()}
    seconds = time.time() - t_start
    common.save_results(cfg, KEY, seconds, n_prompts=len(records), temperature=ppo_config["temperature"],
                        sft=rows, ppo=ppo_row, target=target, by_kind=by_kind, compare=result)

    # 4. the figure: gold against parameters, SFT models as a line, the PPO policy as a star
    figure = None
    if cfg.plot:
        plt = common.pyplot()
        from matplotlib.ticker import NullFormatter
        fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
        for ax, field, label in ((axes[0], "gold", "gold score"), (axes[1], "exact", "exactly right")):
            x = [r["parameters"] for r in rows]
            ax.plot(x, [r[f"{field}_sampled"] for r in rows], "o-", label="SFT, sampled")
            ax.plot(x, [r[f"{field}_greedy"] for r in rows], "o--", color="C0", alpha=0.5, label="SFT, greedy")
            ax.plot([ppo_params], [ppo_row[f"{field}_sampled"]], "*", color="C3", markersize=15, label="PPO, sampled")
            ax.plot([ppo_params], [ppo_row[f"{field}_greedy"]], "*", color="C3", alpha=0.5, markersize=11,
                    label="PPO, greedy")
            if field == "gold" and common.summary_of(cfg.sft_ckpt).get("gold_demonstrations") is not None:
                ax.axhline(common.summary_of(cfg.sft_ckpt)["gold_demonstrations"], color="gray", ls=":", lw=1,
                           label="the demonstrations")
            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(NullFormatter())
            ax.set_xlabel("parameters")
            ax.set_ylabel(label)
            ax.set_title(f"{label}, {len(records)} held-out prompts", fontsize=10)
        axes[0].legend(fontsize=8)
        fig.tight_layout()
        figure = common.save_figure(fig, cfg, KEY, "gold_vs_params.png")

    # 5. the section of RESULTS.md
    pct = lambda x: common.fmt(x, ".1%")  # noqa: E731
    table = common.markdown_table(
        ["policy", "parameters", "x PPO's", "SFT eval loss", "gold, sampled", "gold, greedy", "exact, sampled",
         "exact, greedy", "RM score", "PPO's win rate over it, sampled", "greedy"],
        [[r["name"] + (" (default size)" if r["default_size"] else ""), f"{r['parameters'] / 1e6:.2f}M",
          f"{r['x_ppo_parameters']:.2f}", common.fmt(r["eval_loss"], ".3f"), f"{r['gold_sampled']:.3f}",
          f"{r['gold_greedy']:.3f}", pct(r["exact_sampled"]), pct(r["exact_greedy"]), f"{r['rm_score']:+.2f}",
          f"**{pct(r['ppo_win_rate_sampled'])}**", pct(r["ppo_win_rate_greedy"])] for r in rows]
        + [["ppo (default size)", f"{ppo_params / 1e6:.2f}M", "1.00", "—", f"{ppo_row['gold_sampled']:.3f}",
            f"{ppo_row['gold_greedy']:.3f}", pct(ppo_row["exact_sampled"]), pct(ppo_row["exact_greedy"]),
            f"{ppo_row['rm_score']:+.2f}", "—", "—"]])
    kinds = common.markdown_table(
        ["kind", "n", "PPO gold"] + [f"{names[s]} gold" for s in ckpts] + [f"PPO over {names[s]}" for s in ckpts],
        [[k, e["n"], f"{e['ppo_gold']:.3f}"] + [f"{e[f'{names[s]}_gold']:.3f}" for s in ckpts]
         + [pct(e[f"ppo_win_rate_over_{names[s]}"]) for s in ckpts] for k, e in by_kind.items()])
    verdict = (f"**Target (PPO beats an SFT model with >= 4x its parameters at >= 60%, sampled): "
               f"{'met' if target['met'] else 'not met'}.** "
               + ("No SFT model here has 4x PPO's parameters. " if not big else
                  "; ".join(f"{r['name']} ({r['x_ppo_parameters']:.1f}x): PPO wins {pct(r['ppo_win_rate_sampled'])}"
                            for r in big) + ". "))
    lines = common.section_head(
        "Alignment vs scale", "Does the default-size PPO policy beat SFT-only models with several times its "
        "parameters, trained on the same demonstrations? (InstructGPT: 1.3B InstructGPT preferred to 175B GPT-3.)",
        f"{KEY}.py", cfg, seconds)
    lines += [f"Every SFT model: the options of `{cfg.sft_ckpt}`'s run but the shape (same demonstrations, steps, "
              f"batch, schedule). {len(records)} held-out prompts, sampled at T = {ppo_config['temperature']} and "
              f"greedy; win rates count ties half; PPO's KL to the default-size SFT model: "
              f"{result['ppo_kl']:.2f} nats per response.", "", *table, "", verdict, "",
              "By kind of prompt (sampled):", "", *kinds, ""]
    if figure:
        lines += [f"![gold vs parameters]({common.link(figure, cfg)})", ""]
    common.publish(cfg, KEY, lines, seconds)


if __name__ == "__main__":
    cli_main(main, Config, f"experiments/{KEY}.py")
