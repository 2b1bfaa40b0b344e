"""Well-posedness conditions for ``x = σ(Ax + w)`` and a report over all of them.

Every condition is written as ``value < 1`` so that margins (``1 − value``) compare across
conditions. Each one, when it holds, guarantees a unique fixed point for every input ``w``
and every activation slope-restricted in [0, 1].
"""

from __future__ import annotations

import dataclasses
import logging
import math
import numbers

import numpy as np

from ._lben import lben_program, lben_within
from ._norms import induced_norm, mu_2, mu_inf
from ._validation import as_square_matrix, as_weights
from ._weights import metzler_majorant, spectral_abscissa, spectral_radius

__all__ = ["CONDITIONS", "ConditionResult", "WellposednessReport", "wellposedness", "lben_value", "LBEN_TIME_LIMIT"]

logger = logging.getLogger(__name__)

#: name -> (formula, origin), in order from the seed paper to its alternatives.
CONDITIONS = {
    "nemon": ("mu_inf,eta(A) < 1", "seed paper (l-inf one-sided Lipschitz)"),
    "nemon_weighted": ("alpha(ceil(A)) < 1", "seed paper, best diagonal weights"),
    "idl_norm": ("||A||_inf < 1", "implicit deep learning (El Ghaoui et al.)"),
    "idl_spectral": ("rho(|A|) < 1", "implicit deep learning, Perron-Frobenius form"),
    "mon": ("mu_2(A) < 1", "monotone operator networks (Winston & Kolter)"),
    "lben": ("diag L > 0: L(I-A)+(I-A)^T L > 0", "Lipschitz bounded equilibrium nets (Revay et al.)"),
}

#: Default seconds :func:`wellposedness` allows the LBEN semidefinite program.
LBEN_TIME_LIMIT = 60.0


@dataclasses.dataclass(frozen=True)
class ConditionResult:
    """One condition's verdict: ``holds`` iff ``value < 1``; ``margin = 1 − value``.

    A condition that was not evaluated (the LBEN program past its time limit) has
    ``skipped=True``, ``value`` NaN, ``holds=False`` and a ``note`` that says what to do.
    """

    name: str
    value: float
    holds: bool
    formula: str
    origin: str
    skipped: bool = False
    note: str = ""

    @property
    def margin(self) -> float:
        return 1.0 - self.value


@dataclasses.dataclass(frozen=True)
class WellposednessReport:
    """Per-condition results for one matrix; ``report["nemon"].holds`` and a printable table."""

    results: tuple[ConditionResult, ...]
    n: int

    def __getitem__(self, name: str) -> ConditionResult:
        for r in self.results:
            if r.name == name:
                return r
        raise KeyError(f"no condition {name!r} in this report; have {[r.name for r in self.results]}")

    def __iter__(self):
        return iter(self.results)

    @property
    def any_holds(self) -> bool:
        return any(r.holds for r in self.results)

    def table(self) -> str:
        header = f"{'condition':<15} {'value':>12} {'margin':>12}  {'holds':<5}  formula"
        lines = [header, "-" * len(header)]
        for r in self.results:
            verdict = "skip" if r.skipped else "yes" if r.holds else "no"
            lines.append(f"{r.name:<15} {r.value:>12.6g} {r.margin:>12.6g}  {verdict:<5}  {r.formula}")
            if r.note:
                lines.append(f"{'':<15} {r.note}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()


def lben_value(A) -> float:
    """LBEN well-posedness value ``1 − t*`` from a semidefinite program (cvxpy).

    Notes
    -----
    ``t* = max t`` subject to ``Λ(I − A) + (I − A)ᵀΛ ⪰ 2 t I`` over diagonal ``Λ ⪰ 0`` with
    ``trace Λ = n``. The LMI of Revay et al. holds iff ``t* > 0`` (a zero ``Λ_ii`` forces a
    zero diagonal entry, so ``t* > 0`` implies ``Λ ≻ 0``). ``Λ = I`` gives
    ``t = 1 − μ_2(A)``, hence ``lben_value(A) ≤ μ_2(A)``: ``mon ⇒ lben``.

    References
    ----------
    M. Revay, R. Wang, I. R. Manchester, "Lipschitz Bounded Equilibrium Networks", 2020.
    """
    return lben_program(as_square_matrix(A).astype(np.float64))


def _lben_skipped_note(n: int, time_limit: float) -> str:
    """What the LBEN row of a report says when its program passed ``time_limit`` seconds."""
    return (f"skipped: the LBEN semidefinite program (n={n}) did not finish within {time_limit:g} s "
            f"(its time grows steeply with n); allow more time with --lben-time-limit SECONDS, "
            f"or leave it out with --no-lben")


def _as_time_limit(time_limit) -> float | None:
    if time_limit is None:
        return None
    if (isinstance(time_limit, bool) or not isinstance(time_limit, numbers.Real)
            or math.isnan(time_limit) or time_limit <= 0):
        raise ValueError(f"lben_time_limit must be a positive number of seconds or None, got {time_limit!r}")
    return None if math.isinf(time_limit) else float(time_limit)


def wellposedness(A, eta=None, conditions=None, lben_time_limit=LBEN_TIME_LIMIT) -> WellposednessReport:
    """Evaluate the well-posedness conditions of DESIGN.md section 3 for ``A``.

    Parameters
    ----------
    A : array_like, shape (n, n)
    eta : array_like, shape (n,), optional
        Weights for the ``nemon`` condition (default all ones).
    conditions : iterable of str, optional
        Subset of :data:`CONDITIONS` (default all; ``lben`` solves an SDP).
    lben_time_limit : float or None, optional
        Seconds allowed for the LBEN semidefinite program (default :data:`LBEN_TIME_LIMIT`;
        ``None`` or ``inf``: no limit). When they pass, the program is stopped and the
        ``lben`` row is ``skipped`` with a note. Programs with n ≤ 40 are solved at once and
        never limited. Progress is logged on the ``nemon.lben`` logger.

    Returns
    -------
    WellposednessReport
        ``report[name]`` has ``value``, ``margin = 1 − value`` and ``holds = value < 1``;
        a skipped row has ``skipped=True``, ``value`` NaN, ``holds=False`` and a ``note``.

    Notes
    -----
    Implications: ``idl_norm ⇒ nemon`` (``μ_∞ ≤ ‖·‖_∞``), ``idl_spectral ⇒ nemon_weighted``
    (``α(⌈A⌉) ≤ ρ(|A|)``), ``nemon ⇒ nemon_weighted``, ``mon ⇒ lben``.
    """
    A = as_square_matrix(A).astype(np.float64)
    eta = as_weights(eta, A.shape[0])
    time_limit = _as_time_limit(lben_time_limit)
    names = tuple(CONDITIONS) if conditions is None else tuple(conditions)
    unknown = [c for c in names if c not in CONDITIONS]
    if unknown:
        raise ValueError(f"conditions: unknown {unknown}; choose from {list(CONDITIONS)}")
    compute = {
        "nemon": lambda: mu_inf(A, eta),
        "nemon_weighted": lambda: spectral_abscissa(metzler_majorant(A)),
        "idl_norm": lambda: induced_norm(A, np.inf),
        "idl_spectral": lambda: spectral_radius(np.abs(A)),
        "mon": lambda: mu_2(A),
        "lben": lambda: lben_within(A, time_limit),
    }
    results = []
    for name in names:
        value = compute[name]()
        formula, origin = CONDITIONS[name]
        if value is None:
            note = _lben_skipped_note(A.shape[0], time_limit)
            results.append(ConditionResult(name, math.nan, False, formula, origin, skipped=True, note=note))
            continue
        value = float(value)
        results.append(ConditionResult(name, value, bool(value < 1.0), formula, origin))
    return WellposednessReport(tuple(results), A.shape[0])
