"""Runs as Dask tasks, recorded once each in a JSON-lines file: what ``nemon sweep`` and
``nemon reproduce`` share (issue 15).

A *job* is ``(key, function, args)``: ``function(*args)`` returns a JSON-safe record (a dict),
which :func:`run_jobs` appends to the results file with the job's ``key`` as soon as it
arrives, never twice for one key. A rerun reads the file and skips the keys already there.
Jobs run on a :class:`dask.distributed.LocalCluster` of single-threaded processes, on an
existing cluster (``scheduler``), or, with ``workers=0``, one after the other in this process
on all its threads (for debugging and for machines with one core).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import platform
import time
from pathlib import Path

from ._files import json_safe

logger = logging.getLogger(__name__)

__all__ = ["RunError", "read_records", "append_record", "run_jobs", "execute", "versions"]


class RunError(ValueError):
    """A spec, an output folder or a cluster that cannot be used; the message says why."""


def read_records(path: Path) -> dict:
    """``key -> record`` of a results file (a torn last line, from a crash mid-write, is
    ignored with a warning; any other bad line is an error naming it)."""
    path = Path(path)
    records = {}
    if not path.exists():
        return records
    lines = path.read_text(encoding="utf-8").splitlines()
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            key = record["key"]
        except (json.JSONDecodeError, KeyError, TypeError):
            if number == len(lines):
                logger.warning("%s: ignoring its unfinished last line", path)
                continue
            raise RunError(f"{path}, line {number}: not a run record (expected a JSON object with a 'key')") \
                from None
        records[key] = record
    return records


def append_record(path: Path, record: dict) -> None:
    """One line, written with one ``write`` to a file opened for appending (never interleaved
    or half-replaced; synced so that a crash after it keeps it)."""
    line = (json.dumps(json_safe(record), allow_nan=False) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)


def versions() -> dict:
    """The versions of Python and the libraries a record was computed with."""
    from importlib.metadata import PackageNotFoundError, version

    import numba
    import numpy as np
    import scipy

    out = {"python": platform.python_version(), "numpy": np.__version__, "scipy": scipy.__version__,
           "numba": numba.__version__}
    for name in ("nemon", "dask"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:  # a source checkout on PYTHONPATH
            pass
    return out


def execute(function, args, threads: int | None = 1) -> dict:
    """``function(*args)``'s record with its wall time, the library versions and the worker,
    on ``threads`` threads, numba's and the BLAS's (``None``: as they are; a cluster runs one
    single-threaded worker process per core).

    Set here rather than through the workers' environment: a worker process imports numba and
    NumPy (with its main module) before a Dask nanny's environment reaches it, and numba's
    thread count is per calling thread anyway."""
    import numba
    from threadpoolctl import threadpool_limits

    # A compilation re-reads numba's settings from the environment and fails when the thread
    # count found there differs from the pool's: a Dask worker's pool starts from the nanny's
    # environment, which its os.environ need not hold when the job runs.
    os.environ["NUMBA_NUM_THREADS"] = str(numba.config.NUMBA_NUM_THREADS)
    t0 = time.perf_counter()
    previous = numba.get_num_threads()
    try:
        if threads is None:
            record = function(*args)
        else:
            numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
            with threadpool_limits(limits=threads):
                record = function(*args)
    finally:
        numba.set_num_threads(previous)
    return {**record, "seconds": time.perf_counter() - t0, "versions": versions(),
            "worker": f"{platform.node()}:{os.getpid()}"}


@contextlib.contextmanager
def _client(scheduler, workers):
    """A Dask client: of the cluster at ``scheduler``, or of a LocalCluster of ``workers``
    single-threaded processes (default: one per core)."""
    import dask
    from dask.distributed import Client, LocalCluster

    # Dask's own INFO and WARNING lines (workers starting and closing) would bury ours.
    dask.config.set({"logging.distributed": "error"})
    logging.getLogger("distributed").setLevel(logging.ERROR)
    if scheduler:
        try:
            client = Client(scheduler, timeout="10s")
        except (OSError, TimeoutError) as exc:
            raise RunError(f"--scheduler {scheduler}: no Dask scheduler answered ({exc}); start one with "
                           "`dask scheduler` and workers with `dask worker ADDRESS`") from None
        try:
            yield client
        finally:
            client.close()
        return
    n = workers or os.cpu_count() or 1
    # One numba thread per worker process; the numba cache folder is the client's (its default
    # is the same path in every process of this machine), so workers do not recompile.
    env = {"NUMBA_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "DASK_LOGGING__DISTRIBUTED": "error"}
    if os.environ.get("NUMBA_CACHE_DIR"):
        env["NUMBA_CACHE_DIR"] = os.environ["NUMBA_CACHE_DIR"]
    # No dashboard; the scheduler's HTTP endpoints (health, metrics) on a free port rather than
    # Dask's default 8787, which a second cluster on this machine (another sweep) would find taken.
    with LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=None,
                      scheduler_kwargs={"dashboard_address": "127.0.0.1:0"}, host="127.0.0.1", env=env) as cluster, \
            Client(cluster) as client:
        yield client


def run_jobs(jobs, results: Path, done: dict, *, scheduler=None, workers=None, progress: bool = False,
             log=None, what: str = "run") -> dict:
    """Run ``jobs`` (``(key, function, args)``), appending each record to ``results`` and to
    ``done`` (``key -> record``) as it arrives; return ``key -> reason`` of the jobs that failed
    (a job's exception, or its workers' deaths beyond one retry). Ctrl-C cancels what is left
    and raises ``KeyboardInterrupt``: the file holds every finished job."""
    log = log if log is not None else logger.info
    jobs = [(k, f, a) for k, f, a in jobs if k not in done]
    if not jobs:
        return {}
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(jobs), unit=what, desc=what + "s")
    failed: dict = {}

    def finished(key, record=None, error=None, running=None):
        if error is not None:
            failed[key] = f"{type(error).__name__}: {error}"
            log(f"{what} {key} failed: {failed[key]}")
        elif key not in done:  # never twice, whatever Dask retried
            record = {"key": key, **record}
            append_record(results, record)
            done[key] = record
        if bar is not None:
            if running is not None:
                bar.set_postfix(finished=len(done), failed=len(failed), running=running)
            bar.update(1)

    try:
        if workers == 0 and not scheduler:
            for key, function, args in jobs:
                try:
                    record = execute(function, args, threads=None)
                except (RuntimeError, ValueError) as exc:
                    finished(key, error=exc)
                else:
                    finished(key, record)
        else:
            _run_on_dask(jobs, scheduler, workers, log, what, finished)
    finally:
        if bar is not None:
            bar.close()
    return failed


def _run_on_dask(jobs, scheduler, workers, log, what, finished):
    from dask.distributed import as_completed

    with _client(scheduler, workers) as client:
        info = client.scheduler_info()
        log(f"{what}s: on {info.get('address', scheduler)} with {len(info.get('workers', {}))} workers")
        futures = {client.submit(execute, function, args, key=f"nemon-{what}-{key}", retries=1): key
                   for key, function, args in jobs}
        try:
            for future in as_completed(futures):
                key = futures[future]
                # Tasks assigned to a worker, at most one running on each (one thread per worker).
                running = sum(min(len(keys), 1) for keys in client.processing().values())
                try:
                    record = future.result()
                except Exception as exc:  # the run's own failure, or its workers' deaths beyond the retries
                    finished(key, error=exc, running=running)
                else:
                    finished(key, record, running=running)
        except KeyboardInterrupt:
            # Said at once: closing the cluster takes seconds, and a second Ctrl-C (or the
            # command line's grace period) may end the process before it is closed.
            log(f"{what}s: interrupted; the finished ones are recorded: run the same command again to do the rest")
            client.cancel(list(futures), force=True)
            raise
