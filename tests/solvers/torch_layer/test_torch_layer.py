"""``solvers.torch``: the layers' forward and backward passes against finite differences and an
unrolled torch reference, the projection during training, the certificate, failures and errors."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import contraction  # noqa: E402
import solvers  # noqa: E402
from solvers.torch import (  # noqa: E402
    ConvImplicitLayer,
    ImplicitLayer,
    NoConvergenceWarning,
    project_after_step,
)

from _torch_helpers import conv_layer, dense_layer, self_loops, set_parameters, unrolled  # noqa: E402


def _functional(layer):
    """The layer as a function of its input and parameters, for ``gradcheck``."""
    return lambda u, A, B, b: torch.func.functional_call(layer, {"A": A, "B": B, "b": b}, (u,))


def _inputs(layer, shape, seed=1):
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(*shape, generator=g, dtype=torch.float64, requires_grad=True)
    params = tuple(p.detach().clone().requires_grad_() for p in (layer.A, layer.B, layer.b))
    return (u, *params)


@pytest.mark.parametrize("activation", ["relu", "tanh"])
def test_gradcheck_dense(activation):
    layer = dense_layer(activation=activation)
    assert float(self_loops(layer.A.detach()).min()) < 0  # alpha* < 1: the averaged step is exercised
    assert torch.autograd.gradcheck(_functional(layer), _inputs(layer, (3, 4)))


@pytest.mark.parametrize("padding, stride", [("circular", 1), ("zeros", 2)])
def test_gradcheck_conv(padding, stride):
    layer = conv_layer(padding=padding, stride=stride, image=(6, 6) if stride == 2 else (4, 5))
    assert torch.autograd.gradcheck(_functional(layer), _inputs(layer, (2, 1, *layer.image_size)))


@pytest.mark.parametrize("make, shape", [(dense_layer, (3, 4)), (conv_layer, (2, 1, 4, 5))], ids=["dense", "conv"])
@pytest.mark.parametrize("engine", ["numba", "numpy"])
def test_per_unit_steps_keep_the_layer_and_its_gradients(make, shape, engine):
    """``solver.alpha = "per_unit"``: the same equilibria and exact gradients (the numba engine
    takes the dense layer's fast path, numpy the front door)."""
    layer = make(engine=engine)
    inputs = _inputs(layer, shape)
    x_single = _functional(layer)(*inputs).detach()
    layer.solver = dataclasses.replace(layer.solver, alpha="per_unit")
    np.testing.assert_allclose(_functional(layer)(*inputs).detach(), x_single, rtol=0, atol=1e-9)
    assert torch.autograd.gradcheck(_functional(layer), inputs)


@pytest.mark.parametrize("method, adjoint_method, activation", [
    ("average", "average", "relu"),
    ("anderson", "anderson", "relu"),
    ("peaceman_rachford", "direct", "softplus"),
])
def test_gradients_equal_the_unrolled_reference(method, adjoint_method, activation):
    layer = dense_layer(seed=2, n_in=3, n_hidden=6, activation=activation, method=method,
                        adjoint_method=adjoint_method)
    u = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    R = torch.randn(5, 6, dtype=torch.float64)
    grads = []
    for forward in (layer, lambda v: unrolled(layer, v)):
        layer.zero_grad()
        u.grad = None
        x = forward(u)
        (x * R).sum().backward()
        grads.append([t.grad.clone() for t in (u, layer.A, layer.B, layer.b)])
        if forward is layer:
            x_ours = x.detach()
    np.testing.assert_allclose(x_ours, unrolled(layer, u).detach(), rtol=0, atol=1e-10)
    for ours, reference in zip(*grads):
        np.testing.assert_allclose(ours, reference, rtol=1e-8, atol=1e-9)


def test_conv_layer_is_the_dense_matrix_of_its_kernels():
    """The torch convolutions of the layer are :class:`contraction.Conv2d`'s: the equilibrium
    solves ``x = σ(A x + B u + b)`` with the dense matrices of both kernels."""
    layer = conv_layer(padding="zeros", stride=2, image=(6, 8))  # 3 x 4 state images
    u = torch.randn(3, 1, 6, 8, dtype=torch.float64)
    x = layer(u).detach().reshape(3, -1).numpy()
    A, B = (op.to_dense() for op in layer.host_operators())
    pixels = layer.state_shape[0] * layer.state_shape[1]
    z = x @ A.T + u.reshape(3, -1).numpy() @ B.T + np.repeat(layer.b.detach().numpy(), pixels)
    np.testing.assert_allclose(x, np.maximum(z, 0), rtol=0, atol=1e-11)


def test_float32_forward_meets_the_tolerance_and_keeps_shapes():
    torch.manual_seed(0)
    layer = ImplicitLayer(7, 6)  # the defaults: float32, atol 1e-4, mu_inf <= 0.9
    assert layer.A.dtype == torch.float32 and contraction.mu_inf(layer.A.detach().double().numpy()) <= 0.9 + 1e-6
    u = torch.rand(2, 3, 7)
    x = layer(u)
    assert x.shape == (2, 3, 6) and x.dtype == torch.float32
    assert layer(u[0, 0]).shape == (6,)
    X, U = x.detach().double().reshape(6, 6), u.double().reshape(6, 7)
    A, B, b = (p.detach().double() for p in (layer.A, layer.B, layer.b))
    residual = (torch.relu(X @ A.t() + U @ B.t() + b) - X).abs().max()
    assert residual <= 1e-4


def test_projection_hook_keeps_mu_inf_below_gamma_during_training():
    torch.manual_seed(3)
    f64 = dict(dtype=torch.float64)  # the compiled solves of the other tests (float32: the next test's)
    model = torch.nn.Sequential(ImplicitLayer(8, 10, gamma=0.5, **f64), torch.nn.Linear(10, 3, **f64))
    conv = ConvImplicitLayer(1, 2, 5, gamma=0.6, **f64)
    params = list(model.parameters()) + list(conv.parameters())
    optimizer = torch.optim.Adam(params, lr=0.5)  # large steps: every step leaves the polytope
    handle = project_after_step(optimizer, torch.nn.ModuleList([model, conv]))
    u, y, images = torch.rand(16, 8, **f64), torch.randint(0, 3, (16,)), torch.rand(4, 1, 5, 5, **f64)
    for _ in range(4):
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(u), y) + conv(images).square().mean()
        loss.backward()
        optimizer.step()
        for layer, gamma in ((model[0], 0.5), (conv, 0.6)):
            certificate = layer.certificate()
            assert certificate.mu_inf <= gamma + 1e-6 and certificate.violation is None
    handle.remove()
    optimizer.zero_grad()
    model(u).square().sum().backward()
    optimizer.step()
    assert model[0].certificate().mu_inf > 0.5 + 1e-3  # without the hook the step leaves the set
    assert model[0].certificate().violation.startswith("constraint mu_inf (gamma = 0.5) violated")
    model[0].project_()
    assert model[0].certificate().mu_inf == pytest.approx(0.5, abs=1e-6)


def test_norm_inf_and_diag_min_constraints_project():
    torch.manual_seed(4)
    dense = ImplicitLayer(3, 6, gamma=0.4, constraint="norm_inf", dtype=torch.float64)
    held = ImplicitLayer(3, 6, gamma=0.4, diag_min=-0.2, dtype=torch.float64)
    for layer in (dense, held):
        set_parameters(layer, 3 * torch.randn(6, 6, dtype=torch.float64)).project_()
    assert contraction.induced_norm(dense.A.detach().numpy(), np.inf) == pytest.approx(0.4, abs=1e-12)
    assert contraction.mu_inf(held.A.detach().numpy()) <= 0.4 + 1e-12
    assert float(held.A.detach().diagonal().min()) >= -0.2 - 1e-12


def test_certificate_is_contractions_numbers():
    layer = dense_layer(seed=5, method="anderson")
    readout = torch.nn.Linear(5, 3, dtype=torch.float64)
    c = layer.certificate(readout=readout)
    A, B, C = (t.detach().numpy() for t in (layer.A, layer.B, readout.weight))
    assert c.mu_inf == pytest.approx(0.8) and c.well_posed and c.method == "anderson"
    assert c.alpha == contraction.optimal_alpha(A, "anderson") < 1
    assert c.contraction_factor == pytest.approx(1 - c.alpha * (1 - 0.8))
    assert c.lipschitz == pytest.approx(contraction.lipschitz_bound(A, B, C))
    assert c.lipschitz == pytest.approx(np.abs(B).sum(1).max() * np.abs(C).sum(1).max() / 0.2)
    assert c.lipschitz_paper == pytest.approx(c.lipschitz)  # mu > 0: the two forms agree
    assert c.constraint == "none" and c.violation is None
    assert "mu_inf(A) = 0.8" in str(c)
    conv = conv_layer(stride=2, image=(6, 8))
    c = conv.certificate()
    assert c.mu_inf == pytest.approx(0.7) and c.lipschitz == pytest.approx(
        np.abs(conv.B.detach().numpy()).sum(axis=(1, 2, 3)).max() / 0.3)


def test_failures_are_reported_as_the_solver_reports_them():
    u = torch.randn(4, 4, dtype=torch.float64)
    with pytest.raises(solvers.NoConvergence, match=r"average \(numba\) failed for 4/4 samples: MAX_ITER"):
        dense_layer(max_iter=1, on_failure="raise")(u)
    with pytest.warns(NoConvergenceWarning, match="forward solve: .*MAX_ITER: some samples ran out of iterations"):
        dense_layer(max_iter=1)(u)
    dense_layer(max_iter=1, on_failure="ignore")(u)  # no warning (warnings are errors here)
    layer = dense_layer()
    layer(u)
    layer.solver = dataclasses.replace(layer.solver, max_iter=1)  # the options are the layer's, changeable
    with pytest.warns(NoConvergenceWarning, match="MAX_ITER"):
        layer(u)
    assert layer.solve(u).iterations.max() == 1 and not layer.solve(u).success
    layer = dense_layer(atol=1e-2, adjoint_atol=1e-15, max_iter=8)
    x = layer(u)
    with pytest.warns(NoConvergenceWarning, match="adjoint solve: "):
        x.sum().backward()


@pytest.mark.parametrize("dtype, activation", [(torch.float32, "relu"), (torch.float64, "tanh")])
def test_fast_path_is_taken_and_solves_as_the_front_door(monkeypatch, dtype, activation):
    """The dense averaged case skips the front door (solvers.solve would raise here) and returns
    what it returns: the same equilibria, to the bit (the same block solver), ``Z`` the
    pre-activation at them, ``V = λ ⊙ σ'(Z)`` of the front door's adjoint, the same bounds."""
    from solvers.torch._ops import SolveConfig, config_of

    rng = np.random.default_rng(3)
    n, batch = 12, 40
    A = contraction.project_mu_inf(rng.standard_normal((n, n)) / np.sqrt(n), 0.9)
    W = rng.standard_normal((batch, n))
    G = rng.standard_normal((batch, n))
    A_t, W_t, G_t = (torch.from_numpy(a).to(dtype) for a in (A, W, G))
    key = SolveConfig(activation=activation).key
    cfg = config_of(key)
    kw = dict(atol=cfg.solver.atol, max_iter=cfg.solver.max_iter, activation=cfg.act)
    ref = solvers.solve(A_t.numpy(), W_t.numpy(), **kw)
    Z_ref = (torch.from_numpy(ref.x) @ A_t.t() + W_t).numpy()
    lam, adj = solvers.solve_adjoint(A_t.numpy(), Z_ref, G_t.numpy(), **kw)

    def refuse(*args, **kwargs):
        raise AssertionError("the front door was called")

    monkeypatch.setattr(solvers, "solve", refuse)
    monkeypatch.setattr(solvers, "solve_adjoint", refuse)
    X, Z, bound = torch.ops.nemon.fixed_point(A_t, W_t, key)
    assert torch.equal(X, torch.from_numpy(ref.x))
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    assert torch.allclose(Z, X @ A_t.t() + W_t, atol=tol, rtol=0)
    np.testing.assert_allclose(bound.numpy(), ref.error_bound, rtol=1e-12)
    V = torch.ops.nemon.fixed_point_adjoint(A_t, Z, G_t, key)
    expected = lam * cfg.act.derivative(Z_ref.astype(np.float64))
    np.testing.assert_allclose(V.numpy(), expected, atol=10 * tol * np.abs(expected).max())
    assert adj.success and ref.success


def test_fast_path_hands_other_cases_to_the_front_door(monkeypatch):
    """A matrix outside the guarantee (μ∞ ≥ 1) and a failed solve go through the front door."""
    import solvers.torch._fast as fast

    calls = []
    real = solvers.solve
    monkeypatch.setattr(solvers, "solve", lambda *a, **k: calls.append(1) or real(*a, **k))
    u = torch.randn(3, 4, dtype=torch.float64)
    dense_layer()(u)
    assert not calls  # the fast path
    dense_layer(max_iter=1, on_failure="ignore")(u)
    assert len(calls) == 1  # failed in the fast path, reported by the front door
    A = 1.1 * np.eye(5) - 0.05
    assert fast.applies(dense_layer().config, "average", 1e-4, A, np.float64) is None
    assert fast.applies(dense_layer().config, "anderson", 1e-4, 0.5 * A, np.float64) is None
    assert fast.applies(dense_layer().config, "average", 1e-4, 0.5 * A, np.float64) is not None


def test_unprojected_matrix_warns_with_the_violated_condition():
    layer = set_parameters(dense_layer(max_iter=3, on_failure="ignore"), 1.2 * np.eye(5))
    with pytest.warns(solvers.NotGuaranteedWarning, match="not well-posed in any weighted l-inf norm"):
        layer(torch.randn(2, 4, dtype=torch.float64))


def test_bad_arguments_are_named():
    layer = ImplicitLayer(4, 5)
    with pytest.raises(ValueError, match=r"u must have shape \(batch, 4\)"):
        layer(torch.zeros(3, 5))
    with pytest.raises(ValueError, match=r"u must have the layer's dtype torch.float32, got torch.float64"):
        layer(torch.zeros(3, 4, dtype=torch.float64))
    with pytest.raises(ValueError, match="u must be a torch.Tensor"):
        layer(np.zeros((3, 4), np.float32))
    with pytest.raises(ValueError, match="W must be finite"):
        layer(torch.full((2, 4), float("nan")))
    conv = ConvImplicitLayer(2, 3, (6, 6))
    with pytest.raises(ValueError, match=r"u must have shape \(batch, 2, 6, 6\)"):
        conv(torch.zeros(1, 1, 6, 6))
    for kwargs, error, match in [
        (dict(n_in=0), ValueError, "n_in must be an integer >= 1"),
        (dict(gamma=1.0), ValueError, "gamma must be finite and < 1"),
        (dict(method="newton"), ValueError, "method must be one of"),
        (dict(activation="gelu"), TypeError, "unknown activation 'gelu'"),
        (dict(constraint="mon"), TypeError, "unknown constraint 'mon' for ImplicitLayer"),
        (dict(on_failure="stop"), TypeError, "unknown on_failure 'stop'"),
        (dict(atol=-1.0), ValueError, "atol must be a finite number >= 0"),
        (dict(max_iter=2.5), ValueError, "max_iter must be an integer >= 0"),
        (dict(check=1), ValueError, "check must be True or False"),
        (dict(dtype=torch.float16), ValueError, "dtype must be torch.float32 or torch.float64"),
    ]:
        with pytest.raises(error, match=match):
            ImplicitLayer(**{"n_in": 4, "n_hidden": 5, **kwargs})
    with pytest.raises(ValueError, match="kernel_size must be odd"):
        ConvImplicitLayer(1, 2, 8, kernel_size=4)
    with pytest.raises(ValueError, match="smaller than the 5x5 kernel"):
        ConvImplicitLayer(1, 2, 4, kernel_size=5)
    with pytest.raises(ValueError, match="readout must be a torch.nn.Linear or a matrix with 5 columns"):
        layer.certificate(readout=torch.nn.Linear(4, 2))


def test_nothing_else_imports_torch():
    code = ("import sys, contraction, solvers, solvers.engine, solvers.training, solvers.cli\n"
            "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if m.startswith('torch'))")
    subprocess.run([sys.executable, "-c", code], check=True)
