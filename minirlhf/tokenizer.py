"""
Tokenizers on tiktoken, each with an end-of-text token (EOS) and a distinct padding token (PAD): masking the padding
must never mask an EOS, or the policy never learns to stop ("The N+ implementation details of RLHF with PPO").

    get_tokenizer("bytes")            256 byte tokens + <|endoftext|> + <|pad|>; works offline (the default)
    get_tokenizer("gpt2")             tiktoken's GPT-2 BPE (tiktoken downloads it once; needs the network)
    get_tokenizer("path/to/gpt2-dir") GPT-2 BPE from a local Hugging Face directory (vocab.json + merges.txt)
    get_tokenizer("path/to/x.tiktoken") any local tiktoken BPE file
"""
import hashlib

import tiktoken

EOS = "<|endoftext|>"
PAD = "<|pad|>"
# GPT-2's pre-tokenizer split (tiktoken's r50k pattern); also used for local .tiktoken files
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""


class Tokenizer:
    """A tiktoken Encoding plus the ids of EOS and PAD. `name` says where the vocabulary came from."""

    def __init__(self, name, mergeable_ranks, pat_str, eos_id=None):
        n = len(mergeable_ranks)
        self.name = name
        self.eos_id = n if eos_id is None else eos_id
        self.pad_id = max(n, self.eos_id + 1)  # a new token after the vocabulary: never an EOS
        self.encoding = tiktoken.Encoding(name=name, pat_str=pat_str, mergeable_ranks=mergeable_ranks,
                                          special_tokens={EOS: self.eos_id, PAD: self.pad_id})
        self.vocab_size = self.pad_id + 1
        h = hashlib.sha256(pat_str.encode())
        for token, rank in sorted(mergeable_ranks.items(), key=lambda kv: kv[1]):
            h.update(rank.to_bytes(4, "little") + len(token).to_bytes(2, "little") + token)
        h.update(f"{self.eos_id},{self.pad_id}".encode())
        self.fingerprint = h.hexdigest()[:16]

    def encode(self, text):
        """Text -> ids. Special-token strings inside text are encoded as plain text, never as EOS/PAD."""
        return self.encoding.encode(text, disallowed_special=())

    def decode(self, ids, skip_special=True):
        ids = [int(i) for i in ids]
        if skip_special:
            ids = [i for i in ids if i not in (self.eos_id, self.pad_id)]
        return self.encoding.decode(ids)

    def spec(self):
        """What a checkpoint records about its tokenizer."""
        return {"name": self.name, "vocab_size": self.vocab_size, "eos_id": self.eos_id,
                "pad_id": self.pad_id, "fingerprint": self.fingerprint}

    def __repr__(self):
        return f"Tokenizer({self.name!r}, vocab_size={self.vocab_size}, eos={self.eos_id}, pad={self.pad_id})"


def get_tokenizer(name="bytes"):
    """The tokenizer called `name`: "bytes", "gpt2", a local GPT-2 directory, or a .tiktoken file."""
    if name == "bytes":
        return Tokenizer("bytes", {bytes([i]): i for i in range(256)}, GPT2_PATTERN)
    from minirlhf import bpe  # the other vocabularies come from files: only when asked for
    return bpe.load(name)


def check_tokenizer(tokenizer, spec, what):
    """Raise if `tokenizer` is not the one recorded in `spec` (from the checkpoint `what`)."""
    if spec.get("fingerprint") != tokenizer.fingerprint:
        raise ValueError(f"{what} was trained with tokenizer {spec.get('name')!r} (vocab {spec.get('vocab_size')}, "
                         f"fingerprint {spec.get('fingerprint')}) but the tokenizer given is {tokenizer.name!r} "
                         f"(vocab {tokenizer.vocab_size}, fingerprint {tokenizer.fingerprint})")


def tokenizer_from_spec(spec, what="checkpoint"):
    """Rebuild the tokenizer a checkpoint recorded, and check it is the same one."""
    try:
        tok = get_tokenizer(spec["name"])
    except ValueError as e:
        raise ValueError(f"{what}: cannot rebuild its tokenizer {spec['name']!r}: {e}") from e
    check_tokenizer(tok, spec, what)
    return tok
