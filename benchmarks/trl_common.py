"""
What trl_baseline.py (PPO) and trl_grpo_baseline.py (GRPO) share: the tokenizer and the GPT-2 shape that match
minirlhf's benchmark workload (benchmarks/workload.py), built locally with no Hub access. Needs transformers (the TRL
virtual environment of trl_baseline.py), not minirlhf.
"""
VOCAB = 512
EOS_ID = 510
PAD_ID = 511
SEED = 0
# fp32 on the CPU without gradient checkpointing (TRL's base config turns on bf16 and gradient checkpointing), and
# nothing saved, logged or reported during the timed training
CPU_ARGS = dict(bf16=False, fp16=False, gradient_checkpointing=False, use_cpu=True, save_strategy="no",
                report_to="none", logging_strategy="no", disable_tqdm=True, seed=SEED)


def parse_args(doc, results_name):
    """The options both baselines take; the JSON results go to results_name beside this file by default."""
    import argparse
    import os

    p = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    p.add_argument("--iterations", type=int, default=3, help="timed iterations after 1 warm-up (default 3)")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    p.add_argument("--activation", choices=("gelu", "gelu_new"), default="gelu_new",
                   help="the MLP's activation_function: GPT-2's tanh GELU (default) or the exact GELU")
    p.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), results_name),
                   help=f"where to write the JSON results (default: {results_name} beside this script)")
    return p.parse_args()


def build_tokenizer():
    """A 512-token WordLevel tokenizer built in memory: token i is the string 't<i>'."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import WhitespaceSplit
    from transformers import PreTrainedTokenizerFast

    vocab = {f"t{i}": i for i in range(VOCAB - 2)}
    vocab["<eos>"] = EOS_ID
    vocab["<pad>"] = PAD_ID
    backend = Tokenizer(WordLevel(vocab=vocab, unk_token="<pad>"))
    backend.pre_tokenizer = WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<eos>", pad_token="<pad>",
                                  unk_token="<pad>")
    assert tok.eos_token_id == EOS_ID and tok.pad_token_id == PAD_ID and len(tok) == VOCAB
    return tok


def gpt2_config(**extra):
    """GPT-2 with 4 layers, 4 heads, width 256, vocab 512, 256 positions, no dropout: the workload's model."""
    from transformers import GPT2Config

    return GPT2Config(vocab_size=VOCAB, n_positions=256, n_embd=256, n_layer=4, n_head=4,
                      resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                      bos_token_id=EOS_ID, eos_token_id=EOS_ID, pad_token_id=PAD_ID, **extra)


def report(name, iters, phases, workload_line):
    """Print each iteration's phases (the first is the warm-up) and their medians; returns (warm-up, timed, median)
    and the versions, for the JSON result."""
    import statistics

    import accelerate
    import torch
    import transformers
    import trl

    warmup, timed = iters[0], iters[1:]
    median = {k: statistics.median(it[k] for it in timed) for k in phases}
    print(f"TRL {trl.__version__} {name}, transformers {transformers.__version__}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, CPU")
    print(workload_line)
    print(f"{'iteration':<10}" + "".join(f"{k:>10}" for k in phases))
    for label, it in [("warm-up", warmup)] + [(str(i + 1), it) for i, it in enumerate(timed)]:
        print(f"{label:<10}" + "".join(f"{it[k]:>10.3f}" for k in phases))
    print(f"{'median':<10}" + "".join(f"{median[k]:>10.3f}" for k in phases))
    versions = {"trl": trl.__version__, "transformers": transformers.__version__, "accelerate": accelerate.__version__,
                "torch": torch.__version__}
    return warmup, timed, median, versions
