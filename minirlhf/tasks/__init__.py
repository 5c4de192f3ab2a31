"""
The built-in tasks: generated prompts plus stand-ins for the recipe's people (demonstrators, labelers, and the gold
scorer that says what the labelers really want), so the recipe runs without a human label and can be measured.

    --task=instruct   one-line instructions, one answer (InstructGPT)          tasks/instruct.py
    --task=chat       conversations of 1-3 user turns (ChatGPT)                tasks/dialogue.py

Each task module offers the same names, over records in the JSONL formats of minirlhf/jsonl.py:
    NAME, KINDS, LABELER_TEMPERATURE, REPORT_FIELDS
    prompt_records(n, split, seed)      prompts for PPO ({"prompt"} or {"messages"} ending in a user turn)
    sft_records(n, split, seed, ...)    demonstrations, with the demonstrators' mistakes and habits
    gold_score(prompt, response, ended) the gold reward in [0, 1] of a response to a prompt record
    assess(prompt, response, ended)     what a report counts about one response (gold, exact, ...)
    kind_of(prompt)                     the kind of a prompt record, for per-kind breakdowns
    flawed_replies(prompt, rng)         the right reply and flawed versions of it, to probe a reward model
Splits ("train", "dev": for choosing settings, "eval": the reports') are disjoint by a hash of the prompt. The labelers
(tasks/labelers.py) rank on gold scores at LABELER_TEMPERATURE, calibrated on the reference distribution (reference.py).
"""
import importlib

TASKS = {"instruct": "instruct", "chat": "dialogue"}  # --task: its module


def get_task(name):
    """The task module of --task=name."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}: the built-in tasks are {', '.join(TASKS)}")
    return importlib.import_module(f"minirlhf.tasks.{TASKS[name]}")


def scorable(task, records):
    """Whether the gold scorer of `task` can judge responses to these prompt records: its own, built-in or exported."""
    try:
        for record in records:
            task.kind_of(record)
    except ValueError:
        return False
    return True
