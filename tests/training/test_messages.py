"""Library messages: a bad argument gets a ``ValueError`` that names the argument and says
what it must be (issue 13, item 8); counts are integers (``2.7`` epochs is rejected, not
truncated)."""

from __future__ import annotations

import re

import numpy as np
import pytest

from solvers.training import (
    ImplicitNetwork,
    SolverConfig,
    TrainConfig,
    certified_accuracy,
    evaluate,
    fgsm_attack,
    interval_bounds,
    pgd_attack,
    robust_accuracy,
    robustness_table,
    train,
)
from solvers.training._robust import certified_by_interval, certified_by_lipschitz

N_IN, N_OUT = 8, 4


@pytest.fixture
def net():
    return ImplicitNetwork(N_IN, 6, N_OUT, seed=1, solver=SolverConfig(engine="numpy"))


@pytest.fixture
def data(rng):
    return rng.uniform(0.0, 1.0, (5, N_IN)), rng.integers(0, N_OUT, 5)


def raises(message: str):
    """``pytest.raises(ValueError)`` matching ``message`` literally, from its start."""
    return pytest.raises(ValueError, match="^" + re.escape(message))


# -- inputs of the wrong width, empty, non-numeric or non-finite --------------------------------------
WIDTH = f"U must have shape (batch, {N_IN}) for this network (n_in = {N_IN}), got (5, 3)"

INPUT_CALLS = {
    "forward": lambda net, U, y: net.forward(U),
    "predict": lambda net, U, y: net.predict(U),
    "accuracy": lambda net, U, y: net.accuracy(U, y),
    "certified_accuracy-interval": lambda net, U, y: certified_accuracy(net, U, y, 0.1),
    "certified_accuracy-lipschitz": lambda net, U, y: certified_accuracy(net, U, y, 0.1, method="lipschitz"),
    "certified_by_interval": lambda net, U, y: certified_by_interval(net, U, y, 0.1),
    "certified_by_lipschitz": lambda net, U, y: certified_by_lipschitz(net, U, y, 0.1),
    "fgsm_attack": lambda net, U, y: fgsm_attack(net, U, y, 0.1),
    "pgd_attack": lambda net, U, y: pgd_attack(net, U, y, 0.1),
    "robust_accuracy": lambda net, U, y: robust_accuracy(net, U, y, 0.1),
    "robustness_table": lambda net, U, y: robustness_table(net, U, y, [0.1]),
}


@pytest.mark.parametrize("call", INPUT_CALLS.values(), ids=INPUT_CALLS.keys())
def test_an_input_of_the_wrong_width_names_U_and_the_network_width(call, net, rng):
    with raises(WIDTH):
        call(net, rng.random((5, 3)), np.zeros(5, dtype=int))


def test_evaluate_names_its_argument_X(net, rng):
    with raises(f"X must have shape (batch, {N_IN}) for this network (n_in = {N_IN}), got (5, 3)"):
        evaluate(net, rng.random((5, 3)), np.zeros(5, dtype=int))


@pytest.mark.parametrize("U, message", [
    (np.zeros((0, N_IN)), f"U must hold at least one sample, got shape (0, {N_IN})"),
    (np.full((2, N_IN), "a"), "U must be a real numeric array, got dtype <U1"),
    (np.zeros(N_IN), f"U must have shape (batch, {N_IN}) for this network (n_in = {N_IN}), got ({N_IN},)"),
], ids=["empty", "strings", "one-dimensional"])
def test_other_bad_inputs_say_what_U_must_be(U, message, net):
    with raises(message):
        net.forward(U)
    with raises(message):
        certified_accuracy(net, U, np.zeros(len(U), dtype=int), 0.1)


def test_non_finite_inputs_are_located(net, data):
    U, y = data
    U[1, 2] = np.nan
    with raises("U must be finite; non-finite entries at (row, column) [[1, 2]]"):
        net.predict(U)
    with raises("U must be finite; non-finite entries at (row, column) [[1, 2]]"):
        certified_accuracy(net, U, y, 0.1)


# -- labels -------------------------------------------------------------------------------------
@pytest.mark.parametrize("y, message", [
    (np.zeros(4, dtype=int), "y must hold one label per input row, shape (5,), got (4,)"),
    (np.zeros(5), "y must be integer labels (class indices), got dtype float64"),
    (np.array([0, 1, 2, 3, 4]), f"y must be class labels in [0, {N_OUT}) for this network (n_out = {N_OUT}), "
                                "got range [0, 4]"),
], ids=["too-few", "float", "out-of-range"])
def test_bad_labels_name_y(y, message, net, data):
    U, _ = data
    for call in (lambda: net.accuracy(U, y), lambda: certified_accuracy(net, U, y, 0.1),
                 lambda: fgsm_attack(net, U, y, 0.1), lambda: pgd_attack(net, U, y, 0.1),
                 lambda: robust_accuracy(net, U, y, 0.1), lambda: robustness_table(net, U, y, [0.1]),
                 lambda: evaluate(net, U, y)):
        with raises(message):
            call()


def test_bad_labels_name_labels_in_the_per_sample_certificates(net, data):
    U, _ = data
    with raises("labels must hold one label per input row, shape (5,), got (4,)"):
        certified_by_interval(net, U, np.zeros(4, dtype=int), 0.1)
    with raises("labels must hold one label per input row, shape (5,), got (4,)"):
        certified_by_lipschitz(net, U, np.zeros(4, dtype=int), 0.1)


# -- radii ----------------------------------------------------------------------------------------
EPS = "eps (an l-inf radius in pixel units, data in [0, 1]) must be a finite number >= 0, got "

EPS_CALLS = {
    "certified_accuracy-interval": lambda net, U, y, e: certified_accuracy(net, U, y, e),
    "certified_accuracy-lipschitz": lambda net, U, y, e: certified_accuracy(net, U, y, e, method="lipschitz"),
    "certified_by_interval": lambda net, U, y, e: certified_by_interval(net, U, y, e),
    "certified_by_lipschitz": lambda net, U, y, e: certified_by_lipschitz(net, U, y, e),
    "fgsm_attack": lambda net, U, y, e: fgsm_attack(net, U, y, e),
    "pgd_attack": lambda net, U, y, e: pgd_attack(net, U, y, e),
    "robust_accuracy": lambda net, U, y, e: robust_accuracy(net, U, y, e),
}


@pytest.mark.parametrize("call", EPS_CALLS.values(), ids=EPS_CALLS.keys())
@pytest.mark.parametrize("eps", [-1, -1e-9, np.nan, np.inf, "0.1", True, None])
def test_a_bad_radius_names_eps(eps, call, net, data):
    with raises(EPS + repr(eps)):
        call(net, *data, eps)


def test_certified_accuracy_with_a_negative_radius_does_not_talk_about_boxes(net, data):
    """The issue's example: eps=-1 used to say 'U_lo must be <= U_hi entrywise'."""
    with pytest.raises(ValueError) as info:
        certified_accuracy(net, *data, eps=-1)
    assert "eps" in str(info.value) and "U_lo" not in str(info.value)


@pytest.mark.parametrize("eps_list, message", [
    ([0.1, -0.1], "each eps in eps_list (an l-inf radius in pixel units, data in [0, 1]) must be a finite number "
                  ">= 0, got -0.1"),
    ([0.1, np.nan], "each eps in eps_list (an l-inf radius in pixel units, data in [0, 1]) must be a finite number "
                    ">= 0, got nan"),
    (0.1, "eps_list must be a sequence of radii, got 0.1"),
    ([], "eps_list must hold at least one radius, got an empty sequence"),
])
def test_robustness_table_names_eps_list(eps_list, message, net, data):
    with raises(message):
        robustness_table(net, *data, eps_list)


# -- counts -------------------------------------------------------------------------------------
COUNT_CALLS = {
    "pgd_attack-steps": ("steps", 1, lambda net, U, y, v: pgd_attack(net, U, y, 0.1, steps=v)),
    "pgd_attack-restarts": ("restarts", 1, lambda net, U, y, v: pgd_attack(net, U, y, 0.1, restarts=v)),
    "pgd_attack-seed": ("seed", 0, lambda net, U, y, v: pgd_attack(net, U, y, 0.1, seed=v)),
    "robustness_table-pgd_steps": ("pgd_steps", 1, lambda net, U, y, v: robustness_table(net, U, y, [0.1],
                                                                                          pgd_steps=v)),
    "robustness_table-pgd_restarts": ("pgd_restarts", 1,
                                      lambda net, U, y, v: robustness_table(net, U, y, [0.1], pgd_restarts=v)),
    "certified_accuracy-batch_size": ("batch_size", 1,
                                      lambda net, U, y, v: certified_accuracy(net, U, y, 0.1, batch_size=v)),
    "robust_accuracy-batch_size": ("batch_size", 1, lambda net, U, y, v: robust_accuracy(net, U, y, 0.1, batch_size=v)),
    "evaluate-batch_size": ("batch_size", 1, lambda net, U, y, v: evaluate(net, U, y, batch_size=v)),
    "predict-batch_size": ("batch_size", 1, lambda net, U, y, v: net.predict(U, batch_size=v)),
    "accuracy-batch_size": ("batch_size", 1, lambda net, U, y, v: net.accuracy(U, y, batch_size=v)),
}


@pytest.mark.parametrize("entry", COUNT_CALLS.values(), ids=COUNT_CALLS.keys())
@pytest.mark.parametrize("value", [2.7, 2.0, True, "3", -1])
def test_a_count_must_be_an_integer_and_is_named(value, entry, net, data):
    name, low, call = entry
    with raises(f"{name} must be an integer >= {low}, got {value!r}"):
        call(net, *data, value)


@pytest.mark.parametrize("step_size", [0.0, -0.01, np.nan, "0.1"])
def test_pgd_step_size_must_be_positive(step_size, net, data):
    with raises(f"step_size must be a finite number > 0, got {step_size!r}"):
        pgd_attack(net, *data, 0.1, step_size=step_size)


def test_fgsm_takes_no_pgd_options(net, data):
    with pytest.raises(TypeError, match=r"attack='fgsm' takes no options, got \['steps'\]"):
        robust_accuracy(net, *data, 0.1, attack="fgsm", steps=5)


def test_an_inverted_box_is_located(net, data):
    U, _ = data
    hi = U.copy()
    hi[1, 2] = U[1, 2] - 1e-3
    with raises("U_lo must be <= U_hi entrywise (the box [U_lo, U_hi]), got U_lo > U_hi at (row, column) [1, 2]"):
        interval_bounds(net, U, hi)


# -- the network and its solver ---------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, message", [
    (dict(n_hidden=2.7), "n_hidden must be an integer >= 1, got 2.7"),
    (dict(n_hidden=6.0), "n_hidden must be an integer >= 1, got 6.0"),
    (dict(n_in=True), "n_in must be an integer >= 1, got True"),
    (dict(n_out="4"), "n_out must be an integer >= 1, got '4'"),
    (dict(n_out=0), "n_out must be an integer >= 1, got 0"),
    (dict(seed=2.5), "seed must be an integer >= 0, got 2.5"),
    (dict(seed=-1), "seed must be an integer >= 0, got -1"),
    (dict(dtype=np.int32), "dtype must be float32 or float64, got int32"),
    (dict(dtype="no-such-type"), "dtype must be float32 or float64, got 'no-such-type'"),
    (dict(solver={"engine": "numpy"}), "solver must be a SolverConfig, got dict"),
])
def test_implicit_network_names_its_bad_argument(kwargs, message):
    args = dict(n_in=N_IN, n_hidden=6, n_out=N_OUT) | kwargs
    with raises(message):
        ImplicitNetwork(**args)


@pytest.mark.parametrize("kwargs, message", [
    (dict(max_iter=2.7), "max_iter must be an integer >= 0, got 2.7"),
    (dict(max_iter=-1), "max_iter must be an integer >= 0, got -1"),
    (dict(atol=-1e-3), "atol must be a finite number >= 0, got -0.001"),
    (dict(adjoint_atol=np.nan), "adjoint_atol must be a finite number >= 0, got nan"),
    (dict(method="newton"), "method must be one of"),
    (dict(adjoint_method="newton"), "adjoint_method must be one of"),
    (dict(engine="gpu"), "engine must be one of ('numpy', 'numba', 'cuda'), got 'gpu'"),
    (dict(alpha="per_unit", method="picard"), "alpha='per_unit' needs method 'average' or 'anderson'"),
    (dict(alpha="per_unit", adjoint_method="anderson"),
     "alpha='per_unit' needs method 'average' or 'anderson' and adjoint_method 'average' or 'direct', "
     "got method='average', adjoint_method='anderson'"),
    (dict(alpha=0.5), "alpha must be None (alpha*) or 'per_unit', got 0.5"),
])
def test_solver_config_names_its_bad_field(kwargs, message):
    with raises(message):
        SolverConfig(**kwargs)


def test_solver_config_takes_per_unit_steps_beside_anderson():
    """Anderson's forward solve keeps alpha*; the per-unit steps are the averaged adjoint's."""
    s = SolverConfig(method="anderson", alpha="per_unit")
    assert s.step("anderson") is None and s.step("average") == "per_unit"


# -- training configuration ----------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, message", [
    (dict(epochs=2.7), "epochs must be an integer >= 0, got 2.7"),
    (dict(epochs=True), "epochs must be an integer >= 0, got True"),
    (dict(epochs=-1), "epochs must be an integer >= 0, got -1"),
    (dict(batch_size=2.7), "batch_size must be an integer >= 1, got 2.7"),
    (dict(batch_size=0), "batch_size must be an integer >= 1, got 0"),
    (dict(batch_size="100"), "batch_size must be an integer >= 1, got '100'"),
    (dict(interval_ramp=2.5), "interval_ramp must be an integer >= 0, got 2.5"),
    (dict(interval_ramp=True), "interval_ramp must be an integer >= 0, got True"),
    (dict(interval_eps=0.1, interval_relax=1.5), "interval_relax must be an integer >= 0, got 1.5"),
    (dict(interval_eps=0.1, interval_relax=-2), "interval_relax must be an integer >= 0, got -2"),
    (dict(interval_relax=3), "interval_relax > 0 tightens interval training, which is off (interval_eps = 0), got "
                             "interval_relax=3"),
    (dict(time_budget=-60), "time_budget must be a finite number >= 0, got -60"),
    (dict(time_budget=float("nan")), "time_budget must be a finite number >= 0, got nan"),
    (dict(seed=1.5), "seed must be an integer >= 0, got 1.5"),
    (dict(seed=-3), "seed must be an integer >= 0, got -3"),
    (dict(lr="0.1"), "lr must be a finite number > 0, got '0.1'"),
    (dict(lr=-1.0), "lr must be a finite number > 0, got -1.0"),
    (dict(atol=np.nan), "atol must be a finite number > 0, got nan"),
    (dict(gamma=np.nan), "gamma must be a finite number, got nan"),
    (dict(diag_min=np.inf), "diag_min must be a finite number, got inf"),
    (dict(interval_eps=np.inf), "interval_eps must be a finite number >= 0, got inf"),
    (dict(interval_eps=-0.1), "interval_eps must be a finite number >= 0, got -0.1"),
    (dict(interval_weight=1.5), "interval_weight must be in [0, 1], got 1.5"),
    (dict(lipschitz_weight=np.nan), "lipschitz_weight must be a finite number >= 0, got nan"),
    (dict(optimizer="rmsprop"), "optimizer must be one of ('adam', 'sgd'), got 'rmsprop'"),
])
def test_train_config_names_its_bad_field(kwargs, message):
    with raises(message):
        TrainConfig(**kwargs)


@pytest.mark.parametrize("epochs", [2.7, 2.0, True])
def test_train_rejects_a_fractional_epoch_count_before_any_step(epochs, net, data):
    A = net.A.copy()
    with raises(f"epochs must be an integer >= 0, got {epochs!r}"):
        train(net, *data, epochs=epochs, batch_size=5, progress=False)
    np.testing.assert_array_equal(net.A, A)
