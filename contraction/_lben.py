"""The LBEN semidefinite program, solved in this process or in a child process a time limit can stop.

The program's n × n linear matrix inequality is one dense PSD cone with n(n+1)/2 entries, and
an interior-point solver (Clarabel) factors a dense matrix of that order at every iteration,
so its time grows steeply with n. The solver's own time limit is checked only between
iterations, which are themselves long for large n, and native code does not see Ctrl-C. A
program larger than :data:`IN_PROCESS_MAX_N` is therefore solved by this file run as a script
in a child Python process (it imports only numpy and cvxpy); the parent ends the child when
the limit passes. The parent logs on the ``nemon.lben`` logger: when the program starts,
``still solving`` every :data:`HEARTBEAT_SECONDS` while it runs, and when it is given up.
The library only logs; the command line decides what to show.
"""

from __future__ import annotations

import io
import json
import logging
import subprocess
import sys
import time

import numpy as np

__all__ = ["lben_program", "lben_within", "IN_PROCESS_MAX_N", "HEARTBEAT_SECONDS"]

logger = logging.getLogger("nemon.lben")

#: Seconds between "still solving" records.
HEARTBEAT_SECONDS = 5.0
#: Programs up to this size are solved in this process and not limited: they finish sooner
#: than a child process imports numpy and cvxpy.
IN_PROCESS_MAX_N = 40

#: Exceptions a child reports by name and the parent raises again as themselves.
_ERRORS = {"RuntimeError": RuntimeError, "ImportError": ImportError, "ModuleNotFoundError": ModuleNotFoundError}


def lben_program(A: np.ndarray) -> float:
    """``1 − t*`` of the LBEN program for a validated float64 square ``A`` (see ``lben_value``)."""
    import cvxpy as cp

    n = A.shape[0]
    lam = cp.Variable(n)
    t = cp.Variable()
    IA = np.eye(n) - A
    L = cp.diag(lam)
    M = L @ IA
    sym = 0.5 * (M + M.T)  # symmetric by construction; cvxpy needs to see it
    cons = [lam >= 0, cp.sum(lam) == n, sym >> t * np.eye(n)]
    prob = cp.Problem(cp.Maximize(t), cons)
    # Clarabel (interior point) is accurate to ~1e-9; SCS, cvxpy's fallback, only to ~1e-5.
    prob.solve(solver=cp.CLARABEL if cp.CLARABEL in cp.installed_solvers() else None)
    if t.value is None:
        raise RuntimeError(f"cvxpy could not solve the LBEN program (status {prob.status})")
    return float(1.0 - t.value)


def lben_within(A: np.ndarray, time_limit: float | None) -> float | None:
    """The LBEN value of a validated ``A``, or ``None`` when ``time_limit`` seconds passed first.

    ``time_limit=None`` waits as long as the program takes. Programs with
    ``n ≤ IN_PROCESS_MAX_N`` are solved here and never limited; larger ones run in a child
    process that is ended at the limit (and on any exception, Ctrl-C included).
    """
    n = A.shape[0]
    if n <= IN_PROCESS_MAX_N:
        return lben_program(A)
    limit = "no time limit" if time_limit is None else f"up to {time_limit:g} s"
    logger.info("solving the LBEN semidefinite program for n=%d (%s) ...", n, limit)
    buffer = io.BytesIO()
    np.save(buffer, A, allow_pickle=False)
    payload = buffer.getvalue()
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, __file__], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    finished = False
    try:
        while True:
            elapsed = time.perf_counter() - start
            wait = HEARTBEAT_SECONDS if time_limit is None else min(HEARTBEAT_SECONDS, time_limit - elapsed)
            try:
                out, err = proc.communicate(payload, timeout=max(wait, 0.0))
                finished = True
                break
            except subprocess.TimeoutExpired:
                payload = None  # sent on the first call; a retry must not send it again
            elapsed = time.perf_counter() - start
            if time_limit is not None and elapsed >= time_limit:
                logger.info("gave up the LBEN semidefinite program for n=%d after %.1f s (the time limit)",
                            n, elapsed)
                return None
            logger.info("still solving the LBEN semidefinite program for n=%d (%.0f s)", n, elapsed)
    finally:
        if not finished:
            proc.kill()
            proc.communicate()
    logger.info("solved the LBEN semidefinite program for n=%d in %.1f s", n, time.perf_counter() - start)
    return _answer(out, err, proc.returncode)


def _answer(out: bytes, err: bytes, returncode: int) -> float:
    """The value the child wrote as its last line of output, or its error raised again."""
    lines = out.decode(errors="replace").strip().splitlines()
    try:
        answer = json.loads(lines[-1])
    except (IndexError, ValueError):
        tail = err.decode(errors="replace").strip().splitlines()[-5:]
        raise RuntimeError(f"the LBEN child process ended with code {returncode} and no answer: "
                           + " | ".join(tail)) from None
    if "value" in answer:
        return float(answer["value"])
    raise _ERRORS.get(answer["error"], RuntimeError)(answer["message"])


def _child() -> int:
    """Read ``A`` (``.npy`` bytes) on stdin, write ``{"value": …}`` or ``{"error": …}`` on stdout."""
    A = np.load(io.BytesIO(sys.stdin.buffer.read()), allow_pickle=False)
    try:
        answer = {"value": lben_program(A)}
    except Exception as exc:  # reported to the parent, which raises it again
        answer = {"error": type(exc).__name__, "message": str(exc)}
    sys.stdout.write("\n" + json.dumps(answer) + "\n")
    return 0 if "value" in answer else 1


if __name__ == "__main__":
    sys.exit(_child())
