"""
Export a minirlhf checkpoint as a Hugging Face GPT-2 directory.

    python -m minirlhf.export --ckpt=out/sft/ckpt.pt --out_dir=out/sft-hf
    python -m minirlhf.export --ckpt=out/rm/ckpt.pt --out_dir=out/rm-hf --overwrite

What out_dir holds (transformers' GPT2LMHeadModel.from_pretrained and AutoTokenizer.from_pretrained
read it; so does gpt2.from_pretrained):
- config.json: GPT-2's config for exactly this architecture (biases, GELU: "gelu" exact or GPT-2's tanh "gelu_new",
  attention scaled by 1/sqrt(head size) and nothing else, tied embeddings, no attention dropout);
  vocab_size counts the pad token's row.
- model.safetensors: the weights under GPT-2's names ("transformer.h.0.attn.c_attn.weight", ...),
  the Conv1D matrices stored (in, out), the transpose of our nn.Linear's (out, in); lm_head is
  tied to wte and not stored (with the safetensors package, whose format transformers reads).
- vocab.json + merges.txt: the tokenizer as byte-level GPT-2 BPE, ids = our ids; <|endoftext|> in
  vocab.json, <|pad|> an added special token after it (tokenizer_config.json,
  special_tokens_map.json). split_special_tokens is on because our tokenizer encodes those strings
  inside text as plain text, never as the special tokens.
  The byte tokenizer is GPT-2 BPE with no merges: vocab.json maps byte b (spelled in GPT-2's
  byte-to-character table) to id b, merges.txt lists no merges, and Hugging Face encodes to our ids.
  get_tokenizer reads it back as the same tokenizer (the same fingerprint), as it does GPT-2
  tokenizers ("gpt2", a GPT-2 directory).
  merges.txt is recovered from the token ranks: each token of two or more bytes is the pair that
  BPE on its own bytes joins last.
- a reward or value model (scalar_head=True) also has score_head.safetensors, weight (1, n_embd)
  and bias (1,), named in config.json under "minirlhf_scalar_head": the score of a sequence is
  weight @ h + bias, h the final hidden state (after ln_f, transformers' GPT2Model output) at the
  last token: the EOS after prompt + response. gpt2.from_pretrained puts the head back.
Our model counts positions from each row's first real token; with transformers, give a left-padded
batch its attention_mask and position_ids counted the same way (unpadded rows need neither).

out_dir is written as out_dir.tmp<pid> and renamed when complete, so a crash never leaves a
directory that looks like a finished export.
"""
import json
import os
import shutil
from dataclasses import dataclass

from safetensors.torch import save_file

from minirlhf import config
from minirlhf.checkpoint import load_checkpoint
from minirlhf.gpt2 import CONV1D
from minirlhf.tokenizer import EOS, PAD

SCALAR_HEAD_FILE = "score_head.safetensors"


@dataclass
class Config:
    """Write a minirlhf checkpoint as a Hugging Face GPT-2 directory (config, safetensors weights, tokenizer)."""
    ckpt: str = ""
    """the checkpoint to export (ckpt.pt of train_sft.py, train_rm.py or train_ppo.py)"""
    out_dir: str = ""
    """the directory to write; it must not exist or be empty, unless --overwrite"""
    overwrite: bool = False
    """replace an existing out_dir: everything in it is deleted"""

    def __post_init__(self):
        for name in ("ckpt", "out_dir"):
            if not getattr(self, name):
                raise ValueError(f"--{name} is required (see --help)")


def hf_weights(model):
    """{GPT-2 name: tensor} of model's transformer, named as GPT2LMHeadModel names them (our names:
    "transformer.wte.weight", ...); Conv1D matrices as (in, out); no lm_head (tied to wte)."""
    out = {}
    for key, w in model.state_dict().items():
        if key.startswith(("lm_head.", "score_head.")):
            continue
        out[key] = (w.t() if key.endswith(CONV1D) else w).contiguous()
    return out


def hf_config(model, tokenizer):
    """config.json for transformers' GPT2LMHeadModel with exactly model's architecture."""
    c = model.config
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": c.vocab_size,
        "n_positions": c.block_size,
        "n_ctx": c.block_size,
        "n_embd": c.n_embd,
        "n_layer": c.n_layer,
        "n_head": c.n_head,
        "n_inner": None,  # 4 * n_embd
        "activation_function": "gelu_new" if c.activation == "gelu_tanh" else "gelu",  # GPT-2's tanh GELU, or exact
        "layer_norm_epsilon": c.layer_norm_epsilon,
        # our dropout sits where GPT-2's embedding and residual dropout do; there is none on attention
        "embd_pdrop": c.dropout,
        "resid_pdrop": c.dropout,
        "attn_pdrop": 0.0,
        "initializer_range": 0.02,
        "scale_attn_weights": True,  # 1/sqrt(head size), nothing more
        "scale_attn_by_inverse_layer_idx": False,
        "reorder_and_upcast_attn": False,
        "tie_word_embeddings": True,
        "bos_token_id": tokenizer.eos_id,  # GPT-2 starts and ends text with <|endoftext|>
        "eos_token_id": tokenizer.eos_id,
        "pad_token_id": tokenizer.pad_id,
        "torch_dtype": str(model.lm_head.weight.dtype).removeprefix("torch."),
        "use_cache": True,
    }


def gpt2_byte_table():
    """GPT-2's byte -> character table: vocab.json and merges.txt spell every byte as one printable
    character (printable Latin-1 as itself, the others as chr(256 + n) in byte order)."""
    printable = [b for b in range(256) if chr(b).isprintable() and chr(b) != " "]
    table = {b: chr(b) for b in printable}
    table.update({b: chr(256 + n) for n, b in enumerate(b for b in range(256) if b not in printable)})
    return table


def bpe_merges(ranks):
    """The merge (left, right) that makes each token of two or more bytes, in rank order: the last
    step of BPE on the token's own bytes (tiktoken's: join the adjacent pair whose join has the
    lowest rank, until none is a token). With these merges, Hugging Face's pair-by-pair BPE encodes
    as tiktoken does; a vocabulary built by BPE training (GPT-2's) gives back its own merges."""
    merges = []
    for token, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
        if len(token) == 1:
            continue
        parts, last = [token[i:i + 1] for i in range(len(token))], None
        while True:
            pairs = [(ranks[a + b], i) for i, (a, b) in enumerate(zip(parts, parts[1:])) if a + b in ranks]
            if not pairs:
                break
            i = min(pairs)[1]
            last, parts[i:i + 2] = (parts[i], parts[i + 1]), [parts[i] + parts[i + 1]]
        if parts != [token]:
            raise ValueError(f"tokenizer: BPE never makes token {token!r} (rank {rank}) from its bytes; "
                             "the vocabulary cannot be written as GPT-2 BPE merges")
        merges.append(last)
    return merges


def tokenizer_files(tokenizer, block_size):
    """{file name: text} of the tokenizer as a Hugging Face GPT-2 tokenizer with our ids."""
    ranks = tokenizer.encoding._mergeable_ranks
    singles = sorted(r for t, r in ranks.items() if len(t) == 1)
    if singles != list(range(256)) or sorted(ranks.values()) != list(range(len(ranks))):
        raise ValueError(f"tokenizer {tokenizer.name!r}: not byte-level BPE (the 256 bytes at ids 0-255, merged tokens "
                         "after them, no gaps); it cannot be written as a GPT-2 tokenizer")
    table = gpt2_byte_table()

    def spell(token):
        return "".join(table[b] for b in token)
    vocab = {spell(t): r for t, r in sorted(ranks.items(), key=lambda kv: kv[1])}
    vocab[EOS] = tokenizer.eos_id  # GPT-2 keeps <|endoftext|> in vocab.json
    if len(set(vocab.values())) != len(vocab) or tokenizer.pad_id in vocab.values():
        raise ValueError(f"tokenizer {tokenizer.name!r}: EOS {tokenizer.eos_id} or PAD {tokenizer.pad_id} is also "
                         "a token's id")
    merges = "#version: 0.2\n" + "".join(f"{spell(a)} {spell(b)}\n" for a, b in bpe_merges(ranks))

    def special(content, normalized):
        return {"content": content, "lstrip": False, "normalized": normalized, "rstrip": False,
                "single_word": False, "special": True}
    specials = {"bos_token": EOS, "eos_token": EOS, "unk_token": EOS, "pad_token": PAD}
    tokenizer_config = {
        "tokenizer_class": "GPT2Tokenizer",
        "add_bos_token": False,
        "add_prefix_space": False,
        "added_tokens_decoder": {str(tokenizer.eos_id): special(EOS, True), str(tokenizer.pad_id): special(PAD, False)},
        "clean_up_tokenization_spaces": False,
        "errors": "replace",
        "model_max_length": block_size,
        "split_special_tokens": True,  # "<|endoftext|>" inside text is text, as our encode() has it
        **specials,
    }
    return {
        "vocab.json": json.dumps(vocab, ensure_ascii=False),
        "merges.txt": merges,
        "tokenizer_config.json": json.dumps(tokenizer_config, indent=2),
        "special_tokens_map.json": json.dumps(specials, indent=2),
    }


def export(ckpt_path, out_dir, overwrite=False):
    """Write the checkpoint at ckpt_path as a Hugging Face GPT-2 directory out_dir; returns its file names."""
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise ValueError(f"--out_dir={out_dir} is a file, not a directory")
    if os.path.isdir(out_dir) and os.listdir(out_dir) and not overwrite:
        raise ValueError(f"--out_dir={out_dir} exists and is not empty (--overwrite replaces it)")
    model, tokenizer, _ = load_checkpoint(ckpt_path, finished=False)  # its other entries are not exported
    if not model.config.bias:
        raise ValueError(f"checkpoint {ckpt_path}: a model with bias=False has no GPT-2 equivalent (GPT-2 has biases)")
    config = hf_config(model, tokenizer)
    files = tokenizer_files(tokenizer, model.config.block_size)
    if model.score_head is not None:
        config["minirlhf_scalar_head"] = {
            "file": SCALAR_HEAD_FILE,
            "read_at": "the last token (EOS) of prompt + response",
            "score": "weight @ h + bias, h the final hidden state (after ln_f) at that token",
        }

    out_dir = os.path.abspath(out_dir)
    os.makedirs(os.path.dirname(out_dir), exist_ok=True)
    tmp, old = f"{out_dir}.tmp{os.getpid()}", f"{out_dir}.old{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        os.makedirs(tmp)
        save_file(hf_weights(model), os.path.join(tmp, "model.safetensors"), metadata={"format": "pt"})
        if model.score_head is not None:
            head = model.score_head
            save_file({"weight": head.weight.detach().contiguous(), "bias": head.bias.detach().contiguous()},
                      os.path.join(tmp, SCALAR_HEAD_FILE), metadata={"format": "pt"})
        files["config.json"] = json.dumps(config, indent=2)
        for name, text in files.items():
            with open(os.path.join(tmp, name), "w", encoding="utf-8") as f:
                f.write(text)
        for name in os.listdir(tmp):  # on disk before the rename makes the directory the export
            fd = os.open(os.path.join(tmp, name), os.O_RDONLY)
            os.fsync(fd)
            os.close(fd)
        if os.path.exists(out_dir):  # empty, or --overwrite: moved aside, so out_dir is never half old, half new
            os.replace(out_dir, old)
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if os.path.exists(old) and not os.path.exists(out_dir):
            os.replace(old, out_dir)  # the previous directory back where it was
        raise
    shutil.rmtree(old, ignore_errors=True)
    return sorted(os.listdir(out_dir))


def main(cfg):
    names = export(cfg.ckpt, cfg.out_dir, cfg.overwrite)
    print(f"exported {cfg.ckpt} to {cfg.out_dir}: {', '.join(names)}")


if __name__ == "__main__":
    config.main(main, Config, "-m minirlhf.export")
