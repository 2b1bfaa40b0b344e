"""The projected-gradient trainer: well-posed before every step, learns digits, deterministic,
resumable after Ctrl-C with the same result as an uninterrupted run, the Lipschitz
regulariser, every constraint, the optimisers and the schedule."""

from __future__ import annotations

import math
import os
import signal
import warnings

import numpy as np
import pytest

import contraction
from solvers import NotGuaranteedWarning
from solvers.training import (
    CONSTRAINTS,
    LOCAL_RATE_SAMPLES,
    History,
    ImplicitNetwork,
    OptimizerConfig,
    Schedule,
    load_dataset,
    load_training,
    make_constraint,
    save,
    train,
)
from solvers.training._optim import make_optimizer_state, step

GAMMA = 0.5
#: Slack for the float rounding of a projected matrix (float32 networks store A in float32).
SLACK = 1e-6
RECORD_KEYS = {"epoch", "loss", "train_acc", "val_acc", "mu_inf", "alpha_star", "fwd_iters", "adj_iters",
               "local_rate", "unconverged", "lipschitz", "lipschitz_paper", "seconds"}


def measure(name, A):
    """The quantity the constraint ``name`` keeps ≤ γ, computed from A alone."""
    A = np.asarray(A, dtype=np.float64)
    if name == "mu_inf":
        return contraction.mu_inf(A)
    if name == "norm_inf":
        return contraction.induced_norm(A, np.inf)
    if name == "nemon_param":
        return contraction.optimal_weights(A)[1]  # inf over η ≤ μ∞,η at the trained η
    return contraction.mu_2(A)


def spy_on_steps(net, on_call):
    """Replace the network's batch gradient (``compute_gradients``, which the trainer calls
    once per batch) by a wrapper calling ``on_call(call_number)`` first.

    The trainer calls it once per optimiser step, with ``net.A`` as left by the previous
    step's projection, so the wrapper sees the matrix of every step."""
    original = net.compute_gradients
    calls = {"n": 0}

    def wrapper(*args, **kwargs):
        calls["n"] += 1
        on_call(calls["n"])
        return original(*args, **kwargs)

    net.compute_gradients = wrapper
    return calls


def sigint_at(net, k):
    """Simulate Ctrl-C while the k-th batch is being computed."""
    return spy_on_steps(net, lambda n: os.kill(os.getpid(), signal.SIGINT) if n == k else None)


def same_records(a, b):
    assert len(a) == len(b)
    for ra, rb in zip(a, b):
        assert set(ra) == set(rb) == RECORD_KEYS
        for key in RECORD_KEYS - {"seconds"}:
            assert ra[key] == rb[key] or (math.isnan(ra[key]) and math.isnan(rb[key])), (key, ra[key], rb[key])


def assert_same_parameters(net, ref):
    for name in ImplicitNetwork.PARAMS:
        np.testing.assert_array_equal(getattr(net, name), getattr(ref, name), err_msg=name)
        assert getattr(net, name).dtype == getattr(ref, name).dtype


@pytest.fixture(scope="module")
def small(digits):
    """400 digits, for runs that must take many steps quickly."""
    X, y, _, _ = digits
    return X[:400], y[:400]


# -- (a) well-posed before and after every step -------------------------------------------------
@pytest.mark.parametrize("name", ["mu_inf", "norm_inf", "nemon_param", "mon"])
def test_constraint_holds_at_every_step(name, small):
    X, y = small
    net = ImplicitNetwork(64, 10, 10, seed=0)
    seen = []
    calls = spy_on_steps(net, lambda n: seen.append(measure(name, net.A)))
    # A large learning rate so the constraint is active (the projection binds).
    h = train(net, X, y, epochs=2, batch_size=40, lr=3e-2, constraint=name, gamma=GAMMA, progress=False)
    assert calls["n"] == 20 and len(h) == 2 and not h.interrupted
    seen.append(measure(name, net.A))
    assert max(seen) <= GAMMA + SLACK, seen
    assert max(seen) >= GAMMA - 0.05, f"the constraint never came close to binding: {max(seen)}"
    con = make_constraint(name, GAMMA)
    assert con.violation(net.A, h.state.raw) is None
    np.testing.assert_allclose(net.A, con.matrix(h.state.raw), rtol=0, atol=0)
    if name == "nemon_param":
        assert contraction.mu_inf(net.A, con.weights(h.state.raw)) <= GAMMA + SLACK
        for r in h.epochs:  # the weighted certificate makes the recorded Lipschitz bound finite
            assert np.isfinite(r["lipschitz"])
    if name in ("mu_inf", "norm_inf"):
        assert all(r["mu_inf"] <= GAMMA + SLACK for r in h.epochs)
        assert h[-1]["mu_inf"] == contraction.mu_inf(net.A)
        assert h[-1]["lipschitz"] == net.lipschitz("tight")
        assert h[-1]["lipschitz_paper"] == net.lipschitz("paper") >= h[-1]["lipschitz"]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_mu_inf_training_keeps_the_bound_in_both_dtypes(dtype, small):
    X, y = small
    net = ImplicitNetwork(64, 10, 10, seed=3, dtype=dtype)
    seen = []
    spy_on_steps(net, lambda n: seen.append(contraction.mu_inf(net.A.astype(np.float64))))
    h = train(net, X, y, epochs=1, batch_size=20, lr=5e-2, constraint="mu_inf", gamma=GAMMA, progress=False)
    assert net.A.dtype == dtype and net.B.dtype == dtype
    assert max(seen) <= GAMMA + SLACK
    assert h[0]["mu_inf"] <= GAMMA + SLACK
    assert h[0]["alpha_star"] == pytest.approx(contraction.optimal_alpha(net.A.astype(np.float64)))


# -- (b) it learns -----------------------------------------------------------------------------
def test_learns_digits(digits):
    Xtr, ytr, Xte, yte = digits
    net = ImplicitNetwork(64, 32, 10, seed=0)
    records = []
    h = train(net, Xtr, ytr, epochs=3, batch_size=25, lr=3e-3, constraint="mu_inf", gamma=GAMMA,
              X_val=Xte, y_val=yte, progress=False, callback=records.append)
    loss = h.column("loss")
    assert np.all(np.diff(loss) < 0), loss
    assert net.accuracy(Xte, yte) >= 0.85
    assert h[-1]["val_acc"] == net.accuracy(Xte, yte)
    assert h[-1]["train_acc"] >= 0.85
    assert records == h.epochs  # the callback saw every record, in order
    assert [r["epoch"] for r in h.epochs] == [1, 2, 3]
    assert all(r["unconverged"] == 0.0 for r in h.epochs)
    assert contraction.mu_inf(net.A) <= GAMMA + SLACK


def test_regression_with_mse():
    Xtr, ytr, Xte, yte = load_dataset("function")
    net = ImplicitNetwork(1, 10, 1, activation="tanh", seed=0)
    h = train(net, Xtr, ytr, epochs=3, batch_size=50, lr=1e-2, loss="mse", X_val=Xte, y_val=yte, progress=False)
    assert h.column("loss")[-1] < h.column("loss")[0]
    assert np.all(np.isnan(h.column("train_acc")))  # no accuracy for regression
    pred = net.forward(Xte)
    assert h[-1]["val_acc"] == pytest.approx(np.mean((pred - yte) ** 2), rel=1e-12)  # val MSE


# -- (c) determinism -----------------------------------------------------------------------------
def test_same_seed_same_result_different_seed_different_result(small):
    X, y = small
    runs = []
    for seed in (0, 0, 1):
        net = ImplicitNetwork(64, 10, 10, seed=5)
        h = train(net, X, y, epochs=1, batch_size=40, lr=1e-2, seed=seed, progress=False)
        runs.append((net, h))
    assert_same_parameters(runs[0][0], runs[1][0])
    same_records(runs[0][1].epochs, runs[1][1].epochs)
    assert not np.array_equal(runs[0][0].A, runs[2][0].A)
    assert runs[0][1][0]["loss"] != runs[2][1][0]["loss"]


def test_per_unit_steps_train_the_same_model_in_fewer_iterations(small):
    """The per-unit steps change how the averaged solves reach each fixed point (to atol), not
    which one: the trained parameters agree to the solves' tolerance, in fewer iterations."""
    X, y = small
    G = np.random.default_rng(2).standard_normal((12, 12)) / np.sqrt(12)
    G[np.diag_indices(12)] = np.linspace(-2.0, 0.0, 12)  # self-loops that differ: so do the steps
    runs = {}
    for per_unit in (False, True):
        net = ImplicitNetwork(64, 12, 10, seed=2)
        net.A = contraction.project_mu_inf(G, 0.9)
        h = train(net, X, y, epochs=2, batch_size=50, lr=1e-2, atol=1e-10, per_unit_steps=per_unit, progress=False)
        assert h.solver.alpha == ("per_unit" if per_unit else None)
        assert h.config.per_unit_steps is per_unit
        runs[per_unit] = net, h
    (single, hs), (units, hu) = runs[False], runs[True]
    np.testing.assert_allclose(units.A, single.A, atol=1e-6)
    np.testing.assert_allclose(units.C, single.C, atol=1e-6)
    for e in range(2):
        assert hu[e]["fwd_iters"] < hs[e]["fwd_iters"]


def test_training_does_not_touch_the_data(small):
    X, y = small
    X0, y0 = X.copy(), y.copy()
    train(ImplicitNetwork(64, 6, 10), X, y, epochs=1, batch_size=100, progress=False)
    np.testing.assert_array_equal(X, X0)
    np.testing.assert_array_equal(y, y0)


# -- (d) interrupt and resume -------------------------------------------------------------------
N_RESUME, BATCH_RESUME = 300, 50  # 6 batches per epoch

RESUME_CASES = [
    pytest.param("mu_inf", np.float64, "cosine", 3, id="mu_inf-mid-epoch1-cosine"),
    pytest.param("mu_inf", np.float32, "constant", 6, id="mu_inf-end-of-epoch1-float32"),
    pytest.param("mu_inf", np.float64, "constant", 9, id="mu_inf-mid-epoch2"),
    pytest.param("nemon_param", np.float64, "cosine", 2, id="nemon_param-mid-epoch1"),
    pytest.param("mon", np.float64, "constant", 4, id="mon-mid-epoch1"),
]


@pytest.mark.parametrize("constraint, dtype, schedule, k", RESUME_CASES)
def test_resume_after_ctrl_c_equals_uninterrupted_run(constraint, dtype, schedule, k, small, tmp_path):
    X, y = small[0][:N_RESUME], small[1][:N_RESUME]
    Xv, yv = small[0][N_RESUME:], small[1][N_RESUME:]
    kwargs = dict(epochs=2, batch_size=BATCH_RESUME, lr=1e-2, schedule=schedule, constraint=constraint,
                  gamma=GAMMA, seed=4, X_val=Xv, y_val=yv, progress=False)
    n_batches = N_RESUME // BATCH_RESUME

    ref = ImplicitNetwork(64, 8, 10, seed=1, dtype=dtype)
    h_ref = train(ref, X, y, **kwargs)
    assert not h_ref.interrupted and len(h_ref) == 2

    net = ImplicitNetwork(64, 8, 10, seed=1, dtype=dtype)
    calls = sigint_at(net, k)
    previous_handler = signal.getsignal(signal.SIGINT)
    h1 = train(net, X, y, **kwargs)
    assert signal.getsignal(signal.SIGINT) is previous_handler  # the trainer restored the handler
    assert h1.interrupted
    assert calls["n"] == k  # stopped right after the batch during which Ctrl-C arrived
    assert (h1.state.epoch, h1.state.batch) == divmod(k, n_batches)
    assert len(h1) == k // n_batches
    assert h1.state.optimizer.t == k

    path = save(net, tmp_path / "interrupted.npz", history=h1)
    net2, h2, _ = load_training(path)
    assert h2.interrupted and (h2.state.epoch, h2.state.batch) == (h1.state.epoch, h1.state.batch)
    assert_same_parameters(net2, net)
    h3 = train(net2, X, y, resume=h2, **kwargs)
    assert not h3.interrupted
    assert_same_parameters(net2, ref)
    same_records(h3.epochs, h_ref.epochs)
    for key in h_ref.state.raw:
        np.testing.assert_array_equal(h3.state.raw[key], h_ref.state.raw[key])
    assert h3.state.optimizer.t == h_ref.state.optimizer.t == 2 * n_batches
    for key in h_ref.state.optimizer.m:
        np.testing.assert_array_equal(h3.state.optimizer.m[key], h_ref.state.optimizer.m[key])
        np.testing.assert_array_equal(h3.state.optimizer.v[key], h_ref.state.optimizer.v[key])


@pytest.mark.parametrize("k", [3, 9])
def test_resume_after_ctrl_c_with_augmentation_equals_uninterrupted_run(k, small, tmp_path):
    """Augmented images are drawn per epoch from the seed, so a run resumed mid-epoch trains on
    the images the uninterrupted run trained on."""
    X, y = small[0][:N_RESUME], small[1][:N_RESUME]
    kwargs = dict(epochs=2, batch_size=BATCH_RESUME, lr=1e-2, schedule="cosine", seed=4, shift=2, flip=True,
                  progress=False)
    ref = ImplicitNetwork(64, 8, 10, seed=1)
    h_ref = train(ref, X, y, **kwargs)
    net = ImplicitNetwork(64, 8, 10, seed=1)
    sigint_at(net, k)
    h1 = train(net, X, y, **kwargs)
    assert h1.interrupted and h1.state.optimizer.t == k
    net2, h2, _ = load_training(save(net, tmp_path / "interrupted.npz", history=h1))
    assert (h2.config.shift, h2.config.flip) == (2, True)
    h3 = train(net2, X, y, resume=h2, **kwargs)
    assert not h3.interrupted
    assert_same_parameters(net2, ref)
    same_records(h3.epochs, h_ref.epochs)


def test_resume_in_memory_without_a_checkpoint(small):
    X, y = small[0][:N_RESUME], small[1][:N_RESUME]
    kwargs = dict(epochs=2, batch_size=BATCH_RESUME, lr=1e-2, progress=False)
    ref = ImplicitNetwork(64, 8, 10, seed=2)
    train(ref, X, y, **kwargs)
    net = ImplicitNetwork(64, 8, 10, seed=2)
    sigint_at(net, 5)
    h = train(net, X, y, **kwargs)
    assert h.interrupted
    h = train(net, X, y, resume=h, **kwargs)
    assert not h.interrupted and len(h) == 2
    assert_same_parameters(net, ref)


def test_resume_a_finished_run_with_more_epochs(small):
    X, y = small[0][:N_RESUME], small[1][:N_RESUME]
    net = ImplicitNetwork(64, 8, 10, seed=2)
    h = train(net, X, y, epochs=1, batch_size=BATCH_RESUME, progress=False)
    h = train(net, X, y, epochs=2, batch_size=BATCH_RESUME, progress=False, resume=h)
    assert [r["epoch"] for r in h.epochs] == [1, 2] and h.state.epoch == 2
    ref = ImplicitNetwork(64, 8, 10, seed=2)
    train(ref, X, y, epochs=2, batch_size=BATCH_RESUME, progress=False)
    assert_same_parameters(net, ref)  # constant schedule: continuing equals training longer


def test_resume_with_another_config_raises_value_error(small):
    X, y = small[0][:N_RESUME], small[1][:N_RESUME]
    net = ImplicitNetwork(64, 8, 10)
    h = train(net, X, y, epochs=1, batch_size=BATCH_RESUME, lr=1e-2, progress=False)
    with pytest.raises(ValueError, match="resume"):
        train(net, X, y, epochs=2, batch_size=BATCH_RESUME, lr=2e-2, progress=False, resume=h)
    with pytest.raises(ValueError, match="resume"):
        train(net, X, y, epochs=2, batch_size=BATCH_RESUME, lr=1e-2, constraint="norm_inf", progress=False, resume=h)


def test_resuming_a_finished_run_with_the_same_epochs_does_nothing(small):
    X, y = small[0][:N_RESUME], small[1][:N_RESUME]
    net = ImplicitNetwork(64, 8, 10)
    h = train(net, X, y, epochs=1, batch_size=BATCH_RESUME, progress=False)
    A = net.A.copy()
    calls = spy_on_steps(net, lambda n: None)
    h2 = train(net, X, y, epochs=1, batch_size=BATCH_RESUME, progress=False, resume=h)
    assert calls["n"] == 0 and len(h2) == 1
    np.testing.assert_array_equal(net.A, A)


# -- (e) the Lipschitz regulariser ----------------------------------------------------------------
def test_lipschitz_weight_lowers_the_bound(digits):
    Xtr, ytr, _, _ = digits
    bounds = {}
    for weight in (0.0, 1e-2):
        net = ImplicitNetwork(64, 16, 10, seed=0)
        h = train(net, Xtr, ytr, epochs=2, batch_size=50, lr=3e-3, gamma=GAMMA, lipschitz_weight=weight,
                  progress=False)
        bounds[weight] = net.lipschitz()
        assert h[-1]["lipschitz"] == pytest.approx(bounds[weight])
    assert bounds[1e-2] < 0.7 * bounds[0.0], bounds


def test_lipschitz_weight_also_works_with_norm_inf(small):
    X, y = small
    net = ImplicitNetwork(64, 8, 10, seed=0)
    h = train(net, X, y, epochs=1, batch_size=50, constraint="norm_inf", gamma=GAMMA, lipschitz_weight=1e-2,
              progress=False)
    assert np.isfinite(h[0]["loss"]) and np.abs(net.A).sum(1).max() <= GAMMA + SLACK


@pytest.mark.parametrize("constraint", ["none", "nemon_param", "mon"])
def test_lipschitz_weight_needs_a_projected_constraint(constraint, small):
    X, y = small
    with pytest.raises(ValueError, match="lipschitz_weight"):
        train(ImplicitNetwork(64, 4, 10), X, y, epochs=1, constraint=constraint, gamma=0.5, lipschitz_weight=0.1,
              progress=False)


def test_negative_lipschitz_weight_raises_value_error(small):
    with pytest.raises(ValueError, match="lipschitz_weight"):
        train(ImplicitNetwork(64, 4, 10), *small, epochs=1, lipschitz_weight=-1.0, progress=False)


def test_epoch_records_the_local_rate_of_the_validation_solves(digits):
    """Each epoch records the median local rate at the first validation inputs' equilibria (nan
    without validation data), the rate that sets the epoch's solve lengths."""
    Xtr, ytr, Xte, yte = digits
    net = ImplicitNetwork(64, 10, 10, seed=0)
    h = train(net, Xtr, ytr, epochs=2, batch_size=100, lr=3e-3, X_val=Xte, y_val=yte, progress=False)
    rates = net.local_rates(Xte[:LOCAL_RATE_SAMPLES], h.solver)
    assert h[-1]["local_rate"] == float(np.median(rates))
    assert 0 <= h[-1]["local_rate"] <= contraction.contraction_factor(net.A.astype(np.float64))
    assert math.isnan(train(ImplicitNetwork(64, 10, 10, seed=0), Xtr, ytr, epochs=1, batch_size=100,
                            progress=False)[0]["local_rate"])


# -- (f) every constraint trains ------------------------------------------------------------------
@pytest.mark.parametrize("name", list(CONSTRAINTS))
def test_every_constraint_trains_one_epoch(name, digits):
    Xtr, ytr, Xte, yte = digits
    net = ImplicitNetwork(64, 10, 10, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", NotGuaranteedWarning)
        h = train(net, Xtr, ytr, epochs=1, batch_size=100, lr=3e-3, constraint=name, gamma=GAMMA,
                  X_val=Xte, y_val=yte, progress=False)
    assert len(h) == 1 and set(h[0]) == RECORD_KEYS
    assert np.isfinite(h[0]["loss"]) and 0 < h[0]["loss"] < 10
    assert 0 <= h[0]["val_acc"] <= 1 and h[0]["unconverged"] == 0.0
    assert make_constraint(name, GAMMA).violation(net.A, h.state.raw) is None
    if name == "zero":
        np.testing.assert_array_equal(net.A, 0.0)  # the explicit baseline: A stays exactly 0
    if name == "mon":
        assert h.solver.method == "peaceman_rachford" and h.solver.adjoint_method == "anderson"
    else:
        assert h.solver.method == "average" and h.solver.adjoint_method == "average"
    assert net.solver == ImplicitNetwork(64, 10, 10).solver  # the trainer leaves the network's own


# -- validation -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(epochs=-1), "epochs"),
        (dict(batch_size=0), "batch_size"),
        (dict(schedule="linear"), "schedule"),
        (dict(optimizer="rmsprop"), "optimizer"),
        (dict(lr=0.0), "lr"),
        (dict(lr=np.nan), "lr"),
        (dict(constraint="spectral"), "constraint"),
        (dict(gamma=1.0), "gamma"),
        (dict(per_unit_steps=1), "per_unit_steps must be True or False"),
        (dict(per_unit_steps=True, constraint="mon"), "per_unit_steps needs the averaged or Anderson forward solve"),
        (dict(per_unit_steps=True, forward_method="picard"), "per_unit_steps needs the averaged or Anderson forward"),
        (dict(time_budget=-1.0), "time_budget must be a finite number >= 0"),
        (dict(time_budget=np.inf), "time_budget must be a finite number >= 0"),
        (dict(time_budget="1h"), "time_budget must be a finite number >= 0"),
    ],
)
def test_bad_options_raise_value_error(kwargs, match, small):
    with pytest.raises(ValueError, match=match):
        train(ImplicitNetwork(64, 4, 10), *small, progress=False, **kwargs)


def test_bad_data_raises_value_error(small):
    X, y = small
    net = ImplicitNetwork(64, 4, 10)
    with pytest.raises(ValueError, match="X must have shape"):
        train(net, X[:, :10], y, epochs=1, progress=False)
    with pytest.raises(ValueError, match="different lengths"):
        train(net, X, y[:-1], epochs=1, progress=False)
    Xnan = X.copy()
    Xnan[3, 4] = np.nan
    with pytest.raises(ValueError, match="finite"):
        train(net, Xnan, y, epochs=1, progress=False)
    with pytest.raises(ValueError, match="X_val"):
        train(net, X, y, epochs=1, X_val=X[:, :3], y_val=y, progress=False)
    # Labels are checked once, before any step (the per-batch path trusts them): a label out
    # of range anywhere, even in the last batch, stops training before it changes the network.
    A0 = net.A.copy()
    bad = y.copy()
    bad[-1] = 10
    with pytest.raises(ValueError, match=r"labels in \[0, 10\)"):
        train(net, X, bad, epochs=1, progress=False)
    with pytest.raises(ValueError, match="integer labels"):
        train(net, X, y.astype(float), epochs=1, progress=False)
    np.testing.assert_array_equal(net.A, A0)


def test_zero_epochs_returns_an_empty_history(small):
    net = ImplicitNetwork(64, 4, 10)
    h = train(net, *small, epochs=0, progress=False)
    assert isinstance(h, History) and len(h) == 0 and not h.interrupted


def test_progress_bar_runs(small, capsys):
    X, y = small
    h = train(ImplicitNetwork(64, 4, 10), X[:100], y[:100], epochs=1, batch_size=50, progress=True)
    assert len(h) == 1


# -- (g) optimisers and schedule ------------------------------------------------------------------
def test_adam_first_step_is_lr_times_sign(rng):
    params = {"w": rng.standard_normal((3, 4)), "v": rng.standard_normal(5)}
    # |g| ≥ 0.1, so the eps in the denominator changes the step by at most 1e-7 relative.
    grads = {k: rng.choice([-1.0, 1.0], size=p.shape) * rng.uniform(0.1, 3.0, size=p.shape) for k, p in params.items()}
    start = {k: p.copy() for k, p in params.items()}
    cfg = OptimizerConfig("adam", lr=0.01)
    state = make_optimizer_state(params)
    ids = {k: id(p) for k, p in params.items()}
    step(cfg, state, params, grads)
    assert state.t == 1
    for k in params:
        assert id(params[k]) == ids[k]  # updated in place: the network's arrays are the parameters
        g = grads[k]
        np.testing.assert_allclose(start[k] - params[k], cfg.lr * g / (np.abs(g) + cfg.eps), rtol=1e-12)
        np.testing.assert_allclose(start[k] - params[k], cfg.lr * np.sign(g), rtol=1e-6)


def test_adam_two_steps_closed_form(rng):
    p = rng.standard_normal(6)
    g1, g2 = rng.standard_normal(6), rng.standard_normal(6)
    cfg = OptimizerConfig("adam", lr=0.05, beta1=0.8, beta2=0.9)
    state = make_optimizer_state({"p": p})
    expected = p.copy()
    step(cfg, state, {"p": p}, {"p": g1})
    expected -= cfg.lr * g1 / (np.abs(g1) + cfg.eps)
    step(cfg, state, {"p": p}, {"p": g2}, lr_factor=0.5)
    m = (0.8 * 0.2 * g1 + 0.2 * g2) / (1 - 0.8**2)
    v = (0.9 * 0.1 * g1**2 + 0.1 * g2**2) / (1 - 0.9**2)
    expected -= 0.5 * cfg.lr * m / (np.sqrt(v) + cfg.eps)
    np.testing.assert_allclose(p, expected, rtol=1e-12)


def test_adam_updates_each_dtype_in_its_own_dtype(rng):
    """Parameters of one dtype are updated in one compiled call; each entry
    gets one NumPy Adam step, float32 and float64 each in their own dtype."""
    params = {"A": rng.standard_normal((9, 7)).astype(np.float32), "b": rng.standard_normal(5).astype(np.float32),
              "B": rng.standard_normal((4, 33)).astype(np.float32), "w": rng.standard_normal(50)}
    grads = {k: rng.standard_normal(p.shape) for k, p in params.items()}
    start = {k: p.copy() for k, p in params.items()}
    cfg = OptimizerConfig("adam", lr=0.01)
    step(cfg, make_optimizer_state(params), params, grads)
    for k, p in params.items():
        g = grads[k].astype(p.dtype)
        m, v = (1 - cfg.beta1) * g, (1 - cfg.beta2) * g * g
        want = start[k] - cfg.lr * (m / (1 - cfg.beta1)) / (np.sqrt(v / (1 - cfg.beta2)) + cfg.eps)
        assert p.dtype == start[k].dtype
        np.testing.assert_allclose(p, want, rtol=1e-5 if p.dtype == np.float32 else 1e-12, err_msg=k)


def test_adam_zero_gradient_does_not_move(rng):
    p = rng.standard_normal(4)
    p0 = p.copy()
    step(OptimizerConfig("adam"), make_optimizer_state({"p": p}), {"p": p}, {"p": np.zeros(4)})
    np.testing.assert_array_equal(p, p0)


def test_sgd_momentum_closed_form(rng):
    p = rng.standard_normal(5)
    g = rng.standard_normal(5)
    p0 = p.copy()
    cfg = OptimizerConfig("sgd", lr=0.1, momentum=0.9)
    state = make_optimizer_state({"p": p})
    k = 7
    for _ in range(k):
        step(cfg, state, {"p": p}, {"p": g})
    # buffer after s steps: g (1 − μ^s)/(1 − μ); the displacement is lr times their sum.
    mu = cfg.momentum
    total = sum((1 - mu**s) / (1 - mu) for s in range(1, k + 1))
    np.testing.assert_allclose(p, p0 - cfg.lr * total * g, rtol=1e-12)


def test_sgd_without_momentum_is_plain_gradient_descent(rng):
    p = rng.standard_normal(3)
    g = rng.standard_normal(3)
    p0 = p.copy()
    step(OptimizerConfig("sgd", lr=0.2, momentum=0.0), make_optimizer_state({"p": p}), {"p": p}, {"p": g}, 0.5)
    np.testing.assert_allclose(p, p0 - 0.1 * g, rtol=1e-14)


def test_optimizer_keeps_float32(rng):
    p = rng.standard_normal(4).astype(np.float32)
    state = make_optimizer_state({"p": p})
    step(OptimizerConfig("adam"), state, {"p": p}, {"p": rng.standard_normal(4).astype(np.float32)})
    assert p.dtype == np.float32 and state.m["p"].dtype == np.float32


@pytest.mark.parametrize("kwargs", [dict(name="rmsprop"), dict(lr=0.0), dict(lr=-1e-3), dict(lr=np.inf)])
def test_bad_optimizer_config_raises_value_error(kwargs):
    with pytest.raises(ValueError):
        OptimizerConfig(**kwargs)


def test_schedule_factors():
    assert Schedule("constant", 100).factor(50) == 1.0
    assert Schedule("cosine", 0).factor(10) == 1.0
    s = Schedule("cosine", 100, final_fraction=0.1)
    assert s.factor(0) == pytest.approx(1.0)
    assert s.factor(50) == pytest.approx(0.55)
    assert s.factor(100) == pytest.approx(0.1)
    assert s.factor(1000) == pytest.approx(0.1)
    factors = [s.factor(i) for i in range(101)]
    assert all(a >= b for a, b in zip(factors, factors[1:]))


# -- (h) the time budget -----------------------------------------------------------------------
#: Seconds each batch takes on the fake clock (:func:`fake_clock`).
TICK = 0.5


def fake_clock(monkeypatch):
    """Make the trainer's clock advance by ``TICK`` per reading: it reads it before and after
    each batch, so every batch takes ``TICK`` seconds, whatever the machine."""
    import types

    from solvers.training import _trainer

    now = {"t": 0.0}

    def perf_counter():
        now["t"] += TICK
        return now["t"]

    monkeypatch.setattr(_trainer, "time", types.SimpleNamespace(perf_counter=perf_counter))


def spy_on(monkeypatch, name, position):
    """Record argument ``position`` of every call the trainer makes to its ``name``."""
    from solvers.training import _trainer

    seen = []
    original = getattr(_trainer, name)

    def wrapper(*args, **kwargs):
        seen.append(args[position])
        return original(*args, **kwargs)

    monkeypatch.setattr(_trainer, name, wrapper)
    return seen


BUDGET_RUN = dict(epochs=10, batch_size=BATCH_RESUME, lr=1e-2, schedule="cosine", seed=4, interval_eps=0.1,
                  interval_ramp=5, progress=False)


def test_time_budget_ends_the_run_mid_epoch_with_its_schedule_and_ramp_complete(small, monkeypatch):
    """Eight batches of 0.5 s fill a 4 s budget: the run ends in the middle of its second epoch,
    which is evaluated and recorded, and the learning rate and the radius follow the budget
    (further along than the epochs), reaching the ends of their schedules with it."""
    fake_clock(monkeypatch)
    factors = spy_on(monkeypatch, "step", 4)
    radii = spy_on(monkeypatch, "interval_loss_and_grad", 3)
    X, y = small[0][:N_RESUME], small[1][:N_RESUME]
    net = ImplicitNetwork(64, 8, 10, seed=1)
    h = train(net, X, y, X_val=small[0][N_RESUME:], y_val=small[1][N_RESUME:], time_budget=4.0, **BUDGET_RUN)
    assert not h.interrupted and len(h) == 2 and h.state.optimizer.t == 8
    assert [r["batches"] for r in h.epochs] == [6, 2]
    assert [r["budget_spent"] for r in h.epochs] == [0.75, 1.0]
    assert [r["seconds"] for r in h.epochs] == [6 * TICK, 2 * TICK]
    assert h.epochs[-1]["eps"] == 0.1  # the full radius by the budget's end
    # Batch i starts with i/8 of the budget spent: 10 × i/8 epochs' worth, ahead of i/6 epochs.
    cosine = Schedule("cosine", 10 * 6)
    assert factors == pytest.approx([cosine.factor_at(i / 8) for i in range(8)])
    assert radii == pytest.approx([0.1 * min(1.0, 10 * i / 8 / 5) for i in range(8)])
    assert cosine.factor_at(1.0) == pytest.approx(cosine.final_fraction)


def reference_run(small, monkeypatch, **changes):
    """On the fake clock: ``(X, y, kwargs, ref, h_ref)`` of a budget run with ``changes``, and a
    fresh network like ``ref`` to train again."""
    fake_clock(monkeypatch)
    X, y = small[0][:N_RESUME], small[1][:N_RESUME]
    kwargs = {**BUDGET_RUN, **changes}
    ref = ImplicitNetwork(64, 8, 10, seed=1)
    return X, y, kwargs, ref, train(ref, X, y, **kwargs), ImplicitNetwork(64, 8, 10, seed=1)


def test_a_budget_that_is_never_reached_changes_nothing(small, monkeypatch):
    X, y, kwargs, ref, h_ref, net = reference_run(small, monkeypatch, epochs=2)
    h = train(net, X, y, time_budget=1e6, **kwargs)
    assert len(h) == len(h_ref) == 2 and h.state.optimizer.t == 12
    assert_same_parameters(net, ref)
    assert [r["budget_spent"] for r in h.epochs] == pytest.approx([6 * TICK / 1e6, 12 * TICK / 1e6])


@pytest.mark.parametrize("k", [7, 8])
def test_a_budget_run_resumed_after_ctrl_c_equals_the_uninterrupted_one(k, small, monkeypatch, tmp_path):
    """The budget spent before Ctrl-C travels in the checkpoint (the epochs' and the current
    epoch's seconds): the resumed run ends where the uninterrupted one did, also when Ctrl-C
    came in the batch that spent the budget (k = 8: stopped at once, that epoch recorded on
    resume). Resuming it again trains nothing: its budget is spent."""
    X, y, kwargs, ref, h_ref, net = reference_run(small, monkeypatch, time_budget=4.0)
    sigint_at(net, k)
    h1 = train(net, X, y, **kwargs)
    assert h1.interrupted and h1.state.optimizer.t == k and len(h1) == 1
    net2, h2, _ = load_training(save(net, tmp_path / "interrupted.npz", history=h1))
    assert h2.config.time_budget == 4.0
    h3 = train(net2, X, y, resume=h2, **kwargs)
    assert not h3.interrupted and h3.state.optimizer.t == 8
    assert_same_parameters(net2, ref)
    assert [r["batches"] for r in h3.epochs] == [r["batches"] for r in h_ref.epochs] == [6, 2]
    assert [r["loss"] for r in h3.epochs] == [r["loss"] for r in h_ref.epochs]
    calls = spy_on_steps(net2, lambda n: None)
    h4 = train(net2, X, y, resume=h3, **kwargs)
    assert calls["n"] == 0 and len(h4) == 2
    with pytest.raises(ValueError, match="resume"):
        train(net2, X, y, resume=h3, **{**kwargs, "time_budget": 8.0})


# -- the forward solver is selectable -----------------------------------------------------------
def test_forward_method_is_used_recorded_and_validated(small):
    X, y = small[0][:200], small[1][:200]
    kwargs = dict(epochs=1, batch_size=50, lr=1e-2, progress=False)
    net = ImplicitNetwork(64, 8, 10, seed=3)
    seen = []
    original = net.compute_gradients

    def spy(*args, **kw):
        seen.append(kw["solver"].method)
        return original(*args, **kw)

    net.compute_gradients = spy
    h = train(net, X, y, forward_method="anderson", **kwargs)
    assert seen and set(seen) == {"anderson"}
    assert h.config.forward_method == "anderson" and h[0]["unconverged"] == 0.0
    # default: the constraint's own guaranteed method, written into the config
    assert train(ImplicitNetwork(64, 8, 10, seed=3), X, y, **kwargs).config.forward_method == "average"
    assert train(ImplicitNetwork(64, 8, 10, seed=3), X, y, constraint="mon", **kwargs).config.forward_method \
        == "peaceman_rachford"
    with pytest.raises(ValueError, match="forward_method"):
        train(ImplicitNetwork(64, 8, 10, seed=3), X, y, forward_method="newton", **kwargs)


def test_anderson_training_reaches_the_averaged_runs_solution_quality(small):
    """Both forward solvers stop at atol on the same equilibria: same losses to solver accuracy."""
    X, y = small[0][:200], small[1][:200]
    kwargs = dict(epochs=1, batch_size=50, lr=1e-2, progress=False, atol=1e-9)
    a, b = ImplicitNetwork(64, 8, 10, seed=5, dtype=np.float64), ImplicitNetwork(64, 8, 10, seed=5, dtype=np.float64)
    ha = train(a, X, y, **kwargs)
    hb = train(b, X, y, forward_method="anderson", **kwargs)
    assert hb[0]["fwd_iters"] < ha[0]["fwd_iters"]
    assert abs(ha[0]["loss"] - hb[0]["loss"]) < 1e-6
    np.testing.assert_allclose(a.A, b.A, atol=1e-6)


def test_resume_accepts_checkpoints_from_before_the_forward_method_option(small, tmp_path):
    import dataclasses

    X, y = small[0][:200], small[1][:200]
    kwargs = dict(epochs=2, batch_size=50, lr=1e-2, progress=False)
    net = ImplicitNetwork(64, 8, 10, seed=6)
    h = train(net, X, y, **{**kwargs, "epochs": 1})
    h.config = dataclasses.replace(h.config, forward_method="")  # as an older checkpoint stores it
    h = train(net, X, y, resume=h, **kwargs)
    assert len(h) == 2


# -- a floor on the diagonal ---------------------------------------------------------------------
def test_diag_min_holds_the_diagonal_and_alpha_star_through_training(small, tmp_path):
    """Without the floor this run drives a self-loop below -0.3; with it, never below -0.1."""
    X, y = small[0][:300], small[1][:300]
    kwargs = dict(epochs=2, batch_size=50, lr=5e-2, gamma=0.5, progress=False)
    free = ImplicitNetwork(64, 8, 10, seed=7)
    train(free, X, y, **kwargs)
    assert np.diagonal(free.A).min() < -0.3
    net = ImplicitNetwork(64, 8, 10, seed=7)
    lows = []
    h = train(net, X, y, diag_min=-0.1, callback=lambda r: lows.append(float(np.diagonal(net.A).min())), **kwargs)
    assert h.config.diag_min == -0.1 and min(lows) >= -0.1 - SLACK
    assert all(r["alpha_star"] >= 1 / 1.1 - 1e-6 and r["mu_inf"] <= 0.5 + SLACK for r in h.epochs)
    # recorded in the checkpoint and checked on load and resume
    path = save(net, tmp_path / "floor.npz", history=h)
    _, saved, _ = load_training(path)
    assert saved.config.diag_min == -0.1
    more = train(net, X, y, resume=saved, diag_min=-0.1, **{**kwargs, "epochs": 3})
    assert len(more) == 3
    with pytest.raises(ValueError, match="resume"):
        train(net, X, y, resume=saved, **{**kwargs, "epochs": 3})


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_compiled_finite_check_of_big_data_sets(dtype):
    """Data sets of 2^20+ floats are checked by a compiled pass (no boolean temporary): it must
    find one NaN or infinity anywhere, and accept the largest finite value."""
    from solvers.training._trainer import _all_finite

    X = np.random.default_rng(0).uniform(-1, 1, (1400, 784)).astype(dtype)
    assert X.size >= 1 << 20 and _all_finite(X)
    for bad, where in ((np.nan, (0, 0)), (np.inf, (700, 3)), (-np.inf, (-1, -1))):
        Y = X.copy()
        Y[where] = bad
        assert not _all_finite(Y), (bad, where)
    Y = X.copy()
    Y[5, 5] = np.finfo(dtype).max
    assert _all_finite(Y)
    assert not _all_finite(np.asfortranarray(np.where(X > 0.999, np.nan, X)))  # the NumPy path
    assert _all_finite(np.ones((3, 3), np.uint8))
