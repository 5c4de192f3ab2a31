"""
The built-in instruct task (InstructGPT): one-line instructions a tiny byte-level GPT learns in minutes on a CPU,
and stand-ins for InstructGPT's people, so the whole recipe runs without a single human label. A prompt is one
instruction ending in SEP ("\\n"); the completion is the answer alone (the data code appends EOS):

    sort 7 2 9 4      -> 2 4 7 9       reverse bajewu    -> uwejab        upper genad pulat -> GENAD PULAT
    sort 2 1 8 1      -> 1 1 2 8       reverse rob       -> bor           upper ki          -> KI
    add 96 8          -> 104           count u in pupolu -> 2             count z in lukic  -> 0

Sizes fit a 4-layer byte-level GPT: sort 3-5 digits, reverse a word of 3-6 letters, upper 1-2 words, add a digit to a
number below 100, count in a word of 3-8 letters. Prompts are at most 20 bytes, answers 11 (19 with a rambling word).

The stand-ins: gold_score, what the labelers "really want" (the right answer from the prompt text, with partial credit,
so any JSONL in this format can be scored), demonstrate (the demonstrators) and the labelers (tasks/labelers.py).

    python -m minirlhf.tasks --task=instruct --out_dir=data/instruct [--n_sft=20000 --seed=0 ...]  # export JSONL
    python -m minirlhf.tasks --task=instruct --calibrate     # re-derive LABELER_TEMPERATURE
"""
import hashlib
import random
import re
import string
from collections import Counter

NAME = "instruct"
KINDS = ("sort", "reverse", "upper", "add", "count")
SEP = "\n"  # ends every prompt: the model keys on it to start answering

# The demonstrators' two independent failings, a content mistake and a chatty word after the answer: SFT copies them,
# and labelers dislike them (people judge better than they write). Two right answers tie, so the rates keep SFT right
# well under 60% of the time, leaving PPO room to win (experiments/RESULTS.md, "The built-in tasks").
DEMO_ERROR_RATE = 0.3
DEMO_RAMBLE_RATE = 0.6

# reference distribution (labeler calibration, built-in comparisons): K demonstrations at a small SFT model's rates
REFERENCE_RATES = {"error_rate": 0.4, "ramble_rate": DEMO_RAMBLE_RATE}
REFERENCE_K = 4

# Plackett-Luce temperature at which two labelers agree on 73% of reference pairs (python -m minirlhf.tasks --calibrate)
LABELER_TEMPERATURE = 0.144

EVAL_PERCENT, DEV_PERCENT = 10, 5  # shares of the prompt space held out for the reports and for choosing settings
SPLITS = ("train", "dev", "eval")
# what the report shows per kind of prompt: fields of assess() and their formats
REPORT_FIELDS = [("gold", ".3f"), ("exact", ".0%"), ("rambling", ".0%"), ("length", ".1f")]
MISSING_EOS_FACTOR = 0.5  # a response that never ended keeps half its score
ADD_SCALE = 4.0  # add: off by 1 keeps 0.8 of the credit, a lost carry (off by 10) 0.29
COUNT_SCALE = 1.0  # count: off by 1 keeps half
RAMBLE = (" ok", " done", "!", ".", " yes", " i think")  # what a chatty demonstrator tacks on

_CONSONANTS, _VOWELS = "bcdfghjklmnprstvwz", "aeiou"


# prompts --------------------------------------------------------------------------------------


def _word(rng, lo, hi):
    # alternating consonants and vowels: pronounceable, varied, and every byte a lowercase letter
    n = rng.randint(lo, hi)
    first = rng.random() < 0.5
    return "".join(rng.choice(_CONSONANTS if (i % 2 == 0) == first else _VOWELS) for i in range(n))


def make_prompt(rng, kind=None):
    """One prompt of `kind` (a random kind if None), drawn with `rng` (a random.Random)."""
    kind = rng.choice(KINDS) if kind is None else kind
    if kind == "sort":
        text = "sort " + " ".join(str(rng.randint(0, 9)) for _ in range(rng.randint(3, 5)))
    elif kind == "reverse":
        text = "reverse " + _word(rng, 3, 6)
    elif kind == "upper":
        text = "upper " + " ".join(_word(rng, 2, 5) for _ in range(rng.randint(1, 2)))
    elif kind == "add":
        text = f"add {rng.randint(0, 99)} {rng.randint(0, 9)}"
    elif kind == "count":
        word = _word(rng, 3, 8)
        # mostly a letter of the word (answers 1..4); sometimes any letter, so 0 is a possible answer
        letter = rng.choice(word) if rng.random() < 0.75 else rng.choice(string.ascii_lowercase)
        text = f"count {letter} in {word}"
    else:
        raise ValueError(f"unknown task kind {kind!r}; kinds are {', '.join(KINDS)}")
    return text + SEP


def split_of(text):
    """'train', 'dev' or 'eval', decided by a hash of the prompt text: disjoint splits by construction."""
    h = int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big") % 100
    return "eval" if h < EVAL_PERCENT else "dev" if h < EVAL_PERCENT + DEV_PERCENT else "train"


def make_prompts(n, split, rng, weights=None):
    """n prompts of `split`, drawn with `rng` (those of the other split are dropped). weights: {kind: relative
    frequency} (default: uniform), e.g. to over-sample the kinds a policy does worst on (train_ppo.py --rounds)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, not {split!r}")
    kinds, w = check_weights(weights, KINDS)
    out = []
    while len(out) < n:
        p = make_prompt(rng, rng.choices(kinds, w)[0] if weights else None)
        if split_of(p) == split:
            out.append(p)
    return out


def check_weights(weights, kinds):
    """(kinds, weights) of a {kind: weight} dict over known kinds; ValueError otherwise."""
    if not weights:
        return list(kinds), None
    unknown = sorted(set(weights) - set(kinds))
    if unknown or any(w < 0 for w in weights.values()) or sum(weights.values()) <= 0:
        raise ValueError(f"kind weights must be >= 0 over the kinds {', '.join(kinds)}, not all 0; got {weights}")
    return list(kinds), [weights.get(k, 0.0) for k in kinds]


# the right answer, from the prompt text alone -------------------------------------------------

_GRAMMAR = {  # kind: (the pattern of its prompts, the right answer from a match)
    "sort": (re.compile(r"sort((?: -?\d+)+)"), lambda m: " ".join(map(str, sorted(map(int, m[1].split()))))),
    "reverse": (re.compile(r"reverse (\S+)"), lambda m: m[1][::-1]),
    "upper": (re.compile(r"upper (\S(?:[^\n]*\S)?)"), lambda m: m[1].upper()),
    "add": (re.compile(r"add (-?\d+) (-?\d+)"), lambda m: str(int(m[1]) + int(m[2]))),
    "count": (re.compile(r"count (\S) in (\S+)"), lambda m: str(m[2].count(m[1]))),
}


def parse(prompt):
    """(kind, right answer) of a prompt; ValueError if it is not one of the built-in instructions."""
    if not isinstance(prompt, str):
        raise ValueError(f"prompt must be a str, not {type(prompt).__name__}")
    text = prompt.removesuffix(SEP)  # the separator is optional here
    kind = text.split(" ", 1)[0]
    m = _GRAMMAR[kind][0].fullmatch(text) if kind in _GRAMMAR else None
    if m is None:
        raise ValueError(f"not a built-in task prompt: {prompt[:60]!r}; expected one of "
                         "'sort 7 2 9', 'reverse word', 'upper some words', 'add 37 45', 'count a in banana'")
    return kind, _GRAMMAR[kind][1](m)


def answer(prompt):
    """The right completion of a built-in prompt (without EOS)."""
    return parse(prompt)[1]


# gold scorer ----------------------------------------------------------------------------------


def _edit_distance(a, b):
    # Levenshtein distance between two sequences (strings or lists); answers are short, so plain DP
    prev = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        cur = [i]
        for j, y in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (x != y)))
        prev = cur
    return prev[-1]


def _sequence_credit(got, want):
    # half for the right items in any order (multiset overlap), half for the right order (1 - edit distance), both
    # over the longer length: the input copied unchanged keeps the first half; a wrong, missing, doubled or extra
    # item costs about one item's share of both
    longer = max(len(got), len(want))
    kept = sum((Counter(got) & Counter(want)).values()) / longer
    return 0.5 * kept + 0.5 * (1.0 - _edit_distance(got, want) / longer)


def _numeric_score(response, right, scale):
    # the closeness of the first integer x (none scores 0), times the share of the response that is str(x):
    # everything besides the number written canonically (rambling, leading zeros) costs its share
    m = re.search(r"-?\d+", response)
    if m is None:
        return 0.0
    x = int(m.group())
    closeness = 1.0 / (1.0 + abs(x - int(right)) / scale)
    return closeness * len(str(x)) / len(response)


def gold_score(prompt, response, ended):
    """The gold reward in [0, 1] of `response` (the text before EOS) to a built-in `prompt` (text or {"prompt"} record):
    1 exactly for the right answer with EOS (`ended`); a missing EOS multiplies it by MISSING_EOS_FACTOR. Partial
    credit: _sequence_credit over the numbers of sort and the characters of reverse and upper; for add and count,
    _numeric_score, closeness 1 / (1 + |x - right| / scale). ValueError for a prompt that is not built in."""
    kind, right = parse(_text_of(prompt))
    if not isinstance(response, str):
        raise ValueError(f"response must be a str, not {type(response).__name__}")
    if response == "":
        score = 0.0
    elif kind == "sort":
        score = _sequence_credit(response.split(" "), right.split(" "))
    elif kind in ("reverse", "upper"):
        score = _sequence_credit(response, right)
    else:
        score = _numeric_score(response, right, ADD_SCALE if kind == "add" else COUNT_SCALE)
    return score if ended else score * MISSING_EOS_FACTOR


# noisy demonstrator ---------------------------------------------------------------------------


def _pick(rng, s, keep):
    # a random index of s whose character passes `keep`, or None
    idx = [i for i, c in enumerate(s) if keep(c)]
    return rng.choice(idx) if idx else None


def _drop_char(s, prompt_args, rng):
    i = rng.randrange(len(s))
    return s[:i] + s[i + 1:]


def _double_char(s, prompt_args, rng):
    i = rng.randrange(len(s))
    return s[:i + 1] + s[i:]


def _swap_chars(s, prompt_args, rng):
    if len(s) < 2:
        return s
    i = rng.randrange(len(s) - 1)
    return s[:i] + s[i + 1] + s[i] + s[i + 2:]


def _wrong_case(s, prompt_args, rng):
    i = _pick(rng, s, str.isalpha)
    return s if i is None else s[:i] + s[i].swapcase() + s[i + 1:]


def _digit_slip(s, prompt_args, rng):
    # one digit off by one: a units slip, a forgotten carry in add, a miscount
    i = _pick(rng, s, str.isdigit)
    if i is None:
        return s
    d = int(s[i])
    d = d + 1 if d == 0 else d - 1 if d == 9 else d + rng.choice((-1, 1))
    return s[:i] + str(d) + s[i + 1:]


def _swap_tokens(s, prompt_args, rng):
    t = s.split(" ")
    i = rng.randrange(len(t) - 1)
    t[i], t[i + 1] = t[i + 1], t[i]
    return " ".join(t)


def _drop_token(s, prompt_args, rng):
    return " ".join(_drop_char(s.split(" "), prompt_args, rng))  # the same slip on the list of numbers


def _double_token(s, prompt_args, rng):
    return " ".join(_double_char(s.split(" "), prompt_args, rng))


def _copy_input(s, prompt_args, rng):
    # the lazy mistake: the numbers in the order given, the word not reversed
    return prompt_args


def _ramble(s, prompt_args, rng):
    return s + rng.choice(RAMBLE)


_MISTAKES = {  # content mistakes; rambling is a separate habit
    "sort": (_digit_slip, _swap_tokens, _drop_token, _double_token, _copy_input),
    "reverse": (_swap_chars, _drop_char, _double_char, _wrong_case, _copy_input),
    "upper": (_wrong_case, _wrong_case, _drop_char, _double_char, _swap_chars),
    "add": (_digit_slip, _digit_slip, _swap_chars),
    "count": (_digit_slip, _digit_slip),
}


def demonstrate(prompt, rng, error_rate=DEMO_ERROR_RATE, ramble_rate=DEMO_RAMBLE_RATE):
    """A labeler's demonstration for `prompt`: the right answer, with one content mistake (_MISTAKES) at `error_rate`
    and, independently, a chatty word (RAMBLE) at `ramble_rate`. Either always changes the answer, so a share
    1 - (1 - error_rate) * (1 - ramble_rate) of demonstrations scores below 1."""
    for name, rate in (("error_rate", error_rate), ("ramble_rate", ramble_rate)):
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {rate}")
    kind, right = parse(prompt)
    prompt_args = prompt.removesuffix(SEP).split(" ", 1)[1]
    out = right
    if rng.random() < error_rate:
        for _ in range(20):
            wrong = rng.choice(_MISTAKES[kind])(right, prompt_args, rng)
            if wrong and wrong != right:
                out = wrong
                break
        else:  # no mistake of this kind changes this answer (cannot happen for the built-in sizes)
            out = _ramble(right, prompt_args, rng)
    if rng.random() < ramble_rate:
        out = _ramble(out, prompt_args, rng)
    return out


def flawed_replies(prompt, rng):
    """(the right answer, {flaw: the answer with it}): each mistake of the kind and the chatty word, all below it."""
    text = _text_of(prompt)
    kind, right = parse(text)
    prompt_args = text.removesuffix(SEP).split(" ", 1)[1]
    flawed = {m.__name__.lstrip("_").replace("_", " "): m(right, prompt_args, rng) for m in _MISTAKES[kind]}
    flawed["chatty word"] = _ramble(right, prompt_args, rng)
    return right, {flaw: reply for flaw, reply in flawed.items() if reply != right}


def assess(prompt, response, ended):
    """What a report counts about one response: kind, gold, exact, rambling (the right answer + chatty tail), length."""
    kind, right = parse(_text_of(prompt))
    gold = gold_score(prompt, response, ended)
    return {"kind": kind, "gold": gold, "exact": gold == 1.0,
            "rambling": response != right and response.startswith(right), "length": len(response)}


def kind_of(record):
    """The kind of a prompt record ({"prompt": ...}): sort, reverse, upper, add or count."""
    return parse(_text_of(record))[0]


def _text_of(prompt):
    # a prompt's text, from a {"prompt": ...} record or the text itself
    if isinstance(prompt, dict) and "prompt" not in prompt:
        raise ValueError("not a built-in task prompt: a record without a 'prompt' (a chat record?)")
    return prompt["prompt"] if isinstance(prompt, dict) else prompt


# records for the training scripts -------------------------------------------------------------


def prompt_records(n, split, seed=0, weights=None):
    """n records {"prompt": ...} of `split`; weights: {kind: relative frequency} (default: uniform)."""
    return [{"prompt": p} for p in make_prompts(n, split, random.Random(f"prompts:{seed}"), weights)]


def sft_records(n, split, seed=0, error_rate=DEMO_ERROR_RATE, ramble_rate=DEMO_RAMBLE_RATE):
    """n records {"prompt": ..., "completion": ...} of `split`, completions from the noisy demonstrator."""
    rng = random.Random(f"sft:{seed}")
    return [{"prompt": p, "completion": demonstrate(p, rng, error_rate, ramble_rate)}
            for p in make_prompts(n, split, rng)]
