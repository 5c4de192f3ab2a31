import base64
import json

import pytest
import tiktoken
from hypothesis import given
from hypothesis import strategies as st

from minirlhf.tokenizer import EOS, PAD, get_tokenizer

MERGES = [("h", "e"), ("l", "l"), ("he", "ll"), ("Ġ", "w"), ("o", "r")]  # GPT-2 writes a space as Ġ


def gpt2_byte_order():
    """GPT-2's byte -> printable character table (its vocab.json spells bytes this way)."""
    printable = [b for b in range(256) if chr(b).isprintable() and chr(b) != " "]
    others = [b for b in range(256) if b not in printable]
    table = {b: chr(b) for b in printable}
    table.update({b: chr(256 + n) for n, b in enumerate(others)})
    return printable + others, table


def write_gpt2_dir(path):
    order, table = gpt2_byte_order()
    vocab = {table[b]: rank for rank, b in enumerate(order)}
    for a, b in MERGES:
        vocab[a + b] = len(vocab)
    vocab[EOS] = len(vocab)
    path.mkdir()
    (path / "vocab.json").write_text(json.dumps(vocab))
    (path / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in MERGES))
    return vocab


def write_tiktoken_file(path, merges=(b"ab", b"abc", b" the")):
    ranks = {bytes([i]): i for i in range(256)}
    for m in merges:
        ranks[m] = len(ranks)
    path.write_text("".join(f"{base64.b64encode(t).decode()} {r}\n" for t, r in ranks.items()))
    return ranks


@given(text=st.text())
def test_bytes_round_trip(text):
    tok = get_tokenizer("bytes")
    ids = tok.encode(text)
    assert tok.decode(ids) == text and len(ids) == len(text.encode("utf-8"))
    assert tok.eos_id not in ids and tok.pad_id not in ids


def test_special_tokens_distinct_and_never_from_text():
    tok = get_tokenizer("bytes")
    assert tok.pad_id != tok.eos_id and tok.vocab_size == 258
    ids = tok.encode(f"a{EOS}b{PAD}")
    assert tok.eos_id not in ids and tok.pad_id not in ids
    assert tok.decode(ids + [tok.eos_id, tok.pad_id]) == f"a{EOS}b{PAD}"
    assert tok.decode([tok.eos_id], skip_special=False) == EOS


@pytest.fixture(scope="module")
def tiktoken_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("tok") / "small.tiktoken"
    return path, write_tiktoken_file(path)


@given(text=st.text(max_size=40))
def test_local_tiktoken_file_round_trip(tiktoken_file, text):
    path, ranks = tiktoken_file
    tok = get_tokenizer(str(path))
    assert tok.eos_id == len(ranks) and tok.pad_id == len(ranks) + 1
    assert tok.decode(tok.encode(text)) == text


def test_local_tiktoken_file_merges_and_edits(tmp_path):
    path = tmp_path / "small.tiktoken"
    write_tiktoken_file(path)
    tok = get_tokenizer(str(path))
    assert tok.encode("abc") == [257]  # the merge b"abc" has rank 257
    write_tiktoken_file(path, merges=(b"xy",))  # the same path, new content: read again, not a stale cache
    tok2 = get_tokenizer(str(path))
    assert tok2.encode("xy") == [256] and tok2.fingerprint != tok.fingerprint


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tok") / "gpt2"
    return path, write_gpt2_dir(path)


@given(text=st.text(max_size=40))
def test_local_gpt2_directory_round_trip(gpt2_dir, text):
    path, vocab = gpt2_dir
    tok = get_tokenizer(str(path))
    assert tok.eos_id == vocab[EOS] and tok.pad_id == vocab[EOS] + 1
    assert tok.decode(tok.encode(text)) == text


def test_local_gpt2_directory_applies_merges(gpt2_dir):
    path, vocab = gpt2_dir
    tok = get_tokenizer(str(path))
    assert tok.encode("hello world")[:2] == [vocab["hell"], vocab["o"]]
    assert vocab["Ġw"] in tok.encode("hello world")


def test_unknown_and_broken_tokenizers(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="unknown tokenizer 'gpt5'"):
        get_tokenizer("gpt5")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no vocab.json, merges.txt"):
        get_tokenizer(str(tmp_path / "empty"))
    (tmp_path / "junk.tiktoken").write_text("this is not base64 !!!\n")
    with pytest.raises(ValueError, match="not a tiktoken BPE file"):
        get_tokenizer(str(tmp_path / "junk.tiktoken"))

    def offline(name):
        raise ConnectionError("no network")
    monkeypatch.setattr(tiktoken, "get_encoding", offline)
    with pytest.raises(ValueError, match="local GPT-2 directory"):
        get_tokenizer("gpt2")
