"""The numba engine (CPU, default): one compiled loop driver over an operator and a step.

Mirrors :mod:`.numpy_engine` (the specification) step for step. :func:`solve_block` is the
whole iteration of one block of samples: per iteration the products of the operator on the
block's still-active rows (:mod:`.operators`), and one pass per sample that evaluates the
residual, classifies the sample (:func:`.kernels.classify`, the one stopping rule) and takes
the method's step. A dense matrix's product is one GEMM on the block before the pass, over
rows kept packed in copies (finished samples are written out and the active rows compacted,
so a batch does not pay for its converged members); a convolution's block is iterated one
sample at a time, its product taken inside the pass on the iterate kept in the output itself
(:func:`iterates`), so that no copy of the batch is made. The averaged steps on a convolution
keep the sample's iteration in the layout of the convolution's passes instead
(:class:`.operators.ConvRows`): one sweep after the passes computes the residual and the
next iterate where the next passes read it (:func:`residual`).

Everything that changes the code is a namedtuple whose *type* numba specialises on: the
operator (:class:`.operators.Dense`, :class:`.operators.Conv`), the problem (:class:`Forward` or
:class:`Adjoint`), the step (:class:`Averaged`, :class:`AveragedUnits`, :class:`ForwardBackward`,
:class:`PeacemanRachford`, :class:`DouglasRachford`, :class:`Anderson`) and the dtype. So are
ReLU and the identity; every other activation is a value (:class:`Act`: its code and slope,
read per element), so that one compilation serves them all. A
call compiles only its own combination (seconds, once, then cached on disk), and each method
supplies its step through a few small ``@overload`` hooks: ``init_state``, ``candidate``,
``row_step``, ``after_pass``, ``move_state``. :func:`run` splits the batch into thread blocks
(:mod:`.blocks`) and runs them with :func:`solve_blocks`, one block per thread; every argument
is a flat namedtuple (arrays and scalars only), which numba's ``prange`` can hand to its
threads.
"""

from __future__ import annotations

import collections

import numpy as np
from llvmlite import ir
from numba import njit, prange
from numba.core import types as nbtypes
from numba.extending import intrinsic, overload

from . import compilation
from .blocks import PRANGE_ONLY, blas_policy, block_bounds, serial_work, use_blocks
from .kernels import (
    ANDERSON_REG,
    FLUSH,
    IDENTITY,
    RELU,
    RUNNING,
    _TINY,
    act_derivative,
    act_prox,
    act_value,
    classify,
    compiled_only,
    copy_row,
    copy_rows,
    solve_small,
)
from .operators import (
    Conv,
    apply,
    apply_T,
    by_row,
    conv,
    conv_geometry,
    conv_rows,
    dense,
    pack_output,
    pack_padded,
    padded_product,
    resolvent,
    rowwise,
    unpack_output,
    unpack_padded,
    workspace,
    wrap_padded,
)
from .task import Task

__all__ = [
    "Forward", "Adjoint", "Averaged", "AveragedUnits", "ForwardBackward", "PeacemanRachford", "DouglasRachford",
    "Anderson", "Stopping", "Output", "activation", "step_of", "sigma", "dsigma", "prox", "solve_block",
    "solve_blocks", "block_of", "rows_of", "output_of", "run",
]

compilation.install()  # first compilations are logged (nemon.compile), whoever triggers them

#: ``reassoc`` lets sums vectorise (partial sums in any order) and ``contract`` fuses
#: multiply-adds; there is no finite-math assumption, so NaN and Inf reach the stopping rule.
FASTMATH = {"reassoc", "contract"}

# -- the types numba specialises on ---------------------------------------------------------

#: The activation: its code (``solvers.ACTIVATIONS``, or ``IDENTITY`` for the adjoint's linear
#: iteration) and slope. ReLU (the default) and the identity (every adjoint solve) are types
#: of their own, compiled with their code as a constant, so that their row passes carry no
#: branch on the activation (a ReLU solve with the code read per element was slower);
#: every other activation is an :class:`Act`, its code read per element as the CUDA kernels
#: read it, so that one compilation serves them all.
Act = collections.namedtuple("Act", ["code", "slope"])
Relu = collections.namedtuple("Relu", ["code", "slope"])
Identity = collections.namedtuple("Identity", ["code", "slope"])
_FIXED = {RELU: Relu, IDENTITY: Identity}
_FIXED_CODES = {cls: code for code, cls in _FIXED.items()}

#: ``x = σ(x Aᵀ + w)`` for the rows ``w`` of ``W`` (ℓ∞ residual; σ is the driver's ``act``).
Forward = collections.namedtuple("Forward", ["W"])
#: ``λ = g + (λ ⊙ d) A`` for the rows of ``G`` and ``D`` (ℓ1 residual; the driver's ``act`` is
#: the identity).
Adjoint = collections.namedtuple("Adjoint", ["G", "D"])

#: ``x⁺ = (1 − α) x + α T(x)`` (picard: α = 1).
Averaged = collections.namedtuple("Averaged", ["alpha"])
#: ``x⁺_i = (1 − α_i) x_i + α_i T(x)_i``: one step per unit (``alpha`` (n,), the solve's dtype).
AveragedUnits = collections.namedtuple("AveragedUnits", ["alpha"])
#: ``x⁺ = prox_{αf}((1 − α) x + α (A x + w))``.
ForwardBackward = collections.namedtuple("ForwardBackward", ["alpha"])
#: ``u⁺ = 2y − v`` with ``x = prox_{αf}(u)``, ``v = 2x − u``, ``y = M⁻¹(v + α w)``.
PeacemanRachford = collections.namedtuple("PeacemanRachford", ["alpha"])
#: ``u⁺ = u + y − x`` (the average of Peaceman–Rachford's step and ``u``).
DouglasRachford = collections.namedtuple("DouglasRachford", ["alpha"])
#: Safeguarded type-II Anderson acceleration of the averaged map.
Anderson = collections.namedtuple("Anderson", ["alpha", "memory", "accept"])

#: The stopping rule's parameters (``record``: keep every iteration's residual).
Stopping = collections.namedtuple("Stopping", ["atol", "rtol", "max_iter", "record"])
#: A block's outputs (views of the caller's arrays at the block's samples): the last iterate,
#: iterations, residuals and status codes per sample, the residual history (sample-major,
#: (rows, max_iter + 1), or no columns) and ``Z`` (each sample's last ``x Aᵀ + w``, or no rows).
Output = collections.namedtuple("Output", ["X", "iters", "res", "codes", "hist", "Z"])

_STEPS = {
    "picard": lambda t: Averaged(1.0),
    "average": lambda t: (AveragedUnits(np.ascontiguousarray(t.alpha, t.rhs.dtype)) if np.ndim(t.alpha)
                          else Averaged(float(t.alpha))),
    "forward_backward": lambda t: ForwardBackward(float(t.alpha)),
    "peaceman_rachford": lambda t: PeacemanRachford(float(t.alpha)),
    "douglas_rachford": lambda t: DouglasRachford(float(t.alpha)),
    "anderson": lambda t: Anderson(float(t.alpha), int(t.memory), float(t.accept)),
}


def activation(code: int, slope: float):
    """The compiled engine's activation value for ``solvers.ACTIVATIONS`` code ``code``."""
    return _FIXED.get(code, Act)(int(code), float(slope))


def step_of(task: Task):
    """The step namedtuple of ``task.method``."""
    return _STEPS[task.method](task)


def _cls(t):
    return getattr(t, "instance_class", None)


# -- activations: ReLU and the identity at compile time, the others at run time ----------

sigma = compiled_only("sigma", "σ(z) of the activation ``act``.")


dsigma = compiled_only("dsigma", "σ'(z) of the activation ``act``.")


prox = compiled_only("prox", "``prox_{αf}(v)`` of the activation ``act`` (σ = prox_f).")


def _fixed_code(act):
    """The code of a :class:`Relu` or :class:`Identity` type (a compile-time constant), or
    ``None`` for an :class:`Act` (its code is read at run time)."""
    return _FIXED_CODES.get(_cls(act))


@overload(sigma, inline="always")
def _sigma(act, z):
    code = _fixed_code(act)
    if code is None:
        return lambda act, z: act_value(act.code, act.slope, z)
    return lambda act, z: act_value(code, act.slope, z)


@overload(dsigma, inline="always")
def _dsigma(act, z):
    code = _fixed_code(act)
    if code is None:
        return lambda act, z: act_derivative(act.code, act.slope, z)
    return lambda act, z: act_derivative(code, act.slope, z)


@overload(prox, inline="always")
def _prox(act, alpha, v):
    code = _fixed_code(act)
    if code is not None:  # ReLU and the identity: the prox of an indicator is σ itself
        return lambda act, alpha, v: act_value(code, act.slope, v)
    return lambda act, alpha, v: act_prox(act.code, act.slope, alpha, v)


# -- the residual: one pass over a row ------------------------------------------------------

@intrinsic
def _float_bits(typingctx, x):
    """The bits of a float as the signed integer of its width (a bitcast, no conversion)."""
    width = {nbtypes.float64: nbtypes.int64, nbtypes.float32: nbtypes.int32}.get(x)
    if width is None:
        return None

    def codegen(context, builder, sig, args):
        return builder.bitcast(args[0], context.get_value_type(sig.return_type))

    return width(x), codegen


@intrinsic
def _bits_float(typingctx, b, like):
    """The float of the type of ``like`` whose bits are the integer ``b`` (inverse of
    :func:`_float_bits`; ``b`` is cut back to the width of ``like`` first)."""
    width = {nbtypes.float64: 64, nbtypes.float32: 32}.get(like)
    if width is None or not isinstance(b, nbtypes.Integer):
        return None

    def codegen(context, builder, sig, args):
        value = args[0]
        if b.bitwidth > width:
            value = builder.trunc(value, ir.IntType(width))
        return builder.bitcast(value, context.get_value_type(sig.return_type))

    return like(b, like), codegen


# The ℓ∞ residual takes the maximum of |d| over the bits: for non-negative floats the order of
# the bits as integers is the order of the values, and |NaN| lies above +inf, so an integer
# maximum (which vectorises, unlike a NaN-aware float maximum) is exactly the maximum that
# lets a NaN through. ``reassoc`` lets the ℓ1 sums vectorise; there is no finite-math
# assumption, so NaN and Inf reach the stopping rule.
@njit(cache=True, inline="always", fastmath={"reassoc", "contract"})
def _residual_inf(act, z_row, w_row, x_row, t_row):
    """``z ← z + w``, ``t ← σ(z)``; returns ``(‖t − x‖_∞, ‖x‖_∞)``."""
    rb = _float_bits(x_row[0])
    rb -= rb  # 0 in the integer type of the dtype
    xb = rb
    for i in range(z_row.shape[0]):
        z = z_row[i] + w_row[i]
        z_row[i] = z
        t_row[i] = sigma(act, z)
        rb = max(rb, _float_bits(abs(t_row[i] - x_row[i])))
        xb = max(xb, _float_bits(abs(x_row[i])))
    return float(_bits_float(rb, x_row[0])), float(_bits_float(xb, x_row[0]))


@njit(cache=True, inline="always", fastmath={"reassoc", "contract"})
def _residual_l1(z_row, w_row, x_row, t_row):
    """``z ← z + w``, ``t ← z``; returns ``(‖t − x‖_1, ‖x‖_1)``."""
    r = 0.0
    xn = 0.0
    for i in range(z_row.shape[0]):
        z = z_row[i] + w_row[i]
        z_row[i] = z
        t_row[i] = z
        r += abs(z - x_row[i])
        xn += abs(x_row[i])
    return r, xn


# -- the problem: its right-hand side, activation, product and residual -------------------

rhs = compiled_only("rhs", "The problem's right-hand side rows (``W`` or ``G``).")


scale = compiled_only("scale", "The adjoint's ``D`` rows (no rows for the forward problem).")


block_product = compiled_only("block_product", "The product of the first ``na`` rows, for an operator applied to the block.")


row_product = compiled_only("row_product", "The product of one row: computed now (by row) or taken from the block's.")


residual = compiled_only("residual", "``z ← z + w``, ``t ← σ(z)``; ``(‖t − x‖, ‖x‖)``, ℓ∞ forward, ℓ1 adjoint.")


@overload(rhs)
def _rhs(problem):
    if _cls(problem) is Forward:
        return lambda problem: problem.W
    return lambda problem: problem.G


@overload(scale)
def _scale(problem):
    if _cls(problem) is Forward:
        return lambda problem: problem.W[:0]  # no scaling: no rows
    return lambda problem: problem.D


@overload(block_product)
def _block_product(op, problem, Xa, Da, S, Z, na, zero, ws):
    """``Z = X Aᵀ`` (forward) or ``Z = (X ⊙ D) A`` (adjoint) on the first ``na`` rows of the packed
    block (``zero``: ``X = 0``, so ``Z = 0``); nothing for an operator applied by row."""
    if rowwise(op):
        return lambda op, problem, Xa, Da, S, Z, na, zero, ws: None
    forward = _cls(problem) is Forward

    def block(op, problem, Xa, Da, S, Z, na, zero, ws):
        if zero:
            Z[:na] = 0.0
        elif forward:
            apply(op, Xa[:na], Z[:na], ws)
        else:
            for s in range(na):
                _scaled_row(Xa[s], Da[s], S[s])
            apply_T(op, S[:na], Z[:na], ws)
    return block


@overload(row_product)
def _row_product(op, problem, step, Xa, Da, S, Z, row, s, zero, ws, rs):
    """The product of active row ``s`` (row ``row`` of the iterates): for an operator applied
    by row, computed now into ``Z[0]`` (while it is in the cache for the residual and the
    step), or in the padded layout (:func:`_padded`) from the current buffer into ``rs.acc``;
    otherwise the block's ``Z[s]``."""
    if not rowwise(op):
        return lambda op, problem, step, Xa, Da, S, Z, row, s, zero, ws, rs: Z[s]
    forward = _cls(problem) is Forward
    if _padded(op, step):
        def padded(op, problem, step, Xa, Da, S, Z, row, s, zero, ws, rs):
            if zero:
                rs.acc[:] = 0.0
            else:
                padded_product(op, not forward, rs.X[rs.cur[0]], rs.acc, rs)
            return rs.acc
        return padded

    def one_row(op, problem, step, Xa, Da, S, Z, row, s, zero, ws, rs):
        if zero:
            Z[0] = 0.0
        elif forward:
            apply(op, Xa[row:row + 1], Z[:1], ws)
        else:
            _scaled_row(Xa[row], Da[row], S[0])
            apply_T(op, S[:1], Z[:1], ws)
        return Z[0]
    return one_row


@njit(cache=True, inline="always")
def _scaled_row(x, d, out):
    """``out = x ⊙ d`` (the adjoint's ``λ ⊙ σ'(z)``)."""
    for i in range(x.shape[0]):
        out[i] = x[i] * d[i]


@overload(residual)
def _residual(op, problem, act, step, z_row, w_row, x_row, t_row, rs):
    """The row's residual; in the padded layout (:func:`_padded`) one sweep over the output
    positions that computes ``z``, the residual and the next iterate (into the other buffer)
    together (``z_row``: the product in ``rs.acc``)."""
    forward = _cls(problem) is Forward
    if _padded(op, step):
        if forward:
            return lambda op, problem, act, step, z_row, w_row, x_row, t_row, rs: _sweep_inf(op, act, step, rs,
                                                                                              rs.cur[0])
        return lambda op, problem, act, step, z_row, w_row, x_row, t_row, rs: _sweep_l1(op, step, rs, rs.cur[0])
    if forward:
        return lambda op, problem, act, step, z_row, w_row, x_row, t_row, rs: _residual_inf(act, z_row, w_row, x_row,
                                                                                             t_row)
    return lambda op, problem, act, step, z_row, w_row, x_row, t_row, rs: _residual_l1(z_row, w_row, x_row, t_row)


# -- the methods' steps ------------------------------------------------------------------------

init_state = compiled_only("init_state", "The method's own work arrays for a block.")


skips_first_product = compiled_only("skips_first_product", "Whether a start at 0 makes the first product 0.")


candidate = compiled_only("candidate", "Set the equilibrium candidate the stopping rule sees.")


row_step = compiled_only("row_step", "The method's step of one active row.")


after_pass = compiled_only("after_pass", "The method's work after the pass over the rows (the splittings' resolvent).")


move_state = compiled_only("move_state", "Compaction: active row ``j`` takes the method's state of row ``s``.")


def _splitting(step):
    return _cls(step) in (PeacemanRachford, DouglasRachford)


@overload(init_state)
def _init_state(step, op, problem, Xa, Wa, Da, S, Z, zero, ws, rs):
    """The method's own work arrays: ``()`` for the averaged and forward–backward steps; the
    splitting variable ``u0 = (1 − α) x0 + α (A x0 + w)`` (at the rows of the iterates) and two
    scratch blocks for the splittings; Anderson's history, kept at the block's sample index
    (compaction never moves it); in the padded layout (:func:`_padded`), the block's one row laid
    out in ``rs`` (:func:`_padded_start`). Called before any row has stopped (active row ``s`` is
    row ``s`` of the iterates)."""
    if _splitting(step):
        def splitting(step, op, problem, Xa, Wa, Da, S, Z, zero, ws, rs):
            rows, n = Xa.shape
            a = step.alpha
            block_product(op, problem, Xa, Da, S, Z, rows, zero, ws)
            U = np.empty_like(Xa)
            for s in range(rows):
                z = row_product(op, problem, step, Xa, Da, S, Z, s, s, zero, ws, rs)
                for i in range(n):
                    U[s, i] = (1.0 - a) * Xa[s, i] + a * (z[i] + Wa[s, i])
            return U, np.empty_like(Xa), np.empty_like(Xa)
        return splitting
    if _cls(step) is Anderson:
        def anderson(step, op, problem, Xa, Wa, Da, S, Z, zero, ws, rs):
            rows, n = Xa.shape
            m = step.memory
            dt = Xa.dtype
            return (np.zeros((rows, n), dt), np.zeros((rows, n), dt), np.full(rows, np.inf),
                    np.ones(rows, np.bool_), np.zeros((rows, m, n), dt), np.zeros((rows, m, n), dt),
                    np.zeros(rows, np.int64), np.zeros(rows, np.int64), np.zeros((rows, m, m)),
                    np.zeros((rows, m)), np.zeros((rows, m, m)))
        return anderson
    if _padded(op, step):
        return _padded_start(problem, step)
    return lambda step, op, problem, Xa, Wa, Da, S, Z, zero, ws, rs: ()


@overload(skips_first_product)
def _skips_first_product(step):
    """Whether a start at 0 makes the first product 0 (the splittings iterate on ``u``)."""
    value = not _splitting(step)
    return lambda step: value


@overload(candidate)
def _candidate(step, act, state, Xa, idx, rowwise, na):
    """The equilibrium candidate whose residual the stopping rule sees: ``x`` itself, or
    ``x = prox_{αf}(u)`` for the splittings."""
    if _splitting(step):
        def splitting(step, act, state, Xa, idx, rowwise, na):
            U = state[0]
            for s in range(na):
                row = _row_of(rowwise, idx, s)
                for i in range(Xa.shape[1]):
                    Xa[row, i] = prox(act, step.alpha, U[row, i])
        return splitting
    return lambda step, act, state, Xa, idx, rowwise, na: None


@njit(cache=True, inline="always")
def _row_of(rowwise, idx, s):
    """The row of the iterates that holds active row ``s``: its sample's own row when the
    iterates are the output itself (an operator applied by row), else ``s`` (packed)."""
    return idx[s] if rowwise else s


@overload(row_step, jit_options={"fastmath": FASTMATH})
def _row_step(op, step, act, state, g, x, t, z, r, rs):
    """The step of one active row (sample ``g``) from its ``x``, ``t = T(x) = σ(z)`` and ``z``; in
    the padded layout (:func:`_padded`), where the residual's sweep has written the next iterate,
    the next buffer becomes the current one, its circular border wrapped."""
    kind = _cls(step)
    if _padded(op, step):
        def padded(op, step, act, state, g, x, t, z, r, rs):
            cur = 1 - rs.cur[0]
            rs.cur[0] = cur
            wrap_padded(op, rs.X[cur])
        return padded
    if kind is Averaged:
        def averaged(op, step, act, state, g, x, t, z, r, rs):
            a = step.alpha
            for i in range(x.shape[0]):
                v = x[i] + a * (t[i] - x[i])
                x[i] = 0.0 if abs(v) < FLUSH else v  # never subnormal (kernels.FLUSH); NaN stays
        return averaged
    if kind is AveragedUnits:
        def averaged_units(op, step, act, state, g, x, t, z, r, rs):
            a = step.alpha
            for i in range(x.shape[0]):
                v = x[i] + a[i] * (t[i] - x[i])
                x[i] = 0.0 if abs(v) < FLUSH else v
        return averaged_units
    if kind is ForwardBackward:
        def forward_backward(op, step, act, state, g, x, t, z, r, rs):
            a = step.alpha
            for i in range(x.shape[0]):
                x[i] = prox(act, a, (1.0 - a) * x[i] + a * z[i])
        return forward_backward
    if kind is Anderson:
        def anderson(op, step, act, state, g, x, t, z, r, rs):
            _anderson_step(x, t, g, r, step.alpha, step.accept, step.memory, *state)
        return anderson
    return lambda op, step, act, state, g, x, t, z, r, rs: None  # splittings: after the pass


@overload(after_pass)
def _after_pass(step, op, problem, state, Xa, Wa, idx, rowwise, flag, na, ws):
    """The splittings' resolvent step on the rows that go on: ``v = 2x − u``,
    ``y = M⁻¹(v + α w)``; PR: ``u = 2y − v``; DR: ``u = u + y − x``."""
    if not _splitting(step):
        return lambda step, op, problem, state, Xa, Wa, idx, rowwise, flag, na, ws: None
    peaceman = _cls(step) is PeacemanRachford

    def splitting(step, op, problem, state, Xa, Wa, idx, rowwise, flag, na, ws):
        U, V, Y = state
        a = step.alpha
        n = Xa.shape[1]
        for s in range(na):
            row = _row_of(rowwise, idx, s)
            for i in range(n):
                V[s, i] = 2.0 * Xa[row, i] - U[row, i] + a * Wa[row, i]
        resolvent(op, V[:na], Y[:na], ws)
        for s in range(na):
            if flag[s] != RUNNING:
                continue
            row = _row_of(rowwise, idx, s)
            for i in range(n):
                if peaceman:
                    U[row, i] = 2.0 * Y[s, i] - (2.0 * Xa[row, i] - U[row, i])
                else:
                    U[row, i] = U[row, i] + Y[s, i] - Xa[row, i]
    return splitting


@overload(move_state)
def _move_state(step, state, j, s):
    """Compaction: active row ``j`` takes the method's state of row ``s``."""
    if _splitting(step):
        def splitting(step, state, j, s):
            _move_row(state[0], j, s)
        return splitting
    return lambda step, state, j, s: None


# -- a convolution's averaged iteration kept in its padded layout ----------------------------

row_space = compiled_only("row_space", "The scratch of a row method that keeps its iteration in the operator's layout.")


row_finish = compiled_only("row_finish", "Write out what the driver keeps of a finished row.")


def _padded(op, step) -> bool:
    """Whether the averaged steps on a convolution run in its padded layout
    (:class:`.operators.ConvRows`): the product reads the iterate where the step wrote it and
    the step reads the product where the passes left it, so no copy is made per iteration."""
    return _cls(op) is Conv and _cls(step) in (Averaged, AveragedUnits)


@overload(row_space)
def _row_space(op, step):
    if _padded(op, step):
        return lambda op, step: conv_rows(op)
    return lambda op, step: ()


def _padded_start(problem, step):
    """:func:`init_state` in the padded layout: the block's one row laid out in ``rs``: the start
    (or ``λ ⊙ d``) in ``rs.X[0]``, the right-hand side, the adjoint's ``λ`` and scales and the
    per-unit steps at the output positions."""
    forward = _cls(problem) is Forward
    units = _cls(step) is AveragedUnits

    def padded(step, op, problem, Xa, Wa, Da, S, Z, zero, ws, rs):
        rs.cur[0] = 0
        pack_output(op, Wa[0], rs.Wo)
        if units:
            pack_output(op, step.alpha, rs.Ao)
        if forward:
            pack_padded(op, Xa[0], rs.X[0])
            return ()
        Wp, P, L, o = conv_geometry(op)
        lam = rs.Lam[0]
        pack_output(op, Xa[0], lam)
        pack_output(op, Da[0], rs.Do)
        for c in range(lam.shape[0]):
            v = rs.X[0, c * P + o:c * P + o + L]
            for i in range(L):
                v[i] = lam[c, i] * rs.Do[c, i]
        wrap_padded(op, rs.X[0])
        return ()
    return padded


unit_step = compiled_only("unit_step", "The step size at output position ``i`` of channel ``c``.")


@overload(unit_step)
def _unit_step(step, Ao, c, i):
    """:class:`Averaged`'s ``alpha``, or :class:`AveragedUnits`' laid out in ``Ao``."""
    if _cls(step) is AveragedUnits:
        return lambda step, Ao, c, i: Ao[c, i]
    return lambda step, Ao, c, i: step.alpha


as_dtype = compiled_only("as_dtype", "``v`` rounded to the dtype of the array ``like``.")


@overload(as_dtype)
def _as_dtype(v, like):
    dt = like.dtype
    return lambda v, like: dt(v)


# The sweeps below split their work into loops that each store into one array: a loop that
# stores into several arrays read by it needs more run-time overlap checks than the
# vectoriser makes, and runs one element at a time.

@njit(cache=True, fastmath=FASTMATH)
def _sweep_inf(op, act, step, rs, cur):
    """The forward sweep: ``z = acc + w`` (kept in ``acc``), ``t = σ(z)`` (in the dtype, as
    :func:`residual` stores it), ``(‖t − x‖_∞, ‖x‖_∞)`` over the pixels and ``x⁺ = x + α (t − x)``
    (flushed, as :func:`row_step`) into the other buffer, 0 at the positions that are not
    pixels (zero padding's border stays 0; a circular border is wrapped after the step)."""
    Wp, P, L, o = conv_geometry(op)
    X, Xn = rs.X[cur], rs.X[1 - cur]
    m = rs.valid
    rb = _float_bits(X[0])
    rb -= rb
    xb = rb
    nb = rb  # 0 in the integer type: a select between it and d keeps the maximum a reduction
    for c in range(rs.acc.shape[0]):
        a = rs.acc[c]
        w = rs.Wo[c]
        x = X[c * P + o:c * P + o + L]
        xn = Xn[c * P + o:c * P + o + L]
        for i in range(L):
            a[i] = a[i] + w[i]
        for i in range(L):
            t = as_dtype(sigma(act, a[i]), a)
            d = _float_bits(abs(t - x[i]))
            rb = max(rb, d if m[i] != 0.0 else nb)
            xb = max(xb, _float_bits(abs(x[i])))
            v = x[i] + unit_step(step, rs.Ao, c, i) * (t - x[i])
            v = 0.0 if abs(v) < FLUSH else v
            xn[i] = v if m[i] != 0.0 else m[i]
    return float(_bits_float(rb, X[0])), float(_bits_float(xb, X[0]))


@njit(cache=True, fastmath=FASTMATH)
def _sweep_l1(op, step, rs, cur):
    """The adjoint sweep: ``z = acc + g`` (kept in ``acc``), ``(‖z − λ‖_1, ‖λ‖_1)`` over the
    pixels, ``λ⁺ = λ + α (z − λ)`` (flushed) into the other ``λ`` and ``λ⁺ ⊙ d`` into the other
    buffer of padded planes, both 0 at the positions that are not pixels."""
    Wp, P, L, o = conv_geometry(op)
    Lc, Ln, Vn = rs.Lam[cur], rs.Lam[1 - cur], rs.X[1 - cur]
    m = rs.valid
    r = 0.0
    xn = 0.0
    for c in range(rs.acc.shape[0]):
        a = rs.acc[c]
        g = rs.Wo[c]
        d = rs.Do[c]
        lam, nxt = Lc[c], Ln[c]
        v = Vn[c * P + o:c * P + o + L]
        for i in range(L):
            a[i] = a[i] + g[i]
        for i in range(L):
            r += abs(a[i] - lam[i]) if m[i] != 0.0 else 0.0
            xn += abs(lam[i])
        for i in range(L):
            u = lam[i] + unit_step(step, rs.Ao, c, i) * (a[i] - lam[i])
            u = 0.0 if abs(u) < FLUSH else u
            nxt[i] = u if m[i] != 0.0 else m[i]
        for i in range(L):
            v[i] = nxt[i] * d[i]
    return r, xn


@overload(row_finish)
def _row_finish(op, problem, step, out, g, z, rs):
    """Generic: the row's last ``z`` when the driver keeps them (its iterate is already in
    ``out.X``). Padded: the current iterate (the forward ``x`` or the adjoint's ``λ``) and
    ``z`` out of the padded layout."""
    if not _padded(op, step):
        def generic(op, problem, step, out, g, z, rs):
            if out.Z.shape[0] > 0:
                copy_row(out.Z[g], z)
        return generic
    forward = _cls(problem) is Forward

    def padded(op, problem, step, out, g, z, rs):
        cur = rs.cur[0]
        if forward:
            unpack_padded(op, rs.X[cur], out.X[g])
        else:
            unpack_output(op, rs.Lam[cur], out.X[g])
        if out.Z.shape[0] > 0:
            unpack_output(op, rs.acc, out.Z[g])
    return padded


@njit(cache=True, inline="always")
def _move_row(M, a, b):
    for i in range(M.shape[1]):
        M[a, i] = M[b, i]


# ``reassoc`` lets the dot products below vectorise (partial sums in any order); no
# finite-math assumption, so NaN and Inf still propagate to the residual check.
@njit(cache=True, fastmath={"reassoc", "contract"}, inline="always")
def _dot(u, v):
    acc = 0.0
    for i in range(u.shape[0]):
        acc += u[i] * v[i]
    return acc


@njit(cache=True, fastmath={"reassoc", "contract"})
def _anderson_step(x, t, g, r, alpha, accept, m, gp, fp, rp, forced, dF, dG, cnt, pos, H, hb, Gm):
    """Safeguarded type-II Anderson update of the iterate ``x`` of sample ``g`` from
    ``t = T(x)`` (see ``numpy_engine._Anderson``). ``Gm[g]`` keeps the Gram matrix of the stored
    differences ``dF`` up to date one row at a time (O(m n) per step instead of O(m² n)); every
    loop runs over one contiguous row, so that it vectorises."""
    gpg = gp[g]
    fpg = fp[g]
    n = x.shape[0]
    if not (forced[g] or r <= accept * rp[g]):
        for i in range(n):
            x[i] = gpg[i]
        forced[g] = True
        cnt[g] = 0
        pos[g] = 0
        return
    dFg = dF[g]
    dGg = dG[g]
    Gmg = Gm[g]
    hbg = hb[g]
    if rp[g] < np.inf:
        p = pos[g]
        dFp = dFg[p]
        dGp = dGg[p]
        for i in range(n):
            xi = x[i]
            gv = xi + alpha * (t[i] - xi)
            fv = gv - xi
            dFp[i] = fv - fpg[i]
            dGp[i] = gv - gpg[i]
            fpg[i] = fv
            gpg[i] = gv
        pos[g] = (p + 1) % m
        cnt[g] = min(cnt[g] + 1, m)
        for a in range(cnt[g]):
            acc = _dot(dFp, dFg[a])
            Gmg[p, a] = acc
            Gmg[a, p] = acc
    else:
        for i in range(n):
            xi = x[i]
            gv = xi + alpha * (t[i] - xi)
            fpg[i] = gv - xi
            gpg[i] = gv
    k = cnt[g]
    if k > 0:
        Hg = H[g]
        tr = 0.0
        for a in range(k):
            for c in range(k):
                Hg[a, c] = Gmg[a, c]
            tr += Gmg[a, a]
            hbg[a] = _dot(dFg[a], fpg)
        reg = ANDERSON_REG * tr / k + _TINY
        for a in range(k):
            Hg[a, a] += reg
        solve_small(Hg, hbg, k)
    for i in range(n):
        x[i] = gpg[i]
    for a in range(k):  # slot-major, so that the inner loop runs over contiguous i
        c = hbg[a]
        row = dGg[a]
        for i in range(n):
            x[i] -= c * row[i]
    rp[g] = r
    forced[g] = False


# -- the iterates: packed for an operator applied to the block, in place for one applied by row --

iterates = compiled_only("iterates", "The block's iterates, right-hand sides and scales, and the product buffers.")


@overload(iterates)
def _iterates(op, problem, X0, out):
    """``(Xa, Wa, Da, Z, S)``: the iterates (``X0``, or zeros when it has no rows), the problem's
    rows, its scales and the product's output and (adjoint) input.

    For an operator applied to the block, the active rows are kept packed at the start of
    copies (compaction moves them) and ``Z``, ``S`` are blocks. For an operator applied by row,
    the iterates are the output ``out.X`` itself and the problem's arrays are read where they
    are (an active row is found through the sample index; nothing moves), and ``Z``, ``S`` hold
    one row: no copy of the batch is made, so a call allocates no more than its scratch."""
    if rowwise(op):
        def in_place(op, problem, X0, out):
            Xa = out.X
            if X0.shape[0] > 0:
                copy_rows(Xa, X0)
            else:
                Xa[:] = 0.0
            Da = scale(problem)
            n = Xa.shape[1]
            return Xa, rhs(problem), Da, np.empty((1, n), Xa.dtype), np.empty((min(Da.shape[0], 1), n), Xa.dtype)
        return in_place

    def packed(op, problem, X0, out):
        Wa = rhs(problem).copy()
        Da = scale(problem).copy()
        Xa = X0.copy() if X0.shape[0] > 0 else np.zeros_like(Wa)
        return Xa, Wa, Da, np.empty_like(Xa), np.empty_like(Da)
    return packed


# -- the loop driver ---------------------------------------------------------------------------

@njit(cache=True, nogil=True, fastmath=FASTMATH)
def solve_block(op, problem, act, step, stop, X0, out):
    """The whole iteration on one block of samples, independent of every other block;
    returns the last iteration index.

    Every work array is the block's own, allocated here (on the thread that uses it): two
    threads writing neighbouring entries of one shared array would bounce its cache lines.
    The problem's arrays and ``X0`` (no rows: start at 0) are only read; ``out`` is written
    once per finished sample (``out.hist`` once per iteration when recording). An operator
    applied to the block is iterated on the whole block (:func:`_iterate`); one applied by row,
    one sample at a time, each from its first iteration to its last, so that the sample's
    iteration stays in the cache and its method may keep it in the operator's own layout
    (:func:`row_space`).
    """
    return iterate_block(op, problem, act, step, stop, X0, out, workspace(op), row_space(op, step))


iterate_block = compiled_only("iterate_block", "The block's iteration: at once, or one sample at a time.")


@overload(iterate_block, jit_options={"fastmath": FASTMATH})
def _iterate_block(op, problem, act, step, stop, X0, out, ws, rs):
    """:func:`_iterate` on the whole block (an operator applied to the block), or on each of
    its samples in turn (one applied by row); chosen by type, so that a block solve compiles
    no loop over sub-blocks."""
    if not rowwise(op):
        return lambda op, problem, act, step, stop, X0, out, ws, rs: _iterate(op, problem, act, step, stop, X0,
                                                                              out, ws, rs)

    def each_row(op, problem, act, step, stop, X0, out, ws, rs):
        last = 0
        for lo in range(out.X.shape[0]):
            last = max(last, _iterate(op, block_of(problem, lo, lo + 1), act, step, stop, rows_of(X0, lo, lo + 1),
                                      output_of(out, lo, lo + 1), ws, rs))
        return last
    return each_row


@njit(cache=True, nogil=True, fastmath=FASTMATH, inline="always")
def _iterate(op, problem, act, step, stop, X0, out, ws, rs):
    """The loop driver of :func:`solve_block` on the rows of ``out`` (``ws``, ``rs``: the
    operator's and the row method's scratch). Per iteration: the block's product
    (:func:`block_product`), then one pass over the active rows that takes each row's product
    (:func:`row_product`), its residual, its status and its step (:func:`row_step`), or writes
    out a finished row (:func:`row_finish`); then the finished samples are dropped from the
    active ones."""
    rows, n = out.X.shape
    rowwise = by_row(op)
    Xa, Wa, Da, Z, S = iterates(op, problem, X0, out)
    T = np.empty((1, n), Xa.dtype)  # σ(z) of the row in the pass
    idx = np.arange(rows)
    r_first = np.zeros(rows)
    r_cur = np.zeros(rows)
    flag = np.zeros(rows, np.int8)
    zero = True  # does the block start at x0 = 0? (then A x0 = 0 exactly: no product)
    for s in range(rows if X0.shape[0] > 0 else 0):
        for i in range(n):
            if Xa[s, i] != 0.0:
                zero = False
        if not zero:
            break
    state = init_state(step, op, problem, Xa, Wa, Da, S, Z, zero, ws, rs)
    skip = zero and skips_first_product(step)
    na = rows
    k = 0
    for k in range(stop.max_iter + 1):
        candidate(step, act, state, Xa, idx, rowwise, na)
        first = skip and k == 0
        block_product(op, problem, Xa, Da, S, Z, na, first, ws)
        going = 0
        for s in range(na):
            g = idx[s]
            row = _row_of(rowwise, idx, s)
            z = row_product(op, problem, step, Xa, Da, S, Z, row, s, first, ws, rs)
            res, xn = residual(op, problem, act, step, z, Wa[row], Xa[row], T[0], rs)
            r_cur[s] = res
            if k == 0:
                r_first[g] = res
            f = classify(k, res, stop.atol + stop.rtol * xn, r_first[g], stop.max_iter)
            flag[s] = f
            if f == RUNNING:
                going += 1
                row_step(op, step, act, state, g, Xa[row], T[0], z, res, rs)
            else:
                row_finish(op, problem, step, out, g, z, rs)
        if going > 0:
            after_pass(step, op, problem, state, Xa, Wa, idx, rowwise, flag, na, ws)
        j = 0
        for s in range(na):
            g = idx[s]
            if stop.record:
                out.hist[g, k] = r_cur[s]
            if flag[s] != RUNNING:
                if not rowwise:
                    copy_row(out.X[g], Xa[s])
                out.res[g] = r_cur[s]
                out.iters[g] = k
                out.codes[g] = flag[s]
                continue
            if j != s:
                idx[j] = g
                if not rowwise:
                    _move_row(Xa, j, s)
                    _move_row(Wa, j, s)
                    if Da.shape[0] > 0:
                        _move_row(Da, j, s)
                    move_state(step, state, j, s)
            j += 1
        na = j
        if na == 0:
            break
    return k


block_of = compiled_only("block_of", "The problem restricted to rows ``lo:hi``.")


rows_of = compiled_only("rows_of", "Rows ``lo:hi`` of an array (one without rows stays as it is).")


output_of = compiled_only("output_of", "The outputs of rows ``lo:hi`` (views).")


@overload(block_of)
def _block_of_overload(problem, lo, hi):
    """The problem restricted to the rows ``lo:hi``."""
    if _cls(problem) is Forward:
        return lambda problem, lo, hi: Forward(problem.W[lo:hi])
    return lambda problem, lo, hi: Adjoint(problem.G[lo:hi], problem.D[lo:hi])


@overload(rows_of)
def _rows_of(X, lo, hi):
    """Rows ``lo:hi`` of ``X``; an array without rows (no start, no ``Z``) stays as it is."""
    return lambda X, lo, hi: X[lo:hi] if X.shape[0] > 0 else X


@overload(output_of)
def _output_of_overload(out, lo, hi):
    """The outputs of the rows ``lo:hi`` (views)."""
    def impl(out, lo, hi):
        return Output(out.X[lo:hi], out.iters[lo:hi], out.res[lo:hi], out.codes[lo:hi], out.hist[lo:hi],
                      rows_of(out.Z, lo, hi))
    return impl


@njit(cache=True, parallel=PRANGE_ONLY)
def solve_blocks(op, problem, act, step, stop, X0, out, bounds):
    """:func:`solve_block` on each block of rows ``bounds[c] = (lo, hi)``, one block per
    thread (numba's ``prange``); returns the last iteration index of each block."""
    last = np.zeros(bounds.shape[0], np.int64)
    for c in prange(bounds.shape[0]):
        lo = bounds[c, 0]
        hi = bounds[c, 1]
        last[c] = solve_block(op, block_of(problem, lo, hi), act, step, stop, rows_of(X0, lo, hi),
                              output_of(out, lo, hi))
    return last


def _block_of(problem, lo, hi):
    """:func:`block_of` in Python."""
    if isinstance(problem, Forward):
        return Forward(problem.W[lo:hi])
    return Adjoint(problem.G[lo:hi], problem.D[lo:hi])


def _output_of(out, lo, hi):
    """:func:`output_of` in Python."""
    return Output(out.X[lo:hi], out.iters[lo:hi], out.res[lo:hi], out.codes[lo:hi], out.hist[lo:hi],
                  out.Z[lo:hi] if out.Z.shape[0] else out.Z)


def run(task: Task):
    """Solve ``task`` (the contract of :func:`.numpy_engine.run`): returns
    ``(X, iterations, residual, codes, history)``."""
    W = task.rhs
    batch, n = W.shape
    dtype = W.dtype
    forward = task.kind == "forward"
    if task.dense:
        op = dense(task.op, forward=forward, adjoint=not forward, MinvT=task.resolvent)
        work = batch * n * n
    else:
        op = conv(task.op, dtype, resolvent=task.resolvent, split=True)
        work = 0  # no BLAS: the convolution's loops are the engine's own
    problem = Forward(W) if forward else Adjoint(W, task.D)
    act = activation(task.activation.code, task.activation.slope) if forward else activation(IDENTITY, 0.0)
    stop = Stopping(float(task.atol), float(task.rtol), int(task.max_iter), bool(task.record))
    X = np.empty_like(W)  # every sample is written when it stops
    iters = np.zeros(batch, np.int64)
    res = np.zeros(batch)
    codes = np.full(batch, RUNNING, np.int8)
    hist = np.full((batch, task.max_iter + 1 if task.record else 0), np.nan)
    Z = np.empty((0, n), dtype)  # no rows: the last products are not kept
    X0 = np.empty((0, n), dtype) if task.x0 is None else task.x0
    out = Output(X, iters, res, codes, hist, Z)
    bounds = block_bounds(batch)
    variant = ("solve", type(op).__name__, task.kind, task.method, type(act).__name__, dtype.char, task.x0 is None)
    step = step_of(task)
    args = (op, problem, act, step, stop, X0, out, bounds)
    parallel = use_blocks(variant, len(bounds), solve_blocks, args)
    with blas_policy(len(bounds) if parallel else 1, work):
        if parallel:
            last = solve_blocks(*args).max()
        else:  # the same blocks one after the other: the same products, the same results
            with serial_work(variant):
                last = max(solve_block(op, _block_of(problem, lo, hi), act, step, stop,
                                       X0[lo:hi] if X0.shape[0] else X0, _output_of(out, lo, hi))
                           for lo, hi in bounds)
    history = hist[:, : last + 1].T.copy() if task.record else None
    return X, iters, res, codes, history
