"""A newcomer's first run: compilation is announced on stderr, Ctrl-C during it exits 130 at
once without a traceback, and numba's cache lives where it cannot shadow the packages."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import contraction
import solvers

ROOT = Path(solvers.__file__).resolve().parents[1]
SOLVE = [sys.executable, "-m", "solvers.cli", "solve", "--example", "negative-diagonal", "--n", "10",
         "--batch", "3", "--method", "forward_backward"]


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_CACHE_DIR"}
    env.update(extra)
    return env


def test_a_first_run_says_what_it_compiles_and_a_second_run_does_not(tmp_path):
    env = _env(NUMBA_CACHE_DIR=str(tmp_path / "cache"))
    first = subprocess.run(SOLVE, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr
    assert "nemon: compiling solve_block(" in first.stderr
    assert "once; cached for later runs" in first.stderr
    assert "nemon: compiled solve_block(" in first.stderr and " s" in first.stderr
    assert "SUCCESS" in first.stdout
    second = subprocess.run(SOLVE, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr
    assert "compiling" not in second.stderr  # loaded from the cache
    assert second.stdout.splitlines()[1:] == first.stdout.splitlines()[1:]


def _interrupt_while_compiling(cmd, tmp_path, marker="compiling"):
    """Start ``cmd`` with an empty numba cache, press Ctrl-C once stderr shows ``marker``; returns
    ``(exit code, seconds from Ctrl-C to exit, stdout, the rest of stderr)``."""
    env = _env(NUMBA_CACHE_DIR=str(tmp_path / "cache"))
    with subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True) as proc:
        try:
            for line in proc.stderr:  # wait until it announces the compilation
                if marker in line:
                    break
            else:
                raise AssertionError("no compilation was announced")
            time.sleep(0.3)  # well inside the compilation
            sent = time.perf_counter()
            proc.send_signal(signal.SIGINT)
            code = proc.wait(timeout=60)
            elapsed = time.perf_counter() - sent
            out, rest = proc.stdout.read(), proc.stderr.read()
        finally:
            proc.kill()
    return code, elapsed, out, rest


def test_ctrl_c_during_the_first_compilation_exits_130_within_two_seconds(tmp_path):
    code, elapsed, _, rest = _interrupt_while_compiling(SOLVE, tmp_path)
    assert code == 130, rest
    assert elapsed <= 2.0, f"exited {elapsed:.2f} s after Ctrl-C"
    assert "Traceback" not in rest and "interrupted" in rest


def test_ctrl_c_while_training_compiles_saves_and_exits_130_within_two_seconds(tmp_path):
    out_path = tmp_path / "m.npz"
    cmd = [sys.executable, "-m", "solvers.cli", "train", "--dataset", "digits", "--hidden", "8", "--epochs", "1",
           "--no-progress", "--out", str(out_path), "--figure", str(tmp_path / "m.png")]
    # the training step's kernel: the trainer stops before the batch and saves at once
    code, elapsed, out, rest = _interrupt_while_compiling(cmd, tmp_path, marker="compiling _step_block(")
    assert code == 130, rest
    assert elapsed <= 2.0, f"exited {elapsed:.2f} s after Ctrl-C"
    assert "Traceback" not in rest
    assert "Interrupted: checkpoint saved" in out and out_path.is_file()


def test_the_numba_cache_lives_in_the_user_cache_folder(tmp_path):
    probe = "import os, solvers; print(os.environ['NUMBA_CACHE_DIR'])"
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, env=_env(XDG_CACHE_HOME=str(tmp_path)),
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    folder = Path(out.stdout.strip())
    assert folder.parent == tmp_path / "nemon" / "numba" and folder.is_dir()
    for package in (contraction, solvers):
        assert Path(package.__file__).parent not in folder.parents


def test_the_cache_folder_changes_with_the_engine_sources(tmp_path):
    """numba notices a change to a kernel's own file only: an edit of a file it inlines (the
    operators) must lead to another cache folder, not to stale machine code."""
    from contraction._numba_cache import sources_fingerprint

    for name in ("numba_engine.py", "operators.py"):
        (tmp_path / name).write_text("x = 1\n")
    before = sources_fingerprint(tmp_path)
    assert sources_fingerprint(tmp_path) == before
    (tmp_path / "operators.py").write_text("x = 2  # an edit\n")
    assert sources_fingerprint(tmp_path) != before


def test_a_given_numba_cache_dir_is_respected(tmp_path):
    probe = "import os, solvers; print(os.environ['NUMBA_CACHE_DIR'])"
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT,
                         env=_env(NUMBA_CACHE_DIR=str(tmp_path / "mine"), XDG_CACHE_HOME=str(tmp_path / "xdg")),
                         capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == str(tmp_path / "mine")
    assert not (tmp_path / "xdg").exists()
