"""The background-pass thread of the health loop and the stale-pod evictor."""

from __future__ import annotations

import logging
import threading

from mount_core.periodic import Periodic


class Counting(Periodic):
    def __init__(self) -> None:
        super().__init__(0.01, logging.getLogger("test"))
        self.passes = 0
        self.ran = threading.Event()

    def run_once(self) -> None:
        self.passes += 1
        if self.passes == 1:
            raise RuntimeError("one bad pass")  # must not end the loop
        self.ran.set()


def test_a_failing_pass_does_not_end_the_loop() -> None:
    duty = Counting()
    duty.start()
    try:
        assert duty.ran.wait(5), "the loop stopped after its first (failing) pass"
    finally:
        duty.stop()


def test_stop_racing_start_never_raises_and_leaves_no_thread() -> None:
    # A gunicorn worker told to exit while it starts its health loop stopped it before
    # the thread had started: "cannot join thread before it is started".
    for _ in range(200):
        duty = Counting()
        starter = threading.Thread(target=duty.start)
        starter.start()
        duty.stop()
        starter.join()
        assert duty._thread is None
        duty.stop()


def test_start_after_stop_starts_nothing() -> None:
    duty = Counting()
    duty.stop()
    duty.start()
    assert duty._thread is None and duty.passes == 0
