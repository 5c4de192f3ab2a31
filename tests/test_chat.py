"""python -m minirlhf.chat: the conversation format, fitting the history into the context, streaming, errors."""
import io
import json
import os
import subprocess
import sys

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from minirlhf import chat
from minirlhf.chat import BOT, CONTINUATION, Config, Conversation, Streamer, conversation_mode, fit_history, respond
from minirlhf.checkpoint import save_checkpoint
from minirlhf.config import main as run
from minirlhf.data import encode_prompt
from minirlhf.model import GPT, GPTConfig
from minirlhf.tokenizer import get_tokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROG = "python -m minirlhf.chat"
TOK = get_tokenizer("bytes")


def tiny(seed=0, block_size=128, **kw):
    torch.manual_seed(seed)
    return GPT(GPTConfig(block_size=block_size, vocab_size=TOK.vocab_size, n_layer=1, n_head=2, n_embd=16,
                         attn_impl="torch", **kw)).eval()


def conversation(model=None, system="", max_new_tokens=8, mode="chat", temperature=1.0):
    return Conversation(model or tiny(), TOK, mode, system=system, max_new_tokens=max_new_tokens,
                        temperature=temperature, top_p=1.0, top_k=0, generator=torch.Generator().manual_seed(0),
                        out=io.StringIO())


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    d = tmp_path_factory.mktemp("chat")
    save_checkpoint(str(d / "chat.pt"), tiny(), TOK, train_config={"task": "chat"}, step=0)
    save_checkpoint(str(d / "instruct.pt"), tiny(), TOK, train_config={"task": "instruct"}, step=0)
    save_checkpoint(str(d / "rm.pt"), tiny(scalar_head=True), TOK, train_config={"task": "chat"}, step=0)
    torch.save({"weights": torch.zeros(3)}, d / "other.pt")
    return d


def chat_cli(*args, stdin):
    env = {**os.environ, "PYTHONPATH": ROOT}
    return subprocess.run([sys.executable, "-m", "minirlhf.chat", *args], input=stdin, capture_output=True,
                          text=True, env=env, cwd=ROOT, timeout=120)


def replies(stdout):
    return [line[len(BOT):] for line in stdout.splitlines() if line.startswith(BOT)]


# ----------------------------------------------------------------------------------------------
# the command, end to end


@pytest.mark.slow
def test_piped_chat_gets_one_reply_per_turn(ckpts):
    # an empty line is no turn; nothing after /quit is read
    done = chat_cli(f"--ckpt={ckpts / 'chat.pt'}", "--device=cpu", "--max_new_tokens=12",
                    stdin="reverse bajewu\n\nnow upper it\n/quit\nnever answered\n")
    assert done.returncode == 0, done.stderr
    assert len(replies(done.stdout)) == 2, done.stdout
    assert "(chat mode: the checkpoint was trained on the built-in chat task" in done.stdout
    assert "you> " not in done.stdout  # no prompt when stdin is not a terminal
    assert done.stderr == ""


@pytest.mark.slow
def test_output_cut_short_by_its_reader_is_no_traceback(ckpts):
    """Piped into `head`, which stops reading after a line: the command ends quietly."""
    chat = " ".join([sys.executable, "-m", "minirlhf.chat", f"--ckpt={ckpts / 'chat.pt'}", "--device=cpu",
                     "--max_new_tokens=12"])
    done = subprocess.run(f"yes 'reverse bajewu' | head -n 200 | {chat} | head -n 1", shell=True, capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": ROOT}, cwd=ROOT, timeout=300)
    assert done.stdout.count("\n") == 1 and "Traceback" not in done.stderr and "BrokenPipe" not in done.stderr


def run_main(monkeypatch, capsys, args, stdin):
    """main in this process, with stdin a pipe holding stdin (bytes); (exit status, stdout, stderr)."""
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin)))
    monkeypatch.setattr(sys, "argv", [PROG, *args])
    try:
        run(chat.main, Config, PROG)
        code = 0
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def test_instruct_checkpoint_answers_single_turns(ckpts, monkeypatch, capsys):
    args = [f"--ckpt={ckpts / 'instruct.pt'}", "--device=cpu", "--temperature=0", "--max_new_tokens=6"]
    code, out, err = run_main(monkeypatch, capsys, args, b"reverse bajewu\nupper ki\n/reset\nadd 1 2\n")
    assert code == 0 and err == ""
    assert "(instruct mode: the checkpoint was trained on the built-in instruct task" in out
    assert len(replies(out)) == 3 and "(instruct mode keeps no history)" in out


def test_end_of_piped_input_ends_the_conversation(ckpts, monkeypatch, capsys):
    # no /quit, not even a final newline; a byte that is not UTF-8 is no crash
    code, out, err = run_main(monkeypatch, capsys, [f"--ckpt={ckpts / 'chat.pt'}", "--device=cpu", "--max_new_tokens=4",
                              "--system=Be brief.", "--top_p=0.9", "--top_k=50"], b"caf\xe9")
    assert code == 0 and err == ""
    assert len(replies(out)) == 1


def bad(ckpts):
    cases = [
        ([f"--ckpt={ckpts / 'missing.pt'}"], "does not exist"),
        ([f"--ckpt={ckpts / 'other.pt'}"], "not a minirlhf checkpoint"),
        ([f"--ckpt={ckpts / 'rm.pt'}"], "reward or value model"),
        (["--temperature=-0.5"], "--temperature"),
        (["--temperature=warm"], "--temperature: expected float"),
        (["--top_p=0"], "--top_p"),
        (["--top_p=1.5"], "--top_p"),
        (["--top_k=-1"], "--top_k"),
        (["--max_new_tokens=-3"], "--max_new_tokens"),
        ([f"--ckpt={ckpts / 'chat.pt'}", "--max_new_tokens=128"], "no room for a prompt"),
        (["--mode=poem"], "--mode"),
        ([f"--ckpt={ckpts / 'instruct.pt'}", "--system=Be brief."], "--system needs chat mode"),
        (["--system=two\nlines"], "--system must be one line"),
        (["--device=nowhere"], "--device must be auto, cpu, cuda or cuda:N"),
        (["--colour=red"], "unknown option --colour"),
    ]
    if not torch.cuda.is_available():
        cases.append((["--device=cuda"], "--device=cuda"))
    return cases


def test_bad_inputs_exit_2_with_one_line(ckpts, monkeypatch, capsys):
    for args, message in bad(ckpts):
        code, out, err = run_main(monkeypatch, capsys, [f"--ckpt={ckpts / 'chat.pt'}", *args], b"hi\n")
        assert code == 2, (args, out, err)
        assert out == "" and err.count("\n") == 1 and err.startswith(f"{PROG}: error: "), (args, err)
        assert message in err, (args, err)


def test_help_lists_every_option(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", [PROG, "--help"])
    with pytest.raises(SystemExit) as exit:
        run(chat.main, Config, PROG)
    out = capsys.readouterr().out
    assert exit.value.code == 0
    for name in ("ckpt", "mode", "system", "temperature", "top_p", "top_k", "max_new_tokens", "seed", "device"):
        assert f"--{name}=" in out


# ----------------------------------------------------------------------------------------------
# which format a checkpoint speaks


def test_conversation_mode(tmp_path):
    # what the checkpoint records of its training data decides, whatever its task option says
    assert conversation_mode({"data_format": "chat", "train_config": {"task": "instruct"}})[0] == "chat"
    assert conversation_mode({"data_format": "instruct", "train_config": {"task": "chat"}})[0] == "instruct"
    # checkpoints that record none: their JSONL data first, then their task
    mode = lambda train_config: conversation_mode({"train_config": train_config})[0]  # noqa: E731
    assert mode({"task": "chat", "data": "builtin"}) == "chat" and mode({"task": "instruct"}) == "instruct"
    assert mode({"data": "builtin"}) == "instruct"  # built-in data before tasks were recorded
    (tmp_path / "dialogues.jsonl").write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}]}) + "\n")
    (tmp_path / "prompts.jsonl").write_text(json.dumps({"prompt": "add 1 2\n"}) + "\n")
    assert mode({"task": "instruct", "prompts": f"{tmp_path / 'dialogues.jsonl'},x.jsonl"}) == "chat"
    assert mode({"data": str(tmp_path / "prompts.jsonl")}) == "instruct"
    assert mode({"data": str(tmp_path / "gone.jsonl")}) == "chat"
    m, why = conversation_mode({"train_config": {}})
    assert m == "chat" and "records no task" in why


@pytest.mark.slow
def test_a_model_trained_on_ones_own_dialogues_talks_in_chat_mode(tmp_path):
    """The scripts record the format of the data they trained on: own dialogues (the task option left at
    its default, instruct) give a chat checkpoint, built-in instructions an instruct one."""
    from test_scripts import TINY_MODEL
    from test_scripts import run as run_script
    data = tmp_path / "dialogues.jsonl"
    data.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"hi {i}"},
                                                     {"role": "assistant", "content": "hello"}]}) + "\n"
                            for i in range(4)))
    run_script("train_sft.py", f"--out_dir={tmp_path}/sft", f"--data={data}", f"--eval_data={data}", *TINY_MODEL,
               "--max_iters=1", "--log_interval=1", "--eval_interval=1")
    data.unlink()  # gone since training: the checkpoint itself says what it was trained on
    done = chat_cli(f"--ckpt={tmp_path}/sft/ckpt.pt", "--max_new_tokens=4", stdin="hi\n")
    assert done.returncode == 0 and "(chat mode: the checkpoint was trained on dialogues" in done.stdout


def test_instruct_mode_renders_the_instruction_alone():
    conv = conversation(mode="instruct")
    ids, _ = conv.prompt("reverse bajewu")
    assert TOK.decode(ids) == "reverse bajewu\n"
    respond(conv, "upper ki")
    assert conv.history == [] and conv.prompt("reverse bajewu")[0] == ids  # no history between turns


# ----------------------------------------------------------------------------------------------
# the history


def test_chat_prompt_holds_the_history_and_reset_empties_it():
    conv = conversation(system="Be brief.")
    assert respond(conv, "hi") and respond(conv, "  again  ")
    assert [m["role"] for m in conv.history] == ["user", "assistant", "user", "assistant"]
    assert conv.history[2]["content"] == "again"
    turn = [{"role": "user", "content": "x"}]
    ids, dropped = conv.prompt("x")
    assert dropped == 0 and ids == encode_prompt(TOK, {"messages": [{"role": "system", "content": "Be brief."}]
                                                       + conv.history + turn})
    assert respond(conv, "/reset")
    assert conv.history == []
    assert conv.prompt("x")[0] == encode_prompt(TOK, {"messages": [{"role": "system", "content": "Be brief."}] + turn})
    assert "(history cleared)" in conv.out.getvalue()
    assert respond(conv, "   ") and conv.history == []  # an empty line is no turn
    assert respond(conv, "/quit") is False


def test_a_full_context_drops_the_oldest_exchange_and_says_so():
    conv = conversation(model=tiny(block_size=64), max_new_tokens=8, temperature=0)
    for i in range(6):
        respond(conv, f"turn number {i}")
        assert len(conv.prompt("next one")[0]) + 8 <= 64
    out = conv.out.getvalue()
    assert "(context full: dropped the oldest exchange)" in out and "(error" not in out
    assert out.count(BOT) == 6
    assert conv.history[-2]["content"] == "turn number 5"
    assert conv.history[0]["content"] != "turn number 0"


def test_every_prompt_leaves_room_for_the_reply():
    conv = conversation(model=tiny(block_size=64), max_new_tokens=8)
    conv.history = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello there"}]
    fitted = 0
    for n in range(1, 64):
        try:
            ids, _ = conv.prompt("x" * n)
        except ValueError:
            continue
        fitted += 1
        assert len(ids) + 8 <= 64
    assert fitted > 30


def test_a_turn_too_long_for_the_context_is_an_error_line_and_the_conversation_goes_on():
    conv = conversation(model=tiny(block_size=64), max_new_tokens=8)
    assert respond(conv, "x" * 60)
    assert "(error: this turn is" in conv.out.getvalue() and conv.history == []
    assert respond(conv, "short") and len(conv.history) == 2


def message(role):
    return st.builds(lambda text: {"role": role, "content": text}, st.text(min_size=1, max_size=30))


@settings(max_examples=200)
@given(system=st.none() | message("system"), exchanges=st.lists(st.tuples(message("user"), message("assistant")),
       max_size=8), turn=message("user"), budget=st.integers(0, 400))
def test_fit_history_drops_the_oldest_exchanges_first(system, exchanges, turn, budget):
    head = [system] if system else []
    history = [m for pair in exchanges for m in pair]
    messages = head + history + [turn]

    def length(ms):
        return len(encode_prompt(TOK, {"messages": ms}))
    if length(head + [turn]) > budget:
        with pytest.raises(ValueError, match="this turn is"):
            fit_history(messages, TOK, budget)
        return
    kept, dropped = fit_history(messages, TOK, budget)
    assert kept == head + history[2 * dropped:] + [turn]  # system first, newest turn last, oldest exchanges gone
    assert length(kept) <= budget
    if dropped:  # no more than needed: one exchange fewer dropped would not fit
        assert length(head + history[2 * (dropped - 1):] + [turn]) > budget


# ----------------------------------------------------------------------------------------------
# streaming


def stream_ids(ids):
    out = io.StringIO()
    s = Streamer(TOK, out)
    for t in ids:
        s(torch.tensor([t]))
    s.finish()
    return s, out.getvalue()


def test_a_character_split_over_tokens_prints_whole():
    ids = TOK.encode("café ☃")  # é is two bytes, ☃ three: each a byte token of its own
    assert len(ids) == len("café ☃".encode())
    out = io.StringIO()
    s = Streamer(TOK, out)
    printed = []
    for t in ids:
        s(torch.tensor([t]))
        printed.append(out.getvalue())
    s.finish()
    assert printed[3] == "caf" and printed[4] == "café"  # nothing printed for half a character
    assert out.getvalue() == s.text == "café ☃"


@settings(max_examples=200)
@given(data=st.binary(max_size=40) | st.text(max_size=20).map(str.encode))
def test_streamed_text_is_the_decoded_reply(data):
    ids = list(data) + [TOK.eos_id, TOK.pad_id]  # invalid UTF-8 too: U+FFFD where decode puts it
    s, printed = stream_ids(ids)
    assert s.text == TOK.decode(ids)
    assert printed == TOK.decode(ids).replace("\n", CONTINUATION)


def test_generate_calls_on_token_once_per_step_after_eos_masking():
    model = tiny(3)
    with torch.no_grad():  # EOS's logit +4 everywhere: rows stop, at different steps
        model.transformer.ln_f.bias.fill_(0.25)  # a unit vector added to every final hidden state
        model.lm_head.weight[TOK.eos_id] += 4 * model.transformer.ln_f.bias
    idx = torch.tensor([[1, 2, 3], [4, 5, 6]])
    seen = []
    gen = model.generate(idx, 30, eos_id=TOK.eos_id, pad_id=TOK.pad_id, generator=torch.Generator().manual_seed(0),
                         on_token=lambda tok: seen.append(tok.clone()))
    assert torch.equal(torch.stack(seen, 1), gen.tokens)
    assert (gen.tokens == TOK.pad_id).any()  # a row stopped before the other: padding went through on_token


def test_the_printed_reply_is_the_sampled_reply():
    conv = conversation(max_new_tokens=40)
    ids, _ = conv.prompt("hello")
    text = conv.reply("hello")
    again = conv.model.generate(torch.tensor([ids]), 40, eos_id=TOK.eos_id, pad_id=TOK.pad_id,
                                generator=torch.Generator().manual_seed(0))  # the same sample, not streamed
    assert text == TOK.decode(again.tokens[0][again.mask[0]].tolist())
    assert conv.out.getvalue().startswith(BOT + text.replace("\n", CONTINUATION) + "\n")
    assert conv.history[-1] == {"role": "assistant", "content": text}
