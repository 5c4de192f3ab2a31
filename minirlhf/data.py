"""
Tokenization and batching the scripts share (the JSONL formats of your own data: minirlhf/jsonl.py).

Chat template: the byte tokenizer has no role tokens, so a turn is a plain-text header, the content and a terminator:
"System: " content "\\n", "User: " content "\\n", "Assistant: " content <EOS>. EOS ends every assistant turn (the
model learns to hand the turn back; PPO stops sampling there). Loss falls on assistant contents and their EOS only:
    System: Be brief.\\nUser: hi\\nAssistant: hello<EOS>User: add 1 2\\nAssistant: 3<EOS>
                                            ^^^^^^^^^^                         ^^^^^^  loss
A chat prompt for PPO ends with "Assistant: ", and holds the EOS of earlier assistant turns.
"""
import torch

CHAT_HEADERS = {"system": "System: ", "user": "User: ", "assistant": "Assistant: "}
IGNORE_INDEX = -100  # F.cross_entropy's default ignore_index: targets that carry no loss


def format_of(records):
    """"chat" for dialogues ({"messages"} records), else "instruct": how a model trained on them is talked to."""
    return "chat" if any("messages" in r for r in records) else "instruct"


# tokenization ---------------------------------------------------------------------------------


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
    """(ids, loss_mask) of an SFT record, loss_mask 1 on the completion (or every assistant turn) and its EOS, 0 on the
    rest. The model reads ids[:-1], so a record longer than block_size + 1 tokens is a ValueError naming its source."""
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
    """Token ids of a prompt record, a chat prompt up to and including "Assistant: ". A prompt longer than max_len
    (block_size minus the response budget) is a ValueError naming its source."""
    if "messages" in record:
        ids = _chat(tokenizer, record["messages"])[0] + tokenizer.encode(CHAT_HEADERS["assistant"])
    else:
        ids = tokenizer.encode(record["prompt"])
    if max_len is not None and len(ids) > max_len:
        raise ValueError(f"{_where(record)}: prompt of {len(ids)} tokens, more than the {max_len} allowed "
                         "(block_size minus the tokens kept for the response)")
    return ids


def encode_comparison(tokenizer, record, block_size=None):
    """(prompt_ids, [ids + [eos] of each response], ranking) of a comparison record, its prompt as encode_prompt renders
    it. The reward model reads prompt + response whole: one longer than block_size is a ValueError naming its source."""
    prompt = encode_prompt(tokenizer, record)
    responses = [tokenizer.encode(r) + [tokenizer.eos_id] for r in record["responses"]]
    longest = len(prompt) + max(len(r) for r in responses)
    if block_size is not None and longest > block_size:
        raise ValueError(f"{_where(record)}: prompt + response of {longest} tokens, more than "
                         f"block_size {block_size} (use a larger block_size or shorter examples)")
    return prompt, responses, list(record["ranking"])


# batching -------------------------------------------------------------------------------------


def left_pad(seqs, pad_id):
    """idx (B, T) long, left-padded with pad_id, and start (B,) long, each row's pad count: every last token sits at
    T-1, so generation appends at one column for all rows; the model shifts position ids and masks pad keys by start."""
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
    """idx (B, T) and targets (B, T) from (ids, loss_mask) examples, right-padded, T = longest - 1. targets[b, t] is
    ids[t + 1] where loss_mask[t + 1] is 1, else IGNORE_INDEX: F.cross_entropy(logits.view(-1, V), targets.view(-1))
    is then exactly the mean loss over the masked tokens, and prompts and padding never train."""
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
    """The items (a rank's share of a batch) sorted by length(item) and cut in up to n parts, each padded only to its
    own longest. Losses summed over the items (SFT's tokens, the RM's prompts), and so their gradients, add up over the
    parts to the whole batch's: the same step for less work (on a GPU one part may be faster). n = 1: as drawn."""
    if n < 1:
        raise ValueError(f"micro_batches needs n >= 1, got {n}")
    if n == 1:
        return [items]  # as drawn, not sorted: to the bit what one batch always gave
    items = sorted(items, key=length)
    size = -(-len(items) // n)  # ceil
    return [items[i:i + size] for i in range(0, len(items), size)]
