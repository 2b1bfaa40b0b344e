"""Test-session setup shared by every test module."""

import os

# CUDA kernels run in numba's simulator unless the caller asks for the real device
# (NUMBA_ENABLE_CUDASIM=0 on a GPU machine). Must be set before numba is imported.
os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")
