"""
Triton, or a stand-in where it is not installed (macOS, Windows: Triton ships for Linux only).

With the stand-in the kernel modules still import, so their plain-PyTorch *_reference functions,
and the model's CPU path, work everywhere; only calling a Triton op needs the real thing.
"""
try:
    import triton
    import triton.language as tl
    TRITON_AVAILABLE = True
except ImportError:
    TRITON_AVAILABLE = False

    class _Absent:
        """Stands in for triton and triton.language: a decorator hands back the function it
        decorates unchanged, and anything else is this object again. Nothing can run."""

        def __getattr__(self, name):
            return self

        def __call__(self, *args, **kwargs):
            return args[0] if len(args) == 1 and callable(args[0]) and not kwargs else self

    triton = tl = _Absent()


def require_triton(op_name, reference):
    if not TRITON_AVAILABLE:
        raise ValueError(f"{op_name} runs a Triton kernel, and Triton is not installed (it ships for Linux); "
                         f"use {reference} on this machine")
