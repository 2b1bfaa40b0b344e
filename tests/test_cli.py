"""The ``nemon check`` command line, and the well-posedness example script end to end."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import numpy as np
import pytest

import contraction
from solvers.cli import main

EXAMPLE_SCRIPT = Path(__file__).resolve().parents[1] / "examples" / "wellposedness_regions.py"

# Distinct row sums so a wrong orientation or delimiter changes the nemon value.
A_FILE = np.array([[-2.0, 0.5, 0.25], [0.1, 0.2, -0.3], [0.7, -0.4, -1.5]])


def _printed_value(out: str, name: str) -> float:
    match = re.search(rf"^{name}\s+(\S+)\s", out, flags=re.MULTILINE)
    assert match, f"no row for {name!r} in:\n{out}"
    return float(match.group(1))


def _check(capsys, *argv):
    code = main(["check", *map(str, argv)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_paper_example_prints_every_condition(capsys):
    code, out, err = _check(capsys, "--example", "paper-2x2")
    assert code == 0, err
    for name in contraction.CONDITIONS:
        assert re.search(rf"^{name}\s", out, flags=re.MULTILINE), f"{name} missing from:\n{out}"
    assert _printed_value(out, "nemon") == pytest.approx(0.0, abs=1e-12)
    assert re.search(r"^method\s+alpha\s+factor", out, flags=re.MULTILINE)
    for method in contraction.METHODS:
        if method != "anderson":
            assert re.search(rf"^{method}\s", out, flags=re.MULTILINE), f"{method} missing"
    assert "Lipschitz bound" in out
    assert err == ""


def test_ill_posed_example_exits_1(capsys):
    code, out, _ = _check(capsys, "--example", "ill-posed", "--n", "6", "--no-lben")
    assert code == 1
    assert _printed_value(out, "nemon") >= 1.0
    assert _printed_value(out, "nemon_weighted") >= 1.0
    assert not re.search(r"^lben\s", out, flags=re.MULTILINE)


def _write(path: Path, A: np.ndarray) -> Path:
    if path.suffix == ".npy":
        np.save(path, A)
    elif path.suffix == ".csv":
        np.savetxt(path, A, delimiter=",")
    else:
        np.savetxt(path, A)  # whitespace-separated
    return path


@pytest.mark.parametrize("name", ["A.npy", "A.csv", "A.txt"])
def test_matrix_file_is_read(capsys, tmp_path, name):
    path = _write(tmp_path / name, A_FILE)
    code, out, err = _check(capsys, path, "--no-lben")
    assert code == 0, err
    assert str(path) in out
    assert _printed_value(out, "nemon") == pytest.approx(contraction.mu_inf(A_FILE), rel=1e-5)
    assert _printed_value(out, "idl_norm") == pytest.approx(contraction.induced_norm(A_FILE), rel=1e-5)
    assert "Lipschitz bound" not in out  # no B, no bound


def test_B_file_gives_lipschitz_line(capsys, tmp_path):
    A = _write(tmp_path / "A.csv", A_FILE)
    B_mat = np.array([[1.0, 0.0], [0.5, -1.0], [0.0, 2.0]])
    B = _write(tmp_path / "B.npy", B_mat)
    code, out, err = _check(capsys, A, "--B", B, "--no-lben")
    assert code == 0, err
    line = next(ln for ln in out.splitlines() if "Lipschitz bound" in ln)
    tight = float(re.search(r"bound: (\S+) \(tight", line).group(1))
    assert tight == pytest.approx(contraction.lipschitz_bound(A_FILE, B_mat, form="tight"), rel=1e-5)


def _bad_inputs(tmp_path: Path):
    nan = A_FILE.copy()
    nan[1, 2] = np.nan
    (tmp_path / "garbage.txt").write_text("this is not\na matrix at all\n")
    np.save(tmp_path / "vector.npy", np.arange(3.0))
    good = _write(tmp_path / "good.npy", A_FILE)
    return {
        "missing": ([tmp_path / "nope.npy"], "file not found"),
        "non-square": ([_write(tmp_path / "rect.csv", np.ones((2, 3)))], "must be square"),
        "nan": ([_write(tmp_path / "nan.csv", nan)], "non-finite"),
        "one-dimensional": ([tmp_path / "vector.npy"], "2-dimensional"),
        "garbage": ([tmp_path / "garbage.txt"], "could not be read"),
        "both": ([good, "--example", "paper-2x2"], "not both"),
        "neither": ([], "give a MATRIX file or --example"),
        "B rows": ([good, "--B", _write(tmp_path / "B.csv", np.ones((2, 2)))], "B must have 3 rows"),
    }


@pytest.mark.parametrize(
    "case", ["missing", "non-square", "nan", "one-dimensional", "garbage", "both", "neither", "B rows"]
)
def test_bad_input_exits_2_with_message(capsys, tmp_path, case):
    argv, phrase = _bad_inputs(tmp_path)[case]
    code, out, err = _check(capsys, *argv, "--no-lben")
    assert code == 2
    assert err.startswith("nemon check: error:")
    assert phrase in err
    assert "Traceback" not in err
    assert out == ""


def test_example_script_writes_png(capsys, tmp_path):
    spec = importlib.util.spec_from_file_location("wellposedness_regions", EXAMPLE_SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # nothing runs at import time
    assert capsys.readouterr().out == ""
    out = tmp_path / "figs" / "regions.png"  # the parent is created by the script
    assert module.main(["--trials", "3", "--sizes", "2,3", "--grid", "9", "--seed", "1", "--out", str(out)]) == 0
    assert out.is_file() and out.stat().st_size > 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    printed = capsys.readouterr().out
    assert "nemon" in printed and str(out) in printed
