"""The numpy engine: the readable specification every compiled engine is tested against.

One loop driver (:func:`run`) owns the iteration count, the stopping rule, the divergence
and non-finite checks and the per-sample freezing; each method supplies only its state
(``init``), its candidate equilibrium (``candidate``) and its update (``advance``).

The problem is ``x = σ((x ⊙ d) M + w)`` row-wise: the forward equation has ``M = Aᵀ`` and
no ``d``; the adjoint equation ``λ = g + (λ ⊙ σ'(z)) A`` has ``M = A``, ``d = σ'(z)`` and
the identity activation. The operator is met only through its product and its resolvent
(:class:`_Dense`, :class:`_Conv`).
"""

from __future__ import annotations

import numpy as np

from .. import _activations as act
from contraction._conv_spectrum import apply_inverse_symbol
from .kernels import ANDERSON_REG, DIVERGENCE_RATIO, DIVERGED, FLUSH, MAX_ITER, NONFINITE, RUNNING, SUCCESS
from .task import Task
from .threads import blas_threads_for

__all__ = ["run"]


class _Dense:
    """A dense ``A``: the product ``S M`` (``M = Aᵀ`` forward, ``A`` adjoint) and the splittings'
    resolvent ``V M⁻ᵀ`` (``task.resolvent``)."""

    def __init__(self, task: Task):
        self.Mat = task.op.T if task.kind == "forward" else task.op
        self.MinvT = task.resolvent

    def product(self, S):
        return S @ self.Mat

    def resolvent(self, V):
        return V @ self.MinvT


class _Conv:
    """A :class:`contraction.Conv2d`: the product by its ``apply`` (forward) or ``apply_T``
    (adjoint), and the resolvent per frequency (circular padding: ``task.resolvent`` holds
    ``M̂(f)⁻¹``). Results in the solve's dtype."""

    def __init__(self, task: Task):
        self.op, self.forward, self.R, self.dtype = task.op, task.kind == "forward", task.resolvent, task.rhs.dtype

    def product(self, S):
        Z = self.op.apply(S) if self.forward else self.op.apply_T(S)
        return Z.astype(self.dtype, copy=False)

    def resolvent(self, V):
        return apply_inverse_symbol(self.R, V, self.op.image_shape).astype(self.dtype, copy=False)


class _Problem:
    def __init__(self, op, W, D, code, slope, norm):
        self.op, self.W, self.D, self.code, self.slope, self.norm_ord = op, W, D, code, slope, norm

    def map(self, X, idx):
        """``(T(X), Z)`` with ``Z = (X ⊙ d) M + w`` and ``T = σ(Z)``."""
        S = X if self.D is None else X * self.D[idx]
        Z = self.op.product(S) + self.W[idx]
        return act.value(self.code, self.slope, Z), Z

    def prox(self, V, alpha):
        return act.prox(self.code, self.slope, alpha, V)

    def norm(self, R):
        return np.abs(R).max(axis=1) if self.norm_ord == 0 else np.abs(R).sum(axis=1)


class _Averaged:
    """``x⁺ = (1 − α) x + α T(x)`` (picard is α = 1)."""

    def __init__(self, problem, alpha, **_):
        self.p, self.alpha = problem, alpha

    def init(self, X0, idx):
        return {"x": X0.copy()}

    def candidate(self, state):
        return state["x"]

    def advance(self, state, X, T, Z, r, idx):
        x = X + self.alpha * (T - X)
        x[np.abs(x) < FLUSH] = 0.0  # never subnormal (kernels.FLUSH)
        return {"x": x}


class _ForwardBackward(_Averaged):
    """``x⁺ = prox_{αf}((1 − α) x + α (A x + w))``."""

    def advance(self, state, X, T, Z, r, idx):
        return {"x": self.p.prox((1 - self.alpha) * X + self.alpha * Z, self.alpha)}


class _Splitting:
    """Peaceman–Rachford (``average=False``) or Douglas–Rachford on the splitting variable u.

    ``x = prox_{αf}(u)``, ``v = 2x − u``, ``y = M⁻¹ (v + α w)`` with ``M = (1 + α) I − α A``;
    PR: ``u⁺ = 2y − v``; DR: ``u⁺ = (u + 2y − v)/2 = u + y − x``. Started at ``u0 = (1 − α) x0 + α (A x0 + w)``
    so that ``x0 = x*`` gives ``u0 = u*``.
    """

    def __init__(self, problem, alpha, average, **_):
        self.p, self.alpha, self.average = problem, alpha, average

    def init(self, X0, idx):
        _, Z0 = self.p.map(X0, idx)
        return {"u": (1 - self.alpha) * X0 + self.alpha * Z0}

    def candidate(self, state):
        return self.p.prox(state["u"], self.alpha)

    def advance(self, state, X, T, Z, r, idx):
        U = state["u"]
        V = 2 * X - U  # reflected resolvent of f: C_G(u)
        Y = self.p.op.resolvent(V + self.alpha * self.p.W[idx])  # resolvent of the affine part
        return {"u": U + Y - X if self.average else 2 * Y - V}


class _Anderson:
    """Type-II Anderson acceleration of the averaged map ``g(x) = x + α (T(x) − x)``.

    Safeguard: a candidate is accepted only when its residual is at most ``accept`` times
    the last accepted residual (``accept`` = the averaged factor when < 1, else 1); otherwise
    the iterate falls back to ``g`` of the last accepted point, which is accepted unchecked,
    and the history restarts. Least squares by regularised normal equations.
    """

    def __init__(self, problem, alpha, memory, accept, **_):
        self.p, self.alpha, self.m, self.accept = problem, alpha, memory, accept

    def init(self, X0, idx):
        b, n = X0.shape
        return {
            "x": X0.copy(),
            "g": np.zeros_like(X0),
            "f": np.zeros_like(X0),
            "r": np.full(b, np.inf),
            "forced": np.ones(b, dtype=bool),
            "dF": np.zeros((b, self.m, n), X0.dtype),
            "dG": np.zeros((b, self.m, n), X0.dtype),
            "count": np.zeros(b, dtype=np.int64),
            "pos": np.zeros(b, dtype=np.int64),
        }

    def candidate(self, state):
        return state["x"]

    def advance(self, state, X, T, Z, r, idx):
        s = {k: v.copy() for k, v in state.items()}
        limit = np.where(np.isfinite(s["r"]), self.accept * np.where(np.isfinite(s["r"]), s["r"], 0.0), np.inf)
        accept = s["forced"] | (r <= limit)
        rej = ~accept
        # Rejected: fall back to the plain step from the last accepted point.
        s["x"][rej] = s["g"][rej]
        s["forced"][rej] = True
        s["count"][rej] = 0
        s["pos"][rej] = 0  # the history restarts at slot 0: slots 0..count-1 are the live ones
        a = np.flatnonzero(accept)
        G = X[a] + self.alpha * (T[a] - X[a])
        F = G - X[a]
        has_prev = np.isfinite(s["r"][a])
        for j, row in enumerate(a):
            if has_prev[j]:
                p = s["pos"][row]
                s["dF"][row, p] = F[j] - s["f"][row]
                s["dG"][row, p] = G[j] - s["g"][row]
                s["pos"][row] = (p + 1) % self.m
                s["count"][row] = min(s["count"][row] + 1, self.m)
            k = s["count"][row]
            x_new = G[j]
            if k > 0:
                dF, dG = s["dF"][row, :k], s["dG"][row, :k]
                H = dF @ dF.T
                H += (ANDERSON_REG * np.trace(H) / k + np.finfo(np.float64).tiny) * np.eye(k)
                gamma = np.linalg.solve(H, dF @ F[j])
                x_new = G[j] - gamma @ dG
            s["x"][row] = x_new
        s["g"][a], s["f"][a], s["r"][a] = G, F, r[a]
        s["forced"][a] = False
        return s

_STEPS = {
    "picard": lambda p, **kw: _Averaged(p, **kw),
    "average": lambda p, **kw: _Averaged(p, **kw),
    "forward_backward": lambda p, **kw: _ForwardBackward(p, **kw),
    "peaceman_rachford": lambda p, **kw: _Splitting(p, average=False, **kw),
    "douglas_rachford": lambda p, **kw: _Splitting(p, average=True, **kw),
    "anderson": lambda p, **kw: _Anderson(p, **kw),
}


def run(task: Task):
    """Iterate ``task.method`` until every sample meets ``r ≤ atol + rtol‖x‖`` or stops otherwise.

    Returns ``(X, iterations, residual, codes, history)``: ``codes`` are
    :class:`~solvers.Status` values per sample, ``history`` the residual of every iteration
    (``record``).
    """
    W = task.rhs
    forward = task.kind == "forward"
    op = _Dense(task) if task.dense else _Conv(task)
    code, slope = (task.activation.code, task.activation.slope) if forward else (act.IDENTITY, 0.0)
    X0 = np.zeros_like(W) if task.x0 is None else task.x0
    problem = _Problem(op, W, None if forward else task.D, code, slope, 0 if forward else 1)
    step = _STEPS[task.method](problem, alpha=task.alpha, memory=task.memory, accept=task.accept)
    batch = W.shape[0]
    active = np.arange(batch)
    state = step.init(X0, active)
    out = _Out(X0.copy(), np.zeros(batch, dtype=np.int64), np.zeros(batch), np.full(batch, RUNNING, dtype=np.int8))
    # Blow-ups are reported as NONFINITE; small products run on one BLAS thread.
    with np.errstate(over="ignore", invalid="ignore"), blas_threads_for(batch, W.shape[1]):
        hist = _loop(problem, step, state, out, active, task)
    return out.X, out.iters, out.res, out.codes, hist


class _Out:
    """The per-sample outputs, written as samples stop."""

    def __init__(self, X, iters, res, codes):
        self.X, self.iters, self.res, self.codes = X, iters, res, codes


def _loop(problem, step, state, out, active, task):
    batch = out.X.shape[0]
    r_first = np.zeros(batch)
    hist = []
    for k in range(task.max_iter + 1):
        sub = {key: v[active] for key, v in state.items()}
        Xa = step.candidate(sub)
        T, Z = problem.map(Xa, active)
        r = problem.norm(T - Xa).astype(np.float64)
        r[~np.isfinite(r)] = np.inf
        if k == 0:
            r_first[active] = r
        tol = task.atol + task.rtol * problem.norm(Xa)
        c = np.full(active.size, RUNNING, dtype=np.int8)
        c[~np.isfinite(r)] = NONFINITE
        c[(c < 0) & (r <= tol)] = SUCCESS
        c[(c < 0) & (r > DIVERGENCE_RATIO * r_first[active])] = DIVERGED
        if k == task.max_iter:
            c[c < 0] = MAX_ITER
        out.X[active], out.res[active], out.iters[active] = Xa, r, k
        if task.record:
            h = np.full(batch, np.nan)
            h[active] = r
            hist.append(h)
        go = c == RUNNING
        out.codes[active[~go]] = c[~go]
        if go.any():
            new = step.advance({key: v[go] for key, v in sub.items()}, Xa[go], T[go], Z[go], r[go], active[go])
            for key, v in new.items():
                state[key][active[go]] = v
        active = active[go]
        if active.size == 0:
            break
    return np.array(hist) if task.record else None
