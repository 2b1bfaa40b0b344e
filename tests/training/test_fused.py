"""The compiled training step (solvers.training._fused) against the generic path it replaces:
the same loss, gradients, iteration counts and statistics, whatever the thread blocks."""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import pytest

from solvers._engines import blocks as engine_blocks
from solvers.training import ImplicitNetwork, train
from solvers.training import _fused

ACTIVATIONS = ["relu", ("leaky_relu", 0.1), "hard_tanh", "tanh", "softplus"]


#: ``(blocks, parallel)``: the kernel splits the batch into one block per thread; 1 and 3
#: blocks are forced, the three run one after the other (a first call) or by the parallel
#: driver (later calls).
BLOCK_NAMES = {(1, False): "one-block", (3, False): "three-blocks", (3, True): "three-threads"}
#: Each layer kind, step and dtype compiles a parallel driver of its own (many seconds), the
#: same ``prange`` over the same block kernel: it runs in float32 with ReLU (the
#: training default) for the dense layer, the convolutional one, the one with a hidden readout
#: layer and the per-unit steps of both; every other case runs its blocks one after the other
#: here, and test_blocks_in_turn_and_blocks_in_parallel_agree_bit_for_bit shows that the two
#: ways give the same bits.
IN_TURN = [b for b in BLOCK_NAMES if not b[1]]


@pytest.fixture(params=list(BLOCK_NAMES), ids=list(BLOCK_NAMES.values()))
def blocks(request, monkeypatch):
    # (count, parallel); indirect parametrisations pass the same pair
    count, parallel = request.param
    monkeypatch.setattr(engine_blocks, "thread_count", lambda: count)
    monkeypatch.setattr(_fused, "use_blocks", lambda variant, blocks, *driver: parallel and blocks > 1)
    return count


def _network(activation, dtype, seed=0, n_in=12, n_hidden=9, n_out=4):
    net = ImplicitNetwork(n_in, n_hidden, n_out, activation=activation, seed=seed, dtype=dtype)
    rng = np.random.default_rng(seed)
    # strong, partly negative self-loops: samples finish at different iterations
    A = rng.standard_normal((n_hidden, n_hidden)) / np.sqrt(n_hidden)
    A[np.diag_indices(n_hidden)] = rng.uniform(-3.0, 0.0, n_hidden)
    from contraction import project_mu_inf

    net.A = project_mu_inf(A, 0.8).astype(dtype)
    net.b = rng.standard_normal(n_hidden).astype(dtype)
    net.c = rng.standard_normal(n_out).astype(dtype)
    return net


def _compare(net, U, y, rtol):
    assert _fused.fusable(net.solver, "cross_entropy")
    got = net.compute_gradients(U, y)
    value, grads, stats = got.value, got.grads, got.stats
    want = net.compute_gradients(U, y, fused=False)
    ref_value, ref_grads, ref = want.value, want.grads, want.stats
    assert value == pytest.approx(ref_value, rel=rtol, abs=rtol)
    for k, g in ref_grads.items():
        assert grads[k].dtype == g.dtype and grads[k].shape == g.shape, k
        np.testing.assert_allclose(grads[k], g, rtol=rtol, atol=rtol * (1 + np.abs(g).max()), err_msg=k)
    for k in ("forward_iterations", "adjoint_iterations", "forward_converged", "adjoint_converged"):
        assert stats[k] == pytest.approx(ref[k], abs=1e-12), k
    np.testing.assert_allclose(stats["logits"], ref["logits"], rtol=rtol, atol=rtol)
    return stats


FUSED_CASES = [(a, d, b, blocks) for a in ACTIVATIONS for d in (np.float64, np.float32) for b in (1, 7, 70)
               for blocks in BLOCK_NAMES if not blocks[1] or (a == "relu" and d == np.float32)]


@pytest.mark.parametrize("activation, dtype, batch, blocks", FUSED_CASES,
                         ids=lambda v: getattr(v, "__name__", None) or (f"{v[0]}-blocks{'-threads' * v[1]}"
                                                                          if isinstance(v, tuple) and len(v) == 2
                                                                          and isinstance(v[1], bool) else str(v)),
                         indirect=["blocks"])
def test_fused_step_equals_the_generic_path(activation, dtype, batch, blocks):
    net = _network(activation, dtype, seed=batch)
    rng = np.random.default_rng(batch)
    U = rng.uniform(-1, 1, (batch, net.n_in))
    y = rng.integers(0, net.n_out, batch)
    stats = _compare(net, U, y, rtol=1e-10 if dtype == np.float64 else 2e-4)
    if batch == 70:
        assert stats["forward_iterations"] > 5


def _conv_network(padding, activation, dtype, stride, seed=0, input_kernel=None, readout_hidden=0):
    """A 4-channel convolutional layer (6x4 state, pool 2) with strong, partly negative centre
    taps and a bias: samples finish at different iterations."""
    from contraction import Conv2d, project_mu_inf
    from solvers.training import ConvImplicitNetwork, SolverConfig

    net = ConvImplicitNetwork((2, 6 * stride, 4 * stride), 4, 3, 3, 2, padding=padding, activation=activation,
                              dtype=dtype, seed=seed, stride=stride, solver=SolverConfig(engine="numba"),
                              input_kernel=input_kernel, readout_hidden=readout_hidden)
    if readout_hidden:  # biases of both signs: some hidden units active, some not
        net.d = np.linspace(-0.5, 0.5, readout_hidden).astype(dtype)
    rng = np.random.default_rng(seed)
    K = 0.4 * rng.standard_normal((4, 4, 3, 3))
    K[np.arange(4), np.arange(4), 1, 1] = rng.uniform(-2.0, 0.0, 4)
    net.A = project_mu_inf(Conv2d(K, net.state_shape, padding), 0.8).kernel.astype(dtype)
    net.b = rng.standard_normal(4).astype(dtype)
    net.c = rng.standard_normal(3).astype(dtype)
    return net


CONV_CASES = [("circular", "relu", np.float32, 1, None), ("zeros", "tanh", np.float64, 1, None),
              ("circular", "tanh", np.float64, 2, None), ("zeros", "relu", np.float32, 2, None),
              ("circular", "relu", np.float64, 2, 5)]


#: The blocks of each case: one after the other for every case, by the parallel driver for
#: the first (float32, ReLU).
CONV_BLOCK_CASES = [(*case, blocks) for i, case in enumerate(CONV_CASES) for blocks in BLOCK_NAMES
                    if not blocks[1] or i == 0]


def _case_id(case, blocks) -> str:
    padding, activation, dtype, stride, *input_kernel = case
    extra = f"-input{input_kernel[0]}" if input_kernel and input_kernel[0] else ""
    return f"{BLOCK_NAMES[blocks]}-{padding}-{activation}-{dtype.__name__}-stride{stride}{extra}"


@pytest.mark.parametrize("padding, activation, dtype, stride, input_kernel, blocks", CONV_BLOCK_CASES,
                         ids=[_case_id(c[:-1], c[-1]) for c in CONV_BLOCK_CASES], indirect=["blocks"])
def test_fused_conv_step_equals_the_generic_path(padding, activation, dtype, stride, input_kernel, blocks):
    """The convolutional layer's step (kernel gradients by correlation, pooled readout) in one
    compiled call per block equals the generic path through the front door (a 5x5 input kernel
    beside the state's 3x3 in the last case)."""
    net = _conv_network(padding, activation, dtype, stride, seed=stride, input_kernel=input_kernel)
    rng = np.random.default_rng(stride)
    U = rng.uniform(-1, 1, (50, net.n_in)) * np.logspace(-4, 0, 50)[:, None]
    y = rng.integers(0, net.n_out, 50)
    stats = _compare(net, U, y, rtol=1e-10 if dtype == np.float64 else 2e-4)
    assert stats["forward_iterations"] > 5


HIDDEN_CASES = [("circular", "relu", np.float32, 2), ("zeros", "tanh", np.float64, 1)]


HIDDEN_BLOCK_CASES = [(*case, blocks) for i, case in enumerate(HIDDEN_CASES) for blocks in BLOCK_NAMES
                      if not blocks[1] or i == 0]


@pytest.mark.parametrize("padding, activation, dtype, stride, blocks", HIDDEN_BLOCK_CASES,
                         ids=[_case_id(c[:-1], c[-1]) for c in HIDDEN_BLOCK_CASES], indirect=["blocks"])
def test_fused_conv_step_with_a_hidden_readout_layer_equals_the_generic_path(padding, activation, dtype, stride,
                                                                              blocks):
    """``readout_hidden=h``: the compiled step reads out through ``C relu(D f + d) + c`` and
    returns the gradients of ``D`` and ``d`` as the generic path does."""
    net = _conv_network(padding, activation, dtype, stride, seed=stride, readout_hidden=7)
    rng = np.random.default_rng(stride)
    U = rng.uniform(-1, 1, (50, net.n_in))
    y = rng.integers(0, net.n_out, 50)
    want = net.compute_gradients(U, y, fused=False)
    assert {"D", "d"} <= set(want.grads) and np.abs(want.grads["D"]).max() > 0
    _compare(net, U, y, rtol=1e-10 if dtype == np.float64 else 2e-4)


def _faster_and_equal(change, dtype, seed, padding, batch):
    """For a dense and a convolutional layer: with the solver's fields ``change``, the compiled
    step equals the generic path and takes fewer forward iterations than without them; returns
    ``(net, U, y, rtol)`` of each."""
    rtol = 1e-10 if dtype == np.float64 else 2e-4
    rng = np.random.default_rng(seed)
    cases = []
    for net in (_network("relu", dtype, seed=seed), _conv_network(padding, "relu", dtype, 1, seed=seed)):
        U = rng.uniform(-1, 1, (batch, net.n_in))
        y = rng.integers(0, net.n_out, batch)
        before = net.compute_gradients(U, y).stats
        net.solver = dataclasses.replace(net.solver, **change)
        assert _compare(net, U, y, rtol=rtol)["forward_iterations"] < before["forward_iterations"]
        cases.append((net, U, y, rtol))
    return cases


@pytest.mark.parametrize("dtype, blocks", [(d, b) for d in (np.float64, np.float32) for b in BLOCK_NAMES
                                           if not b[1] or d == np.float32],
                         ids=lambda v: BLOCK_NAMES.get(v) or v.__name__, indirect=["blocks"])
def test_fused_step_with_per_unit_steps_equals_the_generic_path(dtype, blocks):
    """``SolverConfig(alpha="per_unit")``: both layers' compiled steps take the per-unit steps
    the generic path's solves take, and need fewer iterations than the single step here."""
    _faster_and_equal(dict(alpha="per_unit"), dtype, seed=3, padding="circular", batch=30)


#: Anderson's safeguard compares residuals, so a last-bit difference in the input product can
#: change a sample's iteration count: in float32 the dense layer's ``U Bᵀ`` over a block of the
#: batch (the compiled step) and over the whole batch (the generic path) are different BLAS
#: calls and may round differently, so float32 is compared on one block, where they are one call.
ANDERSON_CASES = [(np.float64, b) for b in IN_TURN] + [(np.float32, (1, False))]


@pytest.mark.parametrize("dtype, blocks", ANDERSON_CASES, ids=lambda v: BLOCK_NAMES.get(v) or v.__name__,
                         indirect=["blocks"])
def test_fused_step_with_an_anderson_forward_solve_equals_the_generic_path(dtype, blocks):
    """``SolverConfig(method="anderson")``: both layers' compiled steps run the forward solve
    by Anderson with what ``solvers.solve`` takes (``α*``, its safeguard, the default memory), so
    the iterations, the equilibria and the gradients are the generic path's; with
    ``alpha="per_unit"`` the averaged adjoint takes the per-unit steps, also as there. On these
    layers Anderson needs fewer forward iterations than averaging."""
    for net, U, y, rtol in _faster_and_equal(dict(method="anderson"), dtype, seed=8, padding="zeros", batch=40):
        anderson = net.compute_gradients(U, y).stats
        net.solver = dataclasses.replace(net.solver, alpha="per_unit")
        per_unit = _compare(net, U, y, rtol=rtol)
        assert per_unit["forward_iterations"] == anderson["forward_iterations"]  # Anderson keeps alpha*


@pytest.mark.parametrize("blocks", IN_TURN, ids=BLOCK_NAMES.get, indirect=True)
@pytest.mark.parametrize("readout_hidden", [0, 5])
def test_fused_conv_step_finishes_failed_adjoints_densely(blocks, readout_hidden):
    net = _conv_network("circular", "relu", np.float64, 1, seed=7, readout_hidden=readout_hidden)
    net.solver = dataclasses.replace(net.solver, max_iter=2)
    rng = np.random.default_rng(7)
    U = rng.uniform(-1, 1, (40, net.n_in))
    y = rng.integers(0, net.n_out, 40)
    stats = _compare(net, U, y, rtol=1e-10)
    assert stats["adjoint_converged"] < 1.0


@pytest.mark.parametrize("blocks", IN_TURN, ids=BLOCK_NAMES.get, indirect=True)
def test_fused_step_keeps_the_engine_stopping_rule_per_sample(blocks):
    """Samples stop on their own: a mix of easy (small) and hard inputs gives unequal counts
    that equal the engine's, and a tighter tolerance needs more iterations."""
    net = _network("relu", np.float64, seed=4)
    rng = np.random.default_rng(4)
    U = np.vstack([1e-6 * rng.uniform(-1, 1, (20, net.n_in)), 5 * rng.uniform(-1, 1, (50, net.n_in))])
    y = rng.integers(0, net.n_out, 70)
    loose = _compare(net, U, y, rtol=1e-10)["forward_iterations"]
    net.solver = dataclasses.replace(net.solver, atol=1e-10, adjoint_atol=1e-10)
    tight = _compare(net, U, y, rtol=1e-10)["forward_iterations"]
    assert tight > loose


@pytest.mark.parametrize("blocks", IN_TURN, ids=BLOCK_NAMES.get, indirect=True)
def test_failed_adjoint_samples_are_finished_densely_as_in_the_generic_path(blocks):
    """max_iter too small: the forward misses atol (reported, as in the generic path) and the
    adjoint's failed samples are finished with a dense solve, as the generic path does."""
    net = _network("relu", np.float64, seed=5)
    net.solver = dataclasses.replace(net.solver, max_iter=2)
    rng = np.random.default_rng(5)
    U = rng.uniform(-1, 1, (40, net.n_in))
    y = rng.integers(0, net.n_out, 40)
    stats = _compare(net, U, y, rtol=1e-10)
    assert stats["forward_converged"] < 1.0 and stats["adjoint_converged"] < 1.0


def test_dense_finish_matches_a_dense_adjoint_everywhere():
    """With max_iter = 0 every adjoint sample is finished densely: the gradients are then the
    exact ones for the (unconverged) forward state, whatever the iteration did."""
    net = _network("tanh", np.float64, seed=6)
    rng = np.random.default_rng(6)
    U = rng.uniform(-1, 1, (33, net.n_in))
    y = rng.integers(0, net.n_out, 33)
    net.solver = dataclasses.replace(net.solver, max_iter=0)
    got = net.compute_gradients(U, y)
    grads = got.grads
    assert got.stats["adjoint_converged"] == 0.0
    net.solver = dataclasses.replace(net.solver, adjoint_method="direct")
    _, ref = net.loss_and_grad(U, y)
    for k in grads:
        np.testing.assert_allclose(grads[k], ref[k], rtol=1e-10, atol=1e-12, err_msg=k)


@pytest.mark.parametrize("change", [dict(method="peaceman_rachford"), dict(adjoint_method="anderson"),
                                    dict(engine="numpy")])
def test_other_solver_configurations_take_the_generic_path(change):
    net = ImplicitNetwork(6, 5, 3)
    assert _fused.fusable(net.solver, "cross_entropy") and not _fused.fusable(net.solver, "mse")
    net.solver = dataclasses.replace(net.solver, **change)
    assert not _fused.fusable(net.solver, "cross_entropy")
    with pytest.raises(ValueError, match="fused=True needs"):
        net.compute_gradients(np.zeros((2, 6)), np.zeros(2, int), fused=True)


def test_fused_step_validates_labels_like_the_generic_path():
    net = ImplicitNetwork(6, 5, 3)
    U = np.zeros((4, 6))
    with pytest.raises(ValueError, match="labels in"):
        net.loss_and_grad(U, np.array([0, 1, 2, 3]))
    with pytest.raises(ValueError, match="integer labels"):
        net.loss_and_grad(U, np.zeros(4))
    with pytest.raises(ValueError, match="finite"):
        net.loss_and_grad(np.full((4, 6), np.nan), np.zeros(4, int))


def test_training_with_the_fused_step_equals_training_without(monkeypatch, digits):
    X, y = digits[0][:400], digits[1][:400]
    kwargs = dict(epochs=2, batch_size=50, lr=1e-2, progress=False, gamma=0.5)
    a = ImplicitNetwork(64, 16, 10, seed=2, dtype=np.float64)
    ha = train(a, X, y, **kwargs)
    import solvers.training._network as network

    monkeypatch.setattr(network, "fusable", lambda solver, loss: False)  # the name the trainer's batch gradient calls
    b = ImplicitNetwork(64, 16, 10, seed=2, dtype=np.float64)
    hb = train(b, X, y, **kwargs)
    for k in ("loss", "train_acc", "fwd_iters", "adj_iters"):
        assert ha[-1][k] == pytest.approx(hb[-1][k], rel=1e-9), k
    np.testing.assert_allclose(a.A, b.A, atol=1e-9)
    np.testing.assert_allclose(a.B, b.B, atol=1e-9)


def test_training_with_an_anderson_forward_and_per_unit_steps_takes_the_fused_step(monkeypatch, digits):
    """``forward_method="anderson"`` with ``per_unit_steps``: every batch runs the compiled
    step, and the run equals the one through the generic path."""
    import solvers.training._network as network

    X, y = digits[0][:300], digits[1][:300]
    kwargs = dict(epochs=2, batch_size=50, lr=1e-2, progress=False, gamma=0.5, forward_method="anderson",
                  per_unit_steps=True)
    calls = []
    fused = network.fused_gradients
    monkeypatch.setattr(network, "fused_gradients", lambda *args: calls.append(1) or fused(*args))
    a = ImplicitNetwork(64, 16, 10, seed=2, dtype=np.float64)
    ha = train(a, X, y, **kwargs)
    assert ha.solver.method == "anderson" and ha.solver.alpha == "per_unit"
    assert len(calls) == 2 * -(-int(0.9 * len(X)) // 50)  # every training batch of both epochs (10% validation)
    monkeypatch.setattr(network, "fusable", lambda solver, loss: False)
    b = ImplicitNetwork(64, 16, 10, seed=2, dtype=np.float64)
    hb = train(b, X, y, **kwargs)
    for k in ("loss", "train_acc", "fwd_iters", "adj_iters"):
        assert ha[-1][k] == pytest.approx(hb[-1][k], rel=1e-9), k
    np.testing.assert_allclose(a.A, b.A, atol=1e-9)


@pytest.mark.parametrize("dtype, blocks", [(d, b) for d in (np.float64, np.float32) for b in BLOCK_NAMES
                                           if not b[1] or d == np.float32],
                         ids=lambda v: BLOCK_NAMES.get(v) or v.__name__, indirect=["blocks"])
def test_the_trainers_gathering_call_equals_the_gathered_batch(dtype, blocks):
    """The trainer passes the whole set and the batch's row indices (the kernel gathers the
    rows); that must be the step of the gathered batch, bit for bit, and for the generic path
    too."""
    net = _network("relu", dtype, seed=5)
    rng = np.random.default_rng(5)
    X = np.ascontiguousarray(rng.uniform(-1, 1, (300, net.n_in)).astype(dtype))
    y = rng.integers(0, net.n_out, 300).astype(np.int64)
    rows = rng.permutation(300)[:57]
    got = net.compute_gradients(X, y, rows=rows)
    value, grads = got.value, got.grads
    ref = net.compute_gradients(X[rows], y[rows])
    assert value == ref.value
    for k, g in ref.grads.items():
        np.testing.assert_array_equal(grads[k], g, err_msg=k)
    np.testing.assert_array_equal(got.stats["logits"], ref.stats["logits"])
    T = rng.standard_normal((300, net.n_out))  # regression targets: the generic path
    mse = net.compute_gradients(X, T, "mse", rows=rows)
    mse_value, mse_grads = mse.value, mse.grads
    ref_value, ref_grads = net.loss_and_grad(X[rows], T[rows], loss="mse")
    assert mse_value == ref_value
    for k, g in ref_grads.items():
        np.testing.assert_array_equal(mse_grads[k], g, err_msg=k)


@pytest.mark.parametrize("rows, words", [(np.array([0, 300]), "in [0, 300), got 300"),
                                         (np.array([-1, 2]), "in [0, 300), got -1"),
                                         (np.array([[0, 1]]), "1-D array"),
                                         (np.array([0.0, 1.0]), "integer row indices")])
def test_rows_outside_the_set_are_refused_before_the_compiled_step(rows, words):
    """The compiled step gathers ``U[rows]`` without bounds checks: a bad index must be a
    clear error, not a read past the array (a segmentation fault, or garbage gradients)."""
    net = _network("relu", np.float32, seed=5)
    X = np.zeros((300, net.n_in), np.float32)
    y = np.zeros(300, np.int64)
    with pytest.raises(ValueError, match=re.escape(words)):
        net.compute_gradients(X, y, rows=rows)
    with pytest.raises(ValueError, match="one entry per row of U"):
        net.compute_gradients(X, y[:200], rows=np.arange(10))


def test_blocks_in_turn_and_blocks_in_parallel_agree_bit_for_bit(monkeypatch):
    """The fused step runs its blocks one after the other until its parallel driver is
    compiled (or found in the cache), then in parallel: the same blocks and products, so the
    same gradients to the bit (training resumed after Ctrl-C repeats an uninterrupted run)."""
    monkeypatch.setattr(engine_blocks, "thread_count", lambda: 3)
    net = _network("relu", np.float32, seed=9)
    rng = np.random.default_rng(9)
    U = rng.uniform(-1, 1, (70, net.n_in)).astype(np.float32)
    y = rng.integers(0, net.n_out, 70)
    runs = {}
    for parallel in (False, True):
        monkeypatch.setattr(_fused, "use_blocks", lambda variant, blocks, *driver: parallel)
        runs[parallel] = net.compute_gradients(U, y)
    assert runs[True].value == runs[False].value
    for k in runs[False].grads:
        np.testing.assert_array_equal(runs[True].grads[k], runs[False].grads[k], err_msg=k)
