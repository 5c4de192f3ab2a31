"""
Tokenizers on tiktoken, each with an end-of-text token and a distinct padding token.

Pad must never equal EOS: if it did, masking the padding would also mask every EOS and the
policy would never learn to stop ("The N+ implementation details of RLHF with PPO").

    get_tokenizer("bytes")            256 byte tokens + <|endoftext|> + <|pad|>; works offline (the default)
    get_tokenizer("gpt2")             tiktoken's GPT-2 BPE (tiktoken downloads it once; needs the network)
    get_tokenizer("path/to/gpt2-dir") GPT-2 BPE from a local Hugging Face directory (vocab.json + merges.txt)
    get_tokenizer("path/to/x.tiktoken") any local tiktoken BPE file
"""
import hashlib
import os

import tiktoken
import tiktoken.load

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
        specials = {EOS: self.eos_id, PAD: self.pad_id}
        self.encoding = tiktoken.Encoding(name=name, pat_str=pat_str, mergeable_ranks=mergeable_ranks,
                                          special_tokens=specials)
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
    if name == "gpt2":
        try:
            enc = tiktoken.get_encoding("gpt2")
        except Exception as e:
            raise ValueError(f"tokenizer 'gpt2': tiktoken could not load its GPT-2 vocabulary "
                             f"({type(e).__name__}: {e}); without network access pass a local GPT-2 directory "
                             "holding vocab.json and merges.txt") from e
        return Tokenizer("gpt2", enc._mergeable_ranks, enc._pat_str, eos_id=enc.eot_token)
    if os.path.isdir(name):
        vocab, merges = os.path.join(name, "vocab.json"), os.path.join(name, "merges.txt")
        missing = [p for p in (vocab, merges) if not os.path.isfile(p)]
        if missing:
            raise ValueError(f"tokenizer directory {name!r} has no {', '.join(os.path.basename(p) for p in missing)} "
                             "(a GPT-2 tokenizer directory needs vocab.json and merges.txt)")
        try:
            # the single bytes take their ids from vocab.json (GPT-2's follow its byte table; an exported
            # byte tokenizer has byte b at id b)
            ranks = tiktoken.load.data_gym_to_mergeable_bpe_ranks(merges, vocab, _sha256(merges), _sha256(vocab),
                                                                  clobber_one_byte_tokens=True)
        except Exception as e:
            raise ValueError(f"tokenizer directory {name!r}: cannot read vocab.json/merges.txt as GPT-2 BPE: "
                             f"{e}") from e
        # GPT-2 keeps <|endoftext|> in vocab.json at id 50256; a vocabulary without it gets EOS after its last token
        eos_id = _json_id(vocab, EOS)
        ranks = {t: r for t, r in ranks.items() if r != eos_id}
        return Tokenizer(os.path.abspath(name), ranks, GPT2_PATTERN, eos_id=eos_id)
    if os.path.isfile(name):
        try:
            ranks = tiktoken.load.load_tiktoken_bpe(name, _sha256(name))
        except Exception as e:
            raise ValueError(f"tokenizer file {name!r} is not a tiktoken BPE file (lines of 'base64-token rank'): "
                             f"{e}") from e
        if not ranks:
            raise ValueError(f"tokenizer file {name!r} holds no tokens")
        return Tokenizer(os.path.abspath(name), ranks, GPT2_PATTERN)
    raise ValueError(f"unknown tokenizer {name!r}: use 'bytes', 'gpt2', a local GPT-2 directory "
                     "(vocab.json + merges.txt) or a .tiktoken file")


def _sha256(path):
    # tiktoken caches what it reads by path; passing the content's hash makes an edited file be read again
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def _json_id(path, token):
    import json
    with open(path, encoding="utf-8") as f:
        return json.load(f).get(token)


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
