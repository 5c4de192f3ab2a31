import json
import os
import struct
import subprocess
import sys

import pytest
import regex
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file
from test_tokenizer import MERGES, gpt2_byte_order, write_gpt2_dir

from minirlhf import gpt2
from minirlhf.checkpoint import save_checkpoint
from minirlhf.config import main as run
from minirlhf.export import Config, export, main, tokenizer_files
from minirlhf.model import GPT, GPTConfig
from minirlhf.tokenizer import EOS, GPT2_PATTERN, PAD, Tokenizer, get_tokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny(seed, vocab_size=258, **kw):
    torch.manual_seed(seed)
    model = GPT(GPTConfig(block_size=24, vocab_size=vocab_size, n_layer=2, n_head=2, n_embd=16, attn_impl="torch",
                          **kw)).eval()
    with torch.no_grad():  # non-zero biases and LayerNorm weights, so a misplaced one shows
        for name, p in model.named_parameters():
            if "ln" in name or name.endswith("bias"):
                p.normal_()
    return model


def exported(tmp_path, model, tokenizer, name="hf", **extra):
    ckpt = tmp_path / f"{name}.pt"
    save_checkpoint(str(ckpt), model, tokenizer, {"lr": 1e-3}, step=5, **extra)
    export(str(ckpt), str(tmp_path / name))
    return tmp_path / name


def hf_bpe_encode(text, vocab, merges):
    """Hugging Face's GPT-2 BPE (its slow GPT2Tokenizer): split text into pieces, spell each piece's
    bytes as characters, join the adjacent pair listed earliest in merges.txt until no pair is listed,
    look the parts up in vocab.json."""
    _, table = gpt2_byte_order()
    merge_rank = {pair: i for i, pair in enumerate(merges)}
    ids = []
    for piece in regex.findall(GPT2_PATTERN, text):
        parts = [table[b] for b in piece.encode("utf-8")]
        while len(parts) > 1:
            ranked = [(merge_rank[p], i) for i, p in enumerate(zip(parts, parts[1:])) if p in merge_rank]
            if not ranked:
                break
            i = min(ranked)[1]
            parts[i:i + 2] = [parts[i] + parts[i + 1]]
        ids += [vocab[p] for p in parts]
    return ids


def read_tokenizer_dir(path):
    vocab = json.loads((path / "vocab.json").read_text(encoding="utf-8"))
    lines = (path / "merges.txt").read_text(encoding="utf-8").split("\n")
    assert lines[0].startswith("#version") and lines[-1] == ""  # Hugging Face skips the first line and the last
    return vocab, [tuple(line.split(" ")) for line in lines[1:-1]]


def test_language_model_round_trip(tmp_path):
    model, tok = tiny(0), get_tokenizer("bytes")
    out = exported(tmp_path, model, tok, value_model=tiny(1, scalar_head=True), state={"it": 3}, finished=False)
    assert sorted(os.listdir(tmp_path)) == ["hf", "hf.pt"]  # no temporary directory left behind
    loaded = gpt2.from_pretrained(str(out), attn_impl="torch").eval()
    assert loaded.config == model.config and loaded.score_head is None
    assert loaded.transformer.wte.weight is loaded.lm_head.weight
    idx = torch.randint(0, 258, (3, 24))
    torch.testing.assert_close(loaded(idx), model(idx), atol=1e-6, rtol=0)

    # what transformers' GPT2LMHeadModel reads: its names, Conv1D weights (in, out), its config keys
    c = model.config
    weights = load_file(str(out / "model.safetensors"))
    names = {"transformer.wte.weight", "transformer.wpe.weight", "transformer.ln_f.weight", "transformer.ln_f.bias"}
    for i in range(c.n_layer):
        names |= {f"transformer.h.{i}.{m}.{p}"
                  for m in ("ln_1", "attn.c_attn", "attn.c_proj", "ln_2", "mlp.c_fc", "mlp.c_proj")
                  for p in ("weight", "bias")}
    assert weights.keys() == names
    raw = (out / "model.safetensors").read_bytes()
    assert json.loads(raw[8:8 + struct.unpack("<Q", raw[:8])[0]])["__metadata__"] == {"format": "pt"}  # transformers
    block = model.transformer.h[1]
    assert torch.equal(weights["transformer.h.1.attn.c_attn.weight"], block.attn.c_attn.weight.T)  # (C, 3C)
    assert torch.equal(weights["transformer.h.1.mlp.c_proj.weight"], block.mlp.c_proj.weight.T)  # (4C, C)
    assert torch.equal(weights["transformer.h.1.attn.c_proj.weight"], block.attn.c_proj.weight.T)
    hf = json.loads((out / "config.json").read_text())
    assert hf["model_type"] == "gpt2" and hf["architectures"] == ["GPT2LMHeadModel"]
    assert (hf["n_layer"], hf["n_head"], hf["n_embd"]) == (c.n_layer, c.n_head, c.n_embd)
    assert hf["n_positions"] == hf["n_ctx"] == c.block_size and hf["vocab_size"] == 258
    assert hf["activation_function"] == "gelu" and hf["tie_word_embeddings"] is True  # a model from scratch: exact
    assert hf["scale_attn_weights"] is True
    assert not hf["scale_attn_by_inverse_layer_idx"] and not hf["reorder_and_upcast_attn"]
    assert (hf["bos_token_id"], hf["eos_token_id"], hf["pad_token_id"]) == (256, 256, 257)
    assert "minirlhf_scalar_head" not in hf
    # the byte tokenizer reads back from the directory as itself (byte b at id b, the same fingerprint)
    back = get_tokenizer(str(out))
    assert back.fingerprint == tok.fingerprint and back.encode("héllo <|pad|>") == tok.encode("héllo <|pad|>")


def test_reward_model_round_trip(tmp_path):
    model, tok = tiny(1, scalar_head=True), get_tokenizer("bytes")
    with torch.no_grad():
        model.score_head.bias.fill_(0.25)
    out = exported(tmp_path, model, tok)
    loaded = gpt2.from_pretrained(str(out), attn_impl="torch").eval()
    assert loaded.config == model.config and loaded.config.scalar_head
    idx = torch.randint(0, 258, (3, 24))
    torch.testing.assert_close(loaded(idx), model(idx), atol=1e-6, rtol=0)  # the scores (B, T)
    head = load_file(str(out / "score_head.safetensors"))
    assert torch.equal(head["weight"], model.score_head.weight) and torch.equal(head["bias"], model.score_head.bias)
    assert json.loads((out / "config.json").read_text())["minirlhf_scalar_head"]["file"] == "score_head.safetensors"
    # the transformer alone, for its language-model head
    lm = gpt2.from_pretrained(str(out), attn_impl="torch", scalar_head=False).eval()
    torch.testing.assert_close(lm.hidden_states(idx), model.hidden_states(idx), atol=1e-6, rtol=0)

    os.remove(out / "score_head.safetensors")
    with pytest.raises(ValueError, match="score_head.safetensors does not exist"):
        gpt2.from_pretrained(str(out))
    save_file({"weight": torch.zeros(1, 8), "bias": torch.zeros(1)}, str(out / "score_head.safetensors"))
    with pytest.raises(ValueError, match="expected"):
        gpt2.from_pretrained(str(out))


@given(text=st.text(max_size=40))
def test_byte_tokenizer_is_gpt2_bpe_without_merges(text):
    """Hugging Face's BPE over the written vocab.json and merges.txt gives the byte tokenizer's ids."""
    tok = get_tokenizer("bytes")
    files = tokenizer_files(tok, block_size=64)
    vocab, merges = json.loads(files["vocab.json"]), files["merges.txt"].split("\n")
    assert merges == ["#version: 0.2", ""] and len(vocab) == 257 and vocab[EOS] == tok.eos_id
    _, table = gpt2_byte_order()
    ids = [vocab[table[b]] for b in text.encode("utf-8")]
    assert ids == tok.encode(text)


def test_tokenizer_files_name_the_special_tokens(tmp_path):
    out = exported(tmp_path, tiny(2), get_tokenizer("bytes"))
    config = json.loads((out / "tokenizer_config.json").read_text())
    added = config["added_tokens_decoder"]
    assert added["256"]["content"] == EOS and added["257"]["content"] == PAD
    assert config["eos_token"] == config["bos_token"] == EOS and config["pad_token"] == PAD
    assert config["split_special_tokens"] is True  # "<|endoftext|>" inside text is text, as in Tokenizer.encode
    assert config["model_max_length"] == 24
    assert json.loads((out / "special_tokens_map.json").read_text())["pad_token"] == PAD


@pytest.fixture(scope="module")
def gpt2_export(tmp_path_factory):
    """(the GPT-2 directory's vocab.json, its tokenizer, the export of a model trained with it)"""
    tmp = tmp_path_factory.mktemp("gpt2")
    vocab = write_gpt2_dir(tmp / "gpt2")
    tok = get_tokenizer(str(tmp / "gpt2"))
    return vocab, tok, exported(tmp, tiny(3, vocab_size=tok.vocab_size), tok)


@given(texts=st.lists(st.text(max_size=30), max_size=5))
def test_gpt2_directory_tokenizer_round_trip(gpt2_export, texts):
    vocab, tok, out = gpt2_export
    written, merges = read_tokenizer_dir(out)
    assert written == vocab and merges == MERGES  # the directory's own files, so Hugging Face reads the same tokenizer
    back = get_tokenizer(str(out))
    assert back.fingerprint == tok.fingerprint and (back.eos_id, back.pad_id) == (tok.eos_id, tok.pad_id)
    for text in texts + ["hello world"]:
        assert back.encode(text) == tok.encode(text) == hf_bpe_encode(text, written, merges)
    model = gpt2.from_pretrained(str(out), vocab_size=back.vocab_size, attn_impl="torch")
    assert model.config.vocab_size == tok.vocab_size


@settings(max_examples=60)
@given(pairs=st.lists(st.tuples(st.integers(0, 30), st.integers(0, 30)), max_size=14),
       texts=st.lists(st.text("abc ", max_size=20), min_size=1, max_size=6))
def test_recovered_merges_encode_as_tiktoken(pairs, texts):
    """A vocabulary grown by joining random pairs of its tokens: Hugging Face's BPE with the merges
    written for it gives tiktoken's ids, or it is refused."""
    ranks, tokens = {bytes([b]): b for b in range(256)}, [b"a", b"b", b"c", b" "]
    for i, j in pairs:
        t = tokens[i % len(tokens)] + tokens[j % len(tokens)]
        if t not in ranks:
            ranks[t] = len(ranks)
            tokens.append(t)
    tok = Tokenizer("random", ranks, GPT2_PATTERN)
    try:
        files = tokenizer_files(tok, block_size=64)
    except ValueError as e:
        assert "BPE never makes token" in str(e)
        assume(False)
    vocab = json.loads(files["vocab.json"])
    merges = [tuple(line.split(" ")) for line in files["merges.txt"].split("\n")[1:-1]]
    assert len(merges) == len(ranks) - 256
    for text in texts:
        assert hf_bpe_encode(text, vocab, merges) == tok.encode(text)


def test_unreachable_token_is_refused():
    ranks = {bytes([b]): b for b in range(256)}
    for t in (b"bc", b"ab", b"cd", b"abcd"):  # BPE on "abcd" joins "bc" first and is stuck at a, bc, d
        ranks[t] = len(ranks)
    with pytest.raises(ValueError, match="BPE never makes token b'abcd'"):
        tokenizer_files(Tokenizer("bad", ranks, GPT2_PATTERN), block_size=8)


def test_out_dir_rules(tmp_path):
    model, tok = tiny(4), get_tokenizer("bytes")
    ckpt = tmp_path / "ckpt.pt"
    save_checkpoint(str(ckpt), model, tok, {}, step=1)
    out = tmp_path / "out"
    out.mkdir()
    export(str(ckpt), str(out))  # an empty directory is fine
    with pytest.raises(ValueError, match="exists and is not empty"):
        export(str(ckpt), str(out))
    (out / "stale.txt").write_text("from before")
    export(str(ckpt), str(out), overwrite=True)
    assert "stale.txt" not in os.listdir(out) and "model.safetensors" in os.listdir(out)
    assert sorted(os.listdir(tmp_path)) == ["ckpt.pt", "out"]
    with pytest.raises(ValueError, match="is a file"):
        export(str(ckpt), str(ckpt))
    with pytest.raises(ValueError, match="does not exist"):
        export(str(tmp_path / "nope.pt"), str(tmp_path / "new"))
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="is not a minirlhf checkpoint"):
        export(str(tmp_path / "junk.pt"), str(tmp_path / "new"))
    save_checkpoint(str(tmp_path / "nobias.pt"), tiny(4, bias=False), tok, {}, step=1)
    with pytest.raises(ValueError, match="bias=False has no GPT-2 equivalent"):
        export(str(tmp_path / "nobias.pt"), str(tmp_path / "new"))
    assert not (tmp_path / "new").exists()


def test_failed_export_leaves_no_directory(tmp_path, monkeypatch):
    model, tok = tiny(5), get_tokenizer("bytes")
    ckpt = tmp_path / "ckpt.pt"
    save_checkpoint(str(ckpt), model, tok, {}, step=1)
    import minirlhf.export

    def crash(tensors, path, metadata=None):
        open(path, "wb").write(b"half")
        raise OSError("disk full")
    monkeypatch.setattr(minirlhf.export, "save_file", crash)
    with pytest.raises(OSError, match="disk full"):
        export(str(ckpt), str(tmp_path / "out"))
    assert sorted(os.listdir(tmp_path)) == ["ckpt.pt"]
    monkeypatch.undo()
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "config.json").write_text("the previous export")
    replace = os.replace

    def failing_rename(src, dst):  # the new directory cannot take its place: the previous one goes back
        if ".tmp" in str(src):
            raise OSError("rename failed")
        replace(src, dst)
    monkeypatch.setattr(os, "replace", failing_rename)
    with pytest.raises(OSError, match="rename failed"):
        export(str(ckpt), str(tmp_path / "out"), overwrite=True)
    assert sorted(os.listdir(tmp_path)) == ["ckpt.pt", "out"] and os.listdir(tmp_path / "out") == ["config.json"]


@pytest.mark.slow
def test_command_line(tmp_path, monkeypatch, capsys):
    model, tok = tiny(6), get_tokenizer("bytes")
    save_checkpoint(str(tmp_path / "ckpt.pt"), model, tok, {}, step=1)
    ckpt = f"--ckpt={tmp_path / 'ckpt.pt'}"
    ok = subprocess.run([sys.executable, "-m", "minirlhf.export", ckpt, f"--out_dir={tmp_path / 'hf'}"],
                        capture_output=True, text=True, env={**os.environ, "PYTHONPATH": ROOT}, cwd=ROOT)
    assert ok.returncode == 0 and "model.safetensors" in ok.stdout, ok.stderr
    for args, msg in [([ckpt, f"--out_dir={tmp_path / 'hf'}"], "exists and is not empty"),
                      ([ckpt, f"--out_dir={tmp_path / 'ckpt.pt'}"], "is a file"),
                      ([ckpt], "--out_dir is required"),
                      (["--ckpt=nope.pt", "--out_dir=x"], "checkpoint nope.pt does not exist")]:
        monkeypatch.setattr(sys, "argv", ["export"] + args)
        with pytest.raises(SystemExit) as e:
            run(main, Config, "-m minirlhf.export")
        err = capsys.readouterr().err
        assert e.value.code == 2 and msg in err and len(err.strip().splitlines()) == 1, err
