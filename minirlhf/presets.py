"""
Each built-in task's settings where they differ from the scripts' defaults (the instruct task's); an option on the
command line overrides either, and `python train_ppo.py --task=chat --help` prints what a run will use. The
measurements behind these values: experiments/RESULTS.md, "How the defaults were chosen".
"""
PRESETS = {
    "instruct": {},
    "chat": {
        # conversations of 20-110 tokens: a block of 128; a batch in 4 parts of similar lengths pads less
        "sft": {"out_dir": "out/chat/sft", "block_size": 128, "batch_size": 32, "micro_batches": 4},
        # more prompts in one pass: held-out accuracy stops rising within the first epoch, and PPO gains from more
        "rm": {"out_dir": "out/chat/rm", "sft_ckpt": "out/chat/sft/ckpt.pt", "n_prompts": 12000, "epochs": 1,
               "micro_batches": 4},
        # against this reward model gold peaks early: fewer iterations; GAE with a faster value model (RLOO's twice
        # as many iterations won no more often greedily here)
        "ppo": {"out_dir": "out/chat/ppo", "sft_ckpt": "out/chat/sft/ckpt.pt", "rm_ckpt": "out/chat/rm/ckpt.pt",
                "iterations": 60, "advantage": "gae", "group_size": 1, "value_learning_rate": 1.5e-4,
                "micro_batches": 4},
        "rounds": {"out_dir": "out/chat/rounds", "sft_ckpt": "out/chat/sft/ckpt.pt", "rm_prompts": 6000,
                   "rm_epochs": 1, "iterations": 60},
    },
}
