"""
GPT-2 in Hugging Face's format: its weights (any size, gpt2 ... gpt2-xl) from a local directory,
named as GPT-2 names them, for `train_sft.py --init_from=DIR`; minirlhf/export.py writes the other way.
Never touches the network.
"""
import json
import os

import safetensors.torch
import torch
import torch.nn as nn

from minirlhf.model import GPT, GPTConfig

# Hugging Face's GPT-2 stores these as Conv1D weights, (in, out); nn.Linear's are (out, in)
CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


def from_pretrained(path, vocab_size=None, **overrides):
    """GPT-2 weights (any size, gpt2 ... gpt2-xl) from a local Hugging Face directory holding
    config.json and model.safetensors or pytorch_model.bin. Never touches the network.
    vocab_size: at least this many embedding rows; more than the weights have grows the
    embedding (new rows: the mean embedding), e.g. to make room for a pad token; overrides set other
    GPTConfig fields (dropout, attn_impl, scalar_head).
    A reward or value model exported by minirlhf.export names its scalar head in config.json
    ("minirlhf_scalar_head"): it is read back, unless scalar_head=False is asked for."""
    if not os.path.isdir(path):
        raise ValueError(f"from_pretrained: {path!r} is not a directory (expected a Hugging Face GPT-2 directory "
                         "with config.json and model.safetensors or pytorch_model.bin)")
    cfg_path = os.path.join(path, "config.json")
    try:
        with open(cfg_path, encoding="utf-8") as f:
            hf = json.load(f)
        if hf.get("model_type", "gpt2") != "gpt2":
            raise ValueError(f"model_type is {hf['model_type']!r}, not 'gpt2'")
        head = hf.get("minirlhf_scalar_head")  # {"file": "score_head.safetensors", ...}
        if head is not None and not (isinstance(head, dict) and isinstance(head.get("file"), str)
                                     and head["file"] == os.path.basename(head["file"])):
            raise ValueError(f"minirlhf_scalar_head is {head!r}, not {{\"file\": a file name in the directory}}")
        act = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu"}.get(
            hf.get("activation_function", "gelu_new"))
        if act is None:
            raise ValueError(f"activation_function is {hf['activation_function']!r}, not gelu_new or gelu")
        overrides = {"scalar_head": head is not None, "activation": act, **overrides}
        config = GPTConfig(block_size=hf.get("n_positions", hf.get("n_ctx", 1024)), vocab_size=hf["vocab_size"],
                           n_layer=hf["n_layer"], n_head=hf["n_head"], n_embd=hf["n_embd"],
                           layer_norm_epsilon=hf.get("layer_norm_epsilon", 1e-5), **overrides)
    except FileNotFoundError:
        raise ValueError(f"from_pretrained: {cfg_path} does not exist") from None
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise ValueError(f"from_pretrained: {cfg_path} is not a usable GPT-2 config: "
                         f"{type(e).__name__}: {e}") from None
    sd = _read_hf_weights(path)
    model = GPT(config)
    ours = model.state_dict()
    theirs = {}
    for key, w in sd.items():
        key = key.removeprefix("transformer.")
        if key.rsplit(".", 2)[-2:] in (["attn", "bias"], ["attn", "masked_bias"]) or key == "lm_head.weight":
            continue  # causal-mask buffers; lm_head is tied to wte
        key = key if key.startswith("lm_head") else "transformer." + key
        if key.endswith(CONV1D):
            w = w.t()  # Hugging Face's Conv1D stores (in, out); nn.Linear wants (out, in)
        theirs[key] = w
    wanted = {k for k in ours if k != "lm_head.weight" and not k.startswith("score_head")}
    missing, unexpected = sorted(wanted - theirs.keys()), sorted(theirs.keys() - wanted)
    if missing or unexpected:
        raise ValueError(f"from_pretrained: weights in {path} do not match a GPT-2 with {config.n_layer} layers: "
                         f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
                         f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}")
    for key in sorted(wanted):
        if theirs[key].shape != ours[key].shape:
            raise ValueError(f"from_pretrained: {key} in {path} has shape {tuple(theirs[key].shape)}, "
                             f"config.json implies {tuple(ours[key].shape)}")
        with torch.no_grad():
            ours[key].copy_(theirs[key])
    if config.scalar_head and head is not None:
        sd = _read_hf_weights(path, head["file"])
        shapes, want = {k: tuple(v.shape) for k, v in sd.items()}, {"weight": (1, config.n_embd), "bias": (1,)}
        if shapes != want:
            raise ValueError(f"from_pretrained: {os.path.join(path, head['file'])} holds {shapes}, expected {want}")
        with torch.no_grad():
            model.score_head.weight.copy_(sd["weight"])
            model.score_head.bias.copy_(sd["bias"])
    if vocab_size is not None and vocab_size > config.vocab_size:
        resize_vocab(model, vocab_size)
    return model

def resize_vocab(model, vocab_size):
    """Grow the tied embedding to vocab_size rows; new rows start at the mean embedding."""
    old = model.transformer.wte.weight.data
    if vocab_size < old.size(0):
        raise ValueError(f"resize_vocab: cannot shrink the vocabulary from {old.size(0)} to {vocab_size}")
    new = torch.cat([old, old.mean(0, keepdim=True).expand(vocab_size - old.size(0), -1)])
    model.lm_head.weight = nn.Parameter(new)
    model.transformer.wte.weight = model.lm_head.weight
    model.config.vocab_size = vocab_size


def _read_hf_weights(path, name=None):
    """The tensors of model.safetensors, else pytorch_model.bin, in path; with name, of that safetensors file alone."""
    st = os.path.join(path, name or "model.safetensors")
    binf = os.path.join(path, "pytorch_model.bin") if name is None else None  # a named file has no fallback
    if os.path.isfile(st):
        try:
            return safetensors.torch.load_file(st)
        except Exception as e:
            raise ValueError(f"from_pretrained: cannot read {st}: {e}") from None
    if binf is not None and os.path.isfile(binf):
        try:
            sd = torch.load(binf, map_location="cpu", weights_only=True)
        except Exception as e:
            raise ValueError(f"from_pretrained: cannot read {binf} (weights_only=True): {e}") from None
        if not isinstance(sd, dict):
            raise ValueError(f"from_pretrained: {binf} does not hold a state dict")
        return sd
    if binf is None:
        raise ValueError(f"from_pretrained: {st} does not exist")
    raise ValueError(f"from_pretrained: {path} has neither model.safetensors nor pytorch_model.bin")
