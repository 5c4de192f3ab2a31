"""
The built-in tasks: procedurally generated prompts, plus stand-ins for the people of the recipe
(demonstrators who write SFT data, labelers who rank responses, and the gold scorer that says what
the labelers really want), so the whole recipe runs without a single human label and its result
can be measured.

    instruct   one-line instructions, one answer (InstructGPT)                   tasks/instruct.py
    chat       conversations of 1-3 user turns (ChatGPT)                         tasks/chat.py

Each task module offers the same functions over records in the JSONL formats of minirlhf/data.py:
    NAME, KINDS, LABELER_TEMPERATURE
    prompt_records(n, split, seed)      prompts for PPO ({"prompt"} or {"messages"} ending in a user turn)
    sft_records(n, split, seed, ...)    demonstrations, with the demonstrators' mistakes and habits
    comparison_records(n, split, seed)  K demonstrations per prompt, ranked by a simulated labeler
    gold_score(prompt, response, ended) the gold reward in [0, 1] of a response to a prompt record
    kind_of(prompt)                     the kind of a prompt record, for per-kind breakdowns
    export(out_dir, ...)                all of it as JSONL files
Splits ("train", "eval") are decided by a hash of the prompt, so they are disjoint by construction.
The labelers (tasks/labelers.py) rank on gold scores at the task's LABELER_TEMPERATURE.

    python -m minirlhf.tasks --task=instruct --out_dir=data/instruct     # export as JSONL
"""
import importlib

TASKS = ("instruct", "chat")


def get_task(name):
    """The task module called name."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}: the built-in tasks are {', '.join(TASKS)}")
    return importlib.import_module(f"minirlhf.tasks.{name}")


def parse_kind_weights(text):
    """{kind: weight} from --kind_weights="kind=w,kind=w" (None if empty); the kinds are checked against
    the task's when prompts are drawn."""
    weights = {}
    for part in filter(None, text.split(",")):
        kind, _, w = part.partition("=")
        try:
            weights[kind.strip()] = float(w)
        except ValueError:
            raise ValueError(f"--kind_weights: expected kind=weight pairs like add=2,sort=1, got {part!r}") from None
    return weights or None
