"""The splittings' resolvent inverses are computed once per matrix and step, never served stale."""

from __future__ import annotations

import numpy as np
import pytest

import solvers
from solvers import _api
from _solver_helpers import problem

SPLITTINGS = ("peaceman_rachford", "douglas_rachford")


@pytest.fixture
def cache(monkeypatch):
    """The resolvent cache, empty at the start of the test (its entries are the inverses
    computed so far)."""
    monkeypatch.setattr(_api, "_RESOLVENTS", type(_api._RESOLVENTS)())
    return _api._RESOLVENTS


@pytest.mark.parametrize("method", SPLITTINGS)
def test_a_repeated_matrix_is_inverted_once(cache, method):
    A, W = problem("mu", 0.9, True)
    kw = dict(method=method, check=False)
    first = solvers.solve(A, W, atol=1e-12, **kw)
    again = solvers.solve(A.copy(), W, atol=1e-12, **kw)  # equal content, another object
    assert len(cache) == 1
    np.testing.assert_array_equal(again.x, first.x)
    solvers.solve(A, W, alpha=0.5 * first.alpha, atol=1e-12, **kw)  # another step
    solvers.solve(A.astype(np.float32), W.astype(np.float32), atol=1e-5, **kw)  # another dtype
    assert len(cache) == 3


@pytest.mark.parametrize("method", SPLITTINGS)
def test_a_matrix_changed_in_place_gets_a_fresh_inverse(cache, method):
    A, W = problem("mu", 0.5, False)
    A = A.copy()
    kw = dict(method=method, atol=1e-12, check=False)
    before = solvers.solve(A, W, **kw)
    A[0, 1] += 0.01  # the same object, new content
    changed = solvers.solve(A, W, **kw)
    assert len(cache) == 2
    assert changed.success and np.abs(changed.x - before.x).max() > 1e-6
    # Against an uncached reference: the numpy engine with the inverse computed afresh.
    _api._RESOLVENTS.clear()
    reference = solvers.solve(A.copy(), W, engine="numpy", **kw)
    np.testing.assert_allclose(changed.x, reference.x, rtol=0, atol=1e-12)


def test_the_cache_stays_within_its_byte_budget(cache, monkeypatch):
    monkeypatch.setattr(_api, "RESOLVENT_CACHE_BYTES", 3 * 2 * 8 * 8 * 8)  # three entries of n = 8
    A, W = problem("mu", 0.9, True)
    for k in range(6):
        solvers.solve(A, W, method="peaceman_rachford", alpha=0.1 * (k + 1), atol=1e-10, check=False)
    assert len(_api._RESOLVENTS) == 3
    assert [key[2] for key in _api._RESOLVENTS] == pytest.approx([0.4, 0.5, 0.6])


def test_a_hash_collision_is_not_served(cache, monkeypatch):
    """Every matrix hashes alike here: the entry-by-entry comparison must tell them apart."""
    monkeypatch.setattr(_api, "hash", lambda data: 0, raising=False)
    A, W = problem("mu", 0.5, False)
    B = A.copy()
    B[2, 3] -= 0.05
    kw = dict(method="douglas_rachford", atol=1e-12, check=False)
    solvers.solve(A, W, **kw)
    got = solvers.solve(B, W, **kw)
    assert len(cache) == 1  # one key: B's inverse replaced A's
    _api._RESOLVENTS.clear()
    np.testing.assert_allclose(got.x, solvers.solve(B, W, engine="numpy", **kw).x, rtol=0, atol=1e-12)
