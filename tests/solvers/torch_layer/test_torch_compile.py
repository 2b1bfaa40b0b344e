"""The custom operators under ``torch.library.opcheck`` (schema, fake tensors, autograd
registration, AOT dispatch) and a model holding the layers under ``torch.compile`` (forward and
backward equal to eager)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from _torch_helpers import conv_layer, dense_layer  # noqa: E402


@pytest.mark.parametrize("make, n", [(dense_layer, 5), (conv_layer, 40)], ids=["dense", "conv"])
def test_opcheck(make, n):
    layer = make(seed=10)
    g = torch.Generator().manual_seed(0)
    W = torch.randn(3, n, dtype=torch.float64, generator=g, requires_grad=True)
    A = layer.A.detach().clone().requires_grad_()
    key = layer.config.key
    torch.library.opcheck(torch.ops.nemon.fixed_point.default, (A, W, key))
    Z, G = torch.randn(3, n, dtype=torch.float64, generator=g), torch.randn(3, n, dtype=torch.float64, generator=g)
    torch.library.opcheck(torch.ops.nemon.fixed_point_adjoint.default, (A.detach(), Z, G, key))


def test_compiled_model_matches_eager():
    """``backend="aot_eager"`` traces the model with fake tensors and AOTAutograd (what the
    operators must support) without inductor's code generation, which took 32 s on this
    project's 2-core machine for this model (benchmarks/README.md)."""
    dense, conv = dense_layer(seed=11, n_in=20, n_hidden=5), conv_layer(seed=11)
    model = torch.nn.ModuleDict({"dense": dense, "conv": conv, "head": torch.nn.Linear(45, 3, dtype=torch.float64)})

    def loss(images):
        features = torch.cat([model["dense"](images.flatten(1)), model["conv"](images).flatten(1)], 1)
        return torch.nn.functional.cross_entropy(model["head"](features), torch.tensor([0, 2]))

    images = torch.randn(2, 1, 4, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    results = []
    for fn in (loss, torch.compile(loss, backend="aot_eager", fullgraph=True)):
        model.zero_grad()
        value = fn(images)
        value.backward()
        results.append([value.detach()] + [p.grad.clone() for p in model.parameters()])
    for eager, compiled in zip(*results):
        torch.testing.assert_close(compiled, eager, rtol=1e-10, atol=1e-12)
