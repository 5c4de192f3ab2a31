"""
What a run shows a reader: markdown reports of held-out comparisons (evaluate.compare), the policies side by side in
total, by kind of prompt and in sample responses; and a PNG of the training curves.
"""
import os

from minirlhf.checkpoint import atomic_write_text


def _esc(text):
    return str(text).replace("\n", "\\n").replace("|", "\\|")


def comparison_table(s, names, labels):
    """Markdown lines: one column per policy, a row per measure present in s."""
    rows = [("gold score, sampled", "gold_sampled", ".3f"), ("gold score, greedy", "gold_greedy", ".3f"),
            ("exactly right (gold 1), sampled", "exact_sampled", ".1%"),
            ("exactly right (gold 1), greedy", "exact_greedy", ".1%"),
            ("reward model score", "rm_score", "+.3f"), ("KL to the reference (nats per response)", "kl", ".2f"),
            ("mean response length (tokens, EOS included)", "mean_length", ".1f"),
            ("responses that ended with EOS", "ended", ".1%")]
    lines = ["| | " + " | ".join(labels) + " |", "|---|" + "---|" * len(names)]
    for label, key, fmt in rows:
        if all(f"{n}_{key}" in s for n in names):
            lines.append(f"| {label} | " + " | ".join(format(s[f"{n}_{key}"], fmt) for n in names) + " |")
    return lines


def kind_table(by_kind, names, labels, fields):
    """Markdown lines: per kind of prompt, the chosen assessment fields of each policy, and win rates."""
    head = ["kind", "n"] + [f"{f} {lab}" for f, _ in fields for lab in labels] + [f"win rate {b}" for b in labels[1:]]
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for kind, e in by_kind.items():
        cells = [kind, str(e["n"])]
        for field, fmt in fields:
            cells += [format(e[f"{n}_{field}"], fmt) if f"{n}_{field}" in e else "" for n in names]
        cells += [f"{e[f'{n}_win_rate']:.1%}" for n in names[1:]]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def examples_table(examples, names, labels):
    lines = ["| prompt | " + " | ".join(labels) + " |", "|---|" + "---|" * len(names)]
    for e in examples:
        cells = [f"`{_esc(e[n])}`" + (f" ({e[f'{n}_gold']:.2f})" if f"{n}_gold" in e else "") for n in names]
        lines.append(f"| `{_esc(e['prompt'])}` | " + " | ".join(cells) + " |")
    return lines


def write_ppo_report(path, s, task, png=None):
    """The SFT vs PPO report of train_ppo.py, from its summary s; returns the text written."""
    names, labels = ["sft", "ppo"], ["SFT", "PPO"]
    greedy = ", and greedy" if "sft_gold_greedy" in s else ""  # greedy responses are judged by the gold scorer
    oracle = (" PPO's reward was the gold scorer (--reward=gold): it stands in for the reward model below."
              if s.get("config", {}).get("reward") == "gold" else "")
    lines = ["# PPO vs SFT on held-out prompts", "",
             f"{s['n_prompts']} held-out prompts; responses sampled at temperature {s['temperature']} "
             f"(the policies as trained){greedy}.{oracle}", ""] + comparison_table(s, names, labels) + [""]
    if "win_rate_ppo_sampled" in s:
        lines += [f"**Gold win rate of PPO over SFT** (ties count half): **{s['win_rate_ppo_sampled']:.1%}** sampled, "
                  f"{s['win_rate_ppo_greedy']:.1%} greedy.", ""]
    lines += [f"KL(PPO || SFT): {s['ppo_kl']:.2f} nats per response (estimated on PPO's samples).", ""]
    if s.get("ceiling"):
        c, ns = s["ceiling"], list(s["ceiling"]["best_of_n"])
        def row(label, key, fmt, ppo=""):  # a measure of each best-of-n, and of PPO
            return f"| {label} | " + " | ".join(format(c["best_of_n"][n][key], fmt) for n in ns) + f" | {ppo} |"
        lines += [f"The reward model's ceiling: best-of-n from SFT ranked by the reward model, on the first "
                  f"{c['n_prompts']} of these prompts, beside PPO. PPO well below it: PPO holds the result back; near "
                  "it: the reward model does, by as much as the last row (the same samples picked by gold) is above:",
                  "", "| | " + " | ".join(f"best-of-{n}" for n in ns) + " | PPO |", "|---|" + "---|" * (len(ns) + 1),
                  row("gold score, sampled", "gold", ".3f", f"{s['ppo_gold_sampled']:.3f}"),
                  row("gold win rate over SFT", "win_rate", ".1%", f"{s['win_rate_ppo_sampled']:.1%}"),
                  row("KL to SFT (nats; best-of-n: its bound)", "kl_bound", ".2f", f"{s['ppo_kl']:.2f}"),
                  row("the same n picked by gold, win rate (a perfect reward model)", "gold_picked_win_rate", ".1%"),
                  ""]
    for key, mode in (("by_kind", "sampled"), ("by_kind_greedy", "greedy")):
        if s.get(key):
            lines += [f"By kind of prompt ({task.NAME} task; {mode} responses):", ""]
            lines += kind_table(s[key], names, labels, task.REPORT_FIELDS) + [""]
    lines += [f"{s['iterations']} PPO iterations in {s['ppo_seconds']:.0f} s ({s['skipped_updates']} skipped updates); "
              f"whole run {s['total_seconds']:.0f} s.", ""]
    if png:
        lines += [f"![training curves]({os.path.basename(png)})", ""]
    lines += ["Sample responses (sampled; gold score in brackets where the prompts are the task's):", ""]
    lines += examples_table(s["examples"], names, labels)
    text = "\n".join(lines) + "\n"
    atomic_write_text(path, text)
    return text


def plot_curves(history, path, x="iteration", keys=("objective/gold", "objective/rm_score", "objective/kl",
                                                      "policy/entropy", "charts/response_length",
                                                      "val/explained_variance")):
    """A PNG of training curves when matplotlib (the `plot` extra) is installed; None otherwise."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    keys = [k for k in keys if history and any(h.get(k) is not None for h in history)]
    if not keys:  # every update was skipped: nothing to draw
        return None
    fig, axes = plt.subplots(1, len(keys), figsize=(3.2 * len(keys), 2.8), squeeze=False)
    for ax, k in zip(axes[0], keys):
        ax.plot(*zip(*[(h[x], h[k]) for h in history if h.get(k) is not None]))
        ax.set_title(k, fontsize=9)
        ax.set_xlabel(x, fontsize=8)
    fig.tight_layout()
    tmp = f"{path}.tmp{os.getpid()}.png"
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)
    return path
