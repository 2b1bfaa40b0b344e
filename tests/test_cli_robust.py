"""``nemon certify``, ``nemon attack`` and ``nemon reproduce`` end to end on the built-in
digits data set: the robustness table (columns, one row per ε, accuracies ordered
certified ≤ attacked ≤ clean), the figures, and the user-facing errors (exit status 2, one
clear line, no traceback)."""

from __future__ import annotations


import pytest

from _cli_helpers import run
from solvers.training._reproduce import model_specs

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
CERT_COLUMNS = ["eps", "clean", "cert.interval", "cert.lip(tight)", "cert.lip(paper)"]
ATTACK_COLUMNS = CERT_COLUMNS + ["FGSM", "PGD"]
EPS = (0.01, 0.05)




def table(out: str, columns):
    """The robustness table's rows as dicts (the header line must be exactly ``columns``)."""
    lines = out.splitlines()
    headers = [i for i, line in enumerate(lines) if line.split() == columns]
    assert len(headers) == 1, f"no header {columns} in:\n{out}"
    rows = []
    for line in lines[headers[0] + 1 :]:
        fields = line.split()
        if len(fields) != len(columns):
            break
        rows.append(dict(zip(columns, map(float, fields))))
    return rows


def assert_png(path):
    assert path.is_file() and path.read_bytes()[:8] == PNG_MAGIC, f"{path} is not a PNG"


def assert_user_error(code, out, err, *needles):
    assert code == 2
    assert "Traceback" not in out + err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "error" in lines[0], err
    for needle in needles:
        assert needle in lines[0], f"{needle!r} not in {lines[0]!r}"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A 1-epoch, 16-unit digits checkpoint from ``nemon train``."""
    tmp = tmp_path_factory.mktemp("cli_robust")
    ckpt = tmp / "m.npz"
    code, out, err = run("train", "--dataset", "digits", "--epochs", 1, "--hidden", 16, "--no-progress",
                         "--out", ckpt, "--figure", tmp / "training.png")
    assert code == 0, err
    assert ckpt.is_file()
    return ckpt


def robustness(command, checkpoint, tmp, *extra):
    fig = tmp / f"{command}.png"
    code, out, err = run(command, checkpoint, "--dataset", "digits", "--eps", ",".join(map(str, EPS)),
                         "--samples", 50, "--out", fig, *extra)
    return code, out, err, fig


# -- certify and attack ------------------------------------------------------------------------
def test_certify_prints_the_certificate_table_and_writes_the_figure(checkpoint, tmp_path):
    code, out, err, fig = robustness("certify", checkpoint, tmp_path)
    assert code == 0, err
    assert "Traceback" not in out + err
    assert "50 test samples" in out and "certificates" in out
    rows = table(out, CERT_COLUMNS)
    assert [r["eps"] for r in rows] == list(EPS)
    for r in rows:
        assert all(0.0 <= r[k] <= 1.0 for k in CERT_COLUMNS[1:])
        assert max(r["cert.interval"], r["cert.lip(tight)"]) <= r["clean"]
        assert r["cert.lip(paper)"] <= r["cert.lip(tight)"]  # the paper's bound is never smaller
    assert rows[1]["cert.interval"] <= rows[0]["cert.interval"]  # a larger radius certifies less
    assert "FGSM" not in out and "PGD" not in out
    assert f"figure: {fig}" in out
    assert_png(fig)


def test_attack_prints_certified_and_attacked_accuracy(checkpoint, tmp_path):
    code, out, err, fig = robustness("attack", checkpoint, tmp_path, "--steps", 3)
    assert code == 0, err
    assert "Traceback" not in out + err
    assert "certificates and attacks" in out
    rows = table(out, ATTACK_COLUMNS)
    assert [r["eps"] for r in rows] == list(EPS)
    for r in rows:
        certified = max(r["cert.interval"], r["cert.lip(tight)"])
        assert certified <= r["PGD"] <= r["clean"], r
        assert certified <= r["FGSM"] <= r["clean"], r
    assert_png(fig)


def test_attack_is_reproducible_under_its_seed(checkpoint, tmp_path):
    first = robustness("attack", checkpoint, tmp_path, "--steps", 3, "--restarts", 2, "--seed", 5)
    second = robustness("attack", checkpoint, tmp_path, "--steps", 3, "--restarts", 2, "--seed", 5)
    assert first[0] == second[0] == 0
    assert table(first[1], ATTACK_COLUMNS) == table(second[1], ATTACK_COLUMNS)


# -- user errors -------------------------------------------------------------------------------
@pytest.mark.parametrize("command", ("certify", "attack"))
@pytest.mark.parametrize("eps, needle", [("a,b", "comma-separated numbers"), ("-1", "[0, 1]"), ("0.1,nan", "[0, 1]"),
                                         ("", "[0, 1]"), ("0.1,1.5", "[0, 1]")])
def test_bad_eps_exits_2_with_a_message(checkpoint, tmp_path, command, eps, needle):
    fig = tmp_path / "never.png"
    code, out, err = run(command, checkpoint, "--dataset", "digits", "--eps", eps, "--samples", 10, "--out", fig)
    assert_user_error(code, out, err, "--eps", needle)
    assert not fig.exists()


@pytest.mark.parametrize("command", ("certify", "attack"))
def test_missing_checkpoint_exits_2(tmp_path, command):
    missing = tmp_path / "nope.npz"
    code, out, err = run(command, missing, "--dataset", "digits", "--out", tmp_path / "never.png")
    assert_user_error(code, out, err, str(missing))


def test_attack_with_zero_steps_is_a_user_error(checkpoint, tmp_path):
    code, out, err = run("attack", checkpoint, "--dataset", "digits", "--eps", "0.01", "--samples", 10,
                         "--steps", 0, "--out", tmp_path / "never.png")
    assert_user_error(code, out, err, "--steps")


def test_certify_with_zero_samples_is_a_clear_user_error(checkpoint, tmp_path):
    code, out, err = run("certify", checkpoint, "--dataset", "digits", "--eps", "0.01", "--samples", 0,
                         "--out", tmp_path / "never.png")
    assert_user_error(code, out, err, "--samples")


# -- reproduce ---------------------------------------------------------------------------------
def test_reproduce_quick_on_digits(tmp_path):
    out_dir = tmp_path / "reproduce"
    code, out, err = run("reproduce", "--quick", "--dataset", "digits", "--epochs", 1, "--samples", 30,
                         "--out", out_dir, "--workers", 0, "--no-progress")
    assert code == 0, err
    assert "Traceback" not in out + err
    summary = out[out.index("Summary") :]
    header = summary.splitlines()[1].split()
    eps = (0.01, 0.02, 0.05, 0.1)  # the command's default --eps
    assert header[:8] == ["model", "seeds", "params", "val", "clean", "mu_inf", "Lip.tight", "Lip.paper"]
    assert header[8:16] == [f"cert@{e:g}" for e in eps] + [f"pgd@{e:g}" for e in eps]
    lines = summary.splitlines()[2:]
    for spec in model_specs():
        row = [line for line in lines if line.startswith(spec.name + "  ")]
        assert len(row) == 1, f"{spec.name!r} not exactly once in the summary:\n{summary}"
        cells = row[0][len(spec.name) :].split()
        assert cells[0] == "1"  # one seed with --quick
        clean = float(cells[3])
        cert, pgd = list(map(float, cells[7:11])), list(map(float, cells[11:15]))
        assert all(0.0 <= p <= clean for p in pgd), row[0]
        assert all(c <= p for c, p in zip(cert, pgd)), row[0]
        assert cells[-1].split("=")[0] == next(iter(spec.grid))  # the chosen setting
    for name in ("robustness.png", "iterations.png"):
        assert f"figure: {out_dir / name}" in out
        assert_png(out_dir / name)
