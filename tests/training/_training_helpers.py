"""Helpers shared by the training tests (a uniquely named module: test folders have no __init__)."""

import numpy as np

#: Central-difference step for float64 finite-difference checks.
STEP = 1e-6


def central_difference(f, P, step=STEP):
    """Gradient of the scalar ``f()`` with respect to the array ``P`` (perturbed in place)."""
    G = np.zeros(P.shape)
    for idx in np.ndindex(P.shape):
        old = P[idx]
        P[idx] = old + step
        up = f()
        P[idx] = old - step
        down = f()
        P[idx] = old
        G[idx] = (up - down) / (2 * step)
    return G
