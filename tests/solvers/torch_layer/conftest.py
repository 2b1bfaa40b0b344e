"""The PyTorch-layer tests run torch on one thread: their tensors are tiny, and on a loaded
machine an OpenMP team of two waits at every barrier for a descheduled thread (a 4 x 5 float64
convolution took 25 ms on two threads and 0.6 ms on one, at load 6.8 on 2 cores)."""

import pytest


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    try:
        import torch
    except ImportError:  # the tests skip themselves
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
