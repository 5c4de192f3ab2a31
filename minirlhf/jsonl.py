"""
Your own data: JSONL files (one JSON object a line) for the three stages, each record checked.
    SFT (read_sft)                   {"prompt", "completion"}, or {"messages": [{"role", "content"}, ...]}
    comparisons (read_comparisons)   {"prompt", "chosen", "rejected"}, or {"prompt", "responses", "ranking"}
                                     (indices, best first; distinct responses); "messages" in place of "prompt"
    PPO prompts (read_prompts)       {"prompt"}, or {"messages"} ending with a user turn
Fields are exactly these: a missing, extra, mistyped or empty one is an error, never ignored. The readers take a file or
comma-separated files and return those dicts (a pair becomes a K=2 ranking) with "source": "path:line", so that a later
error (too long for the model) names its line.
The built-in tasks make their records in memory (minirlhf/tasks/) and never come here.
"""
import json
import os

ROLES = ("system", "user", "assistant")


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
    """Comparison records, all as {"prompt" or "messages", "responses", "ranking"} (a chosen/rejected pair: [0, 1])."""
    return _read(paths, "comparisons", check_comparison)


def read_prompts(paths):
    """Prompt records: {"prompt"} or {"messages"} ending with a user turn."""
    return _read(paths, "prompts", check_prompt)


def write_jsonl(path, records):
    """Write records one per line (without the "source" the readers add)."""
    with open(path, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps({k: v for k, v in r.items() if k != "source"}, ensure_ascii=False) + "\n")


# checking one record; each raises ValueError saying what is wrong, the readers add file:line ----


def _fields(obj, expected, what):
    missing = [k for k in expected if k not in obj]
    extra = sorted(k for k in obj if k not in expected)
    if missing or extra:
        problems = [f"missing field {k!r}" for k in missing] + [f"unknown field {k!r}" for k in extra]
        raise ValueError(f"{', '.join(problems)} (a {what} record has exactly {', '.join(expected)})")


def _response(value, name):
    # a response to compare may be empty: a policy that answers EOS at once said nothing, and a labeler can rank that
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
