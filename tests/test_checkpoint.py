import os

import pytest
import torch

from minirlhf.checkpoint import load_checkpoint, read_checkpoint, save_checkpoint
from minirlhf.model import GPT, GPTConfig
from minirlhf.tokenizer import get_tokenizer

from test_tokenizer import write_tiktoken_file


def tiny(seed):
    torch.manual_seed(seed)
    return GPT(GPTConfig(block_size=16, vocab_size=258, n_layer=1, n_head=2, n_embd=16, attn_impl="torch")).eval()


def test_round_trip(tmp_path):
    model, tok = tiny(0), get_tokenizer("bytes")
    path = tmp_path / "ckpt.pt"
    save_checkpoint(str(path), model, tok, {"lr": 1e-3, "data": "builtin"}, step=7, metrics={"loss": 1.5})
    loaded, tok2, ckpt = load_checkpoint(str(path))
    idx = torch.randint(0, 256, (2, 9))
    torch.testing.assert_close(loaded(idx), model(idx), atol=0, rtol=0)
    assert loaded.transformer.wte.weight is loaded.lm_head.weight
    assert tok2.fingerprint == tok.fingerprint
    assert ckpt["step"] == 7 and ckpt["train_config"]["lr"] == 1e-3 and ckpt["metrics"] == {"loss": 1.5}
    assert os.listdir(tmp_path) == ["ckpt.pt"]  # no temporary file left behind


def test_failed_save_leaves_previous_checkpoint_loadable(tmp_path, monkeypatch):
    tok, path = get_tokenizer("bytes"), tmp_path / "ckpt.pt"
    old = tiny(0)
    save_checkpoint(str(path), old, tok, {}, step=1)
    before = path.read_bytes()

    real_save = torch.save

    def crash_midway(obj, f, *a, **k):  # write part of the file, then die as a crash or a full disk would
        real_save(obj, f, *a, **k)
        f.truncate(100)
        raise OSError("disk full")
    monkeypatch.setattr(torch, "save", crash_midway)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(str(path), tiny(1), tok, {}, step=2)
    monkeypatch.undo()

    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["ckpt.pt"]
    loaded, _, ckpt = load_checkpoint(str(path))
    assert ckpt["step"] == 1
    idx = torch.randint(0, 256, (1, 5))
    torch.testing.assert_close(loaded(idx), old(idx), atol=0, rtol=0)


def test_bad_checkpoints_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        read_checkpoint(str(tmp_path / "missing.pt"))
    good = tmp_path / "good.pt"
    save_checkpoint(str(good), tiny(0), get_tokenizer("bytes"), {}, step=0)
    (tmp_path / "cut.pt").write_bytes(good.read_bytes()[:1000])
    with pytest.raises(ValueError, match="cannot be read"):
        read_checkpoint(str(tmp_path / "cut.pt"))
    torch.save({"weights": torch.zeros(3)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a minirlhf checkpoint"):
        read_checkpoint(str(tmp_path / "other.pt"))

    ckpt = torch.load(good, weights_only=True)
    ckpt["model_config"]["n_embd"] = 32  # weights are 16 wide
    torch.save(ckpt, tmp_path / "mismatch.pt")
    with pytest.raises(ValueError, match="do not fit its model config"):
        load_checkpoint(str(tmp_path / "mismatch.pt"))


def test_checkpoint_with_another_tokenizer_is_an_error(tmp_path):
    path = tmp_path / "ckpt.pt"
    save_checkpoint(str(path), tiny(0), get_tokenizer("bytes"), {}, step=0)
    write_tiktoken_file(tmp_path / "other.tiktoken")
    with pytest.raises(ValueError, match="trained with tokenizer 'bytes'"):
        load_checkpoint(str(path), tokenizer=get_tokenizer(str(tmp_path / "other.tiktoken")))


class RunsCodeWhenUnpickled:
    """An object whose unpickling calls os.mkdir(path): what a malicious checkpoint would do."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return os.mkdir, (self.path,)


def test_checkpoint_that_would_run_code_is_refused(tmp_path):
    """Checkpoints are read with weights_only=True: a file that is a complete checkpoint but whose pickle
    calls a function is refused with a ValueError naming it, and the function never runs."""
    good = tmp_path / "good.pt"
    save_checkpoint(str(good), tiny(0), get_tokenizer("bytes"), {}, step=0)
    ckpt = torch.load(good, weights_only=True)
    marker = tmp_path / "code_ran"
    ckpt["extra"] = RunsCodeWhenUnpickled(str(marker))
    path = tmp_path / "evil.pt"
    torch.save(ckpt, path)
    for load in (read_checkpoint, load_checkpoint):
        with pytest.raises(ValueError, match=str(path)):
            load(str(path))
        assert not marker.exists()
