"""Fixtures of the solver tests: the engines under test and a seeded generator.

To test another engine (e.g. ``"cuda"`` under ``NUMBA_ENABLE_CUDASIM=1``), add its name to
:data:`ENGINES`; every test that takes the ``engine`` fixture then runs on it, and every
test that takes ``compiled_engine`` compares it against the numpy specification.
"""

from __future__ import annotations

import numpy as np
import pytest

#: Engines every solver test runs on. "numpy" is the specification the others must match.
ENGINES = ("numpy", "numba")
#: Engines compared against the numpy specification.
COMPILED_ENGINES = tuple(e for e in ENGINES if e != "numpy")


@pytest.fixture(params=ENGINES)
def engine(request) -> str:
    return request.param


@pytest.fixture(params=COMPILED_ENGINES)
def compiled_engine(request) -> str:
    return request.param


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(20240611)
