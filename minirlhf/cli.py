"""
Command lines for the training scripts: one dataclass per script, each field followed by its
docstring (as in cleanrl), overridden with --key=value. Unknown keys and values of the wrong type
are errors, never ignored; --help prints every field with its type, default and docstring.
"""
import ast
import inspect
import sys
import textwrap
import types
import typing
from contextlib import nullcontext
from dataclasses import asdict, fields

import torch

_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def field_docs(cls):
    """{field name: the docstring written under it} from the dataclass's source."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body, docs = tree.body[0].body, {}
    for stmt, nxt in zip(body, body[1:]):
        if (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name) and isinstance(nxt, ast.Expr)
                and isinstance(nxt.value, ast.Constant) and isinstance(nxt.value.value, str)):
            docs[stmt.target.id] = " ".join(nxt.value.value.split())
    return docs


def _convert(name, text, tp):
    """text -> a value of type tp (int, float, str, bool or Optional of one)."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if text.lower() == "none":
            return None
        return _convert(name, text, args[0])
    if tp is bool:
        if text.lower() in _TRUE:
            return True
        if text.lower() in _FALSE:
            return False
        raise ValueError(f"--{name}: expected true or false, got {text!r}")
    try:
        return tp(text)
    except ValueError:
        raise ValueError(f"--{name}: expected {tp.__name__}, got {text!r}") from None


def _type_name(tp):
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(tp))
    return "None" if tp is type(None) else tp.__name__


def usage(cls, prog):
    hints, docs = typing.get_type_hints(cls), field_docs(cls)
    lines = [f"usage: python {prog} [--key=value ...]", ""]
    doc = inspect.getdoc(cls)
    if doc:
        lines += [doc, ""]
    for f in fields(cls):
        lines.append(f"  --{f.name}={f.default!r}  ({_type_name(hints[f.name])})")
        if f.name in docs:
            lines += textwrap.wrap(docs[f.name], 96, initial_indent="      ", subsequent_indent="      ")
    return "\n".join(lines)


def parse_config(cls, argv=None, prog="script.py"):
    """An instance of dataclass cls with --key=value overrides from argv applied (ValueError on bad input)."""
    argv = sys.argv[1:] if argv is None else argv
    hints, names = typing.get_type_hints(cls), {f.name for f in fields(cls)}
    overrides = {}
    for arg in argv:
        if arg in ("-h", "--help"):
            print(usage(cls, prog))
            sys.exit(0)
        if not arg.startswith("--"):
            raise ValueError(f"argument {arg!r}: options are written --key=value (see --help)")
        key, eq, text = arg[2:].partition("=")
        key = key.replace("-", "_")
        if key not in names:
            raise ValueError(f"unknown option --{key} (see --help for the {len(names)} options)")
        if not eq:
            if hints[key] is not bool:
                raise ValueError(f"--{key} needs a value: --{key}=...")
            text = "true"
        overrides[key] = _convert(key, text, hints[key])
    return cls(**overrides)


def print_config(cfg):
    width = max(len(k) for k in asdict(cfg))
    for k, v in asdict(cfg).items():
        print(f"  {k:<{width}} = {v!r}")


def check_at_least_one(cfg, *names):
    """A ValueError naming the option if any of these fields of cfg is below 1."""
    for name in names:
        if getattr(cfg, name) < 1:
            raise ValueError(f"--{name} must be at least 1, got {getattr(cfg, name)}")


def setup_device(cfg):
    """(device, autocast) from cfg.device and cfg.threads: auto picks cuda when there is one; on CUDA
    the models run under bf16 autocast, elsewhere in fp32."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = cfg.device if cfg.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.startswith("cuda") else nullcontext()
    return device, autocast


def run(main, cls, prog):
    """Parse cls from the command line and call main(cfg); a ValueError is a user error: one
    line on stderr and exit status 2, no traceback."""
    try:
        main(parse_config(cls, prog=prog))
    except ValueError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        sys.exit(2)
