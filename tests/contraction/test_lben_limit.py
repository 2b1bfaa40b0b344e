"""The LBEN semidefinite program under a time limit: skipped rows, unchanged values, progress logs."""

import glob
import logging
import math
import os
import time

import numpy as np
import pytest

import contraction as c

# Larger than the programs solved at once (which are never limited); the LBEN program for
# this size takes seconds, far longer than the limits below.
N_LARGE = 70
# Just above that size: solved in a child process well within the default limit.
N_CHILD = 41


def _children() -> set[int]:
    """Process ids of this process's children (Linux /proc)."""
    pids = set()
    for name in glob.glob(f"/proc/{os.getpid()}/task/*/children"):
        with open(name) as f:
            pids.update(int(p) for p in f.read().split())
    return pids


def test_limit_skips_the_lben_row_and_says_what_to_do(caplog, monkeypatch):
    monkeypatch.setattr("contraction._lben.HEARTBEAT_SECONDS", 0.3)
    A, _ = c.example("random-nemon", n=N_LARGE, seed=0)
    before = _children()
    start = time.perf_counter()
    with caplog.at_level(logging.INFO, logger="nemon.lben"):
        report = c.wellposedness(A, lben_time_limit=1.0)
    elapsed = time.perf_counter() - start
    # stopped at the limit (the program alone would take several seconds), child process gone
    assert elapsed < 1.0 + 3.0
    if os.path.isdir("/proc"):
        assert _children() <= before

    row = report["lben"]
    assert row.skipped and not row.holds and math.isnan(row.value) and math.isnan(row.margin)
    assert "did not finish within 1 s" in row.note and f"n={N_LARGE}" in row.note
    assert "--lben-time-limit" in row.note and "--no-lben" in row.note
    lines = report.table().splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("lben "))
    assert lines[at].split()[1:4] == ["nan", "nan", "skip"]
    assert lines[at + 1].strip() == row.note
    # the other conditions are evaluated as usual
    assert report["nemon"].holds and not report["nemon"].skipped and report["nemon"].note == ""
    assert report.any_holds

    messages = [r.getMessage() for r in caplog.records if r.name == "nemon.lben"]
    assert messages[0] == f"solving the LBEN semidefinite program for n={N_LARGE} (up to 1 s) ..."
    assert any(m.startswith(f"still solving the LBEN semidefinite program for n={N_LARGE} (") for m in messages)
    assert messages[-1].startswith(f"gave up the LBEN semidefinite program for n={N_LARGE} after ")


def test_within_the_limit_the_value_is_unchanged(caplog):
    A, _ = c.example("random-nemon", n=N_CHILD, seed=3)
    with caplog.at_level(logging.INFO, logger="nemon.lben"):
        limited = c.wellposedness(A, conditions=["mon", "lben"])["lben"]
        unlimited = c.wellposedness(A, conditions=["lben"], lben_time_limit=None)["lben"]
    direct = c.lben_value(A)
    for row in (limited, unlimited):
        assert not row.skipped and row.note == ""
        assert row.value == pytest.approx(direct, rel=1e-10, abs=1e-12)
        assert row.holds == (direct < 1)
    messages = [r.getMessage() for r in caplog.records if r.name == "nemon.lben"]
    assert f"solving the LBEN semidefinite program for n={N_CHILD} (up to {c.LBEN_TIME_LIMIT:g} s) ..." in messages
    assert f"solving the LBEN semidefinite program for n={N_CHILD} (no time limit) ..." in messages
    assert sum(m.startswith(f"solved the LBEN semidefinite program for n={N_CHILD} in ") for m in messages) == 2


def test_small_programs_are_solved_at_once_whatever_the_limit():
    A = np.array([[-100.0, 50.0], [0.0, 0.0]])
    row = c.wellposedness(A, conditions=["lben"], lben_time_limit=1e-9)["lben"]
    assert not row.skipped and row.value == pytest.approx(c.lben_value(A), abs=1e-12) and row.holds


def test_an_infinite_limit_is_no_limit():
    A = np.array([[0.5]])
    row = c.wellposedness(A, conditions=["lben"], lben_time_limit=math.inf)["lben"]
    assert not row.skipped and row.value == pytest.approx(0.5, abs=1e-4)


@pytest.mark.parametrize("bad", [0, -1.0, math.nan, "60", True, [60]])
def test_bad_time_limit_is_named(bad):
    with pytest.raises(ValueError, match=r"^lben_time_limit must be a positive number of seconds or None"):
        c.wellposedness(np.eye(2) * 0.5, conditions=["nemon"], lben_time_limit=bad)

