"""Every ``nemon`` command README.md shows runs, in the README's order, in one folder, on small
settings: a README command cannot rot silently. Adding a command to README.md without its
small settings here fails :func:`test_every_readme_command_has_small_settings`."""

from __future__ import annotations

import contextlib
import io
import shlex
import shutil
from pathlib import Path

import numpy as np

from solvers.cli import main

README = Path(__file__).resolve().parent.parent / "README.md"

#: README command -> options appended to run it on small settings (argparse keeps the last
#: value of an option given twice). The interval-trained model gets 3 epochs so that its
#: default ramp (a third of the epochs) has a full-radius epoch after it.
SMALL = {
    "nemon train": ["--epochs", "2", "--hidden", "16", "--no-progress"],
    "nemon check --example paper-2x2": [],
    "nemon check A.npy --B B.csv": ["--no-lben"],
    "nemon solve --example random-nemon --n 50 --method anderson": [],
    "nemon compare --family negative-diagonal": ["--n", "20", "--batch", "10", "--repeats", "1"],
    "nemon train --dataset fashion-mnist --epochs 30 --interval-eps 0.1 --diag-min -1 --out out/robust.npz":
        ["--epochs", "3", "--hidden", "16", "--train-samples", "3000", "--no-progress"],
    "nemon train --dataset fashion-mnist --forward-method anderson --out out/anderson.npz":
        ["--epochs", "1", "--hidden", "16", "--train-samples", "3000", "--no-progress"],
    "nemon train --model conv --dataset fashion-mnist --channels 32 --stride 2 --pool 2 --epochs 8 --out out/conv.npz":
        ["--channels", "4", "--epochs", "1", "--train-samples", "1000", "--no-progress"],
    "nemon train --model conv --dataset mnist5k --channels 32 --kernel 5 --stride 2 --pool 2 --epochs 30 --shift 1 "
    "--out out/conv5k.npz": ["--channels", "4", "--kernel", "3", "--epochs", "1", "--train-samples", "500",
                             "--no-progress"],
    "nemon train --model conv --dataset fashion-mnist --channels 32 --kernel 5 --stride 2 --pool 1 --epochs 10 --flip "
    "--out out/conv_fm.npz": ["--channels", "4", "--kernel", "3", "--epochs", "1", "--train-samples", "1000",
                              "--no-progress"],
    "nemon train --model conv --dataset fashion-mnist --channels 24 --stride 2 --pool 1 --readout-hidden 512 "
    "--epochs 16 --batch-size 50 --interval-eps 0.11 --interval-weight 0.8 --diag-min -1 --lr 2e-3 --interval-ramp 5 "
    "--per-unit-steps --out out/conv_interval.npz":
        ["--channels", "4", "--readout-hidden", "16", "--epochs", "2", "--interval-ramp", "2", "--train-samples",
         "1000", "--no-progress"],
    "nemon certify out/conv_interval.npz --eps 0.01,0.02,0.05,0.1 --samples 10000": ["--samples", "40"],
    "nemon check kernel.npy --image 28x28": [],
    "nemon train --epochs 50 --time-budget 10m --out out/budget.npz":
        ["--hidden", "16", "--time-budget", "1", "--no-progress"],
    "nemon train --resume out/model.npz": ["--no-progress"],
    "nemon train --resume out/model.npz --epochs 25": ["--epochs", "3", "--no-progress"],
    "nemon evaluate out/model.npz": [],
    "nemon certify out/robust.npz --eps 0.01,0.05,0.1": ["--samples", "100"],
    "nemon attack out/robust.npz --eps 0.01,0.05,0.1": ["--samples", "50", "--steps", "3"],
    "nemon reproduce --quick": ["--models", "implicit mu_inf", "--epochs", "1", "--samples", "50", "--no-progress"],
    "nemon sweep examples/sweep.toml --out out/sweep": ["--workers", "2", "--no-progress"],
    'nemon reproduce --models "implicit mu_inf + interval" --out out/interval':
        ["--dataset", "digits", "--epochs", "1", "--seeds", "2", "--samples", "30", "--workers", "0", "--no-progress"],
    'nemon reproduce --models "implicit mu_inf,implicit mu_inf + Lipschitz,implicit norm_inf,feed-forward ReLU,'
    'implicit none,implicit nemon_param,feed-forward ReLU + interval" --out out/rows':
        ["--dataset", "digits", "--epochs", "1", "--seeds", "1", "--samples", "20", "--workers", "0", "--no-progress"],
    'nemon reproduce --models "implicit mon" --out out/mon':
        ["--dataset", "digits", "--epochs", "1", "--seeds", "1", "--samples", "20", "--workers", "0", "--no-progress"],
}


def readme_commands() -> list[str]:
    """The ``nemon`` commands of README.md's code lines (indented by four spaces), comments
    stripped, each once, in order of first appearance (the set-up line's ``nemon train`` is the
    command list's first one)."""
    commands = []
    for line in README.read_text(encoding="utf-8").splitlines():
        if not line.startswith("    "):
            continue
        code = line.split("#", 1)[0]
        for part in code.split("&&"):
            part = " ".join(part.split())
            if part.startswith("nemon ") or part == "nemon":
                if part not in commands:
                    commands.append(part)
    return commands


def run(argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


def test_every_readme_command_has_small_settings():
    commands = readme_commands()
    assert "nemon train" in commands and "nemon reproduce --quick" in commands
    assert set(commands) == set(SMALL), "README.md and SMALL differ: " + repr(set(commands) ^ set(SMALL))


def test_readme_commands_run_in_order(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "examples").mkdir()  # the sweep spec README's `nemon sweep` reads
    shutil.copy(README.parent / "examples" / "sweep.toml", tmp_path / "examples")
    rng = np.random.default_rng(0)
    np.save("A.npy", 0.05 * rng.standard_normal((6, 6)))  # the files `nemon check A.npy --B B.csv` reads
    np.savetxt("B.csv", rng.standard_normal((6, 3)), delimiter=",")
    np.save("kernel.npy", 0.02 * rng.standard_normal((4, 4, 3, 3)))  # `nemon check kernel.npy --image 28x28`
    for command in readme_commands():
        argv = shlex.split(command)[1:] + SMALL[command]
        code, out, err = run(argv)
        assert code == 0, f"{command} (+ {SMALL[command]}) exited {code}:\n{out[-2000:]}\n{err[-2000:]}"
        assert "Traceback" not in err, command
    for path in ("out/model.npz", "out/model.png", "out/robust.npz", "out/anderson.npz", "out/conv.npz",
                 "out/conv_fm.npz", "out/conv_interval.npz", "out/compare.png",
                 "out/certify.png", "out/attack.png", "out/reproduce/results.json", "out/sweep/summary.csv",
                 "out/interval/results.csv", "out/rows/results.csv", "out/mon/results.csv"):
        assert Path(path).is_file(), path
