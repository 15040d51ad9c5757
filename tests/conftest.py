"""Shared test settings: deterministic, bounded Hypothesis runs and the `gpu` marker."""

import os

import pytest
import torch
from hypothesis import HealthCheck, settings

# Without CUDA the Triton kernels run in Triton's interpreter, which reads this variable when a kernel is
# decorated: set it before any test module (or a library such as transformers) imports triton.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# CI: derandomized and bounded so the suite is deterministic and fast. `HYPOTHESIS_PROFILE=thorough` explores more.
settings.register_profile(
    "ci",
    derandomize=True,
    max_examples=25,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile("thorough", max_examples=500, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(autouse=True)
def one_intra_op_thread():
    """Test tensors are tiny: one intra-op thread avoids thread start-up and contention costs that dominate them
    (two threads on a busy 2-core box spin-wait many times slower). Restored after each test, since recipes
    under test may set their own thread count."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)
