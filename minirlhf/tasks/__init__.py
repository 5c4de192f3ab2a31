"""
The built-in tasks: procedurally generated prompts, plus stand-ins for the people of the recipe
(demonstrators who write SFT data, labelers who rank responses, and the gold scorer that says what
the labelers really want), so the whole recipe runs without a single human label and its result
can be measured.

    --task=instruct   one-line instructions, one answer (InstructGPT)          tasks/instruct.py
    --task=chat       conversations of 1-3 user turns (ChatGPT)                tasks/dialogue.py

Each task module offers the same functions over records in the JSONL formats of minirlhf/data.py:
    NAME, KINDS, LABELER_TEMPERATURE, REPORT_FIELDS
    prompt_records(n, split, seed)      prompts for PPO ({"prompt"} or {"messages"} ending in a user turn)
    sft_records(n, split, seed, ...)    demonstrations, with the demonstrators' mistakes and habits
    gold_score(prompt, response, ended) the gold reward in [0, 1] of a response to a prompt record
    assess(prompt, response, ended)     what a report counts about one response (gold, exact, ...)
    kind_of(prompt)                     the kind of a prompt record, for per-kind breakdowns
Splits ("train", "eval") are decided by a hash of the prompt, so they are disjoint by construction.
The labelers (tasks/labelers.py) rank on gold scores at the task's LABELER_TEMPERATURE, calibrated on
its reference distribution (tasks/reference.py).

    python -m minirlhf.tasks --task=instruct --out_dir=data/instruct     # export as JSONL
"""
import importlib

TASKS = {"instruct": "instruct", "chat": "dialogue"}  # --task: its module


def get_task(name):
    """The task module of --task=name."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}: the built-in tasks are {', '.join(TASKS)}")
    return importlib.import_module(f"minirlhf.tasks.{TASKS[name]}")


def scorable(task, records):
    """Whether the task's gold scorer can judge responses to these prompt records: its prompts, built-in or
    exported as JSONL, and not others."""
    try:
        for record in records:
            task.kind_of(record)
    except ValueError:
        return False
    return True
