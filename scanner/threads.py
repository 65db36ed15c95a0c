"""Background threads that leave Ctrl-C and SIGTERM to the main thread."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from typing import Any


def start_daemon(target: Callable[..., Any], name: str, **kwargs: Any) -> threading.Thread:
    """Start a daemon thread with SIGINT and SIGTERM blocked. The kernel delivers a signal to any
    thread that does not block it; if a worker took Ctrl-C, the main thread would stay stuck in a
    blocking call (a request Clair never answers) and the interrupt would never be seen."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        thread = threading.Thread(target=target, name=name, kwargs=kwargs, daemon=True)
        thread.start()  # the new thread inherits the blocked mask, and so do threads it starts
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
    return thread
