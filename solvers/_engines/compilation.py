"""Logging of numba's first compilations, so that a first run says what it is waiting for.

numba compiles a kernel variant the first time it is called with new argument types and
caches the machine code on disk; later runs load it in milliseconds. A listener on numba's
``numba:compile`` event (fired only when a kernel is really compiled, not when it is loaded
from the cache) logs on the ``nemon.compile`` logger: the kernel and its variant when the
outermost compilation starts, ``still compiling`` every few seconds while it lasts, and the
time it took. The library only logs; the command line shows these records on stderr.
"""

from __future__ import annotations

import _thread
import logging
import sys
import threading
import time

from numba.core import event, types

__all__ = ["install", "describe", "compiling", "compilations", "interrupt_compilation"]

logger = logging.getLogger("nemon.compile")

#: Seconds between "still compiling" records.
HEARTBEAT_SECONDS = 5.0
#: Compilations under way on the main thread (0 when none).
_main_depth = 0
#: Outermost compilations finished in this process.
_finished = 0


def describe(dispatcher, args) -> str:
    """``name(Type, …)`` of a compilation, namedtuple types by their class name."""
    parts = []
    for a in args:
        if isinstance(a, types.BaseNamedTuple):
            inner = [t.instance_class.__name__ for t in a.types if isinstance(t, types.BaseNamedTuple)]
            parts.append(a.instance_class.__name__ + (f"[{', '.join(inner)}]" if inner else ""))
        elif isinstance(a, types.Array):
            parts.append(f"{a.dtype}[{a.ndim}d]")
        else:
            parts.append(str(a))
    return f"{dispatcher.py_func.__qualname__}({', '.join(parts)})"


class _Listener(event.Listener):
    """Logs the outermost compilation of each thread (nested ones are part of it)."""

    def __init__(self):
        self._local = threading.local()

    def on_start(self, ev):
        global _main_depth
        depth = getattr(self._local, "depth", 0)
        self._local.depth = depth + 1
        if threading.current_thread() is threading.main_thread():
            _main_depth += 1
        if depth:
            return
        what = describe(ev.data["dispatcher"], ev.data["args"])
        self._local.what = what
        self._local.start = time.perf_counter()
        logger.info("compiling %s (once; cached for later runs)", what)
        done = threading.Event()
        self._local.done = done
        start = self._local.start

        def heartbeat():
            while not done.wait(HEARTBEAT_SECONDS):
                logger.info("still compiling %s (%.0f s)", what, time.perf_counter() - start)

        threading.Thread(target=heartbeat, name="nemon-compile-heartbeat", daemon=True).start()

    def on_end(self, ev):
        global _main_depth, _finished
        self._local.depth = max(0, getattr(self._local, "depth", 1) - 1)
        if threading.current_thread() is threading.main_thread():
            _main_depth = max(0, _main_depth - 1)
        if self._local.depth:
            return
        _finished += 1
        self._local.done.set()
        logger.info("compiled %s in %.1f s", self._local.what, time.perf_counter() - self._local.start)


_installed = False
_lock = threading.Lock()


def install() -> None:
    """Register the listener once per process (idempotent)."""
    global _installed
    with _lock:
        if not _installed:
            event.register("numba:compile", _Listener())
            _installed = True


def compilations() -> int:
    """How many (outermost) compilations this process has finished: a timing that spans a
    change of this count includes compile time."""
    return _finished


def compiling() -> bool:
    """Whether numba is compiling on the main thread right now."""
    return _main_depth > 0


#: Seconds between repeated interrupts, and how long they are repeated at most.
_NAG_SECONDS, _NAG_LIMIT = 0.05, 2.0


def interrupt_compilation() -> None:
    """Make a Ctrl-C reach the main thread while it compiles.

    numba's compiler calls back into Python from C (LLVM's object cache); a KeyboardInterrupt
    raised in such a callback is printed and ignored, and the compilation goes on. A daemon
    thread repeats the interrupt (``_thread.interrupt_main``) every 50 ms while the main thread
    still compiles, for 2 s at most, until one lands in Python code and propagates.
    """

    _quiet_ignored_interrupts()

    def nag():
        end = time.perf_counter() + _NAG_LIMIT
        while compiling() and time.perf_counter() < end:
            time.sleep(_NAG_SECONDS)
            if compiling():
                _thread.interrupt_main()

    threading.Thread(target=nag, name="nemon-interrupt", daemon=True).start()


def _quiet_ignored_interrupts() -> None:
    """An interrupt raised inside the compiler's C callback is reported by Python as an
    "Exception ignored" traceback; that report says nothing to a user who pressed Ctrl-C
    (the interrupt is repeated until it propagates), so it is dropped. Other unraisable
    exceptions are reported as before."""
    previous = sys.unraisablehook
    if getattr(previous, "_nemon_quiet", False):
        return

    def hook(unraisable):
        if isinstance(unraisable.exc_value, KeyboardInterrupt):
            return
        previous(unraisable)

    hook._nemon_quiet = True
    sys.unraisablehook = hook
