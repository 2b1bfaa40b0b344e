"""Where numba keeps the package's compiled kernels.

numba's default puts its cache files in ``__pycache__`` beside each source file. For an
installed copy that is ``site-packages/contraction/__pycache__``, a folder pip does not know:
it survives ``pip uninstall`` and, after a later ``pip install -e``, turns the leftover
``site-packages/contraction`` into a namespace package that shadows the editable one. The
kernels are therefore cached in the user's cache folder instead
(``$XDG_CACHE_HOME/nemon/numba/<sources>``, else under ``~/.cache``; the system's temporary
folder when that cannot be created), one folder per version of the engine's sources
(:func:`sources_fingerprint`). ``NUMBA_CACHE_DIR``, when set, is respected as it is.
"""

from __future__ import annotations

import hashlib
import os
import sys
import tempfile
from pathlib import Path

__all__ = ["configure_numba_cache", "default_cache_dir", "sources_fingerprint"]


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/nemon/numba/<sources>`` (or under ``~/.cache``), where ``<sources>``
    fingerprints the engine's source files (:func:`sources_fingerprint`)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "nemon" / "numba" / sources_fingerprint(_ENGINE_SOURCES)


#: The folder whose files define the compiled engine's kernels and the overloads they inline.
_ENGINE_SOURCES = Path(__file__).resolve().parent.parent / "solvers" / "_engines"


def sources_fingerprint(folder: Path) -> str:
    """A short hash of the names, sizes and modification times of ``folder``'s ``.py`` files.

    numba invalidates a cached kernel when the file that defines it changes, not when a file
    it calls into does: a kernel of ``numba_engine.py`` inlines the operator primitives of
    ``operators.py``, and after an upgrade or an edit of that file alone it would load stale
    machine code. A cache folder per version of the engine's sources rules that out (older
    folders are left behind; delete them freely)."""
    entries = []
    for path in sorted(Path(folder).glob("*.py")):
        try:
            st = path.stat()
        except OSError:
            continue
        entries.append(f"{path.name}:{st.st_size}:{st.st_mtime_ns}")
    return hashlib.sha256("\n".join(entries).encode()).hexdigest()[:12]


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
