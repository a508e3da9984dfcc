"""Stopping gracefully: the first Ctrl-C / SIGTERM finishes the step and commits, a second aborts."""

from __future__ import annotations

import os
from contextlib import contextmanager


@contextmanager
def graceful_stop(abort):
    """First Ctrl-C / SIGTERM: finish the step, commit, exit 130. A second one calls `abort` at once."""
    import signal

    requested = {"stop": False}

    def handler(signum, frame):
        if requested["stop"]:
            abort()
            return
        requested["stop"] = True
        # Straight to fd 2, importing nothing: the signal may land while the main thread is half-way through
        # an import (rich loads its emoji table on first print), and importing that module here would fail.
        os.write(2, b"stopping after this step (again to abort now) ...\n")

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield lambda: requested["stop"]
    finally:
        for sig, old in previous.items():
            # After a stop the process is on its way out: a late second Ctrl-C, arriving once the commit is
            # done, would otherwise print a KeyboardInterrupt traceback from the interpreter's shutdown.
            set_handler(sig, signal.SIG_IGN if requested["stop"] else old)


def set_handler(sig, handler) -> None:
    """signal.signal, tolerating a signal that arrived just before: CPython checks pending signals first and
    raises "Signal N ignored due to race condition" when one is pending under SIG_IGN — which is ignoring
    it, as asked. The pending flag is cleared by that check, so the second call sets the handler."""
    import signal

    try:
        signal.signal(sig, handler)
    except OSError:
        signal.signal(sig, handler)
