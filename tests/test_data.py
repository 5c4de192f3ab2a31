"""JSONL readers, loss masking, padding and the exporter's files, with the byte tokenizer."""
import json
import re

import pytest
import torch
import torch.nn.functional as F

from minirlhf.data import (
    IGNORE_INDEX,
    encode_comparison,
    encode_prompt,
    encode_sft,
    format_of,
    left_pad,
    micro_batches,
    sft_batch,
)
from minirlhf.jsonl import read_comparisons, read_prompts, read_sft, write_jsonl
from minirlhf.tasks import instruct as tasks
from minirlhf.tasks import reference
from minirlhf.tokenizer import get_tokenizer

tok = get_tokenizer("bytes")
CHAT = {"messages": [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "hi"},
    {"role": "assistant", "content": "hello"},
    {"role": "user", "content": "add 1 2"},
    {"role": "assistant", "content": "3"},
]}


def write_lines(path, lines):
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return str(path)


# ---------------------------------------------------------------------------------------------- masking


def test_prompt_tokens_never_train():
    records = [{"prompt": "sort 3 1 2\n", "completion": "1 2 3"}, {"prompt": "add 1 1\n", "completion": "2"}]
    examples = [encode_sft(tok, r) for r in records]
    for r, (ids, mask) in zip(records, examples):
        n_prompt = len(tok.encode(r["prompt"]))
        assert ids[-1] == tok.eos_id and tok.decode(ids) == r["prompt"] + r["completion"]
        assert mask == [0] * n_prompt + [1] * (len(ids) - n_prompt)  # completion and its EOS
    idx, targets = sft_batch(examples, tok.pad_id)
    B, T = idx.shape
    assert T == max(len(ids) for ids, _ in examples) - 1
    for b, (r, (ids, _)) in enumerate(zip(records, examples)):
        n_prompt = len(tok.encode(r["prompt"]))
        # position t predicts token t+1: it trains iff t+1 is a completion token or the EOS
        assert (targets[b, :n_prompt - 1] == IGNORE_INDEX).all()
        assert targets[b, n_prompt - 1:len(ids) - 1].tolist() == ids[n_prompt:]
        assert (targets[b, len(ids) - 1:] == IGNORE_INDEX).all() and (idx[b, len(ids) - 1:] == tok.pad_id).all()
        assert idx[b, :len(ids) - 1].tolist() == ids[:-1]


def test_cross_entropy_on_the_batch_is_the_masked_sft_loss():
    torch.manual_seed(0)
    examples = [encode_sft(tok, r) for r in tasks.sft_records(6, "train", seed=0)]
    idx, targets = sft_batch(examples, tok.pad_id)
    B, T = idx.shape
    logits = torch.randn(B, T, tok.vocab_size)
    loss = F.cross_entropy(logits.view(-1, tok.vocab_size), targets.view(-1), ignore_index=-100)
    logp = logits.log_softmax(-1)
    terms = [-logp[b, t, ids[t + 1]] for b, (ids, mask) in enumerate(examples)
             for t in range(len(ids) - 1) if mask[t + 1]]
    torch.testing.assert_close(loss, torch.stack(terms).mean())


def test_micro_batches_sum_to_the_batch_loss_and_gradient_with_less_padding():
    from minirlhf.model import GPT, GPTConfig
    from minirlhf.tasks import dialogue as chat
    torch.manual_seed(0)
    examples = [encode_sft(tok, r) for r in chat.sft_records(12, "train", seed=0)]
    assert len({len(ids) for ids, _ in examples}) > 4  # lengths vary, or sorting would not matter
    model = GPT(GPTConfig(block_size=128, vocab_size=tok.vocab_size, n_layer=1, n_head=2, n_embd=16))

    def loss_and_grad(batches):
        model.zero_grad()
        n_tokens = sum((t != IGNORE_INDEX).sum() for _, t in batches)
        loss = sum(-model(idx, targets=t).sum() / n_tokens for idx, t in batches)
        loss.backward()
        return loss.detach(), torch.cat([p.grad.flatten() for p in model.parameters()])

    parts = micro_batches(examples, 4, lambda e: len(e[0]))
    assert [len(p) for p in parts] == [3, 3, 3, 3]
    assert sorted(e for p in parts for e in p) == sorted(examples)  # the same examples, shortest first
    assert [len(e[0]) for p in parts for e in p] == sorted(len(e[0]) for e in examples)
    whole, micro = sft_batch(examples, tok.pad_id), [sft_batch(p, tok.pad_id) for p in parts]
    assert sum(idx.numel() for idx, _ in micro) < 0.9 * whole[0].numel()  # each part padded to its own longest
    loss, grad = loss_and_grad([whole])
    micro_loss, micro_grad = loss_and_grad(micro)
    torch.testing.assert_close(micro_loss, loss)
    torch.testing.assert_close(micro_grad, grad)
    # one part: the batch as drawn (unsorted); more parts than items: one each
    assert micro_batches(examples, 1, len) == [examples]
    assert micro_batches([3, 1, 2], 8, abs) == [[1], [2], [3]]
    with pytest.raises(ValueError, match="n >= 1"):
        micro_batches(examples, 0, len)


def test_chat_trains_assistant_turns_only():
    ids, mask = encode_sft(tok, CHAT)
    assert tok.decode(ids, skip_special=False) == (
        "System: Be brief.\nUser: hi\nAssistant: hello<|endoftext|>User: add 1 2\nAssistant: 3<|endoftext|>")
    trained = [i for i, m in zip(ids, mask) if m]
    assert trained == tok.encode("hello") + [tok.eos_id] + tok.encode("3") + [tok.eos_id]
    # no byte of a header, the system or a user turn carries loss
    untrained = tok.decode([i for i, m in zip(ids, mask) if not m])
    assert untrained == "System: Be brief.\nUser: hi\nAssistant: User: add 1 2\nAssistant: "
    idx, targets = sft_batch([(ids, mask)], tok.pad_id)
    assert [t for t in targets[0].tolist() if t != IGNORE_INDEX] == trained


def test_chat_prompt_ends_at_the_assistant_header():
    record = {"messages": CHAT["messages"][:4]}
    ids = encode_prompt(tok, record)
    assert ids == encode_sft(tok, CHAT)[0][:len(ids)]  # the prompt is the dialogue's prefix
    assert tok.decode(ids).endswith("User: add 1 2\nAssistant: ")


def test_left_pad_offsets():
    seqs = [[5, 6, 7], [8], [1, 2, 3, 4, 5]]
    idx, start = left_pad(seqs, pad_id=tok.pad_id)
    assert idx.dtype == start.dtype == torch.long and idx.shape == (3, 5)
    assert start.tolist() == [2, 4, 0]
    for b, s in enumerate(seqs):
        assert (idx[b, :start[b]] == tok.pad_id).all() and idx[b, start[b]:].tolist() == s


def test_comparison_encoding():
    prompt, responses, ranking = encode_comparison(tok, {"prompt": "add 1 1\n", "responses": ["2", "3", "11"],
                                                         "ranking": [0, 2, 1]})
    assert prompt == tok.encode("add 1 1\n") and all(r[-1] == tok.eos_id for r in responses)
    assert ranking == [0, 2, 1]


def test_chat_comparison_encoding():
    record = {"messages": CHAT["messages"][:4], "responses": ["3", "4", "3 ok"], "ranking": [0, 2, 1]}
    prompt, responses, ranking = encode_comparison(tok, record)
    # the prompt exactly as a chat prompt for PPO: the dialogue up to and including "Assistant: "
    assert prompt == encode_prompt(tok, {"messages": CHAT["messages"][:4]}) == encode_sft(tok, CHAT)[0][:len(prompt)]
    assert tok.decode(prompt, skip_special=False) == (
        "System: Be brief.\nUser: hi\nAssistant: hello<|endoftext|>User: add 1 2\nAssistant: ")
    assert responses == [tok.encode(r) + [tok.eos_id] for r in record["responses"]] and ranking == [0, 2, 1]
    with pytest.raises(ValueError, match=f"block_size {len(prompt) + 4}"):
        encode_comparison(tok, record, block_size=len(prompt) + 4)  # "3 ok" + EOS is 5 tokens
    encode_comparison(tok, record, block_size=len(prompt) + 5)


def test_too_long_examples_name_their_line(tmp_path):
    path = write_lines(tmp_path / "sft.jsonl", [json.dumps({"prompt": "p", "completion": "c"}),
                                                json.dumps({"prompt": "x" * 50, "completion": "y"})])
    records = read_sft(path)
    encode_sft(tok, records[0], block_size=4)
    with pytest.raises(ValueError, match=rf"{path}:2: 52 tokens"):
        encode_sft(tok, records[1], block_size=16)
    encode_sft(tok, records[1], block_size=51)  # the model reads ids[:-1]: 51 tokens fit
    with pytest.raises(ValueError, match=rf"{path}:2: prompt of 50"):
        encode_prompt(tok, records[1], max_len=49)
    with pytest.raises(ValueError, match="block_size 8"):
        encode_comparison(tok, {"prompt": "add 1 1\n", "responses": ["2", "3"], "ranking": [0, 1]}, block_size=8)


# ---------------------------------------------------------------------------------------------- malformed files

GOOD = {"sft": {"prompt": "p\n", "completion": "c"}, "comparisons": {"prompt": "p", "chosen": "a", "rejected": "b"},
        "prompts": {"prompt": "p"}}
READERS = {"sft": read_sft, "comparisons": read_comparisons, "prompts": read_prompts}
MSG = lambda role, content="x": {"role": role, "content": content}  # noqa: E731

BAD = [  # (reader, bad line, what the message says)
    ("sft", "{not json", "bad JSON"),
    ("sft", "", "blank line"),
    ("sft", "   ", "blank line"),
    ("sft", "[1, 2]", "expected a JSON object"),
    ("sft", '"text"', "expected a JSON object"),
    ("sft", {"prompt": "p"}, "missing field 'completion'"),
    ("sft", {"prompt": "p", "completion": "c", "id": 3}, "unknown field 'id'"),
    ("sft", {"prompt": "p", "completion": 3}, "'completion' must be a string"),
    ("sft", {"prompt": "", "completion": "c"}, "'prompt' is empty"),
    ("sft", {"messages": []}, "non-empty list"),
    ("sft", {"messages": [MSG("user"), MSG("bot")]}, r"messages\[1\]: unknown role 'bot'"),
    ("sft", {"messages": [MSG("user"), {"role": "assistant"}]}, r"messages\[1\]: missing field 'content'"),
    ("sft", {"messages": [MSG("user"), MSG("assistant", "")]}, r"messages\[1\].content is empty"),
    ("sft", {"messages": [MSG("system"), MSG("user")]}, "at least one assistant turn"),
    ("sft", {"messages": [MSG("user"), MSG("assistant")], "prompt": "p"}, "unknown field 'prompt'"),
    ("comparisons", {"prompt": "p", "chosen": "a"}, "missing field 'rejected'"),
    ("comparisons", {"prompt": "p", "chosen": "a", "rejected": None}, "'rejected' must be a string"),
    ("comparisons", {"prompt": "p", "responses": ["a", "b"]}, "missing field 'ranking'"),
    ("comparisons", {"prompt": "p", "responses": ["a"], "ranking": [0]}, "at least 2"),
    ("comparisons", {"prompt": "p", "responses": ["a", "b"], "ranking": [0, 0]}, "permutation"),
    ("comparisons", {"prompt": "p", "responses": ["a", "b"], "ranking": [1, 2]}, "permutation"),
    ("comparisons", {"prompt": "p", "responses": ["a", "b"], "ranking": [0]}, "permutation"),
    ("comparisons", {"prompt": "p", "responses": ["a", "b"], "ranking": [True, False]}, "permutation"),
    ("comparisons", {"prompt": "p", "responses": ["a", "b"], "ranking": "01"}, "permutation"),
    ("comparisons", {"prompt": "p", "responses": ["", ""], "ranking": [0, 1]},
     r"responses\[1\] repeats responses\[0\]"),
    ("comparisons", {"prompt": "p", "responses": ["a", "b"], "ranking": [0, 1], "chosen": "a"}, "unknown field"),
    ("comparisons", {"prompt": "p", "responses": ["a", "b", "a"], "ranking": [0, 1, 2]},
     r"responses\[2\] repeats responses\[0\] .*distinct"),
    ("comparisons", {"prompt": "p", "chosen": "a", "rejected": "a"}, "'chosen' and 'rejected' are the same text"),
    ("comparisons", {"messages": [MSG("user")], "chosen": "a", "rejected": "a"}, "are the same text"),
    ("comparisons", {"messages": [MSG("user")], "responses": ["a", "b", "b"], "ranking": [0, 1, 2]},
     r"responses\[2\] repeats responses\[1\]"),
    ("comparisons", {"messages": [MSG("user"), MSG("assistant")], "chosen": "a", "rejected": "b"},
     "must end with a user turn"),
    ("comparisons", {"messages": [MSG("user")], "responses": ["a", "b"], "ranking": [1, 0], "prompt": "p"},
     "unknown field 'prompt'"),
    ("comparisons", {"messages": [MSG("user")], "prompt": "p", "chosen": "a", "rejected": "b"},
     "unknown field 'prompt'"),
    ("comparisons", {"messages": [MSG("user")], "chosen": "a"}, "missing field 'rejected'.*chat pairwise"),
    ("comparisons", {"messages": [MSG("user")], "responses": ["a", "b"]}, "missing field 'ranking'.*chat K-way"),
    ("comparisons", {"messages": [], "chosen": "a", "rejected": "b"}, "non-empty list"),
    ("comparisons", {"messages": [MSG("user", "")], "chosen": "a", "rejected": "b"}, r"messages\[0\].content is empty"),
    ("prompts", {"prompt": 7}, "'prompt' must be a string"),
    ("prompts", {"prompt": "p", "completion": "c"}, "unknown field 'completion'"),
    ("prompts", {"messages": [MSG("user"), MSG("assistant")]}, "must end with a user turn"),
    ("prompts", {}, "missing field 'prompt'"),
]


@pytest.mark.parametrize("kind, bad, message", BAD)
def test_malformed_line_names_file_and_line(tmp_path, kind, bad, message):
    line = bad if isinstance(bad, str) else json.dumps(bad)
    path = write_lines(tmp_path / f"{kind}.jsonl", [json.dumps(GOOD[kind])] * 2 + [line] + [json.dumps(GOOD[kind])])
    with pytest.raises(ValueError, match=rf"^{path}:3: .*{message}"):
        READERS[kind](path)


def test_bad_utf8_and_empty_and_missing_files(tmp_path):
    path = tmp_path / "sft.jsonl"
    path.write_bytes(json.dumps(GOOD["sft"]).encode() + b"\n\xff\xfe\n")
    with pytest.raises(ValueError, match=rf"{path}:2: not UTF-8"):
        read_sft(str(path))
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(ValueError, match="empty.jsonl: the prompts file is empty"):
        read_prompts(str(tmp_path / "empty.jsonl"))
    with pytest.raises(ValueError, match="nowhere.jsonl"):
        read_comparisons(str(tmp_path / "nowhere.jsonl"))


def test_readers_accept_both_formats(tmp_path):
    kway = {"prompt": "p", "responses": ["a", "b", "c"], "ranking": [2, 0, 1]}
    path = write_lines(tmp_path / "c.jsonl", [json.dumps(GOOD["comparisons"]), json.dumps(kway)])
    pair, kway = read_comparisons(path)
    assert pair == {"prompt": "p", "responses": ["a", "b"], "ranking": [0, 1], "source": f"{path}:1"}
    assert kway["ranking"] == [2, 0, 1] and kway["source"] == f"{path}:2"
    path = write_lines(tmp_path / "s.jsonl", [json.dumps(CHAT), json.dumps(GOOD["sft"])])
    assert [("messages" in r) for r in read_sft(path)] == [True, False]
    chat_prompt = {"messages": CHAT["messages"][:2]}
    path = write_lines(tmp_path / "p.jsonl", [json.dumps(chat_prompt), json.dumps(GOOD["prompts"])])
    assert len(read_prompts(path)) == 2
    # comparisons of replies to a dialogue, pairwise and K-way
    dialogue = CHAT["messages"][:4]
    pair = {"messages": dialogue, "chosen": "3", "rejected": "4"}
    kway = {"messages": dialogue, "responses": ["4", "3"], "ranking": [1, 0]}
    path = write_lines(tmp_path / "cc.jsonl", [json.dumps(pair), json.dumps(kway)])
    pair, kway = read_comparisons(path)
    assert pair == {"messages": dialogue, "responses": ["3", "4"], "ranking": [0, 1], "source": f"{path}:1"}
    assert kway == {"messages": dialogue, "responses": ["4", "3"], "ranking": [1, 0], "source": f"{path}:2"}
    long = {"messages": [MSG("user", "x" * 60)], "chosen": "a", "rejected": "b"}  # 78 prompt tokens
    path = write_lines(tmp_path / "long.jsonl", [json.dumps({"messages": dialogue, "chosen": "3", "rejected": "4"}),
                                                 json.dumps(long)])
    with pytest.raises(ValueError, match=rf"{path}:2: prompt \+ response of 80 tokens"):
        [encode_comparison(tok, r, block_size=75) for r in read_comparisons(path)]  # line 1 has 71


# ---------------------------------------------------------------------------------------------- exporter


def test_exported_files_round_trip_through_the_readers(tmp_path):
    from minirlhf.tasks.__main__ import export
    counts = export(tasks, str(tmp_path), n_sft=40, n_prompts=30, n_comparisons=20, n_eval=10, seed=3)
    assert counts == {"sft_train.jsonl": 40, "sft_eval.jsonl": 10, "prompts_train.jsonl": 30,
                      "prompts_eval.jsonl": 10, "comparisons_train.jsonl": 20, "comparisons_eval.jsonl": 10}
    strip = lambda records: [{k: v for k, v in r.items() if k != "source"} for r in records]  # noqa: E731
    assert strip(read_sft(str(tmp_path / "sft_train.jsonl"))) == tasks.sft_records(40, "train", seed=3)
    assert strip(read_prompts(str(tmp_path / "prompts_eval.jsonl"))) == tasks.prompt_records(10, "eval", seed=3)
    comparisons = read_comparisons(str(tmp_path / "comparisons_train.jsonl"))
    assert strip(comparisons) == reference.comparison_records(tasks, 20, "train", seed=3)
    for split in ("train", "eval"):
        records = read_sft(str(tmp_path / f"sft_{split}.jsonl"))
        records += read_prompts(str(tmp_path / f"prompts_{split}.jsonl"))
        assert all(tasks.split_of(r["prompt"]) == split for r in records)
    # what the readers return writes back to the same file
    write_jsonl(str(tmp_path / "again.jsonl"), comparisons)
    assert (tmp_path / "again.jsonl").read_text() == (tmp_path / "comparisons_train.jsonl").read_text()


def test_exporter_command_line(tmp_path):
    from minirlhf.tasks.__main__ import main
    main(["--task=instruct", f"--out_dir={tmp_path}", "--n_sft=5", "--n_prompts=5", "--n_comparisons=5", "--n_eval=5"])
    assert len(read_sft(str(tmp_path / "sft_eval.jsonl"))) == 5


# ==============================================================================================
# what the readers return, the messages' details and the length bounds
# (properties that a mutation of minirlhf/data.py showed no test held)


def test_chat_records_read_back_as_written(tmp_path):
    chat_prompt = {"messages": [MSG("system", "Be brief."), MSG("user", "hi"), MSG("assistant", "hello"),
                                MSG("user", "2+2")]}
    path = write_lines(tmp_path / "s.jsonl", [json.dumps(CHAT)])
    (record,) = read_sft(path)
    assert record == {**CHAT, "source": f"{path}:1"}
    assert encode_sft(tok, record) == encode_sft(tok, CHAT)
    path = write_lines(tmp_path / "p.jsonl", [json.dumps(chat_prompt)])  # a user turn after an assistant turn
    (record,) = read_prompts(path)
    assert record == {**chat_prompt, "source": f"{path}:1"}
    assert tok.decode(encode_prompt(tok, record)).endswith("User: 2+2\nAssistant: ")


def test_loss_mask_is_zeros_and_ones():
    for record in (CHAT, {"prompt": "p\n", "completion": "c"}):
        ids, mask = encode_sft(tok, record)
        assert set(mask) == {0, 1} and len(mask) == len(ids)


def test_last_line_without_newline_is_read(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps({"prompt": "a"}) + "\n" + json.dumps({"prompt": "b"}), encoding="utf-8")
    assert [r["prompt"] for r in read_prompts(str(path))] == ["a", "b"]


@pytest.mark.parametrize("kind, bad, message", [
    ("sft", "[1, 2]", "expected a JSON object, got list"),
    ("sft", {"messages": ["hi", MSG("assistant")]}, r"messages\[0\] must be an object with role and content, got str"),
    ("sft", {"prompt": "p", "completion": 3}, "'completion' must be a string, got int"),
    ("prompts", {"messages": [MSG("system"), MSG("user"), MSG("assistant")]},
     "must end with a user turn, not 'assistant'"),
    ("comparisons", {"prompt": "p", "chosen": "a", "rejected": "b", "ranking": [0, 1]}, "missing field 'responses'"),
    ("comparisons", {"prompt": "p", "chosen": 3, "rejected": "b"}, "'chosen' must be a string"),
    ("comparisons", {"prompt": "", "chosen": "a", "rejected": "b"}, "'prompt' is empty"),
    ("comparisons", {"prompt": "", "responses": ["a", "b"], "ranking": [0, 1]}, "'prompt' is empty"),
])
def test_messages_name_the_type_field_or_role(tmp_path, kind, bad, message):
    test_malformed_line_names_file_and_line(tmp_path, kind, bad, message)


def test_empty_and_missing_files_name_their_kind(tmp_path):
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(ValueError, match="the SFT file is empty"):
        read_sft(str(tmp_path / "empty.jsonl"))
    with pytest.raises(ValueError, match="the comparisons file is empty"):
        read_comparisons(str(tmp_path / "empty.jsonl"))
    with pytest.raises(ValueError, match="SFT file .*nowhere.jsonl' does not exist"):
        read_sft(str(tmp_path / "nowhere.jsonl"))


def test_length_bounds_are_inclusive():
    record = {"prompt": "x" * 50, "completion": "y"}  # 52 tokens with the EOS; the model reads 51
    assert len(encode_sft(tok, record, block_size=51)[0]) == 52
    with pytest.raises(ValueError, match=r"52 tokens, more than block_size \+ 1 = 51"):
        encode_sft(tok, record, block_size=50)
    assert len(encode_prompt(tok, record, max_len=50)) == 50
    comparison = {"prompt": "add 1 1\n", "responses": ["2", "33"], "ranking": [0, 1]}  # 8 + 2 + 1 tokens
    encode_comparison(tok, comparison, block_size=11)
    with pytest.raises(ValueError, match="prompt \\+ response of 11 tokens"):
        encode_comparison(tok, comparison, block_size=10)


def test_records_without_a_source_are_named_by_their_start():
    """Built-in records have no "source": errors quote their first 40 characters instead."""
    with pytest.raises(ValueError, match="^record '" + "x" * 40 + "': prompt of 50"):
        encode_prompt(tok, {"prompt": "x" * 50}, max_len=10)
    start = str(CHAT["messages"])[:40]  # a chat record: the start of its messages
    with pytest.raises(ValueError, match="^record " + re.escape(repr(start)) + ": 71 tokens"):
        encode_sft(tok, CHAT, block_size=8)


def test_sft_batch_checks_its_examples():
    idx, targets = sft_batch([([5, 6], [0, 1])], tok.pad_id)  # the shortest example: one position
    assert idx.tolist() == [[5]] and targets.tolist() == [[6]]
    with pytest.raises(ValueError, match="same length >= 2, got 3 and 2"):
        sft_batch([([5, 6, 7], [0, 1])], tok.pad_id)
    with pytest.raises(ValueError, match="same length >= 2, got 1 and 1"):
        sft_batch([([5], [1])], tok.pad_id)
    with pytest.raises(ValueError, match="sft_batch needs at least one example"):
        sft_batch([], tok.pad_id)
    with pytest.raises(ValueError, match="left_pad needs at least one sequence"):
        left_pad([], tok.pad_id)


def test_written_files_keep_non_ascii_text(tmp_path):
    path = tmp_path / "u.jsonl"
    write_jsonl(str(path), [{"prompt": "¿qué? 日本", "source": "x:1"}])
    assert path.read_text(encoding="utf-8") == '{"prompt": "¿qué? 日本"}\n'  # readable, not \\u escapes
    assert read_prompts(str(path))[0]["prompt"] == "¿qué? 日本"


def test_an_empty_response_can_be_compared(tmp_path):
    """A policy that answers with EOS at once said nothing; a labeler can still rank that."""
    path = tmp_path / "c.jsonl"
    path.write_text(json.dumps({"prompt": "add 1 2\n", "responses": ["3", ""], "ranking": [0, 1]}) + "\n")
    (record,) = read_comparisons(str(path))
    tok = get_tokenizer("bytes")
    prompt, responses, ranking = encode_comparison(tok, record)
    assert responses == [tok.encode("3") + [tok.eos_id], [tok.eos_id]] and ranking == [0, 1]


def test_readers_take_comma_separated_files_in_order_and_format_of_tells_dialogues(tmp_path):
    (tmp_path / "a b.jsonl").write_text(json.dumps({"prompt": "p", "completion": "c"}) + "\n")
    (tmp_path / "chat.jsonl").write_text(json.dumps({"messages": [{"role": "user", "content": "hi"},
                                                                  {"role": "assistant", "content": "yo"}]}) + "\n")
    records = read_sft(f"{tmp_path / 'a b.jsonl'},{tmp_path / 'chat.jsonl'}")
    assert [r["source"] for r in records] == [f"{tmp_path / 'a b.jsonl'}:1", f"{tmp_path / 'chat.jsonl'}:1"]
    assert format_of(records) == "chat" and format_of(records[:1]) == "instruct" and format_of([]) == "instruct"
