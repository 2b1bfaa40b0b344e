"""The implicit network ``x = σ(A x + B u + b)``, ``y = C x + c``, with adjoint gradients."""

from __future__ import annotations

import contextlib
import dataclasses
import numbers

import numpy as np

import contraction

from solvers import ADJOINT_METHODS, ENGINES, METHODS, get_activation, solve, solve_adjoint

from ._fused import fusable, fused_gradients

__all__ = ["ImplicitNetwork", "SolverConfig", "Gradients", "LOSSES", "LOCAL_RATE_SAMPLES"]

LOSSES = ("cross_entropy", "mse")


def check_count(value, name: str, low: int = 1) -> int:
    """``value`` as an ``int`` that is ``>= low``, else a ``ValueError`` naming ``name``
    (``2.7``, ``True`` and ``"3"`` are not counts: truncating them would hide a mistake)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    return int(value)


def _check_rows(rows, n_inputs: int, n_targets: int) -> np.ndarray:
    """``rows`` as int64 indices of a batch of ``U`` (``n_inputs`` rows) and of its targets;
    the compiled step reads them unchecked, so an index out of range must stop here."""
    r = np.asarray(rows)
    if r.ndim != 1 or (r.size and r.dtype.kind not in "iu"):
        raise ValueError(f"rows must be a 1-D array of integer row indices, got shape {r.shape} of {r.dtype}")
    if n_targets != n_inputs:
        raise ValueError(f"targets must have one entry per row of U ({n_inputs}), got {n_targets}")
    if r.size and (r.min() < 0 or r.max() >= n_inputs):
        bad = r[(r < 0) | (r >= n_inputs)][0]
        raise ValueError(f"rows must index rows of U, in [0, {n_inputs}), got {bad}")
    return r.astype(np.int64, copy=False)


def check_real(value, name: str, low: float | None = None, strict: bool = False) -> float:
    """``value`` as a finite ``float`` (``> low`` when ``strict``, else ``>= low``), else a
    ``ValueError`` naming ``name`` and the condition."""
    bound = "" if low is None else f" {'>' if strict else '>='} {low:g}"
    ok = not isinstance(value, bool) and isinstance(value, numbers.Real) and bool(np.isfinite(value))
    if ok and low is not None:
        ok = value > low if strict else value >= low
    if not ok:
        raise ValueError(f"{name} must be a finite number{bound}, got {value!r}")
    return float(value)


@dataclasses.dataclass(frozen=True)
class SolverConfig:
    """How the network solves its forward and adjoint equations (validated on creation)."""

    method: str = "average"
    adjoint_method: str = "average"
    atol: float = 1e-4
    adjoint_atol: float = 1e-4
    max_iter: int = 1000
    engine: str = "numba"
    #: The averaged solves' step: ``None``, the single ``α*``; ``"per_unit"``, one step per
    #: unit (``solvers.solve``'s ``alpha="per_unit"``). An Anderson forward solve keeps ``α*``.
    alpha: str | None = None

    def __post_init__(self):
        for name, allowed in (("method", METHODS), ("adjoint_method", ADJOINT_METHODS), ("engine", ENGINES)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if self.alpha not in (None, "per_unit"):
            raise ValueError(f"alpha must be None (alpha*) or 'per_unit', got {self.alpha!r}")
        if self.alpha == "per_unit" and (self.method not in ("average", "anderson")
                                         or self.adjoint_method not in ("average", "direct")):
            raise ValueError(f"alpha='per_unit' needs method 'average' or 'anderson' and adjoint_method 'average' or "
                             f"'direct', got method={self.method!r}, adjoint_method={self.adjoint_method!r}")
        check_real(self.atol, "atol", 0)
        check_real(self.adjoint_atol, "adjoint_atol", 0)
        check_count(self.max_iter, "max_iter", 0)  # 0, as for solvers.solve: the start is returned

    def step(self, method: str):
        """``solvers.solve``'s ``alpha`` for a solve by ``method``: the per-unit steps for an
        averaged solve when asked, else the method's default."""
        return self.alpha if method == "average" else None


@dataclasses.dataclass(frozen=True)
class Gradients:
    """What :meth:`ImplicitNetwork.compute_gradients` computed for one batch.

    ``value``: the mean loss; ``grads``: ``{"A", "B", "b", "C", "c"}`` in the network's dtype;
    ``stats``: ``forward_iterations`` and ``adjoint_iterations`` (means),
    ``forward_converged`` and ``adjoint_converged`` (fractions), ``logits``.
    """

    value: float
    grads: dict
    stats: dict


@dataclasses.dataclass
class ForwardPass:
    """What the backward pass needs from the forward pass."""

    U: np.ndarray
    X: np.ndarray
    Z: np.ndarray
    Y: np.ndarray
    iterations: np.ndarray
    converged: np.ndarray
    #: A readout with a hidden layer: its features and pre-activations (float64), kept for the
    #: backward pass.
    features: np.ndarray | None = None
    hidden: np.ndarray | None = None


#: Inputs (the first ones) on which reports and epoch records measure the solves' local rate
#: (:meth:`ImplicitNetwork.local_rates`).
LOCAL_RATE_SAMPLES = 100


class ImplicitNetwork:
    """Implicit (equilibrium) network with numpy parameters ``A, B, b, C, c``.

    Parameters
    ----------
    n_in, n_hidden, n_out : int
    activation : str or (str, float)
    seed : int
        Seeds the initialisation (``A`` small Gaussian, ``B``, ``C`` scaled Gaussians,
        biases zero).
    dtype : numpy dtype
        ``float64`` (default) or ``float32`` (faster; end to end).
    solver : SolverConfig, optional

    Notes
    -----
    Forward: ``W = U Bᵀ + b``, ``X = solve(A, W)`` (step ``α*`` recomputed from ``A`` on
    every call), ``Y = X Cᵀ + c``. Backward (DESIGN.md section 6): with ``Z = X Aᵀ + W``
    and ``G = ∂L/∂X``, solve ``λ = G + (λ ⊙ σ'(Z)) A``, set ``V = λ ⊙ σ'(Z)``; then
    ``∂L/∂A = Vᵀ X``, ``∂L/∂B = Vᵀ U``, ``∂L/∂b = Σ V``, ``∂L/∂U = V B``.
    """

    def __init__(self, n_in, n_hidden, n_out, activation="relu", seed=0, dtype=np.float64, solver=None):
        m, n, q = (check_count(v, name) for name, v in (("n_in", n_in), ("n_hidden", n_hidden), ("n_out", n_out)))
        try:
            self.dtype = np.dtype(dtype)
        except TypeError:
            raise ValueError(f"dtype must be float32 or float64, got {dtype!r}") from None
        if self.dtype not in (np.float32, np.float64):
            raise ValueError(f"dtype must be float32 or float64, got {self.dtype}")
        self.activation = get_activation(activation)
        if solver is not None and not isinstance(solver, SolverConfig):
            raise ValueError(f"solver must be a SolverConfig, got {type(solver).__name__}")
        self.solver = solver if solver is not None else SolverConfig()
        self.seed = check_count(seed, "seed", 0)
        rng = np.random.default_rng(self.seed)
        f = self.dtype
        self.A = (0.1 * rng.standard_normal((n, n)) / np.sqrt(n)).astype(f)
        self.B = (rng.standard_normal((n, m)) / np.sqrt(m)).astype(f)
        self.b = np.zeros(n, f)
        self.C = (rng.standard_normal((q, n)) / np.sqrt(n)).astype(f)
        self.c = np.zeros(q, f)

    # -- shapes and parameters ------------------------------------------------------
    @property
    def n_in(self) -> int:
        return self.B.shape[1]

    @property
    def n_hidden(self) -> int:
        return self.A.shape[0]

    @property
    def n_out(self) -> int:
        return self.C.shape[0]

    PARAMS = ("A", "B", "b", "C", "c")
    #: Whether :mod:`._fused`'s compiled step applies (dense layers only).
    FUSABLE = True
    #: Whether ``A`` is a dense matrix: interval training, the Lipschitz regulariser and the
    #: constraints other than ``mu_inf`` and ``none`` work on matrices only (for now).
    DENSE = True

    def architecture(self) -> dict:
        """What rebuilds this network's shapes (a checkpoint's header holds it)."""
        return {"kind": "dense", "n_in": self.n_in, "n_hidden": self.n_hidden, "n_out": self.n_out}

    def input_operator(self):
        """``B`` as :mod:`contraction` takes it (here the matrix)."""
        return self.B

    def readout_matrix(self) -> np.ndarray:
        """The readout on the hidden state as a float64 matrix (here ``C``)."""
        return self.C.astype(np.float64)

    def embedded_system(self, U_lo, U_hi):
        """The embedded network over the box ``[U_lo, U_hi]``: ``(𝒜, W2, U_c, U_r)`` with
        ``𝒜 = [[A_M, A_N], [A_N, A_M]]`` (``A_N`` the negative off-diagonal part of ``A``), its
        injected inputs ``W2 = [B u_c + |B| u_r + b, B u_c − |B| u_r + b]`` (``B⁺ u_hi + B⁻ u_lo =
        B u_c + |B| u_r``: two ``n × m`` products rather than one ``2n × 2m``), and the box's
        centre ``U_c`` and radius ``U_r``, in the network's dtype."""
        n = self.n_hidden
        off = ~np.eye(n, dtype=bool)
        A = self.A
        A_N = np.where(off & (A < 0), A, 0).astype(self.dtype)
        A_M = (A - A_N).astype(self.dtype)
        AA = np.block([[A_M, A_N], [A_N, A_M]])
        U_c = ((U_hi + U_lo) * 0.5).astype(self.dtype)
        U_r = ((U_hi - U_lo) * 0.5).astype(self.dtype)
        center = U_c @ self.B.T + self.b
        spread = U_r @ np.abs(self.B).T
        return AA, np.hstack([center + spread, center - spread]), U_c, U_r

    def state_operator(self):
        """``A`` as :mod:`contraction` and :func:`solvers.solve` take it (here the matrix)."""
        return self.A

    def local_rates(self, U, solver=None, iterations: int = contraction.LOCAL_RATE_ITERATIONS, seed: int = 0):
        """:func:`contraction.local_rate` at the equilibrium of each row of ``U``, ``(batch,)``.

        The averaged step with the solver's step (``α*``, or per unit with ``alpha="per_unit"``),
        whichever method the solver uses: the rate at which its residual finally shrinks, to be
        read beside :func:`contraction.contraction_factor`, which bounds it for every input.
        The slopes are the activation's at the solver's equilibrium (its tolerance)."""
        s = self.solver if solver is None else solver
        fp = self.forward_pass(U, s)
        op = self.state_operator()
        op = op if isinstance(op, contraction.Conv2d) else np.asarray(op, dtype=np.float64)
        alpha = contraction.optimal_alpha(op, per_unit=True) if s.alpha == "per_unit" else None
        slopes = self.activation.derivative(np.asarray(fp.Z, dtype=np.float64))
        return contraction.local_rate(op, slopes, alpha=alpha, iterations=iterations, seed=seed,
                                      product=lambda V: self.state_product(op, V))

    def parameters(self) -> dict:
        return {k: getattr(self, k) for k in self.PARAMS}

    def parameter_count(self) -> int:
        return int(sum(p.size for p in self.parameters().values()))

    def check_inputs(self, U, name: str = "U") -> np.ndarray:
        """``U`` checked (real, shape (batch, n_in) with batch >= 1, finite) as an array, not
        converted; a ``ValueError`` naming ``name`` otherwise."""
        try:
            U = np.asarray(U)
        except Exception as exc:
            raise ValueError(f"{name} must be a numeric array, got {type(U).__name__}: {exc}") from None
        if U.ndim != 2 or U.shape[1] != self.n_in:
            raise ValueError(f"{name} must have shape (batch, {self.n_in}) for this network (n_in = {self.n_in}), "
                             f"got {U.shape}")
        if U.shape[0] == 0:
            raise ValueError(f"{name} must hold at least one sample, got shape {U.shape}")
        if U.dtype.kind not in "biuf":
            raise ValueError(f"{name} must be a real numeric array, got dtype {U.dtype}")
        if U.dtype.kind == "f" and not np.all(np.isfinite(U)):
            bad = np.argwhere(~np.isfinite(U))
            raise ValueError(f"{name} must be finite; non-finite entries at (row, column) {bad[:5].tolist()}")
        return U

    def as_inputs(self, U, name: str = "U") -> np.ndarray:
        """``U`` checked (:meth:`check_inputs`) as a C-contiguous array of the network's dtype."""
        return np.ascontiguousarray(self.check_inputs(U, name), dtype=self.dtype)

    def step_blas_threads(self):
        """The BLAS thread policy (a context manager) around a training step's gradients, inside
        the trainer's own (:func:`solvers.engine.blas_threads_for` on the batch and ``n``): no
        change for a fully connected layer."""
        return contextlib.nullcontext()

    # -- forward ------------------------------------------------------------------------
    def injected(self, U) -> np.ndarray:
        """The injected inputs ``W = U Bᵀ + b`` of checked inputs ``U``, in the network's dtype."""
        return U @ self.B.T + self.b

    def forward_pass(self, U, solver=None) -> ForwardPass:
        """Inputs, equilibria ``X``, pre-activations ``Z = X Aᵀ + W``, outputs ``Y`` and the
        forward solve's iterations and convergence flags (what a backward pass needs)."""
        U = self.as_inputs(U)
        W = self.injected(U)
        s = self.solver if solver is None else solver
        res = solve(self.A, W, method=s.method, alpha=s.step(s.method), atol=s.atol, max_iter=s.max_iter,
                    activation=self.activation, engine=s.engine, check=False)
        X = res.x
        Z = X @ self.A.T + W
        Y = X @ self.C.T + self.c
        return ForwardPass(U, X, Z, Y, res.iterations, res.converged)

    def forward(self, U, solver=None) -> np.ndarray:
        """Logits (or regression outputs), shape (batch, n_out); ``solver`` (a
        :class:`SolverConfig`) overrides :attr:`solver` for this call."""
        return self.forward_pass(U, solver).Y

    def predict(self, U, batch_size: int = 1000, solver=None) -> np.ndarray:
        """Predicted classes (argmax of the outputs), ``batch_size`` rows per solve."""
        U = self.check_inputs(U)
        batch_size = check_count(batch_size, "batch_size")
        return np.concatenate([self.forward(U[i : i + batch_size], solver).argmax(axis=1)
                               for i in range(0, len(U), batch_size)])

    def accuracy(self, U, y, batch_size: int = 1000, solver=None) -> float:
        """Fraction of the rows of ``U`` whose predicted class is the label ``y``."""
        U = self.check_inputs(U)
        y = self.check_labels(y, len(U), "y")
        return float((self.predict(U, batch_size, solver) == y).mean())

    # -- loss and gradients ---------------------------------------------------------------
    def check_labels(self, targets, batch: int, name: str = "targets") -> np.ndarray:
        """``targets`` checked as ``batch`` integer labels in ``[0, n_out)``; a ``ValueError``
        naming ``name`` otherwise."""
        t = np.asarray(targets)
        if t.shape != (batch,):
            raise ValueError(f"{name} must hold one label per input row, shape ({batch},), got {t.shape}")
        if not np.issubdtype(t.dtype, np.integer):
            raise ValueError(f"{name} must be integer labels (class indices), got dtype {t.dtype}")
        if batch and (t.min() < 0 or t.max() >= self.n_out):
            raise ValueError(f"{name} must be class labels in [0, {self.n_out}) for this network (n_out = "
                             f"{self.n_out}), got range [{t.min()}, {t.max()}]")
        return t

    def _output_grad(self, Y, targets, loss, reduction):
        """Loss value and ``∂L/∂Y``; ``reduction`` 'mean' (training) or 'sum' (attacks)."""
        if loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
        batch = Y.shape[0]
        scale = 1.0 / batch if reduction == "mean" else 1.0
        Y64 = Y.astype(np.float64)
        if loss == "cross_entropy":
            t = self.check_labels(targets, batch)
            shifted = Y64 - Y64.max(axis=1, keepdims=True)
            logp = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
            value = -logp[np.arange(batch), t].sum() * scale
            dY = np.exp(logp)
            dY[np.arange(batch), t] -= 1.0
        else:
            T = np.asarray(targets, dtype=np.float64)
            if T.size != Y.size or not np.all(np.isfinite(T)):
                raise ValueError(f"targets must be finite with {Y.size} values for shape {Y.shape}, got {T.shape}")
            T = T.reshape(Y.shape)
            diff = Y64 - T
            value = (diff**2).sum() * scale / self.n_out
            dY = 2.0 * diff / self.n_out
        return float(value), dY * scale

    def _state_gradient(self, dY, fp: ForwardPass) -> np.ndarray:
        """``G = ∂L/∂X`` from ``dY = ∂L/∂Y`` at the forward pass ``fp`` (float64 products, the
        network's dtype)."""
        return (dY @ self.C.astype(np.float64)).astype(self.dtype)

    def _parameter_gradients(self, fp: ForwardPass, V, dYt) -> dict:
        """``{"A", "B", "b", "C", "c"}`` from ``V = λ ⊙ σ'(Z)`` and ``dY`` (network's dtype)."""
        return {"A": V.T @ fp.X, "B": V.T @ fp.U, "b": V.sum(axis=0), "C": dYt.T @ fp.X, "c": dYt.sum(axis=0)}

    def _input_product_T(self, V) -> np.ndarray:
        """``V B``: a state gradient taken back to the inputs (float64)."""
        return V @ self.B.astype(np.float64)

    # -- what interval training needs beyond the plain network ------------------------------
    def features(self, X) -> np.ndarray:
        """The readout's features of states ``X`` (here ``X``): ``Y = features(X) Cᵀ + c``. A
        linear map with non-negative weights, so it takes state bounds to feature bounds."""
        return X

    def features_T(self, G) -> np.ndarray:
        """The adjoint of :meth:`features`: feature gradients taken back to the states."""
        return G

    def hidden_bounds(self, F_lo, F_hi, dtype=np.float64, Z=None) -> tuple:
        """``(H_lo, H_hi)``: bounds of the last linear layer's input ``h`` (``Y = C h + c``)
        from bounds of the features. Here ``h`` is the features themselves; a readout with a
        hidden layer takes the bounds through it (its products in ``dtype``; ``Z`` its
        pre-activation bounds when already computed, :meth:`preactivation_bounds`)."""
        return F_lo, F_hi

    def preactivation_bounds(self, F_lo, F_hi, dtype=np.float64):
        """Bounds ``(Z_lo, Z_hi)`` of a hidden readout layer's pre-activations over the feature
        box; ``None`` here (no hidden layer)."""
        return None

    def hidden_bounds_T(self, F_lo, F_hi, H_lo, H_hi, gH_lo, gH_hi, dtype=np.float64, gZ=None) -> tuple:
        """The adjoint of :meth:`hidden_bounds` at ``(H_lo, H_hi)`` (what it returned for
        ``(F_lo, F_hi)``): ``(gF_lo, gF_hi, gradients)`` from the gradients of the bounds,
        ``gradients`` those of the hidden layer's parameters. ``gZ``: gradients ``(gZ_lo,
        gZ_hi)`` of the hidden layer's pre-activation bounds besides (from
        :meth:`relaxed_margin_bounds_T`); only a hidden layer has them."""
        return gH_lo, gH_hi, {}

    def relaxed_margin_bounds(self, F_lo, F_hi, y, cls, dtype=np.float64, Z=None):
        """Training's form of :meth:`relaxed_margins`: lower bounds of the margins ``y_k − y_j``
        (``k = y[b]``, ``j = cls[b, i]``; ``cls`` (batch, K)) over the feature box by the
        hidden layer's linear relaxation with its adaptive lower line (``λ = [u ≥ −l]``; ``Z``
        the pre-activation bounds if already computed), as ``(bounds (batch, K), context)``
        for :meth:`relaxed_margin_bounds_T`; ``None`` where the readout is linear in the
        features (the interval bound is then exact)."""
        return None

    def relaxed_margin_bounds_T(self, context, w) -> tuple:
        """The adjoint of :meth:`relaxed_margin_bounds`: from ``w = ∂L/∂bounds`` (batch, K),
        ``(gF_lo, gF_hi, gZ_lo, gZ_hi, gradients)``: the feature bounds' gradients, those of
        the hidden layer's pre-activation bounds (for :meth:`hidden_bounds_T`), and the
        parameters' (``D``, ``d``, ``C``, ``c``) through everything else."""
        raise NotImplementedError("the readout is linear: relaxed_margin_bounds gives no context")

    def relaxed_margins(self, F_lo, F_hi, labels):
        """Lower bounds of the margins ``y_k − y_j`` (``k = labels[b]``; ``(batch, q)``) over
        the feature box by a linear relaxation of the readout, which :func:`margin_lower_bounds`
        takes beside the interval bound; ``None`` where the readout is linear in the features,
        as here (the interval bound is then exact)."""
        return None

    def margin_lines(self, F_lo, F_hi, k, j, sample=None) -> list:
        """Linear lower bounds ``g f + e`` of the margins ``y_k − y_j`` over the feature box,
        one per row ``r`` (the box of row ``sample[r]`` of ``F_lo``, ``F_hi``, by default row
        ``r``; classes ``k[r]``, ``j[r]``): a list of candidates ``(g, e)``, ``g`` (rows,
        features), ``e`` (rows,), each sound. Here the readout is linear: the margin itself."""
        C, c = self.C.astype(np.float64), self.c.astype(np.float64)
        return [(C[k] - C[j], c[k] - c[j])]

    def state_product_T(self, V) -> np.ndarray:
        """``Aᵀ v`` for every row of ``V`` (float64): state coefficients taken back through
        ``A``."""
        return np.asarray(V, dtype=np.float64) @ self.A.astype(np.float64)

    def bias_vector(self) -> np.ndarray:
        """The bias ``b`` as one entry per state (float64)."""
        return self.b.astype(np.float64)

    def state_diagonal(self) -> np.ndarray:
        """The diagonal of ``A`` (the self-loops), one entry per state (float64)."""
        return np.diag(self.A).astype(np.float64)

    def margin_readout(self, eta=None) -> tuple:
        """``(M, κ)`` for Lipschitz margins: logits are ``M h + c`` with
        ``‖h − h'‖∞ ≤ κ ‖x − x'‖_{∞,η}``, so ``|(M_k − M_j)(h − h')| ≤ ‖M_k − M_j‖₁ κ ‖x − x'‖_{∞,η}``.
        For a linear readout ``M = C diag(η)`` on the state and ``κ = 1``."""
        C = self.readout_matrix()
        if eta is not None:
            C = C * self.state_weights(eta)[None, :]
        return C, 1.0

    def state_weights(self, eta) -> np.ndarray:
        """``eta`` (one weight per unit; per channel for a convolution) as one per state entry."""
        return np.asarray(eta, dtype=np.float64)

    def state_product(self, op, X) -> np.ndarray:
        """``op x`` for every row of ``X``, ``op`` a matrix as :meth:`embedded_system` returns
        (here ``X opᵀ``)."""
        return X @ op.T

    def embedded_product(self, op, X2) -> np.ndarray:
        """``op [x_hi, x_lo]`` for the embedded operator of :meth:`embedded_system` (a
        convolutional layer takes it in two half-size passes)."""
        return self.state_product(op, X2)

    def embedded_gradients(self, V, X2, U_c, U_r) -> dict:
        """Gradients ``{"A", "B", "b"}`` of the embedded equilibrium's loss, from ``V = λ ⊙ σ'(Z)``
        of the embedded adjoint and its states ``X2 = [x_hi, x_lo]`` (both (batch, 2n), the
        network's dtype), pulled back through the sign splits of ``A`` and ``B`` (a.e. exact):
        ``𝒜``'s gradient ``Vᵀ X2`` is folded into ``A_M`` and ``A_N`` blocks, and
        ``W_hi = B u_c + |B| u_r + b``, ``W_lo = B u_c − |B| u_r + b``."""
        n = self.n_hidden
        gAA = V.T @ X2
        gW_hi, gW_lo = V[:, :n], V[:, n:]
        gAM = gAA[:n, :n] + gAA[n:, n:]
        gAN = gAA[:n, n:] + gAA[n:, :n]
        neg = (~np.eye(n, dtype=bool)) & (self.A < 0)
        return {"A": np.where(neg, gAN, gAM),
                "B": (gW_hi + gW_lo).T @ U_c + np.sign(self.B) * ((gW_hi - gW_lo).T @ U_r),
                "b": (gW_hi + gW_lo).sum(axis=0)}

    def _backward(self, fp: ForwardPass, dY, solver=None):
        G = self._state_gradient(dY, fp)
        s = self.solver if solver is None else solver
        lam, res = solve_adjoint(self.state_operator(), fp.Z, G, method=s.adjoint_method,
                                 alpha=s.step(s.adjoint_method), atol=s.adjoint_atol, max_iter=s.max_iter, activation=self.activation, engine=s.engine, check=False)
        if not res.success and s.adjoint_method != "direct":
            # Outside the averaged adjoint's guarantee: finish the failed samples exactly.
            bad = ~res.converged
            lam = lam.copy()
            lam[bad], _ = solve_adjoint(self.state_operator(), fp.Z[bad], G[bad], method="direct",
                                        activation=self.activation, check=False)
        V = lam * self.activation.derivative(fp.Z)
        return V.astype(np.float64), res

    def loss_and_grad(self, U, targets, loss: str = "cross_entropy", solver=None):
        """Mean loss over the batch and its gradients ``{"A", "B", "b", "C", "c"}``
        (:meth:`compute_gradients` without the statistics)."""
        g = self.compute_gradients(U, targets, loss, solver=solver)
        return g.value, g.grads

    def compute_gradients(self, U, targets, loss: str = "cross_entropy", *, solver=None, rows=None,
                          fused=None) -> Gradients:
        """Loss, gradients and solver statistics of a batch.

        Parameters
        ----------
        U, targets : arrays
            Inputs (batch, n_in) and labels (or regression targets for ``loss="mse"``).
        loss : {"cross_entropy", "mse"}
        solver : SolverConfig, optional
            Overrides :attr:`solver` for this call (the trainer's own settings).
        rows : array of int, optional
            The batch is ``U[rows]``, ``targets[rows]`` of a set already validated: ``U``
            finite and C-contiguous in the network's dtype, ``targets`` checked labels (the
            trainer checks the whole set once, not every batch).
        fused : bool, optional
            With an averaged or Anderson forward solve and an averaged adjoint solve on the
            numba engine and the cross-entropy loss, the whole computation is one compiled
            call per thread block
            (:mod:`solvers.training._fused`); ``False`` forces the generic path through
            :func:`solvers.solve` and :func:`solvers.solve_adjoint` (same results).
        """
        s = self.solver if solver is None else solver
        can_fuse = self.FUSABLE and fusable(s, loss)
        use_fused = can_fuse if fused is None else bool(fused)
        if use_fused and not can_fuse:
            raise ValueError("fused=True needs loss='cross_entropy', an averaged or Anderson forward solve and an "
                             f"averaged adjoint solve on the numba engine, got {s} and loss={loss!r}")
        if rows is None:
            U = self.as_inputs(U)
            if loss == "cross_entropy":
                targets = self.check_labels(targets, U.shape[0]).astype(np.int64, copy=False)
            rows_ = np.arange(U.shape[0])
        else:
            rows_ = _check_rows(rows, len(U), len(targets))
        if use_fused:
            return Gradients(*fused_gradients(self, U, targets, rows_, s))
        if rows is not None:
            U, targets = U[rows_], targets[rows_]
        return self._generic_gradients(U, targets, loss, s)

    def _generic_gradients(self, U, targets, loss, solver) -> Gradients:
        """:meth:`compute_gradients` through :func:`solvers.solve` and :func:`solvers.solve_adjoint`."""
        fp = self.forward_pass(U, solver)
        value, dY = self._output_grad(fp.Y, targets, loss, "mean")
        V, ares = self._backward(fp, dY, solver)
        # Products in the network's dtype: float32 networks stay float32 end to end.
        V, dYt = V.astype(self.dtype), dY.astype(self.dtype)
        grads = self._parameter_gradients(fp, V, dYt)
        stats = {
            "forward_iterations": float(fp.iterations.mean()),
            "adjoint_iterations": float(ares.iterations.mean()),
            "forward_converged": float(fp.converged.mean()),
            "adjoint_converged": float(ares.converged.mean()),
            "logits": fp.Y,
        }
        return Gradients(value, {k: g.astype(self.dtype) for k, g in grads.items()}, stats)

    def input_gradient(self, U, targets, loss: str = "cross_entropy") -> np.ndarray:
        """``∂ loss_s / ∂u_s`` for every sample ``s`` (each row the gradient of its own loss)."""
        fp = self.forward_pass(U)
        _, dY = self._output_grad(fp.Y, targets, loss, "sum")
        V, _ = self._backward(fp, dY)
        return self._input_product_T(V).astype(self.dtype)

    # -- certificates ---------------------------------------------------------------------
    def lipschitz(self, form: str = "tight", eta=None) -> float:
        """ℓ∞ input-to-output Lipschitz bound (``inf`` without a μ∞ certificate)."""
        return contraction.lipschitz_bound(self.A.astype(np.float64), self.B.astype(np.float64),
                                           self.C.astype(np.float64), eta=eta, form=form)

    def __repr__(self) -> str:
        return (f"ImplicitNetwork(n_in={self.n_in}, n_hidden={self.n_hidden}, n_out={self.n_out}, "
                f"activation={self.activation.name!r}, dtype={self.dtype.name})")
