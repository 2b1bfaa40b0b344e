"""The compiled checks ``solve`` runs on its arguments (``contraction.matrix_facts``, ``contraction.all_finite``)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import contraction
from contraction import all_finite, matrix_facts


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 60), dtype=st.sampled_from([np.float64, np.float32]),
       scale=st.sampled_from([1e-3, 1.0, 1e3]))
def test_matrix_facts_match_numpy(seed, n, dtype, scale):
    A = (scale * np.random.default_rng(seed).standard_normal((n, n))).astype(dtype)
    finite, a_min, mu = matrix_facts(A)
    assert finite is True
    assert a_min == float(A.diagonal().min())
    A64 = A.astype(np.float64)
    assert mu == pytest.approx(contraction.mu_inf(A64), rel=1e-12, abs=1e-300)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_non_finite_entries_are_found_anywhere(bad, dtype):
    rng = np.random.default_rng(1)
    for _ in range(20):
        A = rng.standard_normal((17, 17)).astype(dtype)
        i, j = rng.integers(0, 17, 2)
        A[i, j] = bad
        assert matrix_facts(A)[0] is False
        flat = A.reshape(-1)
        assert not all_finite(flat)
        assert all_finite(np.delete(flat, i * 17 + j))


def test_all_finite_of_finite_arrays():
    assert all_finite(np.zeros(0))
    assert all_finite(np.array([np.finfo(np.float64).max, -np.finfo(np.float64).max, 5e-324]))
    assert all_finite(np.array([np.finfo(np.float32).max], dtype=np.float32))
