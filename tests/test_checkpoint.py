import os

import pytest
import torch
from test_tokenizer import write_tiktoken_file

from minirlhf.checkpoint import load_checkpoint, read_checkpoint, save_checkpoint
from minirlhf.model import GPT, GPTConfig
from minirlhf.tokenizer import get_tokenizer


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
    with pytest.raises(ValueError, match=r"cut.pt is not a minirlhf checkpoint \(torch cannot read it"):
        read_checkpoint(str(tmp_path / "cut.pt"))
    (tmp_path / "data.jsonl").write_text('{"prompt": "add 1 2"}\n')  # a file given for the wrong option
    with pytest.raises(ValueError, match=r"^--init_from=\S+data.jsonl is not a minirlhf checkpoint [^\n]*$"):
        read_checkpoint(str(tmp_path / "data.jsonl"), option="init_from")
    with pytest.raises(ValueError, match=r"--ckpt=\S+ is a directory, not a checkpoint file"):
        read_checkpoint(str(tmp_path), option="ckpt")
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
    with pytest.raises(ValueError, match=f"checkpoint {path} was trained with tokenizer 'bytes'"):
        load_checkpoint(str(path), tokenizer=get_tokenizer(str(tmp_path / "other.tiktoken")))
    # a checkpoint whose tokenizer file has moved names itself and the file
    save_checkpoint(str(path), tiny(0), get_tokenizer(str(tmp_path / "other.tiktoken")), {}, step=0)
    os.rename(tmp_path / "other.tiktoken", tmp_path / "moved.tiktoken")
    with pytest.raises(ValueError, match=f"checkpoint {path}: cannot rebuild its tokenizer .*other.tiktoken"):
        load_checkpoint(str(path))


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


def tiny_scalar(seed):
    torch.manual_seed(seed)
    return GPT(GPTConfig(block_size=16, vocab_size=258, n_layer=1, n_head=2, n_embd=16, attn_impl="torch",
                         scalar_head=True)).eval()


def test_training_state_and_value_model_travel_with_the_policy(tmp_path):
    """What a resumable PPO checkpoint holds: policy, value model, the state, whether it finished."""
    from minirlhf.checkpoint import model_from
    policy, value, tok, path = tiny(0), tiny_scalar(1), get_tokenizer("bytes"), tmp_path / "ckpt.pt"
    state = {"optimizer": {"lr": 0.1}, "rng": [{"python": (3, (1, 2), None)}], "metrics": [{"step": 1, "x": None}]}
    save_checkpoint(str(path), policy, tok, {"iterations": 9}, step=4, finished=False, state=state, value_model=value,
                    total_steps=9)
    ckpt = read_checkpoint(str(path))
    assert (ckpt["finished"], ckpt["step"], ckpt["total_steps"], ckpt["state"]) == (False, 4, 9, state)
    assert ckpt["format"] == "minirlhf-checkpoint-v2"
    idx = torch.randint(0, 256, (2, 7))
    loaded_value = model_from(ckpt, str(path), "value_model")
    torch.testing.assert_close(loaded_value(idx), value(idx), atol=0, rtol=0)
    torch.testing.assert_close(model_from(ckpt, str(path))(idx), policy(idx), atol=0, rtol=0)
    save_checkpoint(str(path), policy, tok, {}, step=9)  # finished by default, with no state and no value model
    ckpt = read_checkpoint(str(path), mmap=True)
    assert ckpt["finished"] and "state" not in ckpt and "value_model" not in ckpt
    with pytest.raises(ValueError, match="holds no value_model"):
        model_from(ckpt, str(path), "value_model")


def test_weights_given_replace_the_models_own(tmp_path):
    """FSDP gathers the full weights outside the (sharded) model: they are what is saved."""
    model, other = tiny(0), tiny(1)
    save_checkpoint(str(tmp_path / "c.pt"), model, get_tokenizer("bytes"), {}, step=1, weights=other.state_dict(),
                    value_model=tiny_scalar(2), value_weights=tiny_scalar(3).state_dict())
    ckpt = read_checkpoint(str(tmp_path / "c.pt"))
    assert all(torch.equal(ckpt["model"][k], v) for k, v in other.state_dict().items())
    assert all(torch.equal(ckpt["value_model"]["model"][k], v) for k, v in tiny_scalar(3).state_dict().items())


@pytest.mark.parametrize("which", ["model", "value_model"])
def test_non_finite_weights_are_refused_and_the_old_file_stays(tmp_path, which):
    path, tok = tmp_path / "ckpt.pt", get_tokenizer("bytes")
    save_checkpoint(str(path), tiny(0), tok, {}, step=1)
    before = path.read_bytes()
    model, value = tiny(1), tiny_scalar(2)
    with torch.no_grad():
        (model if which == "model" else value).transformer.h[0].mlp.c_fc.weight[3, 5] = float("nan")
    with pytest.raises(ValueError, match="transformer.h.0.mlp.c_fc.weight holds non-finite values"):
        save_checkpoint(str(path), model, tok, {}, step=2, value_model=value)
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["ckpt.pt"]


def test_old_format_reads_as_finished(tmp_path):
    path = tmp_path / "v1.pt"
    save_checkpoint(str(path), tiny(0), get_tokenizer("bytes"), {}, step=3, finished=False)
    ckpt = torch.load(path, weights_only=True)
    ckpt["format"] = "minirlhf-checkpoint-v1"
    del ckpt["finished"]
    torch.save(ckpt, path)
    assert read_checkpoint(str(path))["finished"] is True  # v1 had no flag; its checkpoints were used as results
    for missing in ("model_config", "model", "tokenizer", "train_config", "step"):
        broken = {k: v for k, v in ckpt.items() if k != missing}
        torch.save(broken, tmp_path / "broken.pt")
        with pytest.raises(ValueError, match=f"has no {missing!r} entry"):
            read_checkpoint(str(tmp_path / "broken.pt"))


def test_loading_checks_the_kind_and_the_finish_naming_the_option_and_the_fix(tmp_path):
    path = tmp_path / "sft" / "ckpt.pt"
    command = "python train_sft.py --task=chat --out_dir=run/sft"
    save_checkpoint(str(path), tiny(0), get_tokenizer("bytes"), {}, step=500, finished=False, total_steps=900,
                    command=command)
    with pytest.raises(ValueError, match=rf"^--sft_ckpt={path} is an unfinished run \(stopped at step 500 of 900\): "
                                         rf"finish it first with `{command} --resume`$"):
        load_checkpoint(str(path), kind="policy", option="sft_ckpt")
    assert load_checkpoint(str(path), finished=False)[2]["step"] == 500  # a run resuming itself
    save_checkpoint(str(path), tiny(0), get_tokenizer("bytes"), {}, step=900)
    assert load_checkpoint(str(path), kind="policy", option="sft_ckpt")[2]["step"] == 900
    with pytest.raises(ValueError, match=r"^--rm_ckpt=\S+ is a policy \(a language model, no scalar head\), not a "
                                         r"reward model$"):
        load_checkpoint(str(path), kind="reward", option="rm_ckpt")
    rm = tmp_path / "rm.pt"
    save_checkpoint(str(rm), GPT(GPTConfig(block_size=16, vocab_size=258, n_layer=1, n_head=2, n_embd=16,
                                           scalar_head=True)), get_tokenizer("bytes"), {}, step=1)
    with pytest.raises(ValueError, match=r"^--sft_ckpt=\S+ is a reward or value model \(it has a scalar head\), not "
                                         r"a policy$"):
        load_checkpoint(str(rm), kind="policy", option="sft_ckpt")
    # a checkpoint that records no command: the script that wrote it, with its directory
    save_checkpoint(str(path), tiny(0), get_tokenizer("bytes"), {}, step=5, finished=False)
    with pytest.raises(ValueError, match=rf"`python train_sft.py --out_dir={path.parent} --resume`"):
        load_checkpoint(str(path))


def test_atomic_write_text(tmp_path, monkeypatch):
    from minirlhf.checkpoint import atomic_write_text
    path = tmp_path / "summary.json"
    atomic_write_text(str(path), "one\n")
    atomic_write_text(str(path), "two\n")
    assert path.read_text() == "two\n" and os.listdir(tmp_path) == ["summary.json"]

    def crash(*args):  # the process dies between writing and renaming
        raise OSError("disk full")
    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        atomic_write_text(str(path), "three\n")
    assert path.read_text() == "two\n" and os.listdir(tmp_path) == ["summary.json"]


def test_stale_temporaries_of_dead_processes_are_removed(tmp_path):
    import subprocess
    import sys

    from minirlhf.checkpoint import remove_stale_temporaries
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    live = subprocess.Popen(["sleep", "60"])  # a process still running (checking it must not signal it)
    dead_pid, live_pid = int(dead.stdout), live.pid
    # this process writes nothing before it cleans up, so a file with its pid is a dead one's (pid reuse)
    names = [f"ckpt.pt.tmp{dead_pid}", f"metrics.jsonl.tmp{dead_pid}", f"summary.json.tmp{os.getpid()}",
             f"ckpt.pt.tmp{live_pid}", "ckpt.pt", "notes.tmp", f"x.tmp{dead_pid}.bak"]
    for name in names:
        (tmp_path / name).write_text("x")
    removed = remove_stale_temporaries(str(tmp_path))
    assert live.poll() is None
    live.kill()
    assert sorted(removed) == sorted(names[:3])
    assert sorted(os.listdir(tmp_path)) == sorted(names[3:])


def test_weights_that_do_not_fit_are_clear_errors(tmp_path):
    from dataclasses import dataclass

    from minirlhf.checkpoint import model_from

    @dataclass
    class Config:  # a script's config: saved as a dict
        lr: float = 0.1
    path = tmp_path / "ckpt.pt"
    save_checkpoint(str(path), tiny(0), get_tokenizer("bytes"), Config(), step=1)
    ckpt = read_checkpoint(str(path))
    assert ckpt["train_config"] == {"lr": 0.1}
    # a language model takes a fresh scalar head (how the reward model starts from SFT)
    assert model_from(ckpt, str(path), scalar_head=True).score_head is not None
    assert load_checkpoint(str(path), scalar_head=True)[0].score_head is not None
    torch.save({**ckpt, "model": {**ckpt["model"], "extra.weight": torch.zeros(1)}}, tmp_path / "extra.pt")
    with pytest.raises(ValueError, match=f"checkpoint {tmp_path / 'extra.pt'}: weights do not fit"):
        load_checkpoint(str(tmp_path / "extra.pt"))
    lost = {**ckpt, "model": {k: v for k, v in ckpt["model"].items() if k != "transformer.h.0.ln_1.bias"}}
    with pytest.raises(ValueError, match=r"missing \['transformer.h.0.ln_1.bias'\], unexpected \[\]"):
        model_from(lost, str(path))
    extra = {**ckpt, "model": {**ckpt["model"], "transformer.h.7.ln_1.bias": torch.zeros(16)}}
    with pytest.raises(ValueError, match=r"missing \[\], unexpected \['transformer.h.7.ln_1.bias'\]"):
        model_from(extra, str(path))
    with pytest.raises(ValueError, match="bad model config: .*n_layers"):
        model_from({**ckpt, "model_config": {**ckpt["model_config"], "n_layers": 3}}, str(path))
    ckpt.pop("total_steps", None)
    torch.save({**ckpt, "finished": False}, path)
    with pytest.raises(ValueError, match=r"stopped at step 1 of \?\)"):
        load_checkpoint(str(path))


@pytest.mark.parametrize("write", ["checkpoint", "text"])
def test_files_are_written_beside_their_destination(tmp_path, monkeypatch, write):
    """The temporary file is in the destination's directory (a rename is atomic only within one file system)."""
    from minirlhf.checkpoint import atomic_write_text
    renames, real_replace = [], os.replace
    monkeypatch.setattr(os, "replace", lambda src, dst: (renames.append((src, dst)), real_replace(src, dst)))
    path = tmp_path / "sub" / "out"
    path.parent.mkdir()
    if write == "checkpoint":
        save_checkpoint(str(path), tiny(0), get_tokenizer("bytes"), {}, step=1)
    else:
        atomic_write_text(str(path), "é\n")
        assert path.read_bytes() == "é\n".encode("utf-8")
    (src, dst), = renames
    assert os.path.dirname(os.path.abspath(src)) == str(path.parent) and dst == str(path)


def test_activation_is_stored_and_older_checkpoints_load_with_gpt2s(tmp_path):
    """A checkpoint keeps its MLP's GELU (exact for models from scratch); one written before the choice existed has no
    entry and was trained with GPT-2's tanh GELU, so it loads with that: its outputs as they were."""
    model, idx = tiny(3), torch.randint(0, 258, (2, 9))
    assert model.config.activation == "gelu"
    for activation in ("gelu", "gelu_tanh"):
        model = GPT(GPTConfig(**{**model.config.__dict__, "activation": activation}))
        path = str(tmp_path / f"{activation}.pt")
        save_checkpoint(path, model, get_tokenizer("bytes"), {}, step=1)
        ckpt = torch.load(path, weights_only=True)
        assert ckpt["model_config"]["activation"] == activation
        if activation == "gelu_tanh":
            del ckpt["model_config"]["activation"]  # as written before the choice
            torch.save(ckpt, path)
        loaded, _, _ = load_checkpoint(path)
        assert loaded.config.activation == activation
        torch.testing.assert_close(loaded(idx), model(idx))
    other = GPT(GPTConfig(**{**model.config.__dict__, "activation": "gelu"}))  # the choice matters
    other.load_state_dict(model.state_dict())
    assert not torch.allclose(other(idx), model(idx))
