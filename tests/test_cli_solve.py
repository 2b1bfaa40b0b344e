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


def test_compare_table_lists_every_method(capsys, tmp_path):
    out_png = tmp_path / "cmp.png"
    code = main(["compare", "--n", "12", "--batch", "4", "--repeats", "1", "--out", str(out_png)])
    out = capsys.readouterr().out
    assert code == 0 and out_png.stat().st_size > 0
    methods = {line.split()[0] for line in out.splitlines() if line.split()}
    assert {"average", "forward_backward", "anderson", "peaceman_rachford", "douglas_rachford"} <= methods
