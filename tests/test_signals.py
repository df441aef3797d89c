"""esper_exp.signals.SignalScope: the scope the trainer's stop request and the launcher's signal forwarding share."""

import os
import signal
import threading

from esper_exp.signals import SignalScope


class _Recorder(SignalScope):
    def __init__(self) -> None:
        super().__init__()
        self.got: list[int] = []

    def _handle(self, signum, frame) -> None:
        self.got.append(signum)


def test_the_scope_receives_sigint_and_sigterm_and_restores_the_handlers_it_replaced():
    def before(signum, frame):  # a handler of the caller's, in force before the scope
        raise AssertionError("the scope's handler should have run")

    old_term = signal.signal(signal.SIGTERM, before)
    old_int = signal.getsignal(signal.SIGINT)
    try:
        with _Recorder() as scope:
            os.kill(os.getpid(), signal.SIGTERM)
            os.kill(os.getpid(), signal.SIGINT)
        assert scope.got == [signal.SIGTERM, signal.SIGINT]
        assert signal.getsignal(signal.SIGTERM) is before
        assert signal.getsignal(signal.SIGINT) is old_int
    finally:
        signal.signal(signal.SIGTERM, old_term)


def test_outside_the_main_thread_the_scope_installs_nothing():
    installed = []

    def enter():
        with _Recorder() as scope:
            installed.append(dict(scope._old))

    before = signal.getsignal(signal.SIGTERM)
    t = threading.Thread(target=enter)
    t.start()
    t.join()
    assert installed == [{}]  # signal.signal would raise ValueError there
    assert signal.getsignal(signal.SIGTERM) is before
