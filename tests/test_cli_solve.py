"""``nemon solve`` and ``nemon compare``: their output names the products that ran."""

from __future__ import annotations

import pytest

from solvers.cli import main


@pytest.mark.parametrize("flag, expected", [([], "mixed"), (["--precision", "exact"], "exact"),
                                            (["--engine", "numpy"], "exact")])
def test_solve_reports_its_products(capsys, flag, expected):
    code = main(["solve", "--example", "negative-diagonal", "--n", "20", "--batch", "5", *flag])
    out = capsys.readouterr().out
    assert code == 0
    assert f"{expected} products: SUCCESS" in out


def test_mixed_where_it_does_not_apply_exits_2(capsys):
    code = main(["solve", "--example", "negative-diagonal", "--n", "20", "--method", "anderson",
                 "--precision", "mixed"])
    err = capsys.readouterr().err
    assert code == 2 and "precision='mixed' does not apply" in err


def test_compare_table_has_a_products_column(capsys, tmp_path):
    out_png = tmp_path / "cmp.png"
    code = main(["compare", "--n", "12", "--batch", "4", "--repeats", "1", "--out", str(out_png)])
    out = capsys.readouterr().out
    assert code == 0 and out_png.stat().st_size > 0
    rows = {line.split()[0]: line.split()[4] for line in out.splitlines()
            if line.split() and line.split()[0] in ("average", "anderson")}
    assert rows == {"average": "mixed", "anderson": "exact"}
