"""
JSONL data for the three stages, and the tokenization and batching the scripts share.

    SFT (read_sft)           {"prompt", "completion"}, or {"messages": [{"role", "content"}, ...]}
    comparisons              {"prompt", "chosen", "rejected"}, or {"prompt", "responses", "ranking"}
      (read_comparisons)     (indices, best first; distinct responses), "messages" in place of "prompt"
    PPO prompts              {"prompt"}, or {"messages"} ending with a user turn
      (read_prompts)
Fields are exactly these: a missing, extra, mistyped or empty one is an error, never ignored. The
readers take a file or comma-separated files and return those dicts (a pair becomes a K=2 ranking)
with "source": "path:line", so that a later error (too long for the model) names its line.

Chat template. The byte tokenizer has no role tokens, so roles are plain text; a turn is a header,
the content, and a terminator:
    "System: " content "\\n"
    "User: " content "\\n"
    "Assistant: " content <EOS>
EOS ends every assistant turn (it is how the model learns to hand the turn back, and where PPO stops
sampling). Loss falls on assistant contents and their EOS only, never on headers, system or user:
    [system "Be brief.", user "hi", assistant "hello", user "add 1 2", assistant "3"] renders as
    System: Be brief.\\nUser: hi\\nAssistant: hello<EOS>User: add 1 2\\nAssistant: 3<EOS>
                                            ^^^^^^^^^^                         ^^^^^^  loss
A chat prompt for PPO ends with "Assistant: ", and holds the EOS of earlier assistant turns.
"""
import json
import os

import torch

ROLES = ("system", "user", "assistant")
CHAT_HEADERS = {"system": "System: ", "user": "User: ", "assistant": "Assistant: "}
IGNORE_INDEX = -100  # F.cross_entropy's default ignore_index: targets that carry no loss


# ----------------------------------------------------------------------------------------------
# reading and writing JSONL


def _json_lines(path, what):
    # (1-based line number, object) for each line; every line must be one JSON object
    if not os.path.isfile(path):
        raise ValueError(f"{what} file {path!r} does not exist")
    with open(path, "rb") as f:
        lines = f.read().split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()  # the newline that ends the last line
    if not lines:
        raise ValueError(f"{path}: the {what} file is empty")
    for lineno, raw in enumerate(lines, 1):
        where = f"{path}:{lineno}"
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise ValueError(f"{where}: not UTF-8 text ({e})") from None
        if not text.strip():
            raise ValueError(f"{where}: blank line (JSONL holds one JSON object on every line)")
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"{where}: bad JSON: {e}") from None
        if not isinstance(obj, dict):
            raise ValueError(f"{where}: expected a JSON object, got {type(obj).__name__}")
        yield lineno, obj


def _read(paths, what, check):
    # the records of one file, or of comma-separated files one after the other
    records = []
    for path in paths.split(","):
        for lineno, obj in _json_lines(path, what):
            try:
                record = check(obj)
            except ValueError as e:
                raise ValueError(f"{path}:{lineno}: {e}") from None
            record["source"] = f"{path}:{lineno}"
            records.append(record)
    return records


def read_sft(paths):
    """SFT records: {"prompt", "completion"} or {"messages"} (with at least one assistant turn)."""
    return _read(paths, "SFT", check_sft)


def read_comparisons(paths):
    """Comparison records, all as {"prompt" or "messages", "responses", "ranking"}: a chosen/rejected pair is
    ranking [0, 1]."""
    return _read(paths, "comparisons", check_comparison)


def read_prompts(paths):
    """Prompt records: {"prompt"} or {"messages"} ending with a user turn."""
    return _read(paths, "prompts", check_prompt)


def format_of(records):
    """"chat" for dialogues ({"messages"} records), else "instruct": how a model trained on them is talked to."""
    return "chat" if any("messages" in r for r in records) else "instruct"


def write_jsonl(path, records):
    """Write records one per line (without the "source" the readers add)."""
    with open(path, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps({k: v for k, v in r.items() if k != "source"}, ensure_ascii=False) + "\n")


# ----------------------------------------------------------------------------------------------
# checking one record; each raises ValueError saying what is wrong, the readers add file:line


def _fields(obj, expected, what):
    missing = [k for k in expected if k not in obj]
    extra = sorted(k for k in obj if k not in expected)
    if missing or extra:
        problems = [f"missing field {k!r}" for k in missing] + [f"unknown field {k!r}" for k in extra]
        raise ValueError(f"{', '.join(problems)} (a {what} record has exactly {', '.join(expected)})")


def _response(value, name):
    # a response to compare may be empty: a policy that answers with EOS at once has said nothing, and
    # a labeler can rank that
    if not isinstance(value, str):
        raise ValueError(f"{name} must be a string, got {type(value).__name__}")
    return value


def _text(value, name):
    if not isinstance(value, str):
        raise ValueError(f"{name} must be a string, got {type(value).__name__}")
    if value == "":
        raise ValueError(f"{name} is empty")
    return value


def _messages(value):
    if not isinstance(value, list) or not value:
        raise ValueError(f"'messages' must be a non-empty list of {{role, content}} objects, got {value!r:.60}")
    out = []
    for i, m in enumerate(value):
        if not isinstance(m, dict):
            raise ValueError(f"messages[{i}] must be an object with role and content, got {type(m).__name__}")
        try:
            _fields(m, ("role", "content"), "chat message")
        except ValueError as e:
            raise ValueError(f"messages[{i}]: {e}") from None
        if m["role"] not in ROLES:
            raise ValueError(f"messages[{i}]: unknown role {m['role']!r} (roles are {', '.join(ROLES)})")
        out.append({"role": m["role"], "content": _text(m["content"], f"messages[{i}].content")})
    return out


def check_sft(obj):
    """A checked copy of one SFT record."""
    if "messages" in obj:
        _fields(obj, ("messages",), "chat SFT")
        messages = _messages(obj["messages"])
        if not any(m["role"] == "assistant" for m in messages):
            raise ValueError("a chat SFT record needs at least one assistant turn (the loss is on assistant turns)")
        return {"messages": messages}
    _fields(obj, ("prompt", "completion"), "SFT")
    return {"prompt": _text(obj["prompt"], "'prompt'"), "completion": _text(obj["completion"], "'completion'")}


def _chat_prompt(value):
    messages = _messages(value)
    if messages[-1]["role"] != "user":
        raise ValueError(f"a chat prompt must end with a user turn, not {messages[-1]['role']!r}")
    return messages


def check_comparison(obj):
    """A checked copy of one comparison record, as {"prompt" or "messages", "responses", "ranking"}."""
    chat = "messages" in obj
    key, what = ("messages", "chat ") if chat else ("prompt", "")
    if "responses" in obj or "ranking" in obj:
        _fields(obj, (key, "responses", "ranking"), what + "K-way comparison")
        responses, ranking = obj["responses"], obj["ranking"]
        if not isinstance(responses, list) or len(responses) < 2:
            raise ValueError(f"'responses' must be a list of at least 2 strings, got {responses!r:.60}")
        responses = [_response(r, f"responses[{i}]") for i, r in enumerate(responses)]
        if (not isinstance(ranking, list) or any(type(i) is not int for i in ranking)
                or sorted(ranking) != list(range(len(responses)))):
            raise ValueError(f"'ranking' must be a permutation of 0..{len(responses) - 1} (indices into "
                             f"'responses', best first), got {ranking!r:.60}")
        for i, r in enumerate(responses):
            if r in responses[:i]:
                raise ValueError(f"responses[{i}] repeats responses[{responses.index(r)}] ({r!r:.40}): "
                                 "the responses to compare must be distinct")
        out = {"responses": responses, "ranking": list(ranking)}
    else:
        _fields(obj, (key, "chosen", "rejected"), what + "pairwise comparison")
        out = {"responses": [_response(obj["chosen"], "'chosen'"), _response(obj["rejected"], "'rejected'")],
               "ranking": [0, 1]}
        if out["responses"][0] == out["responses"][1]:
            raise ValueError(f"'chosen' and 'rejected' are the same text ({out['responses'][0]!r:.40}): "
                             "a comparison needs two different responses")
    return {key: _chat_prompt(obj["messages"]) if chat else _text(obj["prompt"], "'prompt'"), **out}


def check_prompt(obj):
    """A checked copy of one prompt record."""
    if "messages" in obj:
        _fields(obj, ("messages",), "chat prompt")
        return {"messages": _chat_prompt(obj["messages"])}
    _fields(obj, ("prompt",), "prompt")
    return {"prompt": _text(obj["prompt"], "'prompt'")}


# ----------------------------------------------------------------------------------------------
# tokenization


def _where(record):
    return record.get("source") or f"record {str(record.get('prompt', record.get('messages')))[:40]!r}"


def _chat(tokenizer, messages):
    # (ids, loss_mask) of a dialogue rendered with the chat template
    ids, mask = [], []
    for m in messages:
        if m["role"] == "assistant":
            head = tokenizer.encode(CHAT_HEADERS["assistant"])
            body = tokenizer.encode(m["content"]) + [tokenizer.eos_id]
            ids += head + body
            mask += [0] * len(head) + [1] * len(body)
        else:
            turn = tokenizer.encode(CHAT_HEADERS[m["role"]] + m["content"] + "\n")
            ids += turn
            mask += [0] * len(turn)
    return ids, mask


def encode_sft(tokenizer, record, block_size=None):
    """
    (ids, loss_mask) of an SFT record: loss_mask is 1 on the completion (or every assistant turn) and
    its EOS, 0 on the prompt, headers, system and user turns. The model reads ids[:-1], so a record
    longer than block_size + 1 tokens is a ValueError naming its source.
    """
    if "messages" in record:
        ids, mask = _chat(tokenizer, record["messages"])
    else:
        prompt = tokenizer.encode(record["prompt"])
        completion = tokenizer.encode(record["completion"]) + [tokenizer.eos_id]
        ids, mask = prompt + completion, [0] * len(prompt) + [1] * len(completion)
    if block_size is not None and len(ids) > block_size + 1:
        raise ValueError(f"{_where(record)}: {len(ids)} tokens, more than block_size + 1 = {block_size + 1} "
                         "(use a larger block_size or shorter examples)")
    return ids, mask


def encode_prompt(tokenizer, record, max_len=None):
    """
    Token ids of a prompt record; a chat prompt is rendered up to and including "Assistant: ".
    max_len (block_size minus the response budget): a longer prompt is a ValueError naming its source.
    """
    if "messages" in record:
        ids = _chat(tokenizer, record["messages"])[0] + tokenizer.encode(CHAT_HEADERS["assistant"])
    else:
        ids = tokenizer.encode(record["prompt"])
    if max_len is not None and len(ids) > max_len:
        raise ValueError(f"{_where(record)}: prompt of {len(ids)} tokens, more than the {max_len} allowed "
                         "(block_size minus the tokens kept for the response)")
    return ids


def encode_comparison(tokenizer, record, block_size=None):
    """
    (prompt_ids, [response ids + [eos] for each response], ranking) of a comparison record; a chat prompt
    is rendered as encode_prompt does, up to and including "Assistant: ". The reward model reads prompt +
    response whole, so one longer than block_size is a ValueError naming its source.
    """
    prompt = encode_prompt(tokenizer, record)
    responses = [tokenizer.encode(r) + [tokenizer.eos_id] for r in record["responses"]]
    longest = len(prompt) + max(len(r) for r in responses)
    if block_size is not None and longest > block_size:
        raise ValueError(f"{_where(record)}: prompt + response of {longest} tokens, more than "
                         f"block_size {block_size} (use a larger block_size or shorter examples)")
    return prompt, responses, list(record["ranking"])


# ----------------------------------------------------------------------------------------------
# batching


def left_pad(seqs, pad_id):
    """
    idx (B, T) long, left-padded with pad_id, and start (B,) long, the number of pad tokens on the
    left of each row. Prompts are left-padded so that every row's last token sits at T-1 and
    generation appends at the same column for all rows; the model uses start to shift position ids
    and mask the padded keys.
    """
    if not seqs:
        raise ValueError("left_pad needs at least one sequence")
    T = max(len(s) for s in seqs)
    idx = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    for b, s in enumerate(seqs):
        if len(s):
            idx[b, T - len(s):] = torch.tensor(s, dtype=torch.long)
    start = torch.tensor([T - len(s) for s in seqs], dtype=torch.long)
    return idx, start


def sft_batch(examples, pad_id):
    """
    idx (B, T) and targets (B, T) from (ids, loss_mask) examples, right-padded, T = longest - 1.
    targets[b, t] = ids[t + 1] where loss_mask[t + 1] is 1, else IGNORE_INDEX (-100), so that
    F.cross_entropy(logits.view(-1, V), targets.view(-1)) is exactly the mean loss over the masked
    completion tokens: prompt positions and padding never train.
    """
    if not examples:
        raise ValueError("sft_batch needs at least one example")
    for ids, mask in examples:
        if len(ids) != len(mask) or len(ids) < 2:
            raise ValueError(f"an SFT example needs ids and loss_mask of the same length >= 2, "
                             f"got {len(ids)} and {len(mask)}")
    T = max(len(ids) for ids, _ in examples) - 1
    idx = torch.full((len(examples), T), pad_id, dtype=torch.long)
    targets = torch.full((len(examples), T), IGNORE_INDEX, dtype=torch.long)
    for b, (ids, mask) in enumerate(examples):
        ids_t, mask_t = torch.tensor(ids, dtype=torch.long), torch.tensor(mask, dtype=torch.bool)
        n = len(ids) - 1
        idx[b, :n] = ids_t[:-1]
        targets[b, :n] = torch.where(mask_t[1:], ids_t[1:], IGNORE_INDEX)  # (n,) next tokens, -100 off the loss
    return idx, targets


def micro_batches(items, n, length):
    """
    The items (a rank's share of a batch) in up to n parts of similar length(item): sorted by length and
    cut in n runs, so that each part pads only to its own longest. Losses that sum over the items
    (SFT's tokens, the RM's prompts) and so their gradients add up over the parts to the whole batch's:
    the same step for less work (benchmarks/bench_micro_batches.py). On a GPU, where a small model's
    step costs kernel launches more than tokens, one part may be faster. n = 1: the items as they are.
    """
    if n < 1:
        raise ValueError(f"micro_batches needs n >= 1, got {n}")
    if n == 1:
        return [items]  # as drawn, not sorted: to the bit what one batch always gave
    items = sorted(items, key=length)
    size = -(-len(items) // n)  # ceil
    return [items[i:i + size] for i in range(0, len(items), size)]
