"""A thread whose failure fails the test: an exception raised in it (a failed assert included) comes back from join().

A plain ``threading.Thread`` only prints such an exception, and the test goes on to pass.
"""

from __future__ import annotations

import threading
from typing import Any


class CheckedThread(threading.Thread):
    """``threading.Thread`` (daemon by default) whose ``join`` re-raises what the target raised in the caller.

    ``join(timeout)`` also fails when the thread is still running after the timeout, instead of returning as if it
    had finished.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("daemon", True)  # a hung thread must not keep the test run from exiting
        super().__init__(*args, **kwargs)
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            super().run()
        except BaseException as error:  # re-raised in the test's thread by join()
            self.error = error

    def join(self, timeout: float | None = None) -> None:
        super().join(timeout)
        if self.is_alive():
            raise AssertionError(f"thread {self.name} still running after {timeout} s")
        if self.error is not None:
            raise self.error
