"""
Talk to a trained policy, one reply at a time, printed as it is sampled.

    python -m minirlhf.chat --ckpt=out/chat/ppo/ckpt.pt                  # a chat policy: a conversation
    python -m minirlhf.chat --ckpt=out/ppo/ckpt.pt                       # an instruct policy: one line, one answer
    printf 'reverse bajewu\\nupper ki\\n' | python -m minirlhf.chat --ckpt=out/ppo/ckpt.pt --temperature=0.7

Two formats, the two of minirlhf/data.py, chosen by the task the checkpoint was trained on:
    chat       the conversation so far plus the new user turn, in the chat template, up to "Assistant: ";
               the reply joins the history. When history + new turn + max_new_tokens exceed block_size,
               the oldest exchanges (a user turn and its reply) are dropped, never the system message.
    instruct   each line is one instruction, rendered as the built-in task's prompts are (text + "\\n");
               no history.
Commands: /reset clears the history, /quit (or Ctrl-D, or the end of piped input) ends.
On a terminal the prompt is "you> "; piped, every input line is a user turn. Either way each reply is
one line starting with "bot> " (a newline inside a reply continues on an indented line); what the
program itself says is in parentheses.
"""
import codecs
import importlib
import json
import os
import sys
from contextlib import nullcontext
from dataclasses import dataclass

import torch

from minirlhf import config, distributed
from minirlhf.checkpoint import load_checkpoint
from minirlhf.data import encode_prompt
from minirlhf.tasks.instruct import SEP

MODES = ("auto", "chat", "instruct")
BOT, YOU = "bot> ", "you> "
CONTINUATION = "\n" + " " * len(BOT)  # how a newline inside a reply is printed: the reply stays one block


@dataclass
class Config:
    """Talk to a trained policy: chat (with history) or one-line instructions, as the checkpoint was trained."""
    ckpt: str = "out/ppo/ckpt.pt"
    """the policy checkpoint (SFT or PPO; not a reward or value model)"""
    mode: str = "auto"
    """auto (the checkpoint's task), chat or instruct"""
    system: str = ""
    """a system message opening every conversation (chat mode only; empty: none)"""
    temperature: float = 0.0
    """sampling temperature (0: greedy, which the reports of both tasks score above sampling at 1)"""
    top_p: float = 1.0
    """nucleus sampling: sample from the smallest set of tokens holding this much probability (1: all)"""
    top_k: int = 0
    """sample from the k likeliest tokens only (0: all)"""
    max_new_tokens: int = 0
    """longest reply in tokens (0: the response budget the checkpoint was trained with, else 48, at most half
    the block_size); what is left of block_size holds the prompt"""
    seed: int = 1337
    """seed of the sampling"""
    device: str = "auto"
    """auto (cuda if available, else cpu), cpu, cuda, ..."""
    dtype: str = "auto"
    """autocast dtype: auto (bf16 on CUDA, fp32 on the CPU), fp32, bf16, fp16"""
    threads: int = 0
    """torch CPU threads (0: torch's default)"""

    def __post_init__(self):
        config.check_device(self.device)
        config.check(self, "dtype", lambda x: x in config.DTYPES, f"one of {', '.join(config.DTYPES)}")
        if self.mode not in MODES:
            raise ValueError(f"--mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.temperature < 0:
            raise ValueError(f"--temperature must be >= 0 (0: greedy), got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"--top_p must be in (0, 1], got {self.top_p}")
        for name in ("top_k", "max_new_tokens", "threads"):
            if getattr(self, name) < 0:
                raise ValueError(f"--{name} must be >= 0 (0: {'all' if name == 'top_k' else 'default'}), "
                                 f"got {getattr(self, name)}")
        if "\n" in self.system:
            raise ValueError("--system must be one line (a newline ends the system turn in the chat template)")


# ----------------------------------------------------------------------------------------------
# which format the checkpoint speaks


def conversation_mode(ckpt):
    """("chat" | "instruct", why) for a checkpoint: the format of the data it was trained on, as it records
    it ("data_format"); for a checkpoint that records none, the first record of its JSONL training data
    ({"messages"} is chat, {"prompt"} instruct), else its task (built-in data before tasks were
    recorded was the instruct task's), else chat."""
    if ckpt.get("data_format") in ("chat", "instruct"):
        what = "dialogues" if ckpt["data_format"] == "chat" else "prompt/completion records"
        return ckpt["data_format"], f"the checkpoint was trained on {what}"
    train_config = ckpt.get("train_config", {})
    for key in ("prompts", "data"):  # train_ppo.py's prompts, train_sft.py's demonstrations
        source = train_config.get(key)
        if isinstance(source, str) and source not in ("", "builtin"):
            path = source.split(",")[0]
            try:
                with open(path, encoding="utf-8") as f:
                    record = json.loads(f.readline())
            except (OSError, ValueError):
                continue  # moved or unreadable since training: look further
            if isinstance(record, dict) and ("messages" in record or "prompt" in record):
                mode = "chat" if "messages" in record else "instruct"
                return mode, f"its training data {path} holds {'chat' if mode == 'chat' else 'prompt'} records"
    task = train_config.get("task")
    if task in ("chat", "instruct"):
        return task, f"the checkpoint was trained on the built-in {task} task"
    if "builtin" in (train_config.get("prompts"), train_config.get("data")):
        return "instruct", "the checkpoint was trained on built-in data before tasks were recorded"
    what = f"task {task!r} is not chat or instruct" if task is not None else "the checkpoint records no task"
    return "chat", f"{what} and its training data does not tell"


# ----------------------------------------------------------------------------------------------
# fitting the conversation into the context


def fit_history(messages, tokenizer, budget):
    """(messages, n_dropped): the conversation, ending with the new user turn, with its oldest exchanges
    (a user turn and the replies up to the next user turn) dropped until the prompt rendered up to
    "Assistant: " is at most budget tokens. The system message and the new turn always stay; a
    ValueError if they alone are longer than budget."""
    head = messages[:1] if messages and messages[0]["role"] == "system" else []
    body = list(messages[len(head):])
    dropped = 0
    while (n := len(encode_prompt(tokenizer, {"messages": head + body}))) > budget:
        if len(body) == 1:
            with_system = " with the system message" if head else ""
            raise ValueError(f"this turn is {n} tokens{with_system}, more than the {budget} the context leaves "
                             "beside the reply (shorten it, or lower --max_new_tokens)")
        cut = 1
        while cut < len(body) - 1 and body[cut]["role"] != "user":
            cut += 1
        body = body[cut:]
        dropped += 1
    return head + body, dropped


# ----------------------------------------------------------------------------------------------
# printing a reply as it is sampled


class Streamer:
    """GPT.generate's on_token callback for one row: writes each token's text to out as it comes.
    A token is a few bytes, not always a whole character (a byte tokenizer splits "é" in two), so the
    bytes go through an incremental UTF-8 decoder that holds a partial character until it is complete;
    invalid bytes become U+FFFD, as tokenizer.decode makes them. EOS and padding print nothing."""

    def __init__(self, tokenizer, out):
        self.tokenizer, self.out = tokenizer, out
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.text = ""  # the reply so far

    def __call__(self, tok):
        t = int(tok[0])
        if t in (self.tokenizer.eos_id, self.tokenizer.pad_id):
            return
        self._write(self.decoder.decode(self.tokenizer.encoding.decode_single_token_bytes(t)))

    def finish(self):
        """Flush what the decoder still holds (an incomplete character at the end becomes U+FFFD)."""
        self._write(self.decoder.decode(b"", final=True))

    def _write(self, text):
        self.text += text
        self.out.write(text.replace("\n", CONTINUATION))
        self.out.flush()


# ----------------------------------------------------------------------------------------------
# the conversation


class Conversation:
    """A policy, its format and the conversation so far. reply() renders the prompt, samples the
    reply while printing it, and (in chat mode) keeps it in the history."""

    def __init__(self, model, tokenizer, mode, *, system="", max_new_tokens, temperature, top_p, top_k,
                 generator=None, autocast=None, out=None):
        self.model, self.tokenizer, self.mode = model, tokenizer, mode
        self.out = out if out is not None else sys.stdout
        self.system, self.max_new_tokens = system, max_new_tokens
        self.sampling = dict(temperature=temperature, top_p=top_p if top_p < 1 else None, top_k=top_k or None,
                             generator=generator)
        self.autocast = autocast or nullcontext  # a context factory: bf16 autocast on CUDA, as the training scripts run
        self.budget = model.config.block_size - max_new_tokens  # prompt tokens that leave room for the reply
        self.history = []  # chat mode: user and assistant turns so far, oldest first

    def reset(self):
        self.history = []

    def prompt(self, text):
        """(prompt ids, exchanges dropped to fit them) for a new user turn; ValueError if it cannot fit."""
        if self.mode == "instruct":
            ids = self.tokenizer.encode(text + SEP)  # the built-in task's prompt: one instruction line
            if len(ids) > self.budget:
                raise ValueError(f"this instruction is {len(ids)} tokens, more than the {self.budget} the context "
                                 "leaves beside the reply (shorten it, or lower --max_new_tokens)")
            return ids, 0
        system = [{"role": "system", "content": self.system}] if self.system else []
        messages, dropped = fit_history(system + self.history + [{"role": "user", "content": text}],
                                        self.tokenizer, self.budget)
        return encode_prompt(self.tokenizer, {"messages": messages}), dropped

    def reply(self, text):
        """Answer the user turn text, printing the reply as it is sampled; returns the reply's text."""
        ids, dropped = self.prompt(text)
        if dropped:
            # the history cannot be used in full again either: forget what no longer fits
            self.history = self.history[2 * dropped:]  # the history holds (user, assistant) pairs
            self.say("context full: " + ("dropped the oldest exchange" if dropped == 1 else
                                         f"dropped the {dropped} oldest exchanges"))
        device = self.model.lm_head.weight.device
        stream = Streamer(self.tokenizer, self.out)
        self.out.write(BOT)
        self.out.flush()
        with self.autocast():
            gen = self.model.generate(torch.tensor([ids], device=device), self.max_new_tokens,
                                      eos_id=self.tokenizer.eos_id, pad_id=self.tokenizer.pad_id,
                                      on_token=stream, **self.sampling)
        stream.finish()
        self.out.write("\n")
        if not (gen.tokens[0] == self.tokenizer.eos_id).any():
            self.say(f"the reply reached --max_new_tokens={self.max_new_tokens} without ending")
        if self.mode == "chat":
            self.history += [{"role": "user", "content": text}, {"role": "assistant", "content": stream.text}]
        return stream.text

    def say(self, text):
        """A line from the program, not the model: in parentheses."""
        self.out.write(f"({text})\n")
        self.out.flush()


def respond(conv, line):
    """Act on one input line: a command or a user turn. False when the conversation should end."""
    text = line.strip()
    if not text:
        return True  # an empty line is no turn
    if text == "/quit":
        return False
    if text == "/reset":
        conv.reset()
        conv.say("history cleared" if conv.mode == "chat" else "instruct mode keeps no history")
        return True
    if text == "/help":
        conv.say("commands: /reset clears the history, /quit ends (so do Ctrl-D and the end of piped input)")
        return True
    try:
        conv.reply(text)
    except ValueError as e:
        conv.say(f"error: {e}")
    return True


def main(cfg):
    _, device, autocast = distributed.setup(cfg, show_config=False)
    model, tokenizer, ckpt = load_checkpoint(cfg.ckpt, device=device, kind="policy", option="ckpt",
                                             finished=False)  # a run still training may be tried out too
    model.eval()
    train_config = ckpt["train_config"]
    if cfg.mode == "auto":
        mode, why = conversation_mode(ckpt)
    else:
        mode, why = cfg.mode, f"chosen with --mode={cfg.mode}"
    if cfg.system and mode != "chat":
        raise ValueError(f"--system needs chat mode; {cfg.ckpt} is used in {mode} mode ({why})")
    block_size = model.config.block_size
    max_new_tokens = cfg.max_new_tokens or max(1, min(train_config.get("max_new_tokens") or 48, block_size // 2))
    if max_new_tokens >= block_size:
        raise ValueError(f"--max_new_tokens={max_new_tokens} leaves no room for a prompt in block_size={block_size}")
    try:
        generator = torch.Generator(device=device).manual_seed(cfg.seed)
    except RuntimeError as e:
        raise ValueError(f"--device={cfg.device}: cannot sample there: {str(e).splitlines()[0]}") from None
    conv = Conversation(model, tokenizer, mode, system=cfg.system, max_new_tokens=max_new_tokens,
                        temperature=cfg.temperature, top_p=cfg.top_p, top_k=cfg.top_k, generator=generator,
                        autocast=autocast)

    interactive = sys.stdin.isatty()
    sys.stdin.reconfigure(errors="replace")  # a stray non-UTF-8 byte is a U+FFFD in the turn, not a crash
    conv.say(f"{cfg.ckpt}: step {ckpt['step']}, {model.num_params() / 1e6:.2f}M parameters, block_size {block_size}, "
             f"on {device}")
    conv.say(f"{mode} mode: {why}; replies of up to {max_new_tokens} tokens, "
             + (f"temperature {cfg.temperature}" if cfg.temperature > 0 else "greedy"))
    if interactive:
        try:
            importlib.import_module("readline")  # importing it gives input() line editing and history
        except ImportError:
            pass  # a platform without it
        conv.say("/reset clears the history, /quit or Ctrl-D ends")
    while True:
        try:
            line = input(YOU) if interactive else sys.stdin.readline()
        except (EOFError, KeyboardInterrupt):  # Ctrl-D or Ctrl-C at the prompt
            break
        if not interactive and line == "":
            break  # the end of piped input
        try:
            if not respond(conv, line):
                break
        except KeyboardInterrupt:  # Ctrl-C during a reply drops it and keeps the conversation
            sys.stdout.write("\n")
            conv.say("reply interrupted")
    if interactive:
        sys.stdout.write("\n")


if __name__ == "__main__":
    try:
        config.main(main, Config, "-m minirlhf.chat")
    except BrokenPipeError:  # the reader of the output went away (| head): stop, quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
