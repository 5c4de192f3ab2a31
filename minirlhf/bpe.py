"""
Vocabularies from files (get_tokenizer comes here for any name but "bytes"): tiktoken's GPT-2 BPE (which
tiktoken downloads once), a local Hugging Face GPT-2 directory (vocab.json + merges.txt), a .tiktoken file.
"""
import hashlib
import json
import os

import tiktoken
import tiktoken.load

from minirlhf.tokenizer import EOS, GPT2_PATTERN, Tokenizer


def load(name):
    """The tokenizer of "gpt2", a GPT-2 directory or a .tiktoken file."""
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
            # single bytes take their ids from vocab.json (GPT-2's byte table; an exported byte tokenizer's b at id b)
            ranks = tiktoken.load.data_gym_to_mergeable_bpe_ranks(merges, vocab, _sha256(merges), _sha256(vocab),
                                                                  clobber_one_byte_tokens=True)
        except Exception as e:
            raise ValueError(f"tokenizer directory {name!r}: cannot read vocab.json/merges.txt as GPT-2 BPE: "
                             f"{e}") from e
        # GPT-2 keeps <|endoftext|> in vocab.json at id 50256; a vocabulary without it gets EOS after its last token
        with open(vocab, encoding="utf-8") as f:
            eos_id = json.load(f).get(EOS)
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
