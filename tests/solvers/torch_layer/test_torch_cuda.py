"""The layers' CUDA path in numba's simulator (``NUMBA_ENABLE_CUDASIM=1``, set by
tests/conftest.py): ``engine="cuda"`` runs the device code on CPU tensors, in place, and must give
the numpy specification's equilibria and gradients and report failures alike; the engine's device
entry point (``run_device``) on simulator device arrays against the numpy specification."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import contraction  # noqa: E402
import solvers  # noqa: E402
from solvers._engines import cuda_engine  # noqa: E402
from solvers._engines.task import Task  # noqa: E402
from solvers.torch import ImplicitLayer, NoConvergenceWarning  # noqa: E402

from _torch_helpers import conv_layer, dense_layer  # noqa: E402

pytestmark = pytest.mark.skipif(not cuda_engine._simulated(), reason="runs in numba's CUDA simulator")
#: The simulator runs every GPU thread as a Python thread: small, fast-contracting problems and
#: a loose tolerance (both engines take the same steps, so they still agree to rounding).
QUICK = dict(mu=0.3, atol=1e-6, max_iter=200)


def _forward_backward(layer, u, R):
    layer.zero_grad()
    u = u.detach().clone().requires_grad_()
    x = layer(u)
    (x * R).sum().backward()
    return [t.detach().clone() for t in (x, u.grad, layer.A.grad, layer.B.grad, layer.b.grad)]


@pytest.mark.parametrize("make, shape, kw", [
    (dense_layer, (2, 4), dict(activation="tanh")),
    (dense_layer, (1, 4), dict(method="peaceman_rachford", adjoint_method="anderson")),
    (conv_layer, (1, 1, 3, 4), dict(method="anderson", padding="zeros", image=(3, 4))),
    (dense_layer, (2, 4), dict(alpha="per_unit")),
    (conv_layer, (1, 1, 3, 4), dict(alpha="per_unit", image=(3, 4))),
], ids=["dense-average", "dense-splitting", "conv-anderson", "dense-per-unit", "conv-per-unit"])
def test_cuda_path_equals_the_numpy_specification(make, shape, kw):
    u = torch.randn(*shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    kw = dict(kw)
    alpha = kw.pop("alpha", None)
    cpu, device = make(seed=9, engine="numpy", **QUICK, **kw), make(seed=9, engine="cuda", **QUICK, **kw)
    for layer in (cpu, device):
        layer.solver = dataclasses.replace(layer.solver, alpha=alpha)
    R = torch.randn(cpu(u).shape, dtype=torch.float64)
    for ours, reference in zip(_forward_backward(device, u, R), _forward_backward(cpu, u, R)):
        np.testing.assert_allclose(ours, reference, rtol=1e-7, atol=1e-8)


def test_cuda_path_float32_and_failures():
    torch.manual_seed(1)
    cpu, device = ImplicitLayer(3, 4), ImplicitLayer(3, 4, engine="cuda")
    device.load_state_dict(cpu.state_dict())
    u = torch.rand(2, 3)
    x = device(u)
    assert x.dtype == torch.float32
    np.testing.assert_allclose(x.detach(), cpu(u).detach(), atol=1e-5)
    failing = dense_layer(engine="cuda", max_iter=1)
    with pytest.warns(NoConvergenceWarning, match=r"average \(cuda\) failed for 2/2 samples: MAX_ITER"):
        failing(torch.randn(2, 4, dtype=torch.float64))
    with pytest.raises(ValueError, match="for a convolution use method='average' or 'anderson'"):
        conv_layer(engine="cuda", method="douglas_rachford")(torch.randn(1, 1, 4, 5, dtype=torch.float64))


def test_run_device_solves_in_place_on_device_arrays():
    from numba import cuda

    rng = np.random.default_rng(2)
    A = contraction.project_mu_inf(rng.standard_normal((4, 4)), 0.3, diag_min=0.0)  # alpha* = 1: few steps
    W, G = rng.standard_normal((2, 4)), rng.standard_normal((2, 4))
    act = solvers.get_activation("relu")
    ref = solvers.solve(A, W, engine="numpy", atol=1e-8, max_iter=200)
    X = cuda.to_device(np.zeros_like(W))
    task = Task(kind="forward", op=cuda.to_device(np.asfortranarray(A)), rhs=cuda.to_device(W), D=None, x0=X,
                method="average", alpha=ref.alpha, activation=act, atol=1e-8, rtol=0.0, max_iter=200)
    iters, res, codes = cuda_engine.run_device(task)
    np.testing.assert_allclose(X.copy_to_host(), ref.x, atol=1e-12)
    np.testing.assert_array_equal(iters.copy_to_host(), ref.iterations)
    assert (codes.copy_to_host() == 0).all() and res.copy_to_host().max() <= 1e-8
    Z = ref.x @ A.T + W
    D = cuda.to_device(np.empty_like(Z))
    cuda_engine.derivative_device(act, cuda.to_device(Z), D)
    np.testing.assert_array_equal(D.copy_to_host(), act.derivative(Z))
    lam_ref, _ = solvers.solve_adjoint(A, Z, G, engine="numpy", atol=1e-8, max_iter=200)
    lam = cuda.to_device(np.zeros_like(G))
    cuda_engine.run_device(Task(kind="adjoint", op=cuda.to_device(A), rhs=cuda.to_device(G), D=D, x0=lam,
                                method="average", alpha=ref.alpha, activation=act, atol=1e-8, rtol=0.0, max_iter=200))
    np.testing.assert_allclose(lam.copy_to_host(), lam_ref, atol=1e-12)
    with pytest.raises(ValueError, match="run_device needs task.x0"):
        cuda_engine.run_device(Task(kind="forward", op=A, rhs=W, D=None, x0=None, method="average", alpha=1.0,
                                    activation=act, atol=1e-8, rtol=0.0, max_iter=10))
