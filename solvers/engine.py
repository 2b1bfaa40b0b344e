"""The engine contract, for clients that compose compiled kernels of their own (training's
fused step, the PyTorch layer): the block solver and its argument types, the operators, the
scalar kernels and the stopping rule, the thread blocks and the BLAS policy.

:func:`solvers.solve` is the front door for everything else. A compiled client calls
:func:`solve_block` on its own block of rows with an operator (:func:`dense`, or :func:`conv`
for a convolution), a problem (:class:`Forward` or :class:`Adjoint`), an activation
(:func:`activation`), a step (e.g. :class:`Averaged`; :func:`anderson_step` gives the step and
safeguard of :func:`solvers.solve`'s Anderson), a :class:`Stopping` rule and an
:class:`Output`; :func:`block_bounds` splits a batch into thread blocks and :func:`blas_policy`
holds BLAS while they run.
"""

from ._api import ANDERSON_MEMORY, anderson_step
from ._engines import compilation
from ._engines.blocks import (
    MIN_BLOCK_ROWS,
    PRANGE_ONLY,
    blas_policy,
    block_bounds,
    serial_work,
    thread_count,
    use_blocks,
)
from ._engines.kernels import (
    DIVERGED,
    IDENTITY,
    MAX_ITER,
    NONFINITE,
    RUNNING,
    SUCCESS,
    act_derivative,
    act_value,
    classify,
    copy_row,
    copy_rows,
)
from ._engines.numba_engine import (
    Adjoint,
    Anderson,
    Averaged,
    AveragedUnits,
    DouglasRachford,
    Forward,
    ForwardBackward,
    Output,
    PeacemanRachford,
    Stopping,
    activation,
    block_of,
    dsigma,
    output_of,
    prox,
    rows_of,
    sigma,
    solve_block,
    solve_blocks,
)
from ._engines.operators import Conv, Dense, conv, correlate, correlate_grad, dense
from ._engines.threads import SMALL_GEMM_WORK, blas_threads, blas_threads_for

__all__ = [
    "ANDERSON_MEMORY", "Adjoint", "Anderson", "Averaged", "AveragedUnits", "Conv", "DIVERGED", "Dense", "DouglasRachford", "Forward", "ForwardBackward",
    "IDENTITY", "MAX_ITER", "MIN_BLOCK_ROWS", "NONFINITE", "Output", "PRANGE_ONLY", "PeacemanRachford", "RUNNING",
    "SMALL_GEMM_WORK", "SUCCESS", "Stopping", "act_derivative", "act_value", "activation", "anderson_step", "blas_policy",
    "blas_threads", "blas_threads_for", "block_bounds", "block_of", "classify", "compilation", "copy_row", "copy_rows", "conv", "correlate", "correlate_grad", "dense",
    "dsigma", "output_of", "prox", "rows_of", "serial_work", "sigma", "solve_block", "solve_blocks", "thread_count",
    "use_blocks",
]
