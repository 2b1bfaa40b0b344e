"""What the command-line tests share: run ``nemon`` in-process and read its one-line errors."""

from __future__ import annotations

import contextlib
import io

from solvers.cli import main


def run(*argv):
    """``main(argv)`` with stdout and stderr captured: ``(exit code, stdout, stderr)``; an
    option error (argparse exits) gives its exit code too."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main([str(a) for a in argv])
        except SystemExit as exc:
            code = exc.code
    return code, out.getvalue(), err.getvalue()


def one_clean_line(err: str, *needles) -> str:
    """The error is the project's own single line, with every needle in it (beside the
    compilation messages of a first run, "nemon: compiling ...")."""
    lines = [line for line in err.strip().splitlines() if not line.startswith("nemon: ")]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], (needle, err)
    return lines[0]
