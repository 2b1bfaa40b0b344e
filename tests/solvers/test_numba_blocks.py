"""The numba engine's thread blocks: splitting the active rows must not change any result.

The engine splits the still-active samples into one block of rows per thread. These tests
force several blocks (the block count follows ``blocks.thread_count``, patched here,
so they run the same on a one-core machine), run one after the other or by the parallel driver on batches whose samples finish at different
iterations, so that rows move between blocks as finished samples are compacted away, and
compare every output with the numpy specification.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

import contraction
import solvers
from solvers import Status
from solvers._engines import blocks as engine_blocks
from solvers._engines import numba_engine

BATCH = 70  # with 3 threads: blocks of 23/23/24 rows, fewer as samples finish


def _instance(seed: int = 5, n: int = 12, self_loops: bool = True):
    rng = np.random.default_rng(seed)
    A = contraction.project_mu_inf(rng.standard_normal((n, n)) / np.sqrt(n), 0.8)
    if self_loops:  # negative self-loops: alpha* < 1 (picard is not guaranteed then)
        A[np.diag_indices(n)] -= rng.uniform(0.0, 2.0, n)
    # Row scales from 1e-6 to 10: the samples need very different iteration counts.
    W = rng.standard_normal((BATCH, n)) * np.logspace(-6, 1, BATCH)[:, None]
    return A, W


#: ``(blocks, parallel)``: one block; three blocks one after the other (a variant's first
#: call); three blocks on numba's threads (the parallel driver, from a variant's second call on).
BLOCK_NAMES = {(1, False): "one-block", (3, False): "three-blocks", (3, True): "three-threads"}


@pytest.fixture(params=list(BLOCK_NAMES), ids=list(BLOCK_NAMES.values()))
def blocks(request, monkeypatch):
    count, parallel = request.param
    monkeypatch.setattr(engine_blocks, "thread_count", lambda: count)
    monkeypatch.setattr(numba_engine, "use_blocks", lambda variant, blocks, *driver: parallel and blocks > 1)
    return count


def with_blocks(cases, parallel):
    """pytest params: each case (a tuple) with every entry of :data:`BLOCK_NAMES`, except the
    parallel driver for the cases ``parallel(*case)`` rejects. Each variant's parallel driver
    is a compilation of its own (seconds), and it is the same ``prange``
    over the same block solver whatever the method or activation: it runs for the methods with
    state of their own (Anderson's history, the splittings' resolvent), ReLU and one other
    activation, and :func:`test_blocks_in_turn_and_blocks_in_parallel_agree_bit_for_bit` shows
    that both ways give the same bits."""
    return [pytest.param(*case, blocks, id="-".join([BLOCK_NAMES[blocks], *map(str, case)]))
            for case in cases for blocks in BLOCK_NAMES if not blocks[1] or parallel(*case)]


def _assert_same(ref, got, hist_atol=0.0):
    np.testing.assert_array_equal(got.sample_status, ref.sample_status)
    np.testing.assert_array_equal(got.iterations, ref.iterations)
    scale = max(1.0, np.abs(ref.x).max())
    np.testing.assert_allclose(got.x, ref.x, rtol=0, atol=1e-11 * scale)
    np.testing.assert_allclose(got.history, ref.history, rtol=1e-7, atol=1e-13 + hist_atol, equal_nan=True)


@pytest.mark.parametrize("method, spec, blocks", with_blocks(
    [(m, s) for m in solvers.METHODS for s in ("relu", "tanh")],
    # picard is the averaged step at alpha = 1: the same driver as average's
    lambda m, s: m in ("picard", "average") or (s == "relu" and m in ("anderson", "peaceman_rachford"))),
    indirect=["blocks"])
def test_blocks_match_numpy(method, spec, blocks):
    A, W = _instance(self_loops=method != "picard")
    kw = dict(method=method, activation=spec, atol=1e-10, record=True, max_iter=3000, check=False)
    ref = solvers.solve(A, W, engine="numpy", **kw)
    got = solvers.solve(A, W, engine="numba", **kw)
    assert ref.success
    assert len(np.unique(ref.iterations)) > 3  # the samples really finish at different times
    # Anderson's least squares amplify rounding (vectorised sums against BLAS): as in
    # test_engines, its history agrees to ~1e-9 of the starting residual.
    _assert_same(ref, got, 1e-9 * np.nanmax(ref.history[0]) if method == "anderson" else 0.0)


def test_blocks_match_numpy_when_stopped_early(blocks):
    """MAX_ITER for the slow samples, SUCCESS for the fast ones, in every block."""
    A, W = _instance()
    kw = dict(method="average", atol=1e-10, record=True, max_iter=12, check=False)
    ref = solvers.solve(A, W, engine="numpy", **kw)
    got = solvers.solve(A, W, engine="numba", **kw)
    assert set(ref.sample_status.tolist()) == {Status.SUCCESS, Status.MAX_ITER}
    _assert_same(ref, got)


def test_blocks_report_nonfinite_rows(blocks):
    """Rows that overflow stop as NONFINITE wherever they sit, as in the specification."""
    A, W = _instance(self_loops=False)
    A[0, 0] = 1e10  # an exploding self-loop: a huge input on unit 0 overflows at once
    W[::7, 0] = 1e300
    kw = dict(method="picard", atol=1e-10, max_iter=3000, check=False)
    with np.errstate(over="ignore", invalid="ignore"):
        ref = solvers.solve(A, W, engine="numpy", **kw)
    got = solvers.solve(A, W, engine="numba", **kw)
    np.testing.assert_array_equal(got.sample_status, ref.sample_status)
    np.testing.assert_array_equal(got.iterations, ref.iterations)
    assert (got.sample_status[::7] == Status.NONFINITE).all()
    assert (got.sample_status != Status.NONFINITE).any()


@pytest.mark.parametrize("method, blocks", with_blocks([("average",), ("anderson",)], lambda m: m == "average"),
                         indirect=["blocks"])
def test_blocks_adjoint_match_numpy(method, blocks):
    A, W = _instance()
    rng = np.random.default_rng(2)
    Z = W + rng.standard_normal(W.shape)
    G = rng.standard_normal(W.shape) * np.logspace(-6, 1, BATCH)[:, None]
    kw = dict(method=method, atol=1e-11, record=True, check=False)
    lam_ref, ref = solvers.solve_adjoint(A, Z, G, engine="numpy", **kw)
    lam, got = solvers.solve_adjoint(A, Z, G, engine="numba", **kw)
    np.testing.assert_array_equal(got.iterations, ref.iterations)
    np.testing.assert_allclose(lam, lam_ref, rtol=0, atol=1e-11 * np.abs(lam_ref).max())


def _conv_instance(seed: int = 6):
    """A circular convolution (its product is taken row by row, on the iterates kept in the
    output) with negative centre taps, and inputs whose samples finish at different times."""
    rng = np.random.default_rng(seed)
    K = 0.3 * rng.standard_normal((2, 2, 3, 3))
    K[[0, 1], [0, 1], 1, 1] = -rng.uniform(0.5, 1.5, 2)
    op = contraction.project_mu_inf(contraction.Conv2d(K, (5, 4), "circular"), 0.8)
    W = rng.standard_normal((BATCH, op.n)) * np.logspace(-6, 1, BATCH)[:, None]
    return op, W


@pytest.mark.parametrize("method, blocks", with_blocks(
    [("average",), ("forward_backward",), ("anderson",), ("peaceman_rachford",)],
    lambda m: m in ("average", "peaceman_rachford")), indirect=["blocks"])
def test_conv_blocks_match_numpy(method, blocks):
    op, W = _conv_instance()
    x0 = np.zeros_like(W) if method == "average" else None  # a start given (copied into the output)
    kw = dict(method=method, activation="tanh", atol=1e-10, record=True, max_iter=3000, check=False, x0=x0)
    ref = solvers.solve(op, W, engine="numpy", **kw)
    got = solvers.solve(op, W, engine="numba", **kw)
    assert ref.success and len(np.unique(ref.iterations)) > 3
    _assert_same(ref, got, 1e-9 * np.nanmax(ref.history[0]) if method == "anderson" else 0.0)


def test_conv_blocks_adjoint_match_numpy(blocks):
    op, W = _conv_instance()
    rng = np.random.default_rng(3)
    Z = W + rng.standard_normal(W.shape)
    G = rng.standard_normal(W.shape) * np.logspace(-6, 1, BATCH)[:, None]
    kw = dict(atol=1e-11, record=True, check=False)
    lam_ref, ref = solvers.solve_adjoint(op, Z, G, engine="numpy", **kw)
    lam, got = solvers.solve_adjoint(op, Z, G, engine="numba", **kw)
    np.testing.assert_array_equal(got.iterations, ref.iterations)
    np.testing.assert_allclose(lam, lam_ref, rtol=0, atol=1e-11 * np.abs(lam_ref).max())


def test_blocks_in_turn_and_blocks_in_parallel_agree_bit_for_bit(monkeypatch):
    """A variant runs its blocks one after the other until its parallel driver is compiled
    (or found in the cache), then in parallel. The blocks and their products are the same, so
    the results are the same to the bit: a result never depends on which way it ran."""
    monkeypatch.setattr(engine_blocks, "thread_count", lambda: 3)
    A, W = _instance()
    kw = dict(method="anderson", activation="tanh", atol=1e-10, record=True, check=False)
    runs = {}
    for parallel in (False, True):
        monkeypatch.setattr(numba_engine, "use_blocks", lambda variant, blocks, *driver: parallel)
        runs[parallel] = solvers.solve(A, W, **kw)
    np.testing.assert_array_equal(runs[True].x, runs[False].x)
    np.testing.assert_array_equal(runs[True].iterations, runs[False].iterations)
    np.testing.assert_array_equal(runs[True].history, runs[False].history)


def test_a_variant_is_one_parallel_driver(monkeypatch):
    """A variant (the key that decides when a call earns its parallel driver) tells apart the
    types the driver is compiled for: ReLU's from the other activations' (one type, ``Act``),
    so that a tanh solve after ReLU's driver is ready still runs its blocks in turn first."""
    seen = []
    monkeypatch.setattr(numba_engine, "use_blocks", lambda variant, blocks, *driver: seen.append(variant) or False)
    A, W = _instance()
    for spec in ("relu", "tanh", "softplus"):
        solvers.solve(A, W, activation=spec, max_iter=3, check=False)
    assert seen[0] != seen[1] and seen[1] == seen[2]


def test_a_variant_goes_parallel_when_its_driver_is_ready_or_its_serial_work_is_long(monkeypatch):
    monkeypatch.setattr(engine_blocks, "_serial_seconds", engine_blocks.collections.Counter())
    monkeypatch.setattr(engine_blocks, "_ready", set())
    monkeypatch.setattr(engine_blocks, "_checked", set())
    assert not engine_blocks.use_blocks("v", 1)  # one block: never
    assert not engine_blocks.use_blocks("v", 2)  # no driver known, no serial work yet
    engine_blocks._serial_seconds["v"] += engine_blocks.PARALLEL_AFTER_SECONDS / 2
    assert not engine_blocks.use_blocks("v", 2)
    with engine_blocks.serial_work("v"):  # real work, no compilation: counted
        time.sleep(engine_blocks.PARALLEL_AFTER_SECONDS / 2)
    assert engine_blocks.use_blocks("v", 2) and engine_blocks.use_blocks("v", 2)
    monkeypatch.setattr(engine_blocks.compilation, "_finished", engine_blocks.compilation.compilations())
    with engine_blocks.serial_work("x"):  # a compilation during the call: not counted
        engine_blocks.compilation._finished += 1
        time.sleep(engine_blocks.PARALLEL_AFTER_SECONDS)
    assert not engine_blocks.use_blocks("x", 2)
    # a driver already compiled for these arguments is used at once
    from numba import njit

    @njit
    def driver(x):
        return x + 1

    driver(1)
    assert engine_blocks.use_blocks("w", 2, driver, (5,))
    @njit
    def fresh(x):
        return x + 2

    assert not engine_blocks.use_blocks("u", 2, fresh, (5,))  # neither compiled nor cached


def test_blas_threads_holds_and_restores_every_blas():
    from threadpoolctl import threadpool_info

    from solvers.engine import blas_threads

    def counts():
        return [d["num_threads"] for d in threadpool_info() if d["user_api"] == "blas"]

    before = counts()
    assert before
    with blas_threads(1):
        assert counts() == [1] * len(before)
        with blas_threads(1):  # nested: nothing to change, nothing to restore early
            assert counts() == [1] * len(before)
        assert counts() == [1] * len(before)
    assert counts() == before


def test_block_bounds_cover_the_batch_in_blocks_of_at_least_min_rows():
    for batch in (1, 15, 16, 31, 32, 33, 47, 49, 100, 1001):
        for threads in (1, 2, 3, 8):
            bounds = engine_blocks.block_bounds(batch, threads)
            assert bounds[0, 0] == 0 and bounds[-1, 1] == batch
            assert (bounds[1:, 0] == bounds[:-1, 1]).all()
            assert len(bounds) <= threads
            sizes = bounds[:, 1] - bounds[:, 0]
            assert sizes.max() - sizes.min() <= 1
            if len(bounds) > 1:
                assert sizes.min() >= engine_blocks.MIN_BLOCK_ROWS
