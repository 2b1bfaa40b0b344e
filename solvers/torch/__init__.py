"""nemon's certified implicit layers inside PyTorch models (the optional ``torch`` extra).

:class:`ImplicitLayer` (``x = σ(A x + B u + b)``) and :class:`ConvImplicitLayer`
(``x = σ(A ⋆ x + B ⋆ u + b)``) are ``torch.nn.Module``\\ s whose forward pass is nemon's
compiled fixed-point solve (the numba engine on CPU tensors, without copies; the CUDA engine on
CUDA tensors, in place, on torch's current stream) and whose backward pass is the exact adjoint
solve, both as ``torch.library`` custom operators (``torch.ops.nemon.fixed_point``,
``torch.ops.nemon.fixed_point_adjoint``), so ``torch.compile`` composes with them. Keep them
well-posed with :meth:`ImplicitLayer.project_` after every optimiser step
(:func:`project_after_step` registers it), read the guarantee with
:meth:`ImplicitLayer.certificate`, and train for certified robustness with the differentiable
:func:`interval_bounds` and :func:`worst_case_logits`.

Install with ``pip install "nemon[torch]"``; nothing else in nemon imports torch.

Examples
--------
>>> u, y = torch.rand(32, 784), torch.randint(0, 10, (32,))
>>> model = torch.nn.Sequential(ImplicitLayer(784, 100), torch.nn.Linear(100, 10))
>>> optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
>>> project_after_step(optimizer, model)            # A stays in {mu_inf(A) <= 0.9}
>>> loss = torch.nn.functional.cross_entropy(model(u), y); loss.backward(); optimizer.step()
>>> print(model[0].certificate(readout=model[1]))
"""

try:
    import torch
except ImportError as exc:
    raise ImportError("solvers.torch needs PyTorch: pip install \"nemon[torch]\" (or pip install torch)") from exc
del torch  # imported above only to fail early, with the line to run

from ._bounds import interval_bounds, worst_case_logits
from ._layer import Certificate, ConvImplicitLayer, ImplicitLayer, project_after_step
from ._ops import NoConvergenceWarning, SolveConfig

__all__ = [
    "Certificate",
    "ConvImplicitLayer",
    "ImplicitLayer",
    "NoConvergenceWarning",
    "SolveConfig",
    "interval_bounds",
    "project_after_step",
    "worst_case_logits",
]
