"""The run machinery's own guarantees beyond tests/test_sweep.py: a job compiles on a worker
whose environment lost the thread count its numba pool started with."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap


def test_a_job_compiles_when_the_environment_lost_numbas_thread_count():
    # What a Dask worker with a cold numba cache saw: the pool started with the nanny's
    # NUMBA_NUM_THREADS=1, os.environ no longer held it, and every compilation failed.
    script = textwrap.dedent("""
        import os
        import numba
        import numpy as np
        from solvers.training._runner import execute

        @numba.njit(parallel=True)
        def total(x):
            s = 0.0
            for i in numba.prange(x.size):
                s += x[i]
            return s

        total(np.ones(4))  # the thread pool starts with one thread
        del os.environ["NUMBA_NUM_THREADS"]

        def job():
            @numba.njit
            def fresh(x):  # compiled inside the job
                return x + 1
            return {"value": fresh(1)}

        print(execute(job, ())["value"])
    """)
    env = {**os.environ, "NUMBA_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "2"
