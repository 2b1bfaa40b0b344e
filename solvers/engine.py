"""The engine contract, for clients that compose compiled kernels of their own (training's
fused step, the PyTorch layer): the block solver and its argument types, the operators, the
scalar kernels and the stopping rule, the thread blocks and the BLAS policy.

:func:`solvers.solve` is the front door for everything else. A compiled client calls
:func:`solve_block` on its own block of rows with an operator (:func:`dense`), a problem
(:class:`Forward` or :class:`Adjoint`), a step (e.g. :class:`Averaged`), a
:class:`Stopping` rule and an :class:`Output`, and runs its blocks with :func:`run_blocks`.
"""

from ._engines.blocks import MIN_BLOCK_ROWS, block_bounds, run_blocks, thread_count
from ._engines.kernels import (
    DIVERGED,
    MAX_ITER,
    NONFINITE,
    RUNNING,
    SUCCESS,
    act_derivative,
    act_value,
    classify,
)
from ._engines.numba_engine import (
    Adjoint,
    Anderson,
    Averaged,
    DouglasRachford,
    Forward,
    ForwardBackward,
    Output,
    PeacemanRachford,
    Stopping,
    activation,
    dsigma,
    prox,
    sigma,
    solve_block,
)
from ._engines.operators import Dense, dense
from ._engines.threads import SMALL_GEMM_WORK, blas_threads, blas_threads_for

__all__ = [
    "Adjoint", "Anderson", "Averaged", "DIVERGED", "Dense", "DouglasRachford", "Forward", "ForwardBackward",
    "MAX_ITER", "MIN_BLOCK_ROWS", "NONFINITE", "Output", "PeacemanRachford", "RUNNING", "SMALL_GEMM_WORK",
    "SUCCESS", "Stopping", "act_derivative", "act_value", "activation", "blas_threads", "blas_threads_for",
    "block_bounds", "classify", "dense", "dsigma", "prox", "run_blocks", "sigma", "solve_block", "thread_count",
]
