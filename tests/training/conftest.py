"""Fixtures of the training tests: a seeded generator, the digits data set (loaded once),
and a factory for tiny float64 networks that solve with the numpy engine to 1e-12."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from solvers.training import ImplicitNetwork, load_dataset


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(20240917)


@pytest.fixture(scope="session")
def digits():
    """scikit-learn's 8x8 digits: ``(X_train, y_train, X_test, y_test)``, float32 pixels in [0, 1]."""
    return load_dataset("digits")


def _exact_solver(net: ImplicitNetwork, engine: str = "numpy") -> ImplicitNetwork:
    net.solver = dataclasses.replace(net.solver, engine=engine, atol=1e-12, adjoint_atol=1e-12, max_iter=5000)
    return net


@pytest.fixture
def exact_net():
    """``exact_net(n_in, n_hidden, n_out, activation=..., seed=..., engine=...)``: a float64
    network whose forward and adjoint solves run to ``atol = 1e-12``."""

    def make(n_in, n_hidden, n_out, activation="relu", seed=0, engine="numpy"):
        return _exact_solver(ImplicitNetwork(n_in, n_hidden, n_out, activation=activation, seed=seed), engine)

    return make
