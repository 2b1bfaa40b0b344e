"""Every ValueError path of the public contraction API names the offending argument."""

import numpy as np
import pytest

import contraction as c

A2 = np.array([[-1.0, 0.5], [0.25, -0.5]])
B2 = np.eye(2)
ETA2 = np.array([1.0, 2.0])

# Bad values for a square-matrix argument: (id, value).
BAD_SQUARE = [
    ("non-square", np.ones((2, 3))),
    ("1-D", np.ones(3)),
    ("3-D", np.ones((2, 2, 2))),
    ("scalar", 1.0),
    ("nan", np.array([[1.0, np.nan], [0.0, 1.0]])),
    ("inf", np.array([[1.0, 0.0], [-np.inf, 1.0]])),
    ("complex", np.array([[1.0 + 1j, 0.0], [0.0, 1.0]])),
    ("empty", np.zeros((0, 0))),
    ("strings", np.array([["a", "b"], ["c", "d"]])),
    ("ragged", [[1.0, 2.0], [3.0]]),
    ("object", np.array([[1.0, None], [0.0, 1.0]], dtype=object)),
]

# Every public function that takes a square A first, called with the bad A.
SQUARE_FUNCS = {
    "mu_inf": lambda A: c.mu_inf(A),
    "mu_1": lambda A: c.mu_1(A),
    "mu_2": lambda A: c.mu_2(A),
    "log_norm": lambda A: c.log_norm(A, 2),
    "induced_norm": lambda A: c.induced_norm(A, 1),
    "metzler_majorant": lambda A: c.metzler_majorant(A),
    "spectral_abscissa": lambda A: c.spectral_abscissa(A),
    "spectral_radius": lambda A: c.spectral_radius(A),
    "is_irreducible": lambda A: c.is_irreducible(A),
    "optimal_weights": lambda A: c.optimal_weights(A),
    "wellposedness": lambda A: c.wellposedness(A),
    "lben_value": lambda A: c.lben_value(A),
    "optimal_alpha": lambda A: c.optimal_alpha(A),
    "contraction_factor": lambda A: c.contraction_factor(A, 0.5),
    "resolvent_matrix": lambda A: c.resolvent_matrix(A, 0.5),
    "error_bound": lambda A: c.error_bound(A, 1e-3),
    "lipschitz_bound": lambda A: c.lipschitz_bound(A, np.ones((2, 1))),
    "project_mu_inf": lambda A: c.project_mu_inf(A, 0.5),
}


@pytest.mark.parametrize("func", list(SQUARE_FUNCS), ids=str)
@pytest.mark.parametrize("bad", [v for _, v in BAD_SQUARE], ids=[k for k, _ in BAD_SQUARE])
def test_bad_square_matrix(func, bad):
    with pytest.raises(ValueError, match=r"^A\b"):
        SQUARE_FUNCS[func](bad)


@pytest.mark.parametrize("bad", [v for k, v in BAD_SQUARE if k != "non-square"], ids=[k for k, _ in BAD_SQUARE if k != "non-square"])
def test_bad_rectangular_matrix(bad):
    # project_norm_inf accepts non-square matrices but nothing else
    with pytest.raises(ValueError, match=r"^A\b"):
        c.project_norm_inf(bad, 1.0)


def test_non_square_message_says_square():
    with pytest.raises(ValueError, match=r"^A must be square"):
        c.mu_inf(np.ones((2, 3)))
    with pytest.raises(ValueError, match=r"^A must be finite; non-finite entries at \[\[0, 1\]\]"):
        c.mu_inf(np.array([[1.0, np.nan], [0.0, 1.0]]))


def test_integer_and_boolean_matrices_are_accepted():
    assert c.mu_inf(np.array([[1, 2], [3, 4]])) == 7.0
    assert c.mu_inf(np.array([[True, False], [False, True]])) == 1.0


BAD_ETA = [
    ("wrong length", np.ones(3)),
    ("2-D", np.ones((2, 1))),
    ("zero", np.array([1.0, 0.0])),
    ("negative", np.array([1.0, -1.0])),
    ("nan", np.array([1.0, np.nan])),
    ("inf", np.array([np.inf, 1.0])),
    ("complex", np.array([1.0 + 0j, 1.0])),
]

ETA_FUNCS = {
    "mu_inf": lambda e: c.mu_inf(A2, e),
    "mu_1": lambda e: c.mu_1(A2, e),
    "log_norm": lambda e: c.log_norm(A2, np.inf, eta=e),
    "induced_norm": lambda e: c.induced_norm(A2, np.inf, eta=e),
    "vector_norm": lambda e: c.vector_norm(np.ones(2), np.inf, eta=e),
    "wellposedness": lambda e: c.wellposedness(A2, eta=e, conditions=["nemon"]),
    "contraction_factor": lambda e: c.contraction_factor(A2, 0.5, eta=e),
    "error_bound": lambda e: c.error_bound(A2, 1e-3, eta=e),
    "lipschitz_bound": lambda e: c.lipschitz_bound(A2, B2, eta=e),
    "project_mu_inf": lambda e: c.project_mu_inf(A2, 0.5, eta=e),
}


@pytest.mark.parametrize("func", list(ETA_FUNCS), ids=str)
@pytest.mark.parametrize("bad", [v for _, v in BAD_ETA], ids=[k for k, _ in BAD_ETA])
def test_bad_eta(func, bad):
    with pytest.raises(ValueError, match=r"^eta\b"):
        ETA_FUNCS[func](bad)


BAD_P = [
    ("non-symmetric", np.array([[2.0, 1.0], [0.0, 2.0]])),
    ("indefinite", np.array([[1.0, 2.0], [2.0, 1.0]])),
    ("singular", np.array([[1.0, 1.0], [1.0, 1.0]])),
    ("negative definite", -np.eye(2)),
    ("wrong shape", np.eye(3)),
    ("nan", np.array([[1.0, np.nan], [np.nan, 1.0]])),
    ("1-D", np.ones(2)),
]


@pytest.mark.parametrize("bad", [v for _, v in BAD_P], ids=[k for k, _ in BAD_P])
@pytest.mark.parametrize(
    "call",
    [
        lambda P: c.mu_2(A2, P),
        lambda P: c.log_norm(A2, 2, P=P),
        lambda P: c.induced_norm(A2, 2, P=P),
        lambda P: c.vector_norm(np.ones(2), 2, P=P),
    ],
    ids=["mu_2", "log_norm", "induced_norm", "vector_norm"],
)
def test_bad_P(call, bad):
    with pytest.raises(ValueError, match=r"^P\b"):
        call(bad)


def test_weights_for_the_wrong_norm():
    with pytest.raises(ValueError, match=r"^eta\b"):
        c.log_norm(A2, 2, eta=ETA2)
    with pytest.raises(ValueError, match=r"^eta\b"):
        c.induced_norm(A2, 2, eta=ETA2)
    with pytest.raises(ValueError, match=r"^eta\b"):
        c.vector_norm(np.ones(2), 2, eta=ETA2)
    with pytest.raises(ValueError, match=r"^P\b"):
        c.log_norm(A2, np.inf, P=np.eye(2))
    with pytest.raises(ValueError, match=r"^P\b"):
        c.induced_norm(A2, 1, P=np.eye(2))
    with pytest.raises(ValueError, match=r"^P\b"):
        c.vector_norm(np.ones(2), 1, P=np.eye(2))


@pytest.mark.parametrize("p", [0, 3, -1, "two", None, 1.5, "fro"])
@pytest.mark.parametrize(
    "call",
    [
        lambda p: c.log_norm(A2, p),
        lambda p: c.induced_norm(A2, p),
        lambda p: c.vector_norm(np.ones(2), p),
    ],
    ids=["log_norm", "induced_norm", "vector_norm"],
)
def test_unknown_p(call, p):
    with pytest.raises(ValueError, match=r"^p\b"):
        call(p)


@pytest.mark.parametrize(
    "bad",
    [np.ones((2, 2)), np.array([1.0, np.nan]), np.array([1.0 + 2j, 0.0]), np.array(["a", "b"])],
    ids=["2-D", "nan", "complex", "strings"],
)
def test_bad_vector(bad):
    with pytest.raises(ValueError, match=r"^x\b"):
        c.vector_norm(bad)


@pytest.mark.parametrize("p", [1, 2, np.inf])
def test_empty_vector(p):
    with pytest.raises(ValueError, match=r"^x\b"):
        c.vector_norm(np.array([]), p)


# ---------------------------------------------------------------------------------------
# lipschitz_bound and certified_radius
# ---------------------------------------------------------------------------------------


def test_lipschitz_bound_argument_errors():
    with pytest.raises(ValueError, match=r"^B must have 2 rows"):
        c.lipschitz_bound(A2, np.ones((3, 1)))
    with pytest.raises(ValueError, match=r"^B\b"):
        c.lipschitz_bound(A2, np.ones(2))
    with pytest.raises(ValueError, match=r"^B\b"):
        c.lipschitz_bound(A2, np.array([[np.nan], [1.0]]))
    with pytest.raises(ValueError, match=r"^C must have 2 columns"):
        c.lipschitz_bound(A2, B2, np.ones((1, 3)))
    with pytest.raises(ValueError, match=r"^C\b"):
        c.lipschitz_bound(A2, B2, np.ones(2))
    with pytest.raises(ValueError, match=r"^C\b"):
        c.lipschitz_bound(A2, B2, np.array([[np.inf, 1.0]]))
    for form in ("loose", "", None, "Tight"):
        with pytest.raises(ValueError, match=r"^form\b"):
            c.lipschitz_bound(A2, B2, form=form)


def test_certified_radius_argument_errors():
    C = np.eye(3, 2)
    logits = np.zeros((1, 3))
    with pytest.raises(ValueError, match=r"^logits\b"):
        c.certified_radius(np.zeros(3), C, 1.0)
    with pytest.raises(ValueError, match=r"^logits\b"):
        c.certified_radius(np.array([[np.nan, 0.0, 0.0]]), C, 1.0)
    with pytest.raises(ValueError, match=r"^C must have 3 rows"):
        c.certified_radius(logits, np.eye(2), 1.0)
    with pytest.raises(ValueError, match=r"^C\b"):
        c.certified_radius(logits, np.ones(3), 1.0)
    for bad in (-1.0, np.nan, np.inf, "1", None):
        with pytest.raises(ValueError, match=r"^lipschitz_x\b"):
            c.certified_radius(logits, C, bad)


# ---------------------------------------------------------------------------------------
# projections
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf, "0.5", None, True, 1 + 1j])
def test_bad_gamma(bad):
    with pytest.raises(ValueError, match=r"^gamma\b"):
        c.project_mu_inf(A2, bad)


@pytest.mark.parametrize("bad", [-1e-9, -1.0, np.nan, np.inf, "1", None, False])
def test_bad_kappa(bad):
    with pytest.raises(ValueError, match=r"^kappa\b"):
        c.project_norm_inf(A2, bad)


def test_gamma_may_be_any_real():
    assert np.all(np.isfinite(c.project_mu_inf(A2, -1e6)))
    assert np.all(np.isfinite(c.project_mu_inf(A2, 5)))  # int accepted


# ---------------------------------------------------------------------------------------
# steps
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [0.0, -0.5, np.nan, np.inf, "0.5", True])
@pytest.mark.parametrize("method", ["average", "forward_backward", "peaceman_rachford", "douglas_rachford", "anderson"])
def test_bad_alpha(method, bad):
    with pytest.raises(ValueError, match=r"^alpha\b"):
        c.contraction_factor(A2, bad, method)


@pytest.mark.parametrize("bad", ["newton", "Average", "", None, "picard "])
@pytest.mark.parametrize(
    "call",
    [lambda m: c.optimal_alpha(A2, m), lambda m: c.contraction_factor(A2, 0.5, m)],
    ids=["optimal_alpha", "contraction_factor"],
)
def test_unknown_method(call, bad):
    with pytest.raises(ValueError, match=r"^method\b"):
        call(bad)


def test_iteration_bound_argument_errors():
    for bad in (-0.1, np.nan, np.inf, "0.5", None):
        with pytest.raises(ValueError, match=r"^factor\b"):
            c.iteration_bound(bad, 1.0, 1e-6)
    for bad in (-1.0, np.nan, np.inf, None):
        with pytest.raises(ValueError, match=r"^initial_residual\b"):
            c.iteration_bound(0.5, bad, 1e-6)
    for bad in (-1e-6, 0.0, np.nan, np.inf, None):
        with pytest.raises(ValueError, match=r"^tol\b"):
            c.iteration_bound(0.5, 1.0, bad)


@pytest.mark.parametrize("bad", [-1e-3, np.nan, np.inf, [1e-3, -1.0], [np.nan]])
def test_error_bound_bad_residual(bad):
    with pytest.raises(ValueError, match=r"^residual\b"):
        c.error_bound(A2, bad)


# ---------------------------------------------------------------------------------------
# weights, conditions, examples
# ---------------------------------------------------------------------------------------


def test_optimal_weights_argument_errors():
    for bad in (-1e-9, np.nan, np.inf, None, "1e-9"):
        with pytest.raises(ValueError, match=r"^tol\b"):
            c.optimal_weights(A2, tol=bad)
    with pytest.raises(ValueError, match=r"^kind\b"):
        c.optimal_weights(A2, kind="spectral")
    with pytest.raises(ValueError, match=r"^method\b"):
        c.optimal_weights(A2, method="power")


def test_wellposedness_argument_errors():
    with pytest.raises(ValueError, match=r"^conditions\b"):
        c.wellposedness(A2, conditions=["nemon", "nope"])
    with pytest.raises(ValueError, match=r"^conditions\b"):
        c.wellposedness(A2, conditions=["NEMON"])


def test_example_argument_errors():
    # the argument is called ``name``; the message names it as the example
    with pytest.raises(ValueError, match=r"^example must be one of"):
        c.example("no-such-example")
    for bad in (0, -1, 2.5, "8", None):
        with pytest.raises(ValueError, match=r"^n\b"):
            c.example("random-nemon", n=bad)


@pytest.mark.parametrize("name", list(c.EXAMPLES))
def test_examples_build(name):
    A, B = c.example(name, n=5, seed=1)
    assert A.shape[0] == A.shape[1] == B.shape[0]
    report = c.wellposedness(A, conditions=["nemon", "mon", "idl_norm"])
    if name == "paper-2x2":
        assert A.shape == (2, 2) and report["nemon"].holds and not report["mon"].holds
    if name in ("random-nemon", "negative-diagonal"):
        assert report["nemon"].value <= {"random-nemon": 0.9, "negative-diagonal": 0.5}[name] + 1e-12
    if name == "negative-diagonal":
        assert c.optimal_alpha(A) < 1
    if name == "mon":
        assert report["mon"].value <= 0.9 + 1e-12  # (1 − m) I − PᵀP + S − Sᵀ, m = 0.1
    # deterministic in the seed
    A2_, _ = c.example(name, n=5, seed=1)
    np.testing.assert_array_equal(A, A2_)
