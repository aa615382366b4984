"""The multi-process gateway's supervisor starts again a worker process that died, with a delay
that grows while it keeps dying young, and logs each death."""

from __future__ import annotations

import logging
import multiprocessing
import signal
import sys
import threading
import time
from itertools import pairwise
from multiprocessing.process import BaseProcess

import pytest

from gateway.process import _Supervisor


def test_dead_worker_is_restarted_with_backoff(caplog: pytest.LogCaptureFixture) -> None:
    context = multiprocessing.get_context("spawn")
    starts: list[float] = []

    def spawn() -> BaseProcess:
        starts.append(time.monotonic())
        if len(starts) == 1:  # the healthy one lives until the stop
            return context.Process(target=time.sleep, args=(60,))
        return context.Process(target=sys.exit, args=(3,))  # dies at once, every time

    supervisor = _Supervisor(spawn, 2)
    caplog.set_level(logging.WARNING, logger="inventiv.gateway")
    thread = threading.Thread(target=supervisor.run)
    thread.start()
    try:
        time.sleep(6)
    finally:
        supervisor.stop(signal.SIGTERM, None)
        thread.join(20)
    assert not thread.is_alive()
    # The dying one was started again after 1 s, then 2 s (the healthy one never).
    assert 3 <= len(starts) <= 5, starts
    gaps = [b - a for a, b in pairwise(starts[1:])]
    assert all(later > earlier for earlier, later in pairwise(gaps)), gaps
    deaths = [r.message for r in caplog.records if "exited with 3" in r.message]
    assert deaths and "restarting in 1s" in deaths[0], deaths
    assert supervisor.processes[0].exitcode == -signal.SIGTERM  # the healthy one was stopped
