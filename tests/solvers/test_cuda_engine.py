"""The CUDA engine against the numpy specification (numba's simulator in CI)."""

import numpy as np
import pytest

import contraction
import solvers
from solvers._engines import cuda_engine as _cuda_engine

METHOD_ACTIVATIONS = [
    ("picard", "relu"),
    ("average", "relu"),
    ("average", "tanh"),
    ("forward_backward", ("leaky_relu", 0.1)),
    ("forward_backward", "softplus"),
    ("peaceman_rachford", "relu"),
    ("douglas_rachford", "hard_tanh"),
    ("anderson", "relu"),
]


def _instance(n=4, batch=2, mu=0.3, negative_diagonal=False, seed=0):
    rng = np.random.default_rng(seed)
    G = rng.standard_normal((n, n))
    if negative_diagonal:
        G[np.diag_indices(n)] = -rng.uniform(1.0, 3.0, n)
    A = contraction.project_mu_inf(G, mu)
    return A, rng.standard_normal((batch, n))


@pytest.mark.parametrize("method,activation", METHOD_ACTIVATIONS)
def test_cuda_matches_numpy(method, activation):
    A, W = _instance(negative_diagonal=method != "picard")
    if method == "picard":
        A = A / (2 * contraction.induced_norm(A, np.inf))  # picard's guarantee: ||A||_inf < 1
    kw = dict(method=method, activation=activation, atol=1e-7, max_iter=200, record=True)
    ref = solvers.solve(A, W, engine="numpy", **kw)
    got = solvers.solve(A, W, engine="cuda", **kw)
    assert ref.success and got.success
    np.testing.assert_array_equal(got.iterations, ref.iterations)
    np.testing.assert_allclose(got.x, ref.x, rtol=0, atol=1e-12)
    # Block reductions sum in another order than numpy: agreement to rounding, not bitwise.
    np.testing.assert_allclose(got.history, ref.history, rtol=1e-6, atol=1e-13)
    assert got.engine == "cuda"


def test_cuda_float32_and_vector_shape():
    A, W = _instance(n=3, batch=1)
    w = W[0].astype(np.float32)
    got = solvers.solve(A.astype(np.float32), w, engine="cuda", atol=1e-5, max_iter=200)
    ref = solvers.solve(A, W[0], engine="numpy", atol=1e-10, max_iter=500)
    assert got.x.shape == (3,) and got.x.dtype == np.float32
    np.testing.assert_allclose(got.x, ref.x, atol=1e-4)


def test_cuda_adjoint_matches_dense_solve():
    A, Z = _instance(n=4, batch=2, negative_diagonal=True)
    G = np.random.default_rng(1).standard_normal(Z.shape)
    lam, res = solvers.solve_adjoint(A, Z, G, method="anderson", engine="cuda", atol=1e-10, max_iter=200)
    assert res.success
    D = (Z >= 0).astype(float)
    for s in range(Z.shape[0]):
        expected = np.linalg.solve((np.eye(4) - np.diag(D[s]) @ A).T, G[s])
        np.testing.assert_allclose(lam[s], expected, atol=1e-9)


def test_cuda_start_at_fixed_point_takes_zero_iterations():
    A, W = _instance()
    x_star = solvers.solve(A, W, engine="numpy", atol=1e-14, max_iter=2000).x
    got = solvers.solve(A, W, engine="cuda", x0=x_star, atol=1e-10, method="douglas_rachford")
    assert got.success
    np.testing.assert_array_equal(got.iterations, 0)


def test_cuda_max_iter_is_reported():
    A, W = _instance(mu=0.9)
    got = solvers.solve(A, W, engine="cuda", atol=1e-14, max_iter=1)
    assert got.status == solvers.Status.MAX_ITER
    np.testing.assert_array_equal(got.iterations, 1)
    assert not got.converged.any()


def test_cuda_without_gpu_raises_clear_error(monkeypatch):
    monkeypatch.setattr(_cuda_engine, "_simulated", lambda: False)
    monkeypatch.setattr(_cuda_engine.cuda, "is_available", lambda: False)
    A, W = _instance()
    with pytest.raises(RuntimeError, match="engine='cuda' needs an NVIDIA GPU"):
        solvers.solve(A, W, engine="cuda")
