from __future__ import annotations

import os
import signal

import pytest

from runner.signals import Preemption


def test_sigterm_or_sigint_sets_the_flag_and_a_second_sigint_aborts() -> None:
    with Preemption() as preempted:
        assert not preempted()
        os.kill(os.getpid(), signal.SIGTERM)
        assert preempted() and preempted.signum == signal.SIGTERM
        os.kill(os.getpid(), signal.SIGTERM)  # a repeated SIGTERM changes nothing
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # handlers restored
