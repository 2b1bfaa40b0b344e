"""Where numba keeps the package's compiled kernels.

numba's default puts its cache files in ``__pycache__`` beside each source file. For an
installed copy that is ``site-packages/contraction/__pycache__``, a folder pip does not know:
it survives ``pip uninstall`` and, after a later ``pip install -e``, turns the leftover
``site-packages/contraction`` into a namespace package that shadows the editable one. The
kernels are therefore cached in the user's cache folder instead
(``$XDG_CACHE_HOME/nemon/numba``, else ``~/.cache/nemon/numba``; the system's temporary folder
when that cannot be created). ``NUMBA_CACHE_DIR``, when set, is respected.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

__all__ = ["configure_numba_cache", "default_cache_dir"]


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/nemon/numba`` (or ``~/.cache/nemon/numba``)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "nemon" / "numba"


def configure_numba_cache() -> str:
    """Set ``NUMBA_CACHE_DIR`` to :func:`default_cache_dir` unless it is set already; returns
    the folder in use. Runs before the package defines its kernels (numba picks the cache
    folder of a kernel when it is defined) and reloads numba's configuration if numba was
    imported first."""
    current = os.environ.get("NUMBA_CACHE_DIR")
    if current:
        return current
    folder = default_cache_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        usable = os.access(folder, os.W_OK)
    except OSError:
        usable = False
    if not usable:
        folder = Path(tempfile.gettempdir()) / f"nemon-numba-{os.getuid() if hasattr(os, 'getuid') else 'user'}"
    os.environ["NUMBA_CACHE_DIR"] = str(folder)
    config = sys.modules.get("numba.core.config")
    if config is not None:
        config.reload_config()
    return str(folder)
