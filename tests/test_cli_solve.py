"""``nemon solve`` and ``nemon compare`` on small problems."""

from __future__ import annotations

import pytest

from solvers.cli import main


@pytest.mark.parametrize("engine", ["numba", "numpy"])
def test_solve_reports_the_method_and_status(capsys, engine):
    code = main(["solve", "--example", "negative-diagonal", "--n", "20", "--batch", "5", "--engine", engine])
    out = capsys.readouterr().out
    assert code == 0
    assert f"engine {engine}: SUCCESS" in out


def test_solve_with_per_unit_steps(capsys):
    argv = ["solve", "--example", "negative-diagonal", "--n", "20", "--batch", "5", "--seed", "3"]
    assert main(argv) == 0
    single = capsys.readouterr().out
    assert main([*argv, "--per-unit-steps"]) == 0
    out = capsys.readouterr().out
    assert "method average (alpha=" in single and "method average (per-unit alpha in [" in out
    assert "engine numba: SUCCESS" in out
    assert main([*argv, "--per-unit-steps", "--method", "anderson"]) == 2
    assert "--per-unit-steps is for --method average" in capsys.readouterr().err


def test_compare_table_lists_every_method(capsys, tmp_path):
    out_png = tmp_path / "cmp.png"
    code = main(["compare", "--n", "12", "--batch", "4", "--repeats", "1", "--out", str(out_png)])
    out = capsys.readouterr().out
    assert code == 0 and out_png.stat().st_size > 0
    methods = {line.split()[0] for line in out.splitlines() if line.split()}
    assert {"average", "forward_backward", "anderson", "peaceman_rachford", "douglas_rachford"} <= methods
