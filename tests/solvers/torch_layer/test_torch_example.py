"""``examples/torch_layer.py`` end to end on its ``--quick`` settings, with interval training:
the table, the certificate, the certified accuracies and the figure."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

SCRIPT = Path(__file__).resolve().parents[3] / "examples" / "torch_layer.py"
ROW = re.compile(r"^\s+(\d+)\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+)$", flags=re.MULTILINE)


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("torch_layer_example", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # nothing runs at import time
    return module


def test_quick_run_prints_the_table_and_writes_the_figure(script, capsys, tmp_path):
    out = tmp_path / "figs" / "torch.png"  # the parent is created by the script
    assert script.main(["--quick", "--train-eps", "0.01", "--gamma", "0.5", "--threads", "1", "--out", str(out)]) == 0
    assert out.is_file() and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    printed = capsys.readouterr().out
    rows = ROW.findall(printed)
    assert [int(r[0]) for r in rows] == list(range(1, script.QUICK["epochs"] + 1))
    loss, accuracy, mu, iterations, seconds = map(float, rows[-1][1:])
    assert loss > 0 and 0 <= accuracy <= 1 and mu <= 0.5 + 1e-6 and iterations >= 1 and seconds > 0
    assert "interval training at eps = 0.01 (weight 0.5)" in printed
    certificate = re.search(r"certificate: mu_inf\(A\) = (\S+) \(constraint mu_inf, gamma 0.5\), alpha\* = (\S+), "
                            r"contraction factor (\S+) \(average\), Lipschitz bound (\S+)", printed)
    assert certificate, printed
    mu_cert, alpha, factor, _ = map(float, certificate.groups())
    assert mu_cert == pytest.approx(mu, abs=1e-4) and factor == pytest.approx(1 - alpha * (1 - max(0.0, mu_cert)),
                                                                               abs=1e-3)
    certified = [float(v) for v in re.findall(r"eps [\d.]+: (\S+?)(?:,|$)", printed, flags=re.MULTILINE)]
    assert len(certified) == len(script.QUICK["eps"])
    assert accuracy >= certified[0] >= certified[1] >= 0  # smaller balls certify more
    assert str(out) in printed


def test_bad_options_are_refused(script, capsys):
    for argv, message in ((["--gamma", "1.2"], "--gamma must lie in [0, 1)"),
                          (["--eps", "a,b"], "expected comma-separated radii"),
                          (["--interval-weight", "2"], "--interval-weight must lie in [0, 1]")):
        with pytest.raises(SystemExit) as info:
            script.main(argv + ["--out", "unused.png"])
        assert info.value.code == 2
        assert message in capsys.readouterr().err
