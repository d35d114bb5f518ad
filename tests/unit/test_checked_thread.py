"""The tests' CheckedThread: a failed assert inside a thread fails the test that joins it."""

from __future__ import annotations

import threading

import pytest

from tests.threads import CheckedThread


def test_an_assert_in_the_thread_is_raised_by_join() -> None:
    def fails() -> None:
        assert 1 == 2, "inside the thread"

    thread = CheckedThread(target=fails)
    thread.start()
    with pytest.raises(AssertionError, match="inside the thread"):
        thread.join(5)


def test_a_thread_still_running_after_the_timeout_fails_the_join() -> None:
    release = threading.Event()
    thread = CheckedThread(target=release.wait, args=(5,))
    thread.start()
    with pytest.raises(AssertionError, match="still running"):
        thread.join(0.05)
    release.set()
    thread.join(5)  # finished cleanly: no error


def test_a_plain_thread_would_have_hidden_it() -> None:
    """Why the helper exists: threading.Thread prints the exception and join() returns as if all went well."""
    seen: list[type[BaseException]] = []
    previous = threading.excepthook
    threading.excepthook = lambda args: seen.append(args.exc_type)
    try:
        thread = threading.Thread(target=lambda: [][0])
        thread.start()
        thread.join(5)  # no exception here
    finally:
        threading.excepthook = previous
    assert seen == [IndexError]
