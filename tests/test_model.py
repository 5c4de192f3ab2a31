import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from minirlhf import gpt2
from minirlhf.model import GPT, GPTConfig

SIZES = [dict(n_layer=1, n_head=1, n_embd=16), dict(n_layer=2, n_head=2, n_embd=32),
         dict(n_layer=3, n_head=4, n_embd=64)]
V, PAD, EOS = 61, 60, 59


def make_model(seed=0, block_size=64, **size):
    torch.manual_seed(seed)
    size = size or SIZES[1]
    return GPT(GPTConfig(block_size=block_size, vocab_size=V, attn_impl="torch", **size)).eval()


def left_pad(rows):
    T = max(len(r) for r in rows)
    idx = torch.tensor([[PAD] * (T - len(r)) + r for r in rows])
    return idx, torch.tensor([T - len(r) for r in rows])


@pytest.mark.parametrize("size", SIZES)
@settings(max_examples=8)
@given(data=st.data())
def test_cached_greedy_equals_uncached_greedy(size, data):
    """Greedy decoding with the KV cache picks the same tokens as full forwards, on left-padded batches."""
    model = make_model(seed=data.draw(st.integers(0, 100)), **size)
    rows = data.draw(st.lists(st.lists(st.integers(0, EOS - 1), min_size=1, max_size=9), min_size=1, max_size=4))
    idx, start = left_pad(rows)
    kw = dict(max_new_tokens=data.draw(st.integers(1, 20)), start=start, temperature=0)
    cached, uncached = model.generate(idx, use_cache=True, **kw), model.generate(idx, use_cache=False, **kw)
    assert torch.equal(cached.tokens, uncached.tokens)
    torch.testing.assert_close(cached.logprobs, uncached.logprobs, atol=1e-5, rtol=0)


@settings(max_examples=15)
@given(lengths=st.lists(st.integers(1, 12), min_size=1, max_size=5), seed=st.integers(0, 1000))
def test_left_padded_logits_equal_unpadded(lengths, seed):
    model = make_model(seed)
    g = torch.Generator().manual_seed(seed)
    rows = [torch.randint(0, EOS, (n,), generator=g).tolist() for n in lengths]
    idx, start = left_pad(rows)
    padded = model(idx, start=start)  # (B, T, V)
    for b, row in enumerate(rows):
        alone = model(torch.tensor([row]))[0]  # (n, V)
        torch.testing.assert_close(padded[b, start[b]:], alone, atol=1e-5, rtol=1e-5)


def test_generate_stops_each_row_at_its_first_eos():
    """With eos_id, a row is what it would have sampled without it up to and including its first EOS, then
    pad with mask and log-prob 0; a row that never samples EOS runs to the budget; the loop ends as soon as
    every row has stopped. A stopped row is still sampled (its draw discarded), so every row consumes the
    generator as it would without stopping and the samples can be compared token by token."""
    model = make_model(3)
    idx, start = left_pad([[1, 2, 3], [4], [5, 6, 7, 8, 9], [10, 11]])
    budget = 40
    free = model.generate(idx, budget, start=start, generator=torch.Generator().manual_seed(0))

    def first(token):  # the step at which each row first samples token, None if it never does
        return [row.tolist().index(token) if token in row else None for row in free.tokens]
    # as EOS: a token some rows sample and one row never does, and one that every row samples;
    # both end rows at three or more different steps
    eos_ids = [next(v for v in range(EOS) if len(set(first(v))) >= 3 and (None in first(v)) == some_never)
               for some_never in (True, False)]
    for eos_id in eos_ids:
        stops = first(eos_id)
        out = model.generate(idx, budget, start=start, eos_id=eos_id, pad_id=PAD,
                             generator=torch.Generator().manual_seed(0))
        n = budget if None in stops else max(stops) + 1
        assert out.tokens.shape == out.mask.shape == out.logprobs.shape == (4, n)
        for b, stop in enumerate(stops):
            length = n if stop is None else stop + 1  # the EOS is part of the response
            assert out.tokens[b, :length].tolist() == free.tokens[b, :length].tolist()
            assert (out.tokens[b, length:] == PAD).all()
            assert out.mask[b].tolist() == [True] * length + [False] * (n - length)
            torch.testing.assert_close(out.logprobs[b, :length], free.logprobs[b, :length], atol=1e-6, rtol=0)
            assert (out.logprobs[b, length:] == 0).all() and (out.logprobs[b, :length] < 0).all()


@pytest.mark.parametrize("use_cache", [True, False])
@pytest.mark.parametrize("temperature, top_k, top_p",
                         [(0.7, None, None), (0, None, None), (1.3, 5, None), (1.0, None, 0.5)])
def test_generate_logprobs_match_a_full_forward_at_the_temperature(use_cache, temperature, top_k, top_p):
    """The log-probs that come with the samples are those of the tempered, uncut distribution (temperature 1
    for greedy decoding), as a forward pass over the whole left-padded sequence gives them; greedy picks
    its argmax; top_k and top_p samples lie inside the cut."""
    model = make_model(4)
    idx, start = left_pad([[1, 2, 3, 4], [7, 8], [9]])
    out = model.generate(idx, 6, start=start, temperature=temperature, top_k=top_k, top_p=top_p, use_cache=use_cache,
                         generator=torch.Generator().manual_seed(1))
    logits = model(torch.cat([idx, out.tokens], 1), start=start)[:, idx.size(1) - 1:-1] / (temperature or 1.0)
    expect = torch.log_softmax(logits, -1).gather(-1, out.tokens[..., None]).squeeze(-1)
    torch.testing.assert_close(out.logprobs, expect, atol=1e-5, rtol=1e-5)
    if temperature == 0:
        assert torch.equal(out.tokens, logits.argmax(-1))
    probs = torch.softmax(logits, -1)
    chosen = probs.gather(-1, out.tokens[..., None])  # (B, n, 1)
    if top_k is not None:  # each token among the top_k of its distribution
        assert ((probs > chosen).sum(-1) < top_k).all()
    if top_p is not None:  # each token in the nucleus: the mass of the likelier tokens is below top_p
        assert (torch.where(probs > chosen, probs, 0.0).sum(-1) < top_p).all()


def test_generate_default_temperature_is_one():
    model = make_model(4)
    idx = torch.tensor([[1, 2, 3]])
    default = model.generate(idx, 5, generator=torch.Generator().manual_seed(0))
    explicit = model.generate(idx, 5, temperature=1.0, generator=torch.Generator().manual_seed(0))
    assert torch.equal(default.tokens, explicit.tokens) and torch.equal(default.logprobs, explicit.logprobs)


@pytest.mark.parametrize("temperature, top_k, top_p", [(1.0, None, None), (0.5, None, None), (2.0, None, None),
                                                       (1.0, 4, None), (0.8, None, 0.6), (1.5, 10, 0.9)])
def test_generate_samples_from_the_tempered_cut_distribution(temperature, top_k, top_p):
    """The first tokens of 20000 copies of one prompt are draws from softmax(logits / temperature), cut to
    the top_k tokens, then to the smallest set of most likely tokens whose mass reaches top_p, renormalized."""
    model = make_model(6)
    with torch.no_grad():
        model.lm_head.weight.mul_(5)  # spread-out logits, so that the temperature and the cuts matter
    idx = torch.tensor([[5, 17, 42]]).repeat(20_000, 1)
    out = model.generate(idx, 1, temperature=temperature, top_k=top_k, top_p=top_p,
                         generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        probs = torch.softmax(model(idx[:1])[0, -1].double() / temperature, -1)  # (V,)
    keep = torch.ones(V, dtype=torch.bool)
    if top_k is not None:
        keep &= probs >= probs.topk(top_k).values[-1]
    if top_p is not None:  # the nucleus of what top_k kept, renormalized
        kept = torch.where(keep, probs, 0.0) / probs[keep].sum()
        order = kept.argsort(descending=True)
        mass_before = kept[order].cumsum(0) - kept[order]
        keep[order[mass_before >= top_p]] = False
    expect = torch.where(keep, probs, 0.0)
    expect /= expect.sum()
    freq = torch.bincount(out.tokens[:, 0], minlength=V).double() / len(idx)
    assert (freq[~keep] == 0).all()  # nothing outside the cut
    assert 0.5 * (freq - expect).abs().sum().item() < 0.06  # total variation: sampling noise only
    assert keep.sum() > 1  # the distribution is not a point mass: the frequencies say something


def test_generate_rejects_bad_sampling_settings_and_accepts_the_bounds():
    model = make_model(4, block_size=16)
    idx = torch.zeros(2, 6, dtype=torch.long)
    for bad in [dict(temperature=-0.1), dict(top_p=0.0), dict(top_p=1.01), dict(top_k=0)]:
        with pytest.raises(ValueError, match="bad sampling settings"):
            model.generate(idx, 2, **bad)
    for good in [dict(temperature=0), dict(top_p=1.0), dict(top_p=1e-6), dict(top_k=1)]:
        assert model.generate(idx, 2, **good).tokens.shape == (2, 2)
    assert model.generate(idx, 10, temperature=0).tokens.shape == (2, 10)  # prompt + budget = block_size fits


def test_top_k_1_and_tiny_top_p_are_greedy():
    model = make_model(5)
    idx = torch.randint(0, EOS, (3, 5), generator=torch.Generator().manual_seed(0))
    greedy = model.generate(idx, 8, temperature=0).tokens
    assert torch.equal(model.generate(idx, 8, top_k=1, generator=torch.Generator().manual_seed(1)).tokens, greedy)
    assert torch.equal(model.generate(idx, 8, top_p=1e-6, generator=torch.Generator().manual_seed(2)).tokens, greedy)


def test_scalar_head_and_hidden_states():
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=32, vocab_size=V, n_layer=1, n_head=2, n_embd=32, scalar_head=True))
    idx = torch.randint(0, V, (2, 7))
    h = model.hidden_states(idx)
    assert h.shape == (2, 7, 32)
    torch.testing.assert_close(model(idx), (h @ model.score_head.weight.T).squeeze(-1) + model.score_head.bias)
    torch.testing.assert_close(model(idx, last=3), model(idx)[:, -3:])
    assert model.transformer.wte.weight is model.lm_head.weight  # tied embeddings
    std = model.score_head.weight.std().item()
    assert 0.5 / 33 ** 0.5 < std < 2 / 33 ** 0.5  # N(0, 1/sqrt(n_embd + 1))


def test_forward_with_targets_gives_their_logprobs():
    model = make_model(9)
    idx = torch.randint(0, EOS, (2, 7))
    targets = torch.randint(0, EOS, (2, 4))
    targets[1, 2:] = -100
    logits = model(idx)[:, -4:]
    expect = torch.log_softmax(logits / 0.8, -1).gather(-1, targets.clamp(min=0)[..., None]).squeeze(-1)
    expect = expect.masked_fill(targets == -100, 0.0)
    torch.testing.assert_close(model(idx, last=4, targets=targets, temperature=0.8), expect, atol=1e-5, rtol=1e-5)


def test_too_long_inputs_are_errors():
    model = make_model(block_size=16)
    with pytest.raises(ValueError, match="block_size=16"):
        model(torch.zeros(1, 17, dtype=torch.long))
    with pytest.raises(ValueError, match="max_new_tokens=10 is longer than block_size=16"):
        model.generate(torch.zeros(1, 7, dtype=torch.long), 10)
    with pytest.raises(ValueError, match="pad_id"):
        model.generate(torch.zeros(1, 3, dtype=torch.long), 2, eos_id=EOS)


@pytest.mark.parametrize("bad", [dict(n_embd=30, n_head=4), dict(n_layer=0), dict(attn_impl="cuda"), dict(dropout=1.5),
                                 dict(activation="relu")])
def test_bad_config_is_an_error(bad):
    with pytest.raises(ValueError, match="GPTConfig"):
        GPTConfig(**{**dict(n_layer=1, n_head=2, n_embd=32), **bad})


# --- GPT-2 weights from a Hugging Face layout directory ---

CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


def write_hf_gpt2(model, path, fmt, prefix="transformer."):
    """Write model as a Hugging Face GPT-2 directory: Conv1D weights stored (in, out), causal-mask buffers."""
    c = model.config
    hf_config = dict(model_type="gpt2", n_layer=c.n_layer, n_head=c.n_head, n_embd=c.n_embd, n_positions=c.block_size,
                     vocab_size=c.vocab_size, layer_norm_epsilon=1e-5,
                     activation_function={"gelu_tanh": "gelu_new", "gelu": "gelu"}[c.activation])
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(hf_config))
    sd = {}
    for key, w in model.state_dict().items():
        if key == "lm_head.weight" or key.startswith("score_head."):  # a scalar head has a file of its own
            continue
        key = key.removeprefix("transformer.")
        sd[prefix + key] = (w.t() if key.endswith(CONV1D) else w).contiguous().clone()
    for i in range(c.n_layer):
        sd[f"{prefix}h.{i}.attn.bias"] = torch.tril(torch.ones(1, 1, c.block_size, c.block_size))
    if fmt == "safetensors":
        from safetensors.torch import save_file
        save_file(sd, str(path / "model.safetensors"))
    else:
        sd["lm_head.weight"] = model.lm_head.weight.detach().clone()
        torch.save(sd, path / "pytorch_model.bin")
    return sd


@pytest.mark.parametrize("fmt,prefix", [("safetensors", "transformer."), ("bin", "transformer."), ("bin", "")])
@pytest.mark.parametrize("size", SIZES[1:])
@pytest.mark.parametrize("activation", ["gelu", "gelu_tanh"])
def test_from_pretrained_round_trip(tmp_path, fmt, prefix, size, activation):
    model = make_model(7, **size, activation=activation)
    with torch.no_grad():  # non-zero biases and LayerNorm weights, so a misplaced one shows
        for name, p in model.named_parameters():
            if "ln" in name or name.endswith("bias"):
                p.normal_()
    write_hf_gpt2(model, tmp_path / "gpt2", fmt, prefix)
    loaded = gpt2.from_pretrained(str(tmp_path / "gpt2"), attn_impl="torch").eval()
    assert loaded.config.n_layer == size["n_layer"] and loaded.config.n_embd == size["n_embd"]
    assert loaded.config.activation == activation  # "gelu_new", GPT-2's, is the tanh GELU
    idx = torch.randint(0, V, (2, 11))
    torch.testing.assert_close(loaded(idx), model(idx), atol=1e-5, rtol=1e-5)
    grown = gpt2.from_pretrained(str(tmp_path / "gpt2"), vocab_size=V + 3, attn_impl="torch").eval()
    assert grown.lm_head.weight.shape[0] == V + 3 and grown.transformer.wte.weight is grown.lm_head.weight
    torch.testing.assert_close(grown(idx)[..., :V], model(idx), atol=1e-5, rtol=1e-5)


def test_from_pretrained_bad_inputs(tmp_path):
    with pytest.raises(ValueError, match="not a directory"):
        gpt2.from_pretrained(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="config.json does not exist"):
        gpt2.from_pretrained(str(tmp_path / "empty"))
    model = make_model(8)
    good = tmp_path / "good"
    write_hf_gpt2(model, good, "bin")

    bad = tmp_path / "badjson"
    bad.mkdir()
    (bad / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="not a usable GPT-2 config"):
        gpt2.from_pretrained(str(bad))

    noweights = tmp_path / "noweights"
    noweights.mkdir()
    (noweights / "config.json").write_text((good / "config.json").read_text())
    with pytest.raises(ValueError, match="neither model.safetensors nor pytorch_model.bin"):
        gpt2.from_pretrained(str(noweights))

    truncated = tmp_path / "truncated"
    truncated.mkdir()
    (truncated / "config.json").write_text((good / "config.json").read_text())
    (truncated / "pytorch_model.bin").write_bytes((good / "pytorch_model.bin").read_bytes()[:500])
    with pytest.raises(ValueError, match="cannot read"):
        gpt2.from_pretrained(str(truncated))

    wider = tmp_path / "wider"  # config.json says n_embd=64, the weights are 32 wide
    wider.mkdir()
    cfg = json.loads((good / "config.json").read_text())
    (wider / "config.json").write_text(json.dumps({**cfg, "n_embd": 64}))
    (wider / "pytorch_model.bin").write_bytes((good / "pytorch_model.bin").read_bytes())
    with pytest.raises(ValueError, match="has shape"):
        gpt2.from_pretrained(str(wider))

    deeper = tmp_path / "deeper"  # config.json says 3 layers, the weights have 2
    deeper.mkdir()
    (deeper / "config.json").write_text(json.dumps({**cfg, "n_layer": 3}))
    (deeper / "pytorch_model.bin").write_bytes((good / "pytorch_model.bin").read_bytes())
    with pytest.raises(ValueError, match="missing"):
        gpt2.from_pretrained(str(deeper))


@settings(max_examples=10)
@given(lengths=st.lists(st.integers(1, 12), min_size=1, max_size=4), last=st.integers(1, 12), seed=st.integers(0, 99))
def test_hidden_states_of_the_last_positions_only(lengths, last, seed):
    """Computing only the last positions in the final block changes nothing for those positions."""
    model = make_model(seed)
    g = torch.Generator().manual_seed(seed)
    idx, start = left_pad([torch.randint(0, EOS, (n,), generator=g).tolist() for n in lengths])
    last = min(last, idx.size(1))
    full = model.hidden_states(idx, start)
    part = model.hidden_states(idx, start, last=last)
    assert part.shape == (idx.size(0), last, model.config.n_embd)
    torch.testing.assert_close(part, full[:, -last:], atol=1e-5, rtol=1e-5)


def test_model_works_without_triton():
    """Where Triton is not installed (macOS, Windows) the model's plain-PyTorch path still runs,
    and asking for a kernel is a clear error."""
    import subprocess
    import sys
    code = (
        "import sys; sys.modules['triton'] = None\n"  # makes `import triton` raise ImportError
        "import torch\n"
        "from minirlhf.model import GPT, GPTConfig\n"
        "from kernels.attention import flash_attention\n"
        "m = GPT(GPTConfig(block_size=16, vocab_size=11, n_layer=1, n_head=1, n_embd=16, attn_impl='torch'))\n"
        "out = m.generate(torch.zeros(1, 3, dtype=torch.long), 4, temperature=0)\n"
        "assert out.tokens.shape == (1, 4)\n"
        "q = torch.randn(1, 1, 4, 16)\n"
        "try:\n    flash_attention(q, q, q)\n"
        "except ValueError as e:\n    assert 'Triton is not installed' in str(e), e\n"
        "else:\n    raise AssertionError('no error')\n"
        "print('ok')\n")
    env = {k: v for k, v in __import__("os").environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          cwd=__import__("os").path.dirname(__import__("os").path.dirname(__file__)) or ".")
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


@pytest.mark.parametrize("temperature", [8.0, 16.0])
def test_rollout_logprobs_are_the_training_logprobs_under_autocast(temperature):
    """PPO's old log-probs come from generate, its new ones from a forward with targets. Under 16-bit
    autocast both must come from fp32 logits (the weights' dtype), or the first minibatch's ratio is
    not 1: with logits of size ~30, fp16 logits are off by ~0.01, fp32 ones by ~1e-6."""
    model = make_model(11)
    with torch.no_grad():
        model.lm_head.weight.mul_(60.0)  # large logits, where 16-bit rounding shows (a high temperature
        # keeps the distribution from collapsing onto one token, whose log-prob would be 0 either way)
    idx, start = left_pad([[1, 2, 3, 4], [7, 8]])
    with torch.autocast("cpu", dtype=torch.float16):
        out = model.generate(idx, 5, start=start, temperature=temperature, use_cache=False,
                             generator=torch.Generator().manual_seed(2))
        seq = torch.cat([idx, out.tokens], 1)
        logprobs = model(seq[:, :-1], start, last=out.tokens.size(1), targets=out.tokens, temperature=temperature)
    assert logprobs.dtype == out.logprobs.dtype == torch.float32
    torch.testing.assert_close(out.logprobs, logprobs, atol=1e-4, rtol=0)


def reward_model_dir(tmp_path, fmt="safetensors", head=None, name="score_head.safetensors"):
    """A reward model (a scalar head with a bias) written as minirlhf.export writes one: GPT-2's files, the head's
    weight (1, n_embd) and bias (1,) in their own file, named in config.json under minirlhf_scalar_head."""
    from safetensors.torch import save_file
    torch.manual_seed(11)
    model = GPT(GPTConfig(block_size=32, vocab_size=V, n_layer=2, n_head=2, n_embd=32, attn_impl="torch",
                          scalar_head=True)).eval()
    with torch.no_grad():
        model.score_head.bias.fill_(0.75)
    path = tmp_path / "rm"
    write_hf_gpt2(model, path, fmt)
    cfg = json.loads((path / "config.json").read_text())
    cfg["minirlhf_scalar_head"] = {"file": name, "read_at": "the EOS"} if head is None else head
    (path / "config.json").write_text(json.dumps(cfg))
    save_file({"weight": model.score_head.weight.detach().clone(), "bias": model.score_head.bias.detach().clone()},
              str(path / name))
    return model, path


def test_from_pretrained_reads_a_scalar_head(tmp_path):
    """A directory whose config.json names a scalar head loads as the reward model it was, head included (under any
    file name); scalar_head=False reads the transformer alone, and scalar_head=True on plain GPT-2 adds a new head."""
    from safetensors.torch import save_file
    model, path = reward_model_dir(tmp_path)
    idx = torch.randint(0, V, (3, 9))
    loaded = gpt2.from_pretrained(str(path), attn_impl="torch").eval()
    assert loaded.config.scalar_head and loaded.score_head is not None
    assert torch.equal(loaded.score_head.weight, model.score_head.weight) and loaded.score_head.bias.item() == 0.75
    torch.testing.assert_close(loaded(idx), model(idx), atol=1e-6, rtol=0)  # the scores (B, T)
    other = gpt2.from_pretrained(str(reward_model_dir(tmp_path / "other", name="head.safetensors")[1]),
                                 attn_impl="torch").eval()
    torch.testing.assert_close(other(idx), model(idx), atol=1e-6, rtol=0)
    lm = gpt2.from_pretrained(str(path), attn_impl="torch", scalar_head=False).eval()
    assert not lm.config.scalar_head and lm.score_head is None
    torch.testing.assert_close(lm.hidden_states(idx), model.hidden_states(idx), atol=1e-6, rtol=0)
    plain = tmp_path / "plain"
    write_hf_gpt2(make_model(12, block_size=32), plain, "safetensors")
    fresh = gpt2.from_pretrained(str(plain), attn_impl="torch", scalar_head=True).eval()
    assert fresh.config.scalar_head and fresh(idx).shape == (3, 9)
    torch.testing.assert_close(fresh.hidden_states(idx), make_model(12, block_size=32).hidden_states(idx))

    save_file({"weight": torch.zeros(1, 8), "bias": torch.zeros(1)}, str(path / "score_head.safetensors"))
    with pytest.raises(ValueError) as e:
        gpt2.from_pretrained(str(path))
    assert str(e.value) == (f"from_pretrained: {path / 'score_head.safetensors'} holds {{'bias': (1,), 'weight': "
                            "(1, 8)}, expected {'weight': (1, 32), 'bias': (1,)}")
    save_file({"weight": torch.zeros(1, 32), "bias": torch.zeros(1), "scale": torch.ones(1)},
              str(path / "score_head.safetensors"))
    with pytest.raises(ValueError, match=r"holds \{'bias': \(1,\), 'scale': \(1,\), 'weight': \(1, 32\)\}"):
        gpt2.from_pretrained(str(path))


def test_from_pretrained_scalar_head_errors(tmp_path):
    """A named head file that is missing is an error, even beside pytorch_model.bin (the GPT-2 weights are no
    fallback for it); minirlhf_scalar_head must be {"file": a file name in the directory}."""
    _, path = reward_model_dir(tmp_path, fmt="bin")
    (path / "score_head.safetensors").unlink()
    with pytest.raises(ValueError) as e:
        gpt2.from_pretrained(str(path))
    assert str(e.value) == f"from_pretrained: {path / 'score_head.safetensors'} does not exist"
    cfg = json.loads((path / "config.json").read_text())
    for head in ("score_head.safetensors", {"file": 3}, {"name": "score_head.safetensors"},
                 {"file": "sub/score_head.safetensors"}, {"file": "../score_head.safetensors"}, []):
        (path / "config.json").write_text(json.dumps({**cfg, "minirlhf_scalar_head": head}))
        with pytest.raises(ValueError) as e:
            gpt2.from_pretrained(str(path))
        assert str(e.value) == (f"from_pretrained: {path / 'config.json'} is not a usable GPT-2 config: ValueError: "
                                f"minirlhf_scalar_head is {head!r}, not {{\"file\": a file name in the directory}}")


def test_from_pretrained_reads_the_config_fields(tmp_path):
    """config.json: model_type may be left out but must be gpt2; the block size is n_positions, else n_ctx, else
    1024; layer_norm_epsilon defaults to 1e-5; overrides set the other GPTConfig fields."""
    model = make_model(13, block_size=32)
    path = tmp_path / "gpt2"
    write_hf_gpt2(model, path, "safetensors")
    cfg = json.loads((path / "config.json").read_text())
    idx = torch.randint(0, V, (2, 7))

    def load(**overrides):
        (path / "config.json").write_text(json.dumps(config))
        return gpt2.from_pretrained(str(path), **overrides)

    def error(**overrides):
        with pytest.raises(ValueError) as e:
            load(**overrides)
        return str(e.value)

    usable = f"from_pretrained: {path / 'config.json'} is not a usable GPT-2 config: "
    config = {k: v for k, v in cfg.items() if k != "model_type"}
    loaded = load(attn_impl="torch", dropout=0.25).eval()
    assert loaded.config == GPTConfig(block_size=32, vocab_size=V, n_layer=2, n_head=2, n_embd=32, dropout=0.25,
                                      layer_norm_epsilon=1e-5, attn_impl="torch")
    torch.testing.assert_close(loaded(idx), model(idx), atol=1e-6, rtol=0)
    config = {**cfg, "model_type": "llama"}
    assert error() == usable + "ValueError: model_type is 'llama', not 'gpt2'"
    config = {**{k: v for k, v in cfg.items() if k != "n_positions"}, "n_ctx": 32, "layer_norm_epsilon": 1e-3}
    loaded = load()
    assert loaded.config.block_size == 32 and loaded.config.layer_norm_epsilon == 1e-3
    assert loaded.transformer.ln_f.eps == 1e-3 and loaded.config.attn_impl == "auto"
    config = {k: v for k, v in cfg.items() if k not in ("n_positions", "layer_norm_epsilon")}
    assert error() == (f"from_pretrained: transformer.wpe.weight in {path} has shape (32, 32), config.json implies "
                       "(1024, 32)")  # GPT-2's 1024 positions: these weights have 32
    config = {k: v for k, v in cfg.items() if k != "vocab_size"}
    assert error() == usable + "KeyError: 'vocab_size'"
    config = {**cfg, "n_positions": 0}
    assert error() == usable + "ValueError: GPTConfig.block_size must be a positive integer, got 0"
    (path / "config.json").write_text("[1, 2")
    with pytest.raises(ValueError) as e:
        gpt2.from_pretrained(str(path))
    assert str(e.value).startswith(usable + "JSONDecodeError: ")
    config = {k: v for k, v in cfg.items() if k != "layer_norm_epsilon"}
    assert load().config.layer_norm_epsilon == 1e-5
    with pytest.raises(ValueError) as e:
        gpt2.from_pretrained(str(tmp_path / "nope"))
    assert str(e.value) == (f"from_pretrained: {str(tmp_path / 'nope')!r} is not a directory (expected a Hugging Face "
                            "GPT-2 directory with config.json and model.safetensors or pytorch_model.bin)")


def test_from_pretrained_names_at_most_five_mismatched_weights(tmp_path):
    """Weights that do not match the config are named, missing and unexpected ones sorted, five at most and '...'
    past five; the causal-mask buffers of either name (attn.bias, the older attn.masked_bias) are not weights."""
    model = make_model(14, block_size=32)
    path = tmp_path / "gpt2"
    sd = write_hf_gpt2(model, path, "bin")
    for i in range(model.config.n_layer):
        sd[f"transformer.h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
    torch.save(sd, path / "pytorch_model.bin")
    torch.testing.assert_close(gpt2.from_pretrained(str(path), attn_impl="torch").eval()(torch.tensor([[1, 2, 3]])),
                               model(torch.tensor([[1, 2, 3]])))
    layer1 = sorted(k for k in sd if k.startswith("transformer.h.1.") and not k.endswith("bias") or
                    k.startswith("transformer.h.1.") and k.endswith((".ln_1.bias", ".ln_2.bias")))
    head = f"from_pretrained: weights in {path} do not match a GPT-2 with 2 layers: "
    for n_missing, n_extra in ((6, 0), (5, 0), (0, 6), (0, 5), (1, 1)):
        gone = sorted(layer1)[:n_missing]
        extra = [f"transformer.h.9.x{j}" for j in range(n_extra)]
        torch.save({**{k: v for k, v in sd.items() if k not in gone}, **{k: torch.zeros(1) for k in extra}},
                   path / "pytorch_model.bin")
        with pytest.raises(ValueError) as e:
            gpt2.from_pretrained(str(path))
        assert str(e.value) == (head + f"missing {gone[:5]}{'...' if n_missing > 5 else ''}, "
                                f"unexpected {extra[:5]}{'...' if n_extra > 5 else ''}")
    assert len(layer1) >= 6


def test_from_pretrained_unreadable_weights(tmp_path):
    """Weights that cannot be read are errors naming the file: a truncated safetensors file, a pickle holding more
    than tensors (read with weights_only=True, never run), a pickle that is not a state dict."""
    model = make_model(15, block_size=32)
    path = tmp_path / "gpt2"
    sd = write_hf_gpt2(model, path, "safetensors")
    st_file = path / "model.safetensors"
    st_file.write_bytes(st_file.read_bytes()[:300])
    with pytest.raises(ValueError) as e:
        gpt2.from_pretrained(str(path))
    assert str(e.value).startswith(f"from_pretrained: cannot read {st_file}: ")
    st_file.unlink()
    torch.save({**sd, "extra": Unpicklable()}, path / "pytorch_model.bin")
    with pytest.raises(ValueError) as e:
        gpt2.from_pretrained(str(path))
    assert str(e.value).startswith(f"from_pretrained: cannot read {path / 'pytorch_model.bin'} (weights_only=True): ")
    torch.save(list(sd.values()), path / "pytorch_model.bin")
    with pytest.raises(ValueError) as e:
        gpt2.from_pretrained(str(path))
    assert str(e.value) == f"from_pretrained: {path / 'pytorch_model.bin'} does not hold a state dict"


class Unpicklable:
    """An object that only a full unpickler makes: weights_only=True refuses it."""


def test_resize_vocab_grows_with_mean_rows_and_never_shrinks():
    model = make_model(16)
    old = model.transformer.wte.weight.detach().clone()
    gpt2.resize_vocab(model, V)  # the size it has: nothing changes
    assert torch.equal(model.transformer.wte.weight, old) and model.config.vocab_size == V
    gpt2.resize_vocab(model, V + 2)
    assert model.config.vocab_size == V + 2 and model.lm_head.weight is model.transformer.wte.weight
    assert torch.equal(model.lm_head.weight[:V], old)
    torch.testing.assert_close(model.lm_head.weight[V:], old.mean(0).expand(2, -1))
    assert model(torch.tensor([[1, V + 1]])).shape == (1, 2, V + 2)
    with pytest.raises(ValueError) as e:
        gpt2.resize_vocab(model, 40)  # fewer rows than it has, more than n_embd
    assert str(e.value) == f"resize_vocab: cannot shrink the vocabulary from {V + 2} to 40"
