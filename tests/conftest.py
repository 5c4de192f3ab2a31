# Triton kernels run on the CPU under its interpreter; the variable must be set before triton is imported.
import os

if os.environ.get("PYTEST_XDIST_WORKER"):
    # pytest -n N: N test processes share the cores, so each (and each script it runs) takes one thread;
    # threads that wait for each other on a busy core are slower than one
    os.environ["OMP_NUM_THREADS"] = "1"

import torch  # noqa: E402

if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
from hypothesis import settings  # noqa: E402

# no per-example deadline: interpreted kernels and model forwards are slow and their time varies
settings.register_profile("default", deadline=None, print_blob=True)
settings.load_profile("default")


def pytest_collection_modifyitems(items):
    # the slow tests first (in their order): under pytest -n the quick ones then even out the workers' ends,
    # rather than one long test starting last on one worker while the other waits
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


def pytest_runtest_setup(item):
    # pytest-xdist's --dist loadgroup names a test's group in its id; where it cannot (pytest 9.2 with pytest-xdist
    # 3.8), a group's tests would silently spread over the processes, each building the module's costly fixture
    if (getattr(item.config.option, "loadgroup", False) and item.get_closest_marker("xdist_group")
            and "@" not in item.nodeid):
        pytest.fail(f"pytest-xdist's --dist loadgroup cannot group tests on pytest {pytest.__version__}: install "
                    f"the dev extra's pytest (pip install -e '.[dev]')", pytrace=False)
