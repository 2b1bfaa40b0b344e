"""Files written whole or not at all, with the permissions of any file the user creates."""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path

import numpy as np

__all__ = ["atomic_write", "json_safe"]


@contextlib.contextmanager
def atomic_write(path, mode: str = "wb", **open_args):
    """``with atomic_write(path) as fh:`` writes to a new file next to ``path`` and renames it
    over ``path`` when the block ends without an exception (otherwise the new file is removed
    and ``path`` is left as it was): a reader, or an interrupted run, never sees half a file.

    The file is created with mode 0666 less the process umask, as any file the user creates
    (:func:`tempfile.mkstemp` would create it 0600, and the rename would keep that).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    while True:
        tmp = path.parent / f"{path.name}.{secrets.token_hex(4)}.tmp"
        try:
            fd = os.open(tmp, flags, 0o666)
            break
        except FileExistsError:  # a name another writer just took
            continue
    try:
        with os.fdopen(fd, mode, **open_args) as fh:
            yield fh
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def json_safe(o):
    """Plain JSON: numpy scalars as Python numbers, non-finite floats (an absent bound) as null."""
    if isinstance(o, dict):
        return {str(k): json_safe(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [json_safe(v) for v in o]
    if isinstance(o, (np.integer, np.bool_)):
        return o.item()
    if isinstance(o, (float, np.floating)):
        return float(o) if np.isfinite(o) else None
    if isinstance(o, Path):
        return str(o)
    return o
