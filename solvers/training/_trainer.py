"""The projected-gradient trainer: well-posed at every step, resumable, deterministic."""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import logging
import signal
import threading
import time

import numpy as np
import contraction
from solvers import METHODS
from solvers.engine import blas_threads_for, compilation

from ._augment import augment_images, image_shape_of
from ._constraints import CONSTRAINTS, CONV_CONSTRAINTS, Constraint, make_constraint
from ._network import LOCAL_RATE_SAMPLES, LOSSES, ImplicitNetwork, SolverConfig, check_count, check_real
from ._optim import OptimizerConfig, OptimizerState, Schedule, make_optimizer_state, step
from ._robust import certified_accuracy, interval_loss_and_grad

__all__ = ["TrainConfig", "TrainerState", "History", "TrainingCollapsed", "train", "lipschitz_penalty"]

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a training run (saved in checkpoints), validated on creation.

    See :func:`train` for the meaning of each field. ``forward_method=""`` stands for the
    constraint's own guaranteed method; :meth:`resolved` fills it (and ``diag_min``) in.
    """

    epochs: int = 10
    batch_size: int = 100
    lr: float = 1e-3
    optimizer: str = "adam"
    schedule: str = "constant"
    constraint: str = "mu_inf"
    gamma: float = 0.9
    lipschitz_weight: float = 0.0
    atol: float = 1e-4
    loss: str = "cross_entropy"
    seed: int = 0
    interval_eps: float = 0.0
    interval_weight: float = 0.5
    interval_ramp: int | None = None  # None = a third of the epochs, at least 1 (see resolved)
    interval_relax: int = 0  # closest classes per sample bounded by the hidden readout layer's relaxation
    forward_method: str = ""  # "" = the constraint's own (see train)
    diag_min: float | None = None
    shift: int = 0  # random translations of the training images, at most this many pixels
    flip: bool = False  # random left-right mirroring of the training images
    per_unit_steps: bool = False  # the averaged solves take one step per unit (SolverConfig.alpha)
    time_budget: float = 0.0  # seconds of training steps after which the run ends (0: none; see train)

    def __post_init__(self):
        # Counts are integers: 2.7 epochs or batch_size=True is a mistake, not something to truncate.
        check_count(self.epochs, "epochs", 0)
        check_count(self.batch_size, "batch_size")
        check_count(self.seed, "seed", 0)
        check_count(self.shift, "shift", 0)
        for name in ("flip", "per_unit_steps"):
            if not isinstance(getattr(self, name), (bool, np.bool_)):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}")
        if self.interval_ramp is not None:
            check_count(self.interval_ramp, "interval_ramp", 0)
        check_count(self.interval_relax, "interval_relax", 0)
        if self.constraint not in CONSTRAINTS:
            raise ValueError(f"constraint must be one of {tuple(CONSTRAINTS)}, got {self.constraint!r}")
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {self.loss!r}")
        if self.forward_method and self.forward_method not in METHODS:
            raise ValueError(f"forward_method must be one of {METHODS}, got {self.forward_method!r}")
        check_real(self.lr, "lr", 0, strict=True)
        OptimizerConfig(self.optimizer, self.lr)  # names the optimizer when it is unknown
        check_real(self.gamma, "gamma")
        if self.diag_min is not None:
            check_real(self.diag_min, "diag_min")
        con = self.make_constraint()  # gamma and diag_min against the constraint
        if self.per_unit_steps and ((self.forward_method or con.forward_method) not in ("average", "anderson")
                                    or con.adjoint_method not in ("average", "direct")):
            raise ValueError(f"per_unit_steps needs the averaged or Anderson forward solve, got forward method "
                             f"{self.forward_method or con.forward_method!r} (constraint {self.constraint!r})")
        check_real(self.interval_eps, "interval_eps", 0)
        if not 0 <= check_real(self.interval_weight, "interval_weight") <= 1:
            raise ValueError(f"interval_weight must be in [0, 1], got {self.interval_weight!r}")
        if self.interval_relax and self.interval_eps == 0:
            raise ValueError(f"interval_relax > 0 tightens interval training, which is off (interval_eps = 0), "
                             f"got interval_relax={self.interval_relax}")
        if self.interval_eps > 0 and self.loss != "cross_entropy":
            raise ValueError(f"interval training (interval_eps > 0) needs loss='cross_entropy', got loss={self.loss!r}")
        check_real(self.lipschitz_weight, "lipschitz_weight", 0)
        if self.lipschitz_weight > 0 and self.constraint not in ("mu_inf", "norm_inf", "zero"):
            raise ValueError("lipschitz_weight > 0 needs constraint 'mu_inf', 'norm_inf' or 'zero' (mu_inf(A) < 1 "
                             f"throughout), got constraint={self.constraint!r}")
        if self.schedule not in ("constant", "cosine"):
            raise ValueError(f"schedule must be 'constant' or 'cosine', got {self.schedule!r}")
        check_real(self.atol, "atol", 0, strict=True)
        check_real(self.time_budget, "time_budget", 0)

    def make_constraint(self) -> Constraint:
        return make_constraint(self.constraint, self.gamma, self.diag_min)

    def resolved(self) -> "TrainConfig":
        """This config with the defaults filled in: the constraint's (``forward_method``,
        ``diag_min``) and the interval radius's ramp (``interval_ramp=None``: over the first
        third of the epochs, at least one; interval training at full radius from the first
        step can leave every hidden unit dead)."""
        con = self.make_constraint()
        ramp = self.interval_ramp
        if ramp is None:
            ramp = max(1, self.epochs // 3) if self.interval_eps > 0 else 0
        return dataclasses.replace(self, forward_method=self.forward_method or con.forward_method,
                                   diag_min=con.diag_min, interval_ramp=ramp)

    def solver(self, base: SolverConfig) -> SolverConfig:
        """The solver training uses: ``base`` (the network's) with this run's methods and tolerances."""
        con = self.make_constraint()
        return dataclasses.replace(base, method=self.forward_method or con.forward_method,
                                   adjoint_method=con.adjoint_method, atol=self.atol, adjoint_atol=self.atol,
                                   alpha="per_unit" if self.per_unit_steps else None)


@dataclasses.dataclass
class TrainerState:
    """Where training stands: enough to resume exactly (mid-epoch too)."""

    epoch: int
    batch: int
    raw: dict
    optimizer: OptimizerState
    partial: dict  # running sums of the current epoch


@dataclasses.dataclass
class History:
    """Per-epoch records plus the final state; ``interrupted`` when stopped by Ctrl-C.

    ``solver`` is the solver training used (the constraint's guaranteed forward method, the
    run's tolerances): :func:`train` leaves ``net.solver`` as it was, and a caller that wants
    to predict as trained sets ``net.solver = history.solver``.
    """

    config: TrainConfig
    epochs: list
    state: TrainerState
    interrupted: bool = False
    solver: SolverConfig | None = None

    def __len__(self):
        return len(self.epochs)

    def __getitem__(self, i):
        return self.epochs[i]

    def column(self, key):
        return np.array([e[key] for e in self.epochs], dtype=float)


def lipschitz_penalty(A, B, C):
    """``‖C‖∞ ‖B‖∞ / (1 − μ∞(A))`` and its subgradient with respect to A, B, C.

    ``A`` and ``B`` are matrices, or convolution kernels (C_out, C_in, k, k) of a
    :class:`ConvImplicitNetwork` (whose readout ``C`` acts on pooled features, with the same
    ``‖·‖∞`` as the readout on the state): a kernel's row ``c`` holds all taps of output channel
    ``c``, its diagonal entry is the centre tap ``K[c, c, p, p]`` (DESIGN.md section 8b).

    Notes
    -----
    ``‖M‖∞`` is the largest row ℓ1 norm: a subgradient is ``sign(M)`` on one maximising row.
    ``μ∞(A)`` is the largest ``a_ii + Σ_{j≠i}|a_ij|``: a subgradient is ``sign(a_ij)`` off the
    diagonal and 1 on it, on one maximising row. Requires ``μ∞(A) < 1``.
    """
    A, B, C = (np.asarray(M, dtype=np.float64) for M in (A, B, C))
    shape_A, shape_B = A.shape, B.shape
    if A.ndim == 4:  # kernels: one row per output channel
        n, k = A.shape[0], A.shape[2]
        diag = np.arange(n) * k * k + (k // 2) * (k + 1)  # the centre tap of the same channel
        A, B = A.reshape(n, -1), B.reshape(B.shape[0], -1)
    else:
        diag = np.arange(A.shape[0])
    rows = np.arange(A.shape[0])
    a_ii = A[rows, diag]
    rows_A = a_ii + np.abs(A).sum(axis=1) - np.abs(a_ii)
    i = int(np.argmax(rows_A))
    mu = rows_A[i]
    if mu >= 1.0:
        raise ValueError(f"the Lipschitz penalty needs mu_inf(A) < 1, got {mu:.4g}")
    rb, rc = np.abs(B).sum(axis=1), np.abs(C).sum(axis=1)
    ib, ic = int(np.argmax(rb)), int(np.argmax(rc))
    nb, nc = rb[ib], rc[ic]
    value = nc * nb / (1.0 - mu)
    gA = np.zeros_like(A)
    gA[i] = np.sign(A[i])
    gA[i, diag[i]] = 1.0
    gA *= nc * nb / (1.0 - mu) ** 2
    gB = np.zeros_like(B)
    gB[ib] = np.sign(B[ib]) * nc / (1.0 - mu)
    gC = np.zeros_like(C)
    gC[ic] = np.sign(C[ic]) * nb / (1.0 - mu)
    return float(value), {"A": gA.reshape(shape_A), "B": gB.reshape(shape_B), "C": gC}


def _free_parameters(net) -> dict:
    """The parameters the optimiser updates in place: all but ``A`` (which the constraint
    parametrises)."""
    return {k: getattr(net, k) for k in net.PARAMS if k != "A"}


@contextlib.contextmanager
def _interrupt_flag():
    """Turn SIGINT into a flag checked between batches (so no update is half-applied); while
    the batch's kernels compile (seconds, on a first run), stop at once instead: the batch's
    gradient is not computed yet and nothing of it is applied."""
    flag = {"stop": False, "gradient": False}  # gradient: inside the batch's gradient computation
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(signum, frame):
        flag["stop"] = True
        if flag["gradient"] and compilation.compiling():  # nothing of this batch is applied yet
            logger.warning("interrupt received while compiling: stopping before this batch")
            compilation.interrupt_compilation()
            raise KeyboardInterrupt
        logger.warning("interrupt received: stopping after this batch")

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield flag
    finally:
        signal.signal(signal.SIGINT, previous)


def _all_finite(X: np.ndarray) -> bool:
    """Whether every entry of ``X`` is finite (integer arrays always are)."""
    if X.dtype.kind in "biu":
        return True
    if X.dtype.kind == "f" and X.flags.c_contiguous:
        return bool(contraction.all_finite(X.reshape(-1)))
    return bool(np.isfinite(X).all())


def _check_data(X, y, n_in, name):
    X = np.asarray(X)
    y = np.asarray(y)
    if X.ndim != 2 or X.shape[1] != n_in:
        raise ValueError(f"{name} must have shape (N, {n_in}), got {X.shape}")
    if len(y) != len(X):
        raise ValueError(f"{name} and its targets have different lengths: {len(X)} vs {len(y)}")
    if not _all_finite(X):
        raise ValueError(f"{name} must be finite")
    return X, y


def _new_partial():
    return {"loss": 0.0, "correct": 0, "count": 0, "fwd": 0.0, "adj": 0.0, "batches": 0, "seconds": 0.0,
            "unconverged": 0.0}


def train(net: ImplicitNetwork, X, y, config: TrainConfig | None = None, *, X_val=None, y_val=None,
          progress=True, callback=None, resume: History | None = None, **fields) -> History:
    """Train ``net`` in place by projected (or parametrised) gradient descent.

    Parameters
    ----------
    net : ImplicitNetwork
    X, y : arrays
        Inputs (N, n_in) and integer labels (or regression targets for ``loss="mse"``).
    config : TrainConfig, optional
        The run (default ``TrainConfig()``).
    **fields
        Fields of :class:`TrainConfig` that replace those of ``config`` (``train(net, X, y,
        epochs=3)`` is ``train(net, X, y, TrainConfig(epochs=3))``). Its fields:

    epochs, batch_size, lr, optimizer, schedule
        Standard; ``optimizer`` in {"adam", "sgd"}, ``schedule`` in {"constant", "cosine"}.
    constraint : {"mu_inf", "norm_inf", "nemon_param", "mon", "none"}
        See :data:`solvers.training.CONSTRAINTS`; ``gamma`` is its bound.
    lipschitz_weight : float
        Weight of ``‖C‖∞‖B‖∞ / (1 − μ∞(A))`` in the loss (``mu_inf``/``norm_inf`` only).
    atol : float
        Forward and adjoint solver tolerances.
    seed : int
        Batch order: epoch ``e`` uses ``default_rng([seed, e]).permutation(N)``.
    shift, flip
        Data augmentation of image inputs: every epoch trains on a new copy of ``X`` in which
        each image is moved by a random offset of at most ``shift`` pixels in each direction
        (zero fill) and, with ``flip``, mirrored left to right with probability 1/2
        (:func:`augment_images`, drawn from ``default_rng([seed, e, 1])``: a resumed run sees
        the same images). Images are the network's ``in_shape`` (convolutional) or one square
        channel (dense). Validation and test inputs are never augmented.
    per_unit_steps : bool
        The averaged forward and adjoint solves (and the embedded network's) take one step per
        unit, ``α_i = 1 / (1 − min(0, a_ii))`` (``solvers.solve``'s ``alpha="per_unit"``),
        instead of the single ``α*``: the same guarantee, no more iterations in the worst case,
        fewer when the self-loops spread out. Needs the averaged forward method, or Anderson,
        whose own step stays ``α*`` (the adjoint solves are averaged with the per-unit steps).
    time_budget : float
        Seconds of training steps (the records' ``seconds``: evaluation after each epoch is not
        counted) after which the run ends, mid-epoch if need be (that epoch is evaluated and
        recorded like the others); 0 (default): no budget. The learning-rate schedule and the
        radius's ramp then follow whichever of the epochs and the budget is further along: a
        run ends at ``epochs`` or at the budget, whichever comes first, with its schedule
        complete. The batches stay those of ``seed``, but how many a budget buys depends on the
        machine.
    X_val, y_val : arrays, optional
        Evaluated after every epoch (passed to ``train``, not part of the config).
    progress : bool
        A tqdm progress bar per epoch.
    callback : callable(record), optional
        Called with each epoch's record.
    resume : History, optional
        Continue from a previous (interrupted or finished) run's state with the same config.
    interval_eps, interval_weight, interval_ramp
        Interval-bound (robust) training: the loss becomes
        ``(1 − κ) CE(clean) + κ CE(worst-case logits over the ε-box)`` with
        ``κ = interval_weight``, the box bounds from the embedded network, and ε ramped
        linearly from 0 to ``interval_eps`` over the first ``interval_ramp`` epochs. At
        ``κ = 1`` the clean gradient is not computed (a forward solve still gives the training
        accuracy), and ``adj_iters`` counts the embedded network's adjoint iterations.
    interval_relax : int
        With a hidden readout layer (``ConvImplicitNetwork(readout_hidden=h)``): the worst-case
        margins of each sample's ``interval_relax`` closest classes (smallest interval bound)
        are also bounded by that layer's linear relaxation over the box of its inputs, and the
        larger of the two sound bounds is trained on (``interval_loss_and_grad``'s ``relax``),
        the bound its certificates take too. 0 (default): the interval bound alone.
    forward_method : str
        The forward solver (and the embedded network's, in interval training): one of
        :data:`solvers.METHODS`; ``""`` (default) the constraint's guaranteed choice (``average``, or
        ``peaceman_rachford`` for ``mon``). ``anderson`` (safeguarded by the averaged factor,
        so still guaranteed) needs far fewer iterations when ``A`` has strongly negative
        self-loops, as interval training produces; the reproduction keeps ``average`` and
        bounds the self-loops instead (``diag_min``; README.md has the runs behind that choice).
    diag_min : float, optional
        ``mu_inf`` only: also project onto ``a_ii ≥ diag_min``. μ∞ charges a self-loop by its
        signed value, so training (interval training above all) drives self-loops far below
        zero to afford larger off-diagonal weights; the averaged step ``α* = 1/(1 − min a_ii)``
        then shrinks and the solves slow down (README.md: the reproduction's interval-trained
        model uses ``diag_min = -1``).

    Returns
    -------
    History
        ``history.solver`` is the solver training used; ``net.solver`` is left as it was.
        Per epoch: loss, train_acc, val_acc, mu_inf, alpha_star, fwd_iters, adj_iters,
        lipschitz (tight bound), lipschitz_paper, unconverged (fraction of forward solves
        that missed atol), seconds.
    """
    base = TrainConfig() if config is None else config
    if not isinstance(base, TrainConfig):
        raise TypeError(f"config must be a TrainConfig, got {type(base).__name__}")
    unknown = set(fields) - {f.name for f in dataclasses.fields(TrainConfig)}
    if unknown:
        raise TypeError(f"train() got unknown TrainConfig fields {sorted(unknown)}")
    given = dataclasses.replace(base, **fields)
    if resume is not None and given.interval_ramp is None:  # the ramp the run started with
        given = dataclasses.replace(given, interval_ramp=resume.config.interval_ramp)
    cfg = given.resolved()
    con = cfg.make_constraint()
    solver = cfg.solver(net.solver)
    opt_cfg = OptimizerConfig(cfg.optimizer, cfg.lr)
    if not net.DENSE and con.name not in CONV_CONSTRAINTS:
        raise ValueError(f"{type(net).__name__} trains with constraint {' or '.join(map(repr, CONV_CONSTRAINTS))} "
                         f"(the others are defined on matrices), got constraint={con.name!r}")
    if cfg.lipschitz_weight > 0 and "D" in net.PARAMS:
        raise ValueError("lipschitz_weight > 0 penalises ||C|| ||B|| / (1 - mu) of a linear readout; this network's "
                         f"readout has a hidden layer (readout_hidden={net.readout_hidden}): use lipschitz_weight=0")
    if cfg.interval_relax and "D" not in net.PARAMS:
        raise ValueError(f"interval_relax > 0 relaxes a hidden readout layer, and this network's readout is linear "
                         f"(its interval bound is exact): use interval_relax=0, got {cfg.interval_relax}")
    X, y = _check_data(X, y, net.n_in, "X")
    if X_val is not None:
        X_val, y_val = _check_data(X_val, y_val, net.n_in, "X_val")
    X = np.ascontiguousarray(X, dtype=net.dtype)
    if cfg.loss == "cross_entropy":
        y = net.check_labels(y, len(y)).astype(np.int64, copy=False)  # once here, not on every batch
    N = len(X)
    n_batches = (N + cfg.batch_size - 1) // cfg.batch_size
    shape = image_shape_of(net, net.n_in) if cfg.shift or cfg.flip else None
    if shape is not None and cfg.shift >= min(shape[1:]):
        raise ValueError(f"shift must be smaller than the {shape[1]}x{shape[2]} images, got {cfg.shift}")
    sched = Schedule(cfg.schedule, cfg.epochs * n_batches)

    if resume is not None:
        saved = resume.config.resolved()
        if dataclasses.replace(saved, epochs=cfg.epochs) != cfg:
            raise ValueError(f"resume: the checkpoint was trained with {resume.config}, not {cfg}")
        state, records = resume.state, list(resume.epochs)
    else:
        raw = con.init(net.A, np.random.default_rng([cfg.seed, 10**6]))
        params = {**raw, **_free_parameters(net)}
        state = TrainerState(0, 0, raw, make_optimizer_state(params), _new_partial())
        records = []
    net.A = con.matrix(state.raw).astype(net.dtype)
    history = History(cfg, records, state, solver=solver)

    with _interrupt_flag() as flag, blas_threads_for(cfg.batch_size, net.n_hidden):
        while state.epoch < cfg.epochs:
            if _spent(cfg, records, state.partial) and state.partial["batches"] == 0:
                break  # the budget ran out with the last epoch
            perm = np.random.default_rng([cfg.seed, state.epoch]).permutation(N)
            Xe = X
            if shape is not None:
                Xe = augment_images(X, shape, cfg.shift, cfg.flip, np.random.default_rng([cfg.seed, state.epoch, 1]))
            bar = _progress(progress, n_batches, state.epoch, cfg.epochs, initial=state.batch)
            p = state.partial
            recent = _RecentOutputs()
            while state.batch < n_batches and not _spent(cfg, records, p):
                t0 = time.perf_counter()
                spent = _time_fraction(cfg, records, p)
                idx = perm[state.batch * cfg.batch_size : (state.batch + 1) * cfg.batch_size]
                robust_only = cfg.interval_eps > 0 and cfg.interval_weight == 1
                flag["gradient"] = True
                try:
                    with net.step_blas_threads():
                        if robust_only:  # the clean loss has weight 0: its gradient is not computed
                            value, grads, stats = _robust_step(net, Xe[idx], y[idx], _ramped_eps(
                                cfg, state.epoch, state.batch, n_batches, spent), solver, cfg.interval_relax)
                        else:
                            step_result = net.compute_gradients(Xe, y, cfg.loss, solver=solver, rows=idx)
                            value, grads, stats = step_result.value, step_result.grads, step_result.stats
                except KeyboardInterrupt:  # raised by the handler while compiling: no update made
                    break
                finally:
                    flag["gradient"] = False
                recent.add(stats["logits"])
                if cfg.interval_eps > 0 and not robust_only:
                    eps = _ramped_eps(cfg, state.epoch, state.batch, n_batches, spent)
                    k = cfg.interval_weight
                    with net.step_blas_threads():
                        rvalue, rgrads = interval_loss_and_grad(net, Xe[idx], y[idx], eps, solver=solver,
                                                                relax=cfg.interval_relax)
                    value = (1 - k) * value + k * rvalue
                    grads = {key: ((1 - k) * g + k * rgrads[key]).astype(net.dtype) for key, g in grads.items()}
                if cfg.lipschitz_weight > 0:
                    reg, rgrads = lipschitz_penalty(net.A, net.B, net.C)
                    value += cfg.lipschitz_weight * reg
                    for k, g in rgrads.items():
                        grads[k] = grads[k] + (cfg.lipschitz_weight * g).astype(net.dtype)
                raw_grads = con.pullback(state.raw, grads.pop("A").astype(np.float64))
                params = {**state.raw, **_free_parameters(net)}
                lr_factor = sched.factor_at(max(state.optimizer.t / sched.total_steps, spent))
                step(opt_cfg, state.optimizer, params, {**raw_grads, **grads}, lr_factor)
                con.project(state.raw)
                net.A = con.matrix(state.raw).astype(net.dtype)
                p["loss"] += value * len(idx)
                if cfg.loss == "cross_entropy":
                    p["correct"] += int((stats["logits"].argmax(axis=1) == y[idx]).sum())
                p["count"] += len(idx)
                p["fwd"] += stats["forward_iterations"]
                p["adj"] += stats["adjoint_iterations"]
                p["unconverged"] += 1.0 - stats["forward_converged"]
                p["batches"] += 1
                p["seconds"] += time.perf_counter() - t0
                state.batch += 1
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{p['loss'] / p['count']:.4f}", fwd=f"{stats['forward_iterations']:.0f}")
                if flag["stop"]:
                    break
            if bar is not None:
                bar.close()
            if flag["stop"] and state.batch < n_batches:  # Ctrl-C means stop now, even in the budget's last batch
                history.interrupted = True
                logger.warning("training interrupted at epoch %d, batch %d/%d", state.epoch + 1, state.batch, n_batches)
                break
            budget_out = _spent(cfg, records, p)
            record = _epoch_record(net, con, state, p, cfg, solver, X_val, y_val,
                                   _time_fraction(cfg, records, p), n_batches)
            records.append(record)
            state.epoch += 1
            state.batch = 0
            state.partial = _new_partial()
            if callback is not None:
                callback(record)
            problem = _collapse(recent, record, cfg, net.n_out)
            if problem:
                raise TrainingCollapsed(problem, history)
            if budget_out:
                break
            if flag["stop"]:  # Ctrl-C in the last batch of an epoch (the last one's too): stop all the same
                history.interrupted = True
                break
    return history


def _robust_step(net, U, y, eps, solver, relax=0):
    """Loss, gradients and statistics of a step whose loss is the worst-case one alone
    (``interval_weight = 1``): the interval loss's gradients, the clean outputs from a forward
    solve (for the training accuracy and the collapse check) and, as ``adjoint_iterations``,
    the embedded adjoint's (the only adjoint solve the step makes)."""
    fp = net.forward_pass(U, solver)
    value, grads, rstats = interval_loss_and_grad(net, U, y, eps, solver=solver, stats=True, relax=relax)
    stats = {"forward_iterations": float(fp.iterations.mean()), "adjoint_iterations": rstats["adjoint_iterations"],
             "forward_converged": float(fp.converged.mean()), "logits": fp.Y}
    return value, grads, stats


class TrainingCollapsed(RuntimeError):
    """Training stopped because the network's outputs no longer depend on its input (every
    hidden unit inactive: a dead ReLU network gets no gradient and cannot recover). The
    message gives the evidence and the likely cause; ``history`` holds the epochs so far."""

    def __init__(self, message: str, history: "History"):
        super().__init__(message)
        self.history = history


#: Samples on which the end of each epoch checks for a collapse: the epoch's last ones.
COLLAPSE_SAMPLES = 1000


class _RecentOutputs:
    """The network's outputs on the last :data:`COLLAPSE_SAMPLES` training inputs of an epoch,
    batch by batch, as the training steps computed them (a collapse check at the end of the
    epoch then costs no forward pass: on a convolutional layer one over 1,000 inputs took longer
    than a short epoch)."""

    def __init__(self):
        self.batches = collections.deque()
        self.rows = 0

    def add(self, Y: np.ndarray) -> None:
        self.batches.append(np.array(Y, dtype=np.float64))
        self.rows += len(Y)
        while self.batches and self.rows - len(self.batches[0]) >= COLLAPSE_SAMPLES:
            self.rows -= len(self.batches.popleft())


def _collapse(recent: _RecentOutputs, record, cfg: TrainConfig, q: int) -> str | None:
    """A message when the network has collapsed, else ``None``: within every one of the epoch's
    last batches (:class:`_RecentOutputs`) its outputs are the same for every input. (Batch by
    batch: a dead network's outputs are its readout bias, which each step still moves.)"""
    batches = [Y for Y in recent.batches if len(Y) > 1]
    if not batches or any(np.ptp(Y, axis=0).max() > 1e-6 * (1.0 + np.abs(Y).max()) for Y in batches):
        return None
    epoch = record["epoch"]
    lines = [f"the network collapsed in epoch {epoch}: its outputs were the same for every input of each of the "
             f"epoch's last {len(batches)} batches ({recent.rows} training inputs): no hidden unit responds to the "
             "input, so no gradient can bring it back"]
    if cfg.loss == "cross_entropy":
        lines.append(f"training loss {record['loss']:.4f} (log {q} = {np.log(q):.4f}: no information), "
                     f"train accuracy {record['train_acc']:.3f} (chance {1 / q:.3f})")
    if cfg.interval_eps > 0:
        eps = record.get("eps", _ramped_eps(cfg, epoch, 0, 1))
        lines.append(f"likely cause: interval training with weight {cfg.interval_weight:g} at radius {eps:g} by the end "
                     f"of epoch {epoch} ({_ramp_words(cfg)}): the worst-case loss is lowest when "
                     "every unit is off. Ramp the radius over more epochs (--interval-ramp), or lower "
                     "--interval-eps or --interval-weight")
    else:
        lines.append(f"likely cause: a step too large for this network (learning rate {cfg.lr:g}; try a smaller --lr) "
                     f"or a constraint that leaves little room (constraint {cfg.constraint}, gamma {cfg.gamma:g})")
    return "; ".join(lines)


def _ramp_words(cfg: TrainConfig) -> str:
    if cfg.interval_ramp:
        return f"ramped over {cfg.interval_ramp} epochs"
    return "no ramp: full radius from the first step"


def _ramped_eps(cfg: TrainConfig, epoch: int, batch: int, n_batches: int, spent: float = 0.0) -> float:
    """The radius at ``batch`` of ``epoch`` (0-based), or where the fraction ``spent`` of the time
    budget puts the run if that is further along."""
    if cfg.interval_ramp <= 0:
        return cfg.interval_eps
    return cfg.interval_eps * min(1.0, max(epoch + batch / n_batches, spent * cfg.epochs) / cfg.interval_ramp)


def _time_fraction(cfg: TrainConfig, records, p) -> float:
    """The fraction of ``cfg.time_budget`` spent by the finished epochs ``records`` and the
    current one's running sums ``p`` (0 without a budget)."""
    if not cfg.time_budget:
        return 0.0
    return (sum(r["seconds"] for r in records) + p["seconds"]) / cfg.time_budget


def _spent(cfg: TrainConfig, records, p) -> bool:
    return _time_fraction(cfg, records, p) >= 1.0


#: Validation samples on which an interval-trained run reports its certified accuracy per epoch.
CERTIFIED_SAMPLES = 500


def _epoch_record(net, con: Constraint, state, p, cfg, solver, X_val, y_val, spent=0.0, n_batches=1) -> dict:
    A64 = net.state_operator()
    if not isinstance(A64, contraction.Conv2d):
        A64 = A64.astype(np.float64)
    record = {
        "epoch": state.epoch + 1,
        "loss": p["loss"] / max(p["count"], 1),
        "train_acc": p["correct"] / max(p["count"], 1) if cfg.loss == "cross_entropy" else float("nan"),
        "val_acc": float("nan"),
        "mu_inf": contraction.mu_inf(A64),
        "alpha_star": contraction.optimal_alpha(A64),
        "fwd_iters": p["fwd"] / max(p["batches"], 1),
        "adj_iters": p["adj"] / max(p["batches"], 1),
        "unconverged": p["unconverged"] / max(p["batches"], 1),
        "lipschitz": net.lipschitz("tight", eta=con.weights(state.raw)),
        "lipschitz_paper": net.lipschitz("paper", eta=con.weights(state.raw)),
        "seconds": p["seconds"],
    }
    if cfg.time_budget:
        record["batches"] = p["batches"]
        record["budget_spent"] = min(spent, 1.0)
    # The solves' local rate at the equilibria of the first validation inputs (median): what sets
    # fwd_iters, where the step's factor bounds it for every input.
    record["local_rate"] = float("nan")
    if X_val is not None:
        record["local_rate"] = float(np.median(net.local_rates(X_val[:LOCAL_RATE_SAMPLES], solver)))
    if X_val is not None and cfg.loss == "cross_entropy":
        record["val_acc"] = net.accuracy(X_val, y_val, solver=solver)
    elif X_val is not None:
        pred = np.concatenate([net.forward(X_val[i : i + 1000], solver) for i in range(0, len(X_val), 1000)])
        record["val_acc"] = float(np.mean((pred - np.asarray(y_val).reshape(pred.shape)) ** 2))
    if cfg.interval_eps > 0 and X_val is not None:
        eps = _ramped_eps(cfg, state.epoch, state.batch, n_batches, spent)
        record["eps"] = eps
        record["val_certified"] = certified_accuracy(net, X_val[:CERTIFIED_SAMPLES], y_val[:CERTIFIED_SAMPLES], eps)
    problem = con.violation(net.state_operator(), state.raw)
    if problem:
        logger.warning("after epoch %d: %s", record["epoch"], problem)
    if record["unconverged"] > 0:
        logger.warning("epoch %d: %.1f%% of forward solves missed atol=%g", record["epoch"],
                       100 * record["unconverged"], cfg.atol)
    return record


def _progress(enabled, total, epoch, epochs, initial=0):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=f"epoch {epoch + 1}/{epochs}", unit="batch", leave=False)
