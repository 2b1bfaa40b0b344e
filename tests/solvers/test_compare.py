"""The method comparison (``solvers.compare``) and the ``iteration_schemes`` example."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest

import contraction
from solvers import METHODS, solve
from solvers.compare import (
    FAMILIES,
    MethodComparison,
    _batch_max_history,
    compare_methods,
    format_table,
    instance,
    plot_comparison,
)

ATOL = 1e-8
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "iteration_schemes.py"


@pytest.fixture(scope="module")
def rows_by_family():
    """numpy-engine rows for two families on a tiny instance (no compile time)."""
    out = {}
    for family in ("random-nemon", "negative-diagonal"):
        A, W = instance(family, n=6, batch=3, seed=0)
        out[family] = compare_methods(A, W, atol=ATOL, engine="numpy", repeats=1)
    return out


@pytest.mark.parametrize("family", ["random-nemon", "negative-diagonal"])
def test_one_row_per_method_and_guaranteed_methods_converge(rows_by_family, family):
    rows = rows_by_family[family]
    assert [r.method for r in rows] == [*METHODS, "average_per_unit"]
    for r in rows:
        assert isinstance(r, MethodComparison)
        assert r.history.shape == (r.iterations_max + 1,)
        assert r.seconds > 0 and r.atol == ATOL
        assert r.iterations_mean <= r.iterations_max
        if r.guaranteed:
            assert r.status == "SUCCESS", r
            assert r.final_residual <= ATOL
            assert r.note is None
        # The recorded history ends where the timed run ended.
        if r.status == "SUCCESS":
            assert r.history[-1] <= ATOL < r.history[-2]


def test_per_unit_steps_row(rows_by_family):
    """The averaged iteration with one step per unit: the steps, the factor and the iterations
    of ``solve(..., alpha="per_unit")``, never more iterations than the single step here."""
    A, W = instance("negative-diagonal", n=6, batch=3, seed=0)
    rows = {r.method: r for r in rows_by_family["negative-diagonal"]}
    row, single = rows["average_per_unit"], rows["average"]
    np.testing.assert_array_equal(row.alpha, contraction.optimal_alpha(A, per_unit=True))
    assert row.theoretical_factor == contraction.contraction_factor(A, row.alpha)
    assert row.theoretical_factor <= single.theoretical_factor + 1e-12 and row.guaranteed
    ref = solve(A, W, alpha="per_unit", atol=ATOL, engine="numpy")
    assert row.iterations_max == ref.iterations.max() <= single.iterations_max
    assert row.empirical_rate <= row.theoretical_factor + 1e-12
    line = next(x for x in format_table(rows.values()).splitlines() if x.startswith("average_per_unit"))
    assert f"{row.alpha.min():.2g}-{row.alpha.max():.2g}" in line


def test_picard_outside_its_guarantee_still_runs(rows_by_family):
    # A diagonal down to about -5: picard (alpha = 1) has no l-inf guarantee. The warning is
    # caught and reported (pytest turns an escaped warning into an error).
    picard = rows_by_family["negative-diagonal"][0]
    assert picard.method == "picard" and not picard.guaranteed
    assert "picard" in picard.note and "not guaranteed" in picard.note
    assert picard.theoretical_factor >= 1.0
    assert picard.status in ("SUCCESS", "MAX_ITER", "DIVERGED")


@pytest.mark.parametrize("family", ["random-nemon", "negative-diagonal"])
def test_empirical_rate_within_theoretical_factor(rows_by_family, family):
    # average: x_{k+1} - x_k = alpha (T(x_k) - x_k) and the step map is rho-Lipschitz in
    # l-inf, so r(x_k) <= rho^k r(x_0) per sample, hence also for the batch max: the observed
    # rate is at most rho. forward_backward: the iterates contract with rho, so the residual
    # is below C rho^k and the rate is at most rho C^(1/K), which tends to rho; the 0.05
    # covers the constant over a few dozen iterations.
    rows = {r.method: r for r in rows_by_family[family]}
    for method in ("average", "forward_backward"):
        r = rows[method]
        assert r.guaranteed and r.theoretical_factor < 1.0
        assert r.empirical_rate <= r.theoretical_factor + 0.05, r
        A, _ = instance(family, n=6, batch=3, seed=0)
        assert r.theoretical_factor == pytest.approx(contraction.contraction_factor(A, r.alpha, method))
        assert r.alpha == pytest.approx(contraction.optimal_alpha(A, method))


def test_anderson_reports_the_factor_of_its_averaged_step(rows_by_family):
    rows = {r.method: r for r in rows_by_family["negative-diagonal"]}
    assert rows["anderson"].theoretical_factor == rows["average"].theoretical_factor
    assert rows["anderson"].iterations_max <= rows["average"].iterations_max


def test_numba_engine_matches_numpy(rows_by_family):
    A, W = instance("negative-diagonal", n=6, batch=3, seed=0)
    methods = ("average", "peaceman_rachford")
    rows = compare_methods(A, W, methods=methods, atol=ATOL, engine="numba", repeats=2)
    reference = {r.method: r for r in rows_by_family["negative-diagonal"]}
    assert [r.method for r in rows] == list(methods)
    for r in rows:
        ref = reference[r.method]
        assert r.status == "SUCCESS" and r.guaranteed
        assert r.iterations_max == ref.iterations_max
        np.testing.assert_allclose(r.history, ref.history, rtol=1e-9, atol=1e-12)


def test_start_at_the_fixed_point_takes_zero_iterations():
    # relu with w = 0: x = 0 is the equilibrium and every method's first candidate.
    A, W = instance("random-nemon", n=5, batch=2, seed=1)
    rows = compare_methods(A, np.zeros_like(W), methods=("average", "douglas_rachford"), engine="numpy", repeats=1)
    for r in rows:
        assert r.iterations_max == 0 and r.status == "SUCCESS"
        assert r.history.shape == (1,) and np.isnan(r.empirical_rate)


def test_max_iter_is_reported_not_raised():
    A, W = instance("negative-diagonal", n=6, batch=3, seed=0)
    (r,) = compare_methods(A, W, methods="average", max_iter=2, engine="numpy", repeats=1)
    assert r.status == "MAX_ITER" and r.iterations_max == 2 and r.final_residual > ATOL


def test_divergence_is_reported_with_an_infinite_or_large_rate():
    # A = 3 I with w > 0: picard triples the iterate every step until the residual has grown
    # 1e6-fold; nothing certifies this matrix.
    A = 3.0 * np.eye(3)
    W = np.ones((2, 3))
    (r,) = compare_methods(A, W, methods=["picard"], engine="numpy", repeats=1)
    assert r.status == "DIVERGED" and not r.guaranteed
    assert r.empirical_rate > 1.0 and r.theoretical_factor >= 1.0


def test_batch_max_history_drops_stopped_samples_and_flags_non_finite():
    nan = np.nan
    # Sample 0 stops at k = 1 (NaN afterwards); sample 1 runs to k = 2.
    history = np.array([[4.0, 2.0], [1.0, 3.0], [nan, 0.5]])
    assert _batch_max_history(history, np.array([1, 2])).tolist() == [4.0, 3.0, 0.5]
    # A NaN inside a sample's own run is a non-finite residual, not a stop.
    history = np.array([[4.0, 2.0], [1.0, nan]])
    assert _batch_max_history(history, np.array([1, 1])).tolist() == [4.0, np.inf]


def test_format_table_names_every_method(rows_by_family):
    table = format_table(rows_by_family["negative-diagonal"])
    for method in (*METHODS, "average_per_unit"):
        assert method in table
    for column in ("alpha", "iters (mean/max)", "time ms", "residual", "status", "rate", "factor", "guaranteed"):
        assert column in table.splitlines()[0]
    assert "NO" in table  # picard


def test_plot_writes_a_png(rows_by_family, tmp_path):
    path = plot_comparison(rows_by_family["negative-diagonal"], tmp_path / "new" / "dir" / "cmp.png", "tiny")
    assert path == tmp_path / "new" / "dir" / "cmp.png"
    assert path.read_bytes()[:8] == PNG_MAGIC


def test_instance_families():
    for family in FAMILIES:
        A, W = instance(family, n=4, batch=3, seed=2)
        assert A.shape[0] == A.shape[1] == W.shape[1] and W.shape[0] == 3
        assert np.all(np.isfinite(W))
    np.testing.assert_array_equal(instance(family, n=4, batch=3, seed=2)[1], W)  # seeded
    assert instance("paper-2x2", n=50, batch=3, seed=0)[0].shape == (2, 2)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda A, W: compare_methods(A, W, methods=("average", "newton")), "methods"),
        (lambda A, W: compare_methods(A, W, methods=()), "methods"),
        (lambda A, W: compare_methods(A, W, repeats=0), "repeats"),
        (lambda A, W: instance("ill-posed", 4, 2, 0), "family"),
        (lambda A, W: instance("mon", 4, 0, 0), "batch"),
        (lambda A, W: plot_comparison([], "unused.png", ""), "rows"),
    ],
)
def test_arguments_are_validated(call, match):
    A, W = instance("random-nemon", n=4, batch=2, seed=0)
    with pytest.raises(ValueError, match=match):
        call(A, W)


def test_example_script_runs(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("iteration_schemes", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "figs" / "schemes.png"
    argv = ["--family", "random-nemon", "--n", "5", "--batch", "2", "--engine", "numpy", "--repeats", "1", "--out", str(out)]
    assert module.main(argv) == 0
    assert out.read_bytes()[:8] == PNG_MAGIC
    printed = capsys.readouterr().out
    assert f"figure written to {out}" in printed
    for method in METHODS:
        assert method in printed
