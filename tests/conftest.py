# Triton kernels run on the CPU under its interpreter; the variable must be set before triton is imported.
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from hypothesis import settings  # noqa: E402

# no per-example deadline: interpreted kernels and model forwards are slow and their time varies
settings.register_profile("default", deadline=None, print_blob=True)
settings.load_profile("default")
