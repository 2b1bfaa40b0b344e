"""Robustness of implicit networks: certificates (sound) and attacks (empirical).

Certificates
------------
*Lipschitz*: class ``k`` at ``u`` is certified at radius ε when, for every ``j ≠ k``,
``y_k − y_j > ‖C_k − C_j‖_1 · L_x · ε`` with ``L_x`` the ℓ∞ input-to-state bound.

*Interval* (embedded network, Jafarpour et al. 2022): with ``A = A_M + A_N`` (``A_M`` the
diagonal and nonnegative off-diagonal entries, ``A_N`` the negative ones) and
``B = B⁺ + B⁻``, the 2n-dimensional fixed point

    x_hi = σ(A_M x_hi + A_N x_lo + B⁺ u_hi + B⁻ u_lo + b)
    x_lo = σ(A_M x_lo + A_N x_hi + B⁺ u_lo + B⁻ u_hi + b)

is the implicit network with matrix ``𝒜 = [[A_M, A_N], [A_N, A_M]]``; since
``μ∞(𝒜) = μ∞(A)`` and ``diag 𝒜 = (diag A, diag A)``, it is well-posed under the same
condition and the same ``α*`` applies, and ``x_lo ≤ x*(u) ≤ x_hi`` on the box (monotone
systems). Class ``k`` is certified when the lower bound of every margin
``(C_k − C_j) x + c_k − c_j`` over ``[x_lo, x_hi]`` is positive.

Inputs are clipped to the data range [0, 1]; ε is in pixel units.

References
----------
S. Jafarpour, A. Davydov, M. Abate, F. Bullo, S. Coogan, "Robustness Certificates for
Implicit Neural Networks: A Mixed Monotone Contractive Approach", L4DC 2022.
"""

from __future__ import annotations


import numpy as np
from numba import njit

import contraction

from solvers import solve, solve_adjoint
from solvers.engine import blas_threads_for

from ._network import ImplicitNetwork, check_count, check_real

__all__ = [
    "embedded_matrices",
    "interval_bounds",
    "margin_lower_bounds",
    "certified_by_interval",
    "certified_by_lipschitz",
    "certified_accuracy",
    "fgsm_attack",
    "pgd_attack",
    "robust_accuracy",
    "interval_loss_and_grad",
    "robustness_table",
    "format_robustness",
    "plot_robustness",
    "robustness_figure",
]

DATA_RANGE = (0.0, 1.0)


def embedded_matrices(A, B):
    """``(𝒜, ℬ)``: the embedded network's ``2n × 2n`` matrix and ``2n × 2m`` input matrix
    (acting on ``[u_hi, u_lo]``); for teaching and tests, the solvers use a cheaper form."""
    off = ~np.eye(A.shape[0], dtype=bool)
    A_N = np.where(off & (A < 0), A, 0)
    A_M = A - A_N
    Bp, Bm = np.maximum(B, 0), np.minimum(B, 0)
    return np.block([[A_M, A_N], [A_N, A_M]]), np.block([[Bp, Bm], [Bm, Bp]])


def _radius(eps, name: str = "eps") -> float:
    """``eps`` checked as an ℓ∞ radius: a finite number >= 0 (pixel units)."""
    return check_real(eps, f"{name} (an l-inf radius in pixel units, data in [0, 1])", 0)


def _box(U, eps):
    """The ε-box around ``U``, clipped to the data range."""
    U = np.asarray(U, dtype=np.float64)
    return np.clip(U - eps, *DATA_RANGE), np.clip(U + eps, *DATA_RANGE)


#: Solver tolerance for certificates (looser training tolerances would widen the bounds).
CERTIFY_ATOL = 1e-6


def _solve_embedded(net: ImplicitNetwork, U_lo, U_hi, atol=None, solver=None):
    """Embedded equilibrium ``[x_hi, x_lo]`` over the box; returns what the adjoint needs.

    ``B⁺ u_hi + B⁻ u_lo = B u_c + |B| u_r`` with centre ``u_c`` and radius ``u_r``, so the
    injected inputs cost two ``n × m`` products rather than one ``2n × 2m``.
    """
    AA, W2, U_c, U_r = net.embedded_system(U_lo, U_hi)
    s = net.solver if solver is None else solver
    # The embedded network contracts with the original's factor and alpha*: averaging, or
    # Anderson on top of it when the network is solved with Anderson.
    method = "anderson" if s.method == "anderson" else "average"
    res = solve(AA, W2, method=method, alpha=s.step(method), atol=s.atol if atol is None else atol, max_iter=s.max_iter,
                activation=net.activation, engine=s.engine, check=False)
    return AA, W2, U_c, U_r, res


def interval_bounds(net: ImplicitNetwork, U_lo, U_hi):
    """Bounds over the box ``[U_lo, U_hi]``: ``(X_lo, X_hi, Y_lo, Y_hi)``.

    The embedded fixed point is solved with :func:`solvers.solve` (averaged iteration at the
    original network's ``α*``). ``Y`` bounds are ``C⁺ h_hi + C⁻ h_lo + c`` and vice versa, ``h``
    the readout's features (:meth:`ImplicitNetwork.hidden_bounds`: the states for a dense
    layer, pooled features, or a hidden readout layer's outputs).
    """
    U_lo, U_hi = np.atleast_2d(U_lo), np.atleast_2d(U_hi)
    m = net.n_in
    if U_lo.shape != U_hi.shape or U_lo.ndim != 2 or U_lo.shape[1] != m:
        raise ValueError(f"U_lo and U_hi must have the same shape (batch, {m}) for this network (n_in = {m}), "
                         f"got U_lo {U_lo.shape} and U_hi {U_hi.shape}")
    U_lo = net.check_inputs(U_lo, "U_lo").astype(np.float64, copy=False)
    U_hi = net.check_inputs(U_hi, "U_hi").astype(np.float64, copy=False)
    if np.any(U_lo > U_hi):
        first = np.argwhere(U_lo > U_hi)[0].tolist()
        raise ValueError(f"U_lo must be <= U_hi entrywise (the box [U_lo, U_hi]), got U_lo > U_hi at (row, column) "
                         f"{first}")
    n = net.n_hidden
    *_, res = _solve_embedded(net, U_lo, U_hi, atol=min(net.solver.atol, CERTIFY_ATOL))
    X = res.x.astype(np.float64)
    # Sound at the solver's tolerance: widen by the a-posteriori bound ‖x − x*‖∞ ≤ r/(1 − max(0, μ)),
    # valid because μ∞(𝒜) = μ∞(A); without a contraction certificate the bound is infinite.
    err = res.error_bound[:, None]
    # Every state is a value of σ: the widened bounds are clamped to σ's range, which keeps them
    # sound and stops the widening from costing certificates (ReLU lower bounds sat ~1e-5 below 0).
    low, high = net.activation.range
    X_hi, X_lo = np.minimum(X[:, :n] + err, high), np.maximum(X[:, n:] - err, low)
    # The readout over the feature bounds (exact: each state enters one feature with a
    # non-negative weight), through its hidden layer when it has one.
    H_lo, H_hi = net.hidden_bounds(net.features(X_lo), net.features(X_hi))
    C = net.C.astype(np.float64)
    Cp, Cm = np.maximum(C, 0), np.minimum(C, 0)
    with np.errstate(invalid="ignore"):  # inf · 0 where no certificate: the bound is infinite
        Y_hi = np.nan_to_num(H_hi @ Cp.T + H_lo @ Cm.T + net.c, nan=np.inf)
        Y_lo = np.nan_to_num(H_lo @ Cp.T + H_hi @ Cm.T + net.c, nan=-np.inf)
    return X_lo, X_hi, Y_lo, Y_hi


def margin_lower_bounds(net: ImplicitNetwork, X_lo, X_hi, labels):
    """Lower bound of ``(C_k − C_j) h + c_k − c_j`` over the box, ``(batch, q)`` (0 at ``j = k``).

    Taken over the readout's feature bounds (:meth:`ImplicitNetwork.features`, exact: each
    state enters one feature with a non-negative weight), which for a convolutional layer are
    ``pool²`` times fewer than its states, and through a hidden readout layer when there is
    one (:meth:`ImplicitNetwork.hidden_bounds`): ``h`` is the last linear layer's input. A
    hidden layer's linear relaxation (:meth:`ImplicitNetwork.relaxed_margins`) is taken too,
    and the larger of the two sound bounds kept."""
    C = net.C.astype(np.float64)
    c = net.c.astype(np.float64)
    F_lo, F_hi = net.features(X_lo), net.features(X_hi)
    H_lo, H_hi = net.hidden_bounds(F_lo, F_hi)
    D = C[labels][:, None, :] - C[None, :, :]  # (batch, q, features)
    with np.errstate(invalid="ignore"):
        low = (np.maximum(D, 0) * H_lo[:, None, :] + np.minimum(D, 0) * H_hi[:, None, :]).sum(axis=2)
    low = np.nan_to_num(low, nan=-np.inf) + (c[labels][:, None] - c[None, :])
    relaxed = net.relaxed_margins(F_lo, F_hi, labels)
    if relaxed is not None:
        low = np.maximum(low, relaxed)
    low[np.arange(len(labels)), labels] = 0.0
    return low


#: Substitutions of the equilibrium equation behind a margin's linear bound
#: (:func:`substituted_margins`); each gives a sound bound and the largest is kept.
SUBSTITUTION_STEPS = 6
#: Margins bounded per call of :func:`substituted_margins` (memory: a few state vectors each).
SUBSTITUTION_CHUNK = 256


def substituted_margins(net: ImplicitNetwork, X_lo, X_hi, U_lo, U_hi, rows, k, j, steps: int = SUBSTITUTION_STEPS):
    """Lower bounds of the margins ``y_k − y_j`` tighter than the state box, for ReLU layers.

    ``X_lo``, ``X_hi`` bound the equilibrium over the input box ``[U_lo, U_hi]`` (finite, as
    :func:`interval_bounds` gives them); entry ``r`` bounds the margin ``y_{k[r]} − y_{j[r]}``
    of sample ``rows[r]``. A margin's linear lower bound ``w·x + e`` in the states
    (:meth:`ImplicitNetwork.margin_lines` through :meth:`ImplicitNetwork.features_T`) is
    minimised over the state box; then, ``steps`` times, the equilibrium is substituted into
    it. With the self-loops ``a_ii < 1`` taken out, the equilibrium of ``x = relu(A x + B u +
    b)`` is ``x_i = relu(r_i) / (1 − a_ii)``, ``r = (A − diag a) x + B u + b``, and ``r_i``
    lies in the exact image ``[l_i, u_i]`` of the state and input boxes. Each ReLU is replaced
    by a line below ``w_i relu(r_i)`` on ``[l_i, u_i]`` (the chord where ``w_i < 0``; ``r_i``
    or ``0`` where ``w_i ≥ 0``), which leaves ``((A − diag a)ᵀh)·x + (Bᵀh)·u + const``: the
    input's part is minimised over the input box jointly with the earlier substitutions'
    (the interval bound takes each state's worst input on its own), the states' over their
    box. Every step's bound is sound; the largest of them is returned, ``(len(rows),)``."""
    n = net.n_hidden
    X_lo, X_hi = np.asarray(X_lo, np.float64)[rows], np.asarray(X_hi, np.float64)[rows]
    U_lo, U_hi = np.asarray(U_lo, np.float64)[rows], np.asarray(U_hi, np.float64)[rows]
    AA, W2, _, _ = net.embedded_system(U_lo, U_hi)
    Z2 = net.embedded_product(AA, np.hstack([X_hi, X_lo])) + np.asarray(W2, np.float64)
    diag = net.state_diagonal()
    if np.any(diag >= 1):  # no equilibrium of this form: the state box alone
        steps = 0
    # The embedded network's pre-activations hold a_ii x_hi (x_lo) in the upper (lower) one.
    R_hi, R_lo = Z2[:, :n] - diag * X_hi, Z2[:, n:] - diag * X_lo
    U_c, U_r = (U_hi + U_lo) * 0.5, (U_hi - U_lo) * 0.5
    bias = net.bias_vector()
    gain = 1.0 / np.where(diag < 1, 1.0 - diag, 1.0)  # used only where every a_ii < 1
    crossing = (R_lo < 0) & (R_hi > 0)
    chord = np.where(crossing, R_hi / np.where(crossing, R_hi - R_lo, 1.0), 0.0)
    identity_below = R_hi >= -R_lo  # a crossing unit's lower line: r where its positive part is larger, else 0

    def over_state_box(w):
        return np.minimum(w * X_lo, w * X_hi).sum(axis=1)

    best = np.full(len(rows), -np.inf)
    for g, e in net.margin_lines(net.features(X_lo), net.features(X_hi), k, j):
        w = net.features_T(g).astype(np.float64)
        const, v = np.asarray(e, np.float64).copy(), np.zeros_like(U_c)
        best = np.maximum(best, const + over_state_box(w))
        for _ in range(steps):
            w = w * gain
            h = w * np.where(crossing, np.where(w < 0, chord, identity_below), R_lo >= 0)
            const += -(h * np.where(crossing & (w < 0), R_lo, 0.0)).sum(axis=1) + h @ bias
            v += net._input_product_T(h)
            w = net.state_product_T(h) - diag * h
            best = np.maximum(best, const + (v * U_c).sum(axis=1) - (np.abs(v) * U_r).sum(axis=1) + over_state_box(w))
    return best


def certified_by_interval(net: ImplicitNetwork, U, labels, eps: float) -> np.ndarray:
    """Per sample: every margin of class ``labels`` is positive over the clipped ε-box.

    The margins the box bounds leave unproved (:func:`margin_lower_bounds`) are bounded again
    with the equilibrium equation substituted (:func:`substituted_margins`, ReLU layers)."""
    eps = _radius(eps)
    U = net.check_inputs(U)
    labels = net.check_labels(labels, len(U), "labels")
    lo, hi = _box(U, eps)
    X_lo, X_hi, _, _ = interval_bounds(net, lo, hi)
    low = margin_lower_bounds(net, X_lo, X_hi, labels)
    low[np.arange(len(labels)), labels] = np.inf
    if net.activation.name == "relu":
        # Samples left open with finite bounds; of them only those classified correctly can be
        # certified (a misclassified input is in its own box).
        cand = np.flatnonzero((low.min(axis=1) <= 0) & np.isfinite(X_lo).all(axis=1) & np.isfinite(X_hi).all(axis=1))
        if len(cand):
            cand = cand[net.predict(U[cand]) == labels[cand]]
        rows, cls = np.nonzero(low[cand] <= 0)
        rows = cand[rows]
        for s in range(0, len(rows), SUBSTITUTION_CHUNK):
            r, c = rows[s : s + SUBSTITUTION_CHUNK], cls[s : s + SUBSTITUTION_CHUNK]
            low[r, c] = np.maximum(low[r, c], substituted_margins(net, X_lo, X_hi, lo, hi, r, labels[r], c,
                                                                           steps=SUBSTITUTION_STEPS))
    return low.min(axis=1) > 0


def certified_by_lipschitz(net: ImplicitNetwork, U, labels, eps: float, form: str = "tight", eta=None) -> np.ndarray:
    """Per sample: correctly classified with certified radius > ε (``contraction.certified_radius``)."""
    eps = _radius(eps)
    U = net.check_inputs(U)
    labels = net.check_labels(labels, len(U), "labels")
    A, B = net.state_operator(), net.input_operator()
    conv = isinstance(A, contraction.Conv2d)
    if not conv:
        A, B = A.astype(np.float64), B.astype(np.float64)
    L_x = contraction.lipschitz_bound(A, B, eta=eta, form=form)  # validates eta and form
    eta = None if eta is None else np.asarray(eta, dtype=np.float64)
    if not np.isfinite(L_x):
        return np.zeros(len(labels), dtype=bool)
    passes = [net.forward_pass(U[i : i + 1000]) for i in range(0, len(U), 1000)]
    logits = np.concatenate([fp.Y for fp in passes])
    # The computed state is within err of x* (in the norm of L_x), so a radius shrinks by err / L_x.
    A64 = A
    eta_state = None if eta is None else net.state_weights(eta)
    scale = 1.0 if eta is None else eta_state[None, :]
    residual = np.concatenate([(np.abs(net.activation(fp.Z.astype(np.float64)) - fp.X) / scale).max(axis=1)
                               for fp in passes])
    err = contraction.error_bound(A64, residual, eta=eta)
    # Logits are M h + c with ‖δh‖∞ ≤ κ ‖δx‖_{∞,η}: |(M_k − M_j) δh| ≤ ‖M_k − M_j‖_1 κ ‖δx‖_{∞,η}.
    M, kappa = net.margin_readout(eta)
    radius, pred = contraction.certified_radius(logits.astype(np.float64), M, L_x * kappa)
    return (pred == labels) & (radius - err / L_x > eps)


def certified_accuracy(net: ImplicitNetwork, U, y, eps: float, method: str = "interval", batch_size: int = 500,
                       form: str = "tight", eta=None) -> float:
    """Fraction of samples certified correct at ℓ∞ radius ``eps`` (pixel units)."""
    if method not in ("interval", "lipschitz"):
        raise ValueError(f"method must be 'interval' or 'lipschitz', got {method!r}")
    eps = _radius(eps)
    batch_size = check_count(batch_size, "batch_size")
    U = net.check_inputs(U)
    y = net.check_labels(y, len(U), "y")
    if method == "lipschitz":
        return float(certified_by_lipschitz(net, U, y, eps, form=form, eta=eta).mean())
    ok = [certified_by_interval(net, U[i : i + batch_size], y[i : i + batch_size], eps)
          for i in range(0, len(U), batch_size)]
    return float(np.concatenate(ok).mean())


# -- attacks -------------------------------------------------------------------------------
def _project(U_adv, U, eps):
    return np.clip(np.clip(U_adv, U - eps, U + eps), *DATA_RANGE)


def fgsm_attack(net: ImplicitNetwork, U, y, eps: float) -> np.ndarray:
    """One signed-gradient step of size ε, clipped to the ball and the data range."""
    eps = _radius(eps)
    U = net.check_inputs(U).astype(np.float64, copy=False)
    y = net.check_labels(y, len(U), "y")
    g = net.input_gradient(U, y).astype(np.float64)
    return _project(U + eps * np.sign(g), U, eps)


def pgd_attack(net: ImplicitNetwork, U, y, eps: float, steps: int = 20, step_size=None, restarts: int = 1,
               seed: int = 0) -> np.ndarray:
    """ℓ∞ projected gradient ascent on the cross-entropy, random start, ``restarts`` tries.

    Returns, per sample, the perturbed input of the restart with the largest loss (a
    misclassifying one when any restart found one).
    """
    eps = _radius(eps)
    steps = check_count(steps, "steps")
    restarts = check_count(restarts, "restarts")
    step_size = 2.5 * eps / steps if step_size is None else check_real(step_size, "step_size", 0, strict=True)
    rng = np.random.default_rng(check_count(seed, "seed", 0))
    U = net.check_inputs(U).astype(np.float64, copy=False)
    y = net.check_labels(y, len(U), "y")

    def score(X):
        logits = net.forward(X).astype(np.float64)
        z = logits - logits.max(axis=1, keepdims=True)
        ce = -(z[np.arange(len(y)), y] - np.log(np.exp(z).sum(axis=1)))
        return ce + 1e6 * (logits.argmax(axis=1) != y)

    # The clean input competes too: an attack never reports a sample as more robust than clean.
    best = U.copy()
    best_score = score(U)
    for _ in range(int(restarts)):
        X = _project(U + rng.uniform(-eps, eps, U.shape), U, eps)
        for _ in range(int(steps)):
            g = net.input_gradient(X, y).astype(np.float64)
            X = _project(X + step_size * np.sign(g), U, eps)
        s = score(X)
        better = s > best_score
        best[better], best_score[better] = X[better], s[better]
    return best


def robust_accuracy(net: ImplicitNetwork, U, y, eps: float, attack: str = "pgd", batch_size: int = 500, **kw) -> float:
    """Accuracy under the attack (an upper bound on the true robust accuracy)."""
    if attack not in ("pgd", "fgsm"):
        raise ValueError(f"attack must be 'pgd' or 'fgsm', got {attack!r}")
    if attack == "fgsm" and kw:
        raise TypeError(f"attack='fgsm' takes no options, got {sorted(kw)}")
    eps = _radius(eps)
    batch_size = check_count(batch_size, "batch_size")
    U = net.check_inputs(U)
    y = net.check_labels(y, len(U), "y")
    correct = 0
    for i in range(0, len(U), batch_size):
        Ub, yb = U[i : i + batch_size], y[i : i + batch_size]
        adv = pgd_attack(net, Ub, yb, eps, **kw) if attack == "pgd" else fgsm_attack(net, Ub, yb, eps)
        correct += int((net.predict(adv) == yb).sum())
    return correct / len(U)


# -- interval-bound training ------------------------------------------------------------------
@njit(cache=True)
def _margin_low(X_lo, X_hi, C, c, y):
    """Training's margin lower bounds ``min over the box of (C_k − C_j) x + c_k − c_j``,
    ``k = y[b]``, ``(batch, q)``, 0 at ``j = k`` (finite boxes; see :func:`margin_lower_bounds`)."""
    batch, n = X_lo.shape
    q = C.shape[0]
    low = np.empty((batch, q))
    for b in range(batch):
        k = y[b]
        for j in range(q):
            acc = 0.0
            for i in range(n):
                d = C[k, i] - C[j, i]
                acc += d * (X_lo[b, i] if d >= 0.0 else X_hi[b, i])
            low[b, j] = acc + c[k] - c[j]
        low[b, k] = 0.0
    return low


@njit(cache=True)
def _margin_low_grad(X_lo, X_hi, C, y, dlow):
    """Gradients of ``Σ dlow ⊙ low`` for :func:`_margin_low`: ``(gX_lo, gX_hi, gC, gc)``."""
    batch, n = X_lo.shape
    q = C.shape[0]
    gX_lo = np.zeros((batch, n))
    gX_hi = np.zeros((batch, n))
    gC = np.zeros((q, n))
    gc = np.zeros(q)
    for b in range(batch):
        k = y[b]
        for j in range(q):
            g = dlow[b, j]
            if j == k or g == 0.0:
                continue
            gc[k] += g
            gc[j] -= g
            for i in range(n):
                d = C[k, i] - C[j, i]
                if d >= 0.0:
                    gX_lo[b, i] += g * d
                    x = X_lo[b, i]
                else:
                    gX_hi[b, i] += g * d
                    x = X_hi[b, i]
                gC[k, i] += g * x
                gC[j, i] -= g * x
    return gX_lo, gX_hi, gC, gc


def interval_loss_and_grad(net: ImplicitNetwork, U, y, eps: float, solver=None, stats: bool = False, relax: int = 0):
    """Cross-entropy of the worst-case logits over the ε-box and its gradients.

    Worst-case logits: ``z_j = −lower((C_y − C_j) x + c_y − c_j)`` for ``j ≠ y`` and
    ``z_y = 0``; their cross-entropy upper-bounds the worst-case cross-entropy in the box.
    The embedded fixed point is differentiated with its own adjoint (``solve_adjoint`` on
    ``𝒜``), then pulled back through the sign splits of ``A``, ``B`` (a.e. exact).
    ``solver`` (a :class:`SolverConfig`) overrides ``net.solver``. With ``stats=True`` a third
    item gives the embedded solves' mean ``forward_iterations`` and ``adjoint_iterations``.
    ``relax``: for a hidden readout layer, the margins of each sample's ``relax`` closest
    classes (smallest interval bound) are also bounded by the layer's linear relaxation
    (:meth:`ImplicitNetwork.relaxed_margin_bounds`), and the larger sound bound is the one
    trained on; 0: the interval bound alone.
    """
    y = np.asarray(y)
    relax = min(check_count(relax, "relax", 0), net.n_out - 1)
    lo, hi = _box(U, _radius(eps))
    n, batch = net.n_hidden, len(y)
    AA, W2, U_c, U_r, res = _solve_embedded(net, lo, hi, solver=solver)
    X = res.x.astype(np.float64)
    # Margins over the readout's feature bounds: exact, since the features are a non-negative
    # combination of the states (each state in one feature).
    F_hi, F_lo = net.features(X[:, :n]), net.features(X[:, n:])
    Z = net.preactivation_bounds(F_lo, F_hi, net.dtype) if relax else None
    H_lo, H_hi = net.hidden_bounds(F_lo, F_hi, net.dtype, Z=Z)  # through a hidden readout layer, if any
    C = net.C.astype(np.float64)
    c = net.c.astype(np.float64)
    rows = np.arange(batch)
    low = _margin_low(H_lo, H_hi, C, c, y)
    relaxed = None
    if relax:
        open_ = low.copy()
        open_[rows, y] = np.inf
        cls = np.argsort(open_, axis=1, kind="stable")[:, :relax]
        relaxed = net.relaxed_margin_bounds(F_lo, F_hi, y, cls, net.dtype, Z=Z)
    if relaxed is not None:
        bound, context = relaxed
        picked = low[rows[:, None], cls]
        wins = bound > picked
        low[rows[:, None], cls] = np.where(wins, bound, picked)
    z = -low
    zs = z - z.max(axis=1, keepdims=True)
    logp = zs - np.log(np.exp(zs).sum(axis=1, keepdims=True))
    value = float(-logp[rows, y].mean())
    dz = np.exp(logp)
    dz[rows, y] -= 1.0
    dz /= batch
    dz[rows, y] = 0.0  # z_y is the constant 0
    dlow = -dz
    gZ = None
    if relaxed is not None:
        w = np.where(wins, dlow[rows[:, None], cls], 0.0)
        dlow[rows[:, None], cls] = np.where(wins, 0.0, dlow[rows[:, None], cls])
        rF_lo, rF_hi, gZ_lo, gZ_hi, extra = net.relaxed_margin_bounds_T(context, w)
        gZ = (gZ_lo, gZ_hi)
    gH_lo, gH_hi, gC, gc = _margin_low_grad(H_lo, H_hi, C, y, dlow)
    gF_lo, gF_hi, head = net.hidden_bounds_T(F_lo, F_hi, H_lo, H_hi, gH_lo, gH_hi, net.dtype, gZ=gZ)
    if relaxed is not None:
        gF_lo, gF_hi = gF_lo + rF_lo, gF_hi + rF_hi
        head = {key: head[key] + extra[key] for key in head}
        gC, gc = gC + extra["C"], gc + extra["c"]
    # Adjoint of the embedded equilibrium.
    dt = net.dtype
    G2 = np.hstack([net.features_T(gF_hi), net.features_T(gF_lo)]).astype(dt)
    Z2 = net.embedded_product(AA, res.x) + W2  # in the network's dtype, like the solve
    s = net.solver if solver is None else solver
    lam, ares = solve_adjoint(AA, Z2, G2, method="average", alpha=s.step("average"), atol=s.adjoint_atol,
                           max_iter=s.max_iter, activation=net.activation, engine=s.engine, check=False)
    # The parameter-gradient products run in the network's dtype (float32 training stays float32).
    V = (lam.astype(np.float64) * net.activation.derivative(Z2)).astype(dt)
    grads = {**net.embedded_gradients(V, X.astype(dt), U_c, U_r), **head, "C": gC, "c": gc}
    grads = {k: np.asarray(v).astype(net.dtype) for k, v in grads.items()}
    if stats:
        return value, grads, {"forward_iterations": float(res.iterations.mean()),
                              "adjoint_iterations": float(ares.iterations.mean())}
    return value, grads


def robustness_table(net: ImplicitNetwork, U, y, eps_list, attacks: bool = True, eta=None, pgd_steps: int = 20,
                     pgd_restarts: int = 1, seed: int = 0, progress: bool = False) -> list:
    """One row per ε: clean, certified (interval; Lipschitz tight and paper forms), FGSM and PGD.
    ``progress``: a tqdm bar on stderr, one step per measurement, named by its ε and kind."""
    try:
        eps_list = list(eps_list)
    except TypeError:
        raise ValueError(f"eps_list must be a sequence of radii, got {eps_list!r}") from None
    if not eps_list:
        raise ValueError("eps_list must hold at least one radius, got an empty sequence")
    eps_list = [_radius(e, "each eps in eps_list") for e in eps_list]
    if attacks:
        check_count(pgd_steps, "pgd_steps")
        check_count(pgd_restarts, "pgd_restarts")
        check_count(seed, "seed", 0)
    U = net.check_inputs(U)
    y = net.check_labels(y, len(U), "y")
    measures = _measures(eta, attacks, pgd_steps, pgd_restarts, seed)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(eps_list) * len(measures), unit="measure", leave=False)
    try:
        with blas_threads_for(500, net.n_hidden):
            return _robustness_rows(net, U, y, eps_list, measures, bar)
    finally:
        if bar is not None:
            bar.close()


def _measures(eta, attacks, pgd_steps, pgd_restarts, seed) -> list:
    """``(column, what, f(net, U, y, eps))`` of each measurement of a row of :func:`robustness_table`."""
    measures = [
        ("certified_interval", "interval certificate", lambda net, U, y, eps: certified_accuracy(net, U, y, eps)),
        ("certified_lipschitz", "Lipschitz certificate",
         lambda net, U, y, eps: certified_accuracy(net, U, y, eps, "lipschitz", eta=eta)),
        ("certified_lipschitz_paper", "Lipschitz certificate (paper)",
         lambda net, U, y, eps: certified_accuracy(net, U, y, eps, "lipschitz", form="paper", eta=eta)),
    ]
    if attacks:
        measures += [
            ("fgsm", "FGSM", lambda net, U, y, eps: robust_accuracy(net, U, y, eps, attack="fgsm")),
            ("pgd", f"PGD ({pgd_steps} steps)", lambda net, U, y, eps: robust_accuracy(
                net, U, y, eps, attack="pgd", steps=pgd_steps, restarts=pgd_restarts, seed=seed)),
        ]
    return measures


def _robustness_rows(net, U, y, eps_list, measures, bar):
    clean = net.accuracy(U, y)
    rows = []
    for eps in eps_list:
        row = {"eps": float(eps), "clean": clean}
        for column, what, measure in measures:
            if bar is not None:
                bar.set_description(f"eps {eps:g}: {what}")
            row[column] = measure(net, U, y, eps)
            if bar is not None:
                bar.update(1)
        rows.append(row)
    return rows


_ROBUST_COLUMNS = (("eps", "eps"), ("clean", "clean"), ("certified_interval", "cert.interval"),
                   ("certified_lipschitz", "cert.lip(tight)"), ("certified_lipschitz_paper", "cert.lip(paper)"),
                   ("fgsm", "FGSM"), ("pgd", "PGD"))


def format_robustness(rows) -> str:
    cols = [(k, h) for k, h in _ROBUST_COLUMNS if k in rows[0]]
    lines = ["  ".join(f"{h:>15}" for _, h in cols)]
    for r in rows:
        lines.append("  ".join(f"{r[k]:>15.4f}" if k != "eps" else f"{r[k]:>15g}" for k, _ in cols))
    return "\n".join(lines)


#: The curves :func:`robustness_figure` draws, one panel each: row key, panel title.
_ROBUST_PANELS = (("certified_interval", "certified by interval bounds"),
                  ("certified_lipschitz", "certified by the Lipschitz bound"),
                  ("pgd", "under PGD attack (empirical, an upper bound)"))
_MARKERS = "osD^vPX*"


def robustness_figure(curves: dict, title: str = ""):
    """Accuracy against the ℓ∞ radius ε as a :class:`matplotlib.figure.Figure`.

    ``curves`` maps a model name to its :func:`robustness_table` rows. One panel per kind of
    curve present in the rows (interval-certified, Lipschitz-certified, PGD), one colour and
    marker per model across panels, one shared legend below the panels; each curve starts at
    the clean accuracy at ε = 0. ``title`` defaults to a description of what is drawn.
    """
    import matplotlib
    from matplotlib.figure import Figure  # an explicit figure: no pyplot state, no backend choice

    if not curves or any(not rows for rows in curves.values()):
        raise ValueError("curves must map each model name to a non-empty list of robustness rows")
    panels = [(key, name) for key, name in _ROBUST_PANELS if any(key in rows[0] for rows in curves.values())]
    ncol = min(len(curves), 3)
    legend_rows = -(-len(curves) // ncol)
    fig = Figure(figsize=(4.3 * len(panels), 4.0 + 0.3 * legend_rows), layout="constrained")
    axes = fig.subplots(1, len(panels), sharey=True, squeeze=False)[0]
    colours = matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]
    handles = {}
    for i, (model, rows) in enumerate(curves.items()):
        style = dict(color=colours[i % len(colours)], marker=_MARKERS[i % len(_MARKERS)], clip_on=False)
        start = [] if rows[0]["eps"] == 0 else [(0.0, rows[0]["clean"])]
        for ax, (key, _) in zip(axes, panels):
            if key in rows[0]:
                points = start + [(r["eps"], r[key]) for r in rows]
                (line,) = ax.plot(*zip(*points), "-", **style)
                handles.setdefault(model, line)
    for ax, (_, name) in zip(axes, panels):
        ax.set_title(name, fontsize=11)
        ax.set_xlabel("l-inf radius eps (pixel units, data in [0, 1])")
        ax.set_ylim(0, 1)
        ax.set_xlim(left=0)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("accuracy (fraction of test samples)")
    fig.legend(list(handles.values()), list(handles), loc="outside lower center", ncol=ncol, fontsize=10)
    if not title:
        drawn = [key for key, _ in panels]
        certified = " and ".join(word for key, word in (("certified_interval", "interval"),
                                                        ("certified_lipschitz", "Lipschitz")) if key in drawn)
        title = "Accuracy against the l-inf radius: " + (f"certified ({certified})" if certified else "")
        if "pgd" in drawn:
            title += (" and " if certified else "") + "under PGD attack"
    fig.suptitle(title)
    return fig


def plot_robustness(curves: dict, path, title: str = ""):
    """Write :func:`robustness_figure` to ``path`` (PNG, or any format matplotlib infers from the suffix)."""
    from pathlib import Path

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    robustness_figure(curves, title=title).savefig(path, dpi=150)
    return path
