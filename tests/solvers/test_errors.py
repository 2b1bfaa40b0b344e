"""Validation at the boundary: ValueError naming the argument, TypeError for unknown options."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

import solvers

A = np.array([[0.5, 0.1, 0.0], [0.0, 0.5, 0.2], [0.1, 0.0, -0.5]])
W = np.ones(3)
WB = np.ones((2, 3))


@pytest.mark.parametrize(
    "kwargs,name",
    [
        (dict(A=np.ones((3, 2))), "A"),
        (dict(A=np.ones(3)), "A"),
        (dict(A=np.ones((0, 0))), "A"),
        (dict(A=np.array([[np.nan, 0, 0], [0, 0, 0], [0, 0, 0]])), "A"),
        (dict(A=np.full((3, 3), np.inf)), "A"),
        (dict(A=np.ones((3, 3)) * 1j), "A"),
        (dict(W=np.array([1.0, np.nan, 1.0])), "W"),
        (dict(W=np.array([[1.0, np.inf, 1.0], [0, 0, 0]])), "W"),
        (dict(W=np.array([1.0, -np.inf, 1.0])), "W"),
        (dict(W=np.ones(4)), "W"),
        (dict(W=np.ones((2, 4))), "W"),
        (dict(W=np.ones((2, 2, 3))), "W"),
        (dict(W=np.ones((0, 3))), "W"),
        (dict(W=np.array(["a", "b", "c"])), "W"),
        (dict(W=np.ones(3) * 1j), "W"),
        (dict(x0=np.ones(4)), "x0"),
        (dict(x0=np.ones((1, 3))), "x0"),
        (dict(W=WB, x0=np.ones((3, 3))), "x0"),
        (dict(W=WB, x0=np.ones(3)), "x0"),
        (dict(x0=np.array([0.0, np.nan, 0.0])), "x0"),
        (dict(atol=-1e-8), "atol"),
        (dict(rtol=-1e-8), "rtol"),
        (dict(atol=np.nan), "atol"),
        (dict(rtol=np.nan), "rtol"),
        (dict(atol=np.inf), "atol"),
        (dict(atol="1e-8"), "atol"),
        (dict(max_iter=10.0), "max_iter"),
        (dict(max_iter=2.5), "max_iter"),
        (dict(max_iter=-1), "max_iter"),
        (dict(max_iter=True), "max_iter"),
        (dict(max_iter="10"), "max_iter"),
        (dict(alpha=0.0), "alpha"),
        (dict(alpha=-0.5), "alpha"),
        (dict(alpha=np.nan), "alpha"),
        (dict(alpha=np.inf), "alpha"),
        (dict(method="picard", alpha=0.5), "alpha"),
        (dict(method="forward_backward", alpha=0.0), "alpha"),
        (dict(method="anderson", memory=0), "memory"),
        (dict(method="anderson", memory=2.0), "memory"),
        (dict(activation=("leaky_relu", 1.5)), "slope"),
        (dict(activation=("leaky_relu", -0.1)), "slope"),
        (dict(activation=("leaky_relu", "x")), "slope"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_solve_value_errors_name_the_argument(kwargs, name, engine):
    call = dict(A=A, W=W)
    call.update(kwargs)
    with pytest.raises(ValueError, match=rf"\b{name}\b"):
        solvers.solve(call.pop("A"), call.pop("W"), engine=engine, **call)


def test_picard_accepts_alpha_one(engine):
    res = solvers.solve(A, W, method="picard", alpha=1.0, engine=engine)
    assert res.success and res.alpha == 1.0


@pytest.mark.parametrize(
    "kwargs,word",
    [
        (dict(method="newton"), "method"),
        (dict(method=None), "method"),
        (dict(method="Average"), "method"),
        (dict(engine="torch"), "engine"),
        (dict(engine=None), "engine"),
        (dict(activation="gelu"), "activation"),
        (dict(activation=3), "activation"),
        (dict(activation=("gelu", 0.1)), "activation"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_unknown_options_are_type_errors(kwargs, word):
    with pytest.raises(TypeError, match=word):
        solvers.solve(A, W, **kwargs)


def test_errors_are_raised_before_any_work(engine):
    """A bad W is reported even when the method is fine, and the message lists where."""
    with pytest.raises(ValueError, match=r"W must be finite; non-finite entries at \[\[1\]\]"):
        solvers.solve(A, [0.0, np.nan, 0.0], engine=engine)


# --- adjoint ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs,name",
    [
        (dict(Z=np.ones((2, 3)), G=np.ones((3, 3))), "Z"),
        (dict(Z=np.ones((1, 3)), G=np.ones(3)), "Z"),
        (dict(Z=np.ones(4), G=np.ones(4)), "G"),
        (dict(Z=np.array([np.nan, 0, 0])), "Z"),
        (dict(G=np.array([np.inf, 0, 0])), "G"),
        (dict(lam0=np.ones(2)), "lam0"),
        (dict(lam0=np.ones((1, 3))), "lam0"),
        (dict(atol=-1.0), "atol"),
        (dict(max_iter=1.5), "max_iter"),
        (dict(alpha=0.0), "alpha"),
        (dict(method="picard", alpha=2.0), "alpha"),
        (dict(A=np.ones((3, 2))), "A"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_adjoint_value_errors(kwargs, name, engine):
    call = dict(A=A, Z=W, G=W)
    call.update(kwargs)
    with pytest.raises(ValueError, match=rf"\b{name}\b"):
        solvers.solve_adjoint(call.pop("A"), call.pop("Z"), call.pop("G"), engine=engine, **call)


@pytest.mark.parametrize("method", ["peaceman_rachford", "douglas_rachford", "forward_backward", "newton"])
def test_adjoint_rejects_non_adjoint_methods(method):
    with pytest.raises(TypeError, match="method"):
        solvers.solve_adjoint(A, W, W, method=method)


def test_adjoint_unknown_options():
    with pytest.raises(TypeError, match="engine"):
        solvers.solve_adjoint(A, W, W, engine="gpu")
    with pytest.raises(TypeError, match="activation"):
        solvers.solve_adjoint(A, W, W, activation="sigmoid")


# --- cuda without a GPU ----------------------------------------------------------------

_CUDA_PROBE = """
import numpy as np
from numba import cuda
import solvers
if cuda.is_available():
    print("HAS_GPU")
    raise SystemExit(0)
for call in (lambda: solvers.solve(np.eye(2) * 0.5, np.ones(2), engine="cuda"),
             lambda: solvers.solve_adjoint(np.eye(2) * 0.5, np.ones(2), np.ones(2), engine="cuda")):
    try:
        call()
    except Exception as exc:
        print("ERROR", type(exc).__name__, exc)
    else:
        print("NO ERROR")
"""


def test_cuda_without_gpu_is_a_clear_error():
    """In a fresh interpreter with the simulator off (the test session turns it on)."""
    root = pathlib.Path(solvers.__file__).resolve().parents[1]
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="0")
    out = subprocess.run(
        [sys.executable, "-c", _CUDA_PROBE], cwd=root, env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr  # an exception, not a crash
    if "HAS_GPU" in out.stdout:
        pytest.skip("a CUDA GPU is available here")
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 2, out.stdout
    for line in lines:
        assert line.startswith("ERROR RuntimeError"), line
        assert "cuda" in line and "engine='numba'" in line  # says what to do instead
