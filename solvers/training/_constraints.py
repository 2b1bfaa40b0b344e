"""Ways to keep the implicit layer's matrix well-posed during training.

Each constraint owns the trainable parameters that define ``A`` (``raw``), builds ``A``
from them, pulls the gradient with respect to ``A`` back to them (chain rule), and, for the
projected-gradient ones, projects after every optimiser step.

References
----------
S. Jafarpour et al., "Robust Implicit Networks via Non-Euclidean Contractions", NeurIPS 2021.
L. El Ghaoui et al., "Implicit Deep Learning", SIAM J. Math. Data Sci., 2021.
E. Winston and J. Z. Kolter, "Monotone operator equilibrium networks", NeurIPS 2020.
"""

from __future__ import annotations

import dataclasses

import numpy as np

import contraction

__all__ = ["Constraint", "CONSTRAINTS", "CONV_CONSTRAINTS", "make_constraint"]

#: name -> one-line description.
CONSTRAINTS = {
    "mu_inf": "project A onto {mu_inf(A) <= gamma} after every step (projected gradient, seed paper)",
    "norm_inf": "project A onto {||A||_inf <= gamma} after every step (implicit deep learning)",
    "nemon_param": "A = gamma I + D^-1 T D - diag(|T| 1), D = diag(e^d) (seed authors' parametrisation); "
                   "for a convolution their conv layer's: K = g V/||V||_F, centre taps shifted by "
                   "gamma - C max|K| (certifies nothing: its true mu_inf is reported)",
    "mon": "A = (1 - m) I - P^T P + S - S^T with m = 1 - gamma (monotone operator networks)",
    "none": "unconstrained A (the solver's statuses tell when it breaks)",
    "zero": "A = 0: a one-hidden-layer feed-forward network (the explicit baseline)",
}


#: The constraints a convolution kernel trains under (the others are defined on matrices).
CONV_CONSTRAINTS = ("mu_inf", "none", "nemon_param")


@dataclasses.dataclass(frozen=True)
class Constraint:
    """A named constraint with its bound ``gamma`` (``m = 1 − gamma`` for ``mon``).

    ``diag_min`` (``mu_inf`` only): also keep ``a_ii ≥ diag_min``, which holds the averaged
    step ``α* ≥ 1/(1 − diag_min)`` (see :func:`contraction.project_mu_inf`).
    """

    name: str
    gamma: float = 0.9
    diag_min: float | None = None

    # -- which solver guarantees fit --------------------------------------------------
    @property
    def forward_method(self) -> str:
        # Monotone networks are guaranteed in l2 for the splittings, not for averaging.
        return "peaceman_rachford" if self.name == "mon" else "average"

    @property
    def adjoint_method(self) -> str:
        # The monotone parametrisation has no l1 guarantee for the averaged adjoint; Anderson
        # converges in practice, and the network falls back to a dense solve where it does not.
        return "anderson" if self.name == "mon" else "average"

    @property
    def projected(self) -> bool:
        return self.name in ("mu_inf", "norm_inf")

    # -- parameters -----------------------------------------------------------------
    def init(self, A0: np.ndarray, rng: np.random.Generator) -> dict:
        """Raw parameters whose matrix starts near ``A0`` and satisfies the constraint."""
        n = A0.shape[0]
        if self.name in ("mu_inf", "norm_inf", "none"):
            return self.project({"A": A0.copy()})
        if self.name == "zero":
            return {"Z": np.zeros((n, n), A0.dtype)}
        if self.name == "nemon_param" and A0.ndim == 4:  # the seed authors' conv layer, at g = 1
            return {"V": A0.copy(), "g": np.ones(1, A0.dtype)}
        if self.name == "nemon_param":
            return {"T": A0.copy(), "d": np.zeros(n, A0.dtype)}
        scale = np.sqrt(np.abs(A0).mean() + 1e-12)
        return {
            "P": (rng.standard_normal((n, n)) * scale / np.sqrt(n)).astype(A0.dtype),
            "S": (0.5 * A0).astype(A0.dtype),
        }

    def matrix(self, raw: dict) -> np.ndarray:
        if "A" in raw:
            return raw["A"]
        if self.name == "zero":
            return raw["Z"]
        if "V" in raw:
            return _seed_conv_kernel(raw["V"], raw["g"], self.gamma)
        if self.name == "nemon_param":
            T, d = raw["T"], raw["d"]
            A = T * np.exp(d[None, :] - d[:, None])
            A[np.diag_indices_from(A)] += self.gamma - np.abs(T).sum(axis=1)
            return A
        P, S = raw["P"], raw["S"]
        n = P.shape[0]
        return (self.gamma * np.eye(n, dtype=P.dtype) - P.T @ P + S - S.T).astype(P.dtype)

    def pullback(self, raw: dict, gA: np.ndarray) -> dict:
        """Gradient with respect to ``raw`` from the gradient ``gA`` with respect to ``A``."""
        if "A" in raw:
            return {"A": gA}
        if self.name == "zero":
            return {"Z": np.zeros_like(gA)}
        if "V" in raw:
            return _seed_conv_pullback(raw["V"], raw["g"], gA)
        if self.name == "nemon_param":
            T, d = raw["T"], raw["d"]
            E = np.exp(d[None, :] - d[:, None])
            gT = gA * E - np.diagonal(gA)[:, None] * np.sign(T)
            GE = gA * T * E
            gd = GE.sum(axis=0) - GE.sum(axis=1)
            return {"T": gT, "d": gd}
        P = raw["P"]
        return {"P": -P @ (gA + gA.T), "S": gA - gA.T}

    def project(self, raw: dict) -> dict:
        if self.name == "mu_inf" and raw["A"].ndim == 4:  # a convolution kernel: μ∞ is a kernel quantity
            K = raw["A"]
            op = contraction.Conv2d(K, K.shape[2:], "circular")  # the projection does not depend on the image
            raw["A"] = contraction.project_mu_inf(op, self.gamma, diag_min=self.diag_min).kernel.astype(K.dtype)
        elif self.name == "mu_inf":
            raw["A"] = contraction.project_mu_inf(raw["A"], self.gamma, diag_min=self.diag_min).astype(raw["A"].dtype)
        elif self.name == "norm_inf":
            raw["A"] = contraction.project_norm_inf(raw["A"], self.gamma).astype(raw["A"].dtype)
        return raw

    # -- certificates ---------------------------------------------------------------
    def weights(self, raw: dict) -> np.ndarray | None:
        """Diagonal weights in which the constraint certifies ``μ_{∞,η}(A) ≤ γ`` (if any)."""
        if self.name == "nemon_param" and "d" in raw:
            return np.exp(-raw["d"].astype(np.float64))
        return None

    def violation(self, A: np.ndarray, raw: dict | None = None, tol: float | None = None) -> str | None:
        """``None`` when ``A`` satisfies the constraint (to ``tol``), else a message.

        The default tolerance covers rounding in ``A``'s dtype (a float32 matrix built in
        float64 and rounded can exceed γ by ~1e-6): ``max(1e-6, 1000 · eps)``.
        """
        conv = isinstance(A, contraction.Conv2d)  # a convolution: its kernel's quantities
        dtype = raw["A"].dtype if conv and raw is not None and "A" in raw else getattr(A, "dtype", np.float64)
        if tol is None:
            tol = max(1e-6, 1e3 * float(np.finfo(dtype).eps)) if np.issubdtype(dtype, np.floating) else 1e-6
        if conv and self.name not in CONV_CONSTRAINTS:
            raise ValueError(f"constraint {self.name!r} is not available for convolutional layers "
                             f"(use one of {CONV_CONSTRAINTS})")
        if conv and self.name == "nemon_param":
            return None  # the seed authors' conv layer claims mu_inf <= gamma without enforcing it: nothing to hold
        if not conv:
            A = A.astype(np.float64)
        if self.name == "mu_inf":
            v = contraction.mu_inf(A)
            ok, what = v <= self.gamma + tol, f"mu_inf(A) = {v:.6g}"
            low = float(A.diagonal().min() if conv else np.diagonal(A).min())
            if ok and self.diag_min is not None and low < self.diag_min - tol:
                ok, what = False, f"min_i a_ii = {low:.6g} < diag_min = {self.diag_min:g}"
        elif self.name == "norm_inf":
            v = contraction.induced_norm(A, np.inf)
            ok, what = v <= self.gamma + tol, f"||A||_inf = {v:.6g}"
        elif self.name == "nemon_param":
            eta = self.weights(raw) if raw is not None else contraction.optimal_weights(A)[0]
            v = contraction.mu_inf(A, eta)
            ok, what = v <= self.gamma + tol, f"mu_inf,eta(A) = {v:.6g}"
        elif self.name == "zero":
            v = float(np.abs(A).max())
            ok, what = v <= tol, f"max |a_ij| = {v:.3g} (A must be 0)"
        elif self.name == "mon":
            v = contraction.mu_2(A)
            ok, what = v <= self.gamma + tol, f"mu_2(A) = {v:.6g}"
        else:
            return None
        return None if ok else f"constraint {self.name} (gamma = {self.gamma}) violated: {what}"


def _seed_conv_kernel(V, g, m):
    """The seed authors' convolutional layer: ``K = g V / ‖V‖_F`` with every centre tap
    ``K[c, c, p, p]`` moved by ``m − C · max|K|`` (C output channels), meant to make ``μ∞ ≤ m``
    (it does not: a row holds ``C k²`` taps; see examples/conv_certificate.py)."""
    C, k = V.shape[0], V.shape[2]
    K = (g[0] / np.linalg.norm(V.astype(np.float64))) * V.astype(np.float64)
    K[np.arange(C), np.arange(C), k // 2, k // 2] += m - C * np.abs(K).max()
    return K.astype(V.dtype)


def _seed_conv_pullback(V, g, gA) -> dict:
    """Gradients with respect to ``V`` and ``g`` of :func:`_seed_conv_kernel` from ``gA``.

    With ``N = ‖V‖_F``, ``M = max|V|`` (at ``V_*``) and ``s = Σ_c gA[c, c, p, p]``, the kernel is
    ``(g/N)(V − C M E) + m E`` (``E`` the centre taps), so ``∂/∂g = (⟨gA, V⟩ − C M s)/N`` and
    ``∂/∂V = (g/N) gA − (g⟨gA, V⟩/N³) V − C g s (sign(V_*) e_* / N − M V / N³)`` (a.e.: one
    maximiser)."""
    V64, gA = V.astype(np.float64), gA.astype(np.float64)
    C, k = V.shape[0], V.shape[2]
    N = np.linalg.norm(V64)
    star = np.unravel_index(int(np.argmax(np.abs(V64))), V.shape)
    M = abs(V64[star])
    s = float(gA[np.arange(C), np.arange(C), k // 2, k // 2].sum())
    inner = float(np.sum(gA * V64))
    g0 = float(g[0])
    gV = (g0 / N) * gA - (g0 * inner / N**3) * V64 + (C * g0 * s * M / N**3) * V64
    gV[star] -= C * g0 * s * np.sign(V64[star]) / N
    return {"V": gV.astype(V.dtype), "g": np.array([(inner - C * M * s) / N], V.dtype)}


def make_constraint(name: str, gamma: float = 0.9, diag_min: float | None = None) -> Constraint:
    if name not in CONSTRAINTS:
        raise ValueError(f"constraint must be one of {list(CONSTRAINTS)}, got {name!r}")
    gamma = float(gamma)
    if diag_min is not None:
        diag_min = float(diag_min)
        if name != "mu_inf":
            raise ValueError(f"diag_min applies to constraint 'mu_inf' only, got {name!r}")
        if not (np.isfinite(diag_min) and diag_min <= gamma):
            raise ValueError(f"diag_min must be finite and <= gamma = {gamma}, got {diag_min}")
    if not np.isfinite(gamma) or (name != "none" and not gamma < 1.0):
        raise ValueError(f"gamma must be finite and < 1 for constraint {name!r}, got {gamma}")
    if name == "norm_inf" and gamma < 0:
        raise ValueError(f"gamma is the radius of ||A||_inf <= gamma and must be >= 0, got {gamma}")
    return Constraint(name, gamma, diag_min)
