"""SIGINT/SIGTERM as a scope: ``with`` a :class:`SignalScope` subclass, its ``_handle`` receives both signals (in the
main thread only: Python delivers signals there, and elsewhere installing a handler raises); leaving the scope
restores the handlers that were in force. The trainer's stop request (train.py) and the grouped launcher's
forwarding to its workers (launch.py) are the two subclasses."""

from __future__ import annotations

import signal
import threading

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class SignalScope:
    def __init__(self) -> None:
        self._old: dict[int, object] = {}

    def _handle(self, signum, frame) -> None:
        raise NotImplementedError

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in STOP_SIGNALS:
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)
        self._old.clear()
