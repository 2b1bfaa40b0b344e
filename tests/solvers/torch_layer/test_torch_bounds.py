"""``solvers.torch.interval_bounds`` and ``worst_case_logits``: sound (they contain every
equilibrium of the box), equal to the numpy implementation of ``solvers.training``, and
differentiable (``gradcheck``)."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from solvers.torch import interval_bounds, worst_case_logits  # noqa: E402
from solvers.training import ImplicitNetwork  # noqa: E402
from solvers.training import interval_bounds as numpy_interval_bounds  # noqa: E402

from _torch_helpers import conv_layer, dense_layer  # noqa: E402


def _box(shape, seed=0, radius=0.2):
    g = torch.Generator().manual_seed(seed)
    centre = torch.randn(*shape, generator=g, dtype=torch.float64)
    r = radius * torch.rand(*shape, generator=g, dtype=torch.float64)
    return centre - r, centre + r


@pytest.mark.parametrize("make, shape", [(dense_layer, (3, 4)), (conv_layer, (2, 1, 4, 5))], ids=["dense", "conv"])
def test_bounds_contain_every_equilibrium_of_the_box(make, shape):
    layer = make(seed=6)
    lo, hi = _box(shape)
    x_lo, x_hi = interval_bounds(layer, lo, hi)
    assert x_lo.shape == x_hi.shape == layer(lo).shape
    assert bool((x_lo <= x_hi).all()) and bool((x_lo >= 0).all())  # relu's range clamps the widened bound
    for seed in range(20):
        t = torch.rand(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        x = layer(lo + t * (hi - lo)).detach()
        assert bool((x_lo <= x).all()) and bool((x <= x_hi).all())
    x_lo, x_hi = interval_bounds(layer, lo, lo, sound=False)  # a point: both bounds are x*(u)
    np.testing.assert_allclose(x_lo.detach(), layer(lo).detach(), atol=1e-10)
    np.testing.assert_allclose(x_hi.detach(), layer(lo).detach(), atol=1e-10)


def test_bounds_equal_the_numpy_implementation():
    layer = dense_layer(seed=7, atol=1e-6)
    net = ImplicitNetwork(4, 5, 2, dtype=np.float64)
    net.A, net.B, net.b = (p.detach().numpy().copy() for p in (layer.A, layer.B, layer.b))
    lo, hi = _box((6, 4), seed=1)
    X_lo, X_hi, _, _ = numpy_interval_bounds(net, lo.numpy(), hi.numpy())
    x_lo, x_hi = interval_bounds(layer, lo, hi)
    # Both solve the embedded network to 1e-6 and widen by their error bounds: they agree to that.
    np.testing.assert_allclose(x_lo.detach(), X_lo, atol=2e-5)
    np.testing.assert_allclose(x_hi.detach(), X_hi, atol=2e-5)


@pytest.mark.parametrize("make, shape", [(dense_layer, (2, 4)), (conv_layer, (1, 1, 4, 5))], ids=["dense", "conv"])
def test_gradcheck_bounds(make, shape):
    layer = make(seed=8)
    lo, hi = _box(shape, seed=2)
    params = tuple(p.detach().clone().requires_grad_() for p in (layer.A, layer.B, layer.b))

    class Bounds(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.layer = layer

        def forward(self, lo, hi):
            return interval_bounds(self.layer, lo, hi, sound=False)

    def bounds(lo, hi, A, B, b):
        return torch.func.functional_call(Bounds(), {"layer.A": A, "layer.B": B, "layer.b": b}, (lo, hi))

    assert torch.autograd.gradcheck(bounds, (lo.requires_grad_(), hi.requires_grad_(), *params))


def test_worst_case_logits_are_the_exact_margin_bounds():
    g = torch.Generator().manual_seed(3)
    readout = torch.nn.Linear(5, 4, dtype=torch.float64)
    f_lo = torch.rand(6, 5, generator=g, dtype=torch.float64)
    f_hi = f_lo + torch.rand(6, 5, generator=g, dtype=torch.float64)
    labels = torch.tensor([0, 1, 2, 3, 0, 2])
    z = worst_case_logits(readout, f_lo, f_hi, labels).detach()
    C, c = readout.weight.detach(), readout.bias.detach()
    for s in range(6):
        k = int(labels[s])
        assert z[s, k] == 0
        for j in range(4):
            d = C[k] - C[j]  # the margin is linear: its minimum over the box is at a corner
            corner = torch.where(d >= 0, f_lo[s], f_hi[s])
            assert z[s, j] == pytest.approx(-float(d @ corner + c[k] - c[j]), abs=1e-12)
    # z_j < 0 for every j != k certifies the box: every sampled point keeps class k
    certified = (z.scatter(1, labels[:, None], -np.inf) < 0).all(dim=1)
    for _ in range(50):
        f = f_lo + torch.rand(6, 5, generator=g, dtype=torch.float64) * (f_hi - f_lo)
        assert bool(((readout(f).argmax(1) == labels) | ~certified).all())


def test_bad_boxes_are_named():
    layer = dense_layer()
    lo, hi = _box((2, 4))
    with pytest.raises(ValueError, match=r"lo must be <= hi entrywise .* at \[0, 0\]"):
        interval_bounds(layer, hi, lo)
    with pytest.raises(ValueError, match=r"lo must have shape \(batch, 4\)"):
        interval_bounds(layer, lo[:, :3], hi[:, :3])
    with pytest.raises(ValueError, match="lo and hi must be tensors of one shape"):
        interval_bounds(layer, lo, hi[:1])
    with pytest.raises(ValueError, match=r"labels must be integer class indices of shape \(2,\)"):
        worst_case_logits(torch.nn.Linear(5, 3, dtype=torch.float64), lo[:, :1].expand(2, 5), hi[:, :1].expand(2, 5),
                          torch.zeros(2))
